"""End-to-end leakage from a Flower capture: ``attacks.flower_capture`` and ``fedsim attack --capture``.

Fast checks build a capture file by hand (what the curious ServerApp of experiments/flower_leakage_app saves: the
global model sent, the client's model after one SGD step on its victim image). The slow check runs the real
thing: a deployment (SuperLink + 2 SuperNodes) of that app, then IG and DIA from the saved capture."""

import io
import json

import pytest
import torch
import torch.nn.functional as F

from attacks.flower_capture import CAPTURE_FORMAT, client_gradients, read_capture
from attacks.victims import load_victims, normalize_mnist
from attacks.vision import build_attack_model
from fedsim.cli import main
from fedsim.messages import SERVER

pytestmark = pytest.mark.needs_data("mnist-victims")
LR, P, SEED = 0.1, 0.25, 0


def header(victims):
    return {"format": CAPTURE_FORMAT, "algorithm": "fedavg", "model": "mlp", "attack_model": True, "dropout": P,
            "input_shape": [1, 28, 28], "dataset": "mnist", "lr": LR, "local_steps": 1, "batch_size": 1,
            "seed": SEED, "victims": victims}


def victim_step(data_root, victim: int, mask_seed: int):
    """(w, w', the true gradient): one SGD step of the public model on a victim image, dropout active."""
    torch.manual_seed(SEED)
    model = build_attack_model("mlp", (1, 28, 28), p=P)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    images, labels = load_victims("mnist", data_root)
    x, y = torch.tensor(normalize_mnist(images[victim:victim + 1])), torch.tensor(labels[victim:victim + 1])
    model.train()
    torch.manual_seed(mask_seed)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    return w, w - LR * torch.cat([g.reshape(-1) for g in grads]), [g.detach() for g in grads]


def write(path, victims, steps):
    records = []
    for c, (w, w_new, _) in enumerate(steps):
        records += [dict(round=0, kind="downlink", sender=SERVER, receiver=c, payload=w, delivered=True),
                    dict(round=0, kind="uplink", sender=c, receiver=SERVER, payload=w_new, delivered=True)]
    buf = io.BytesIO()
    torch.save({"header": header(victims), "records": records}, buf)
    path.write_bytes(buf.getvalue())


def test_gradients_from_a_capture_are_the_clients_gradients(tmp_path, data_root):
    steps = [victim_step(data_root, v, 100 + v) for v in (3, 5)]
    write(tmp_path / "capture.pt", [3, 5], steps)
    h, records = read_capture(tmp_path / "capture.pt")
    assert h["victims"] == [3, 5] and len(records) == 4
    w, grads = client_gradients(h, records)
    assert torch.equal(w, steps[0][0])
    for c, (_, _, true) in enumerate(steps):
        # (w - w') / lr in float32: rounding of w and w' amplified by 1 / lr
        for got, want in zip(grads[c], true):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="no uploads of round 1"):
        client_gradients(h, records, round=1)


def test_attack_capture_dia_beats_ig_and_the_cli_reads_it(tmp_path, data_root, capsys):
    torch.set_num_threads(1)
    write(tmp_path / "capture.pt", [0], [victim_step(data_root, 0, 7)])
    out = tmp_path / "attack"
    assert main(["attack", "--capture", str(tmp_path / "capture.pt"), "--attack", "ig,dia", "--iterations", "60",
                 "--data-dir", str(data_root), "--out", str(out), "--no-progress"]) == 0
    rows = {r["attack"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"ig", "dia"} and rows["dia"]["label_ok"] == 1 and rows["dia"]["client"] == 0
    assert rows["dia"]["ssim"] > 0.6 and rows["dia"]["ssim"] > rows["ig"]["ssim"] + 0.1
    capsys.readouterr()
    (tmp_path / "junk.pt").write_bytes(b"not a capture")
    assert main(["attack", "--capture", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsim: error: --capture") and len(err.strip().splitlines()) == 1


def test_attack_capture_refuses_options_that_contradict_the_file(tmp_path, data_root, capsys):
    """With --capture the model, data set, dropout and victims come from the file: an explicit option that says
    otherwise would be silently ignored, so it is refused in one line; one that agrees is accepted."""
    write(tmp_path / "capture.pt", [0], [victim_step(data_root, 0, 7)])
    base = ["attack", "--capture", str(tmp_path / "capture.pt"), "--attack", "dia", "--iterations", "1",
            "--data-dir", str(data_root), "--no-progress"]
    for flag, value, held in (("--model", "vit", "mlp"), ("--dataset", "cifar10", "mnist"),
                              ("--dropout", "0.5", "0.25"), ("--victims", "3", "1")):
        assert main([*base, flag, value, "--out", str(tmp_path / "no")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"{flag} {value}" in err and held in err, err
        assert not (tmp_path / "no").exists()
    out = tmp_path / "yes"
    assert main([*base, "--model", "mlp", "--dropout", "0.25", "--victims", "1", "--out", str(out)]) == 0
    args = json.loads((out / "results.json").read_text())["args"]
    assert (args["model"], args["dataset"], args["dropout"], args["victims"]) == ("mlp", "mnist", 0.25, 1)


def test_attack_without_capture_takes_the_documented_defaults(tmp_path, data_root):
    out = tmp_path / "fresh"
    assert main(["attack", "--attack", "ig", "--iterations", "1", "--data-dir", str(data_root), "--out", str(out),
                 "--no-progress"]) == 0
    args = json.loads((out / "results.json").read_text())["args"]
    assert (args["model"], args["dataset"], args["dropout"], args["victims"]) == ("mlp", "mnist", 0.25, 1)


@pytest.mark.flower
def test_capture_format_is_the_flower_apps_one():
    pytest.importorskip("flwr")
    from fedsim.flower.apps import CAPTURE_FORMAT as APPS_FORMAT

    assert CAPTURE_FORMAT == APPS_FORMAT


@pytest.mark.flower
@pytest.mark.deploy
def test_deployment_capture_leaks_the_victims_images(tmp_path, data_root):
    """~1.5 min here: 2 SuperNodes, one FedAvg round of the dropout MLP, IG and DIA (100 iterations each)."""
    pytest.importorskip("flwr")
    from experiments.flower_leakage import run

    torch.set_num_threads(1)
    res = run(tmp_path, nodes=2, iterations=100, data_dir=str(data_root))
    assert res["deployment"]["status"] == "finished" and len(res["deployment"]["node_ids"]) == 2
    h, records = read_capture(tmp_path / "deployment" / "capture.pt")
    assert h["victims"] == [0, 1] and sorted(r["sender"] for r in records if r["kind"] == "uplink") == [0, 1]
    # the uploads are the clients' steps: the ServerApp's captured update gives the gradient computed here with
    # the same public init and the node's dropout stream
    from fedsim.rng import Streams

    _, grads = client_gradients(h, records)
    for c in (0, 1):
        _, _, true = victim_step(data_root, c, Streams(SEED).key("dropout", c, 0) >> 1)
        for got, want in zip(grads[c], true):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
    ssim = {(r["client"], r["attack"]): r["ssim"] for r in res["rows"]}
    for c in (0, 1):
        assert ssim[(c, "dia")] > 0.8 and ssim[(c, "dia")] > ssim[(c, "ig")]
