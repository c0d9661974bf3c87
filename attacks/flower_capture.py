"""Attack what a curious Flower ServerApp saved: ``capture.pt`` of ``fedsim.flower.apps.write_capture``'s format
(e.g. from experiments/flower_leakage.py) -> each uploading client's gradient -> IG / DIA -> SSIM.

The attack side uses only the capture (what crossed the wire: the global model sent, each client's upload) and
the public header (architecture, dropout rate, learning rate, input shape); labels come from iDLG. The ground
truth (the header's ``victims``: which image of the public victim set each client held) is read only by the
metrics, as in ``attacks.experiment.run_attacks``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attacks.batched import batched_invert
from attacks.capture import update_to_gradient
from attacks.experiment import ATTACKS, VICTIM_SETS, last_linear_weight_index
from attacks.inversion import InversionConfig
from attacks.labels import idlg_label
from attacks.metrics import mse, psnr, ssim
from attacks.victims import load_victims
from attacks.vision import build_attack_model

CAPTURE_FORMAT = "fedsim-flower-capture-1"     # = fedsim.flower.apps.CAPTURE_FORMAT (a test checks)


def read_capture(path: str | Path) -> tuple[dict, list[dict]]:
    """(header, records) of a Flower capture file, loaded with ``weights_only=True``; ValueError if it is not one."""
    try:
        body = torch.load(path, weights_only=True)
    except OSError as e:         # missing, a folder, unreadable
        raise ValueError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    except Exception:            # junk or another kind of file (UnpicklingError, RuntimeError), truncated (EOFError)
        raise ValueError(f"{path}: not a fedsim Flower capture ({CAPTURE_FORMAT}): the file cannot be read as "
                         "one (a capture.pt written by a Flower run with capture on)") from None
    if not isinstance(body, dict) or not isinstance(body.get("header"), dict) \
            or body["header"].get("format") != CAPTURE_FORMAT or not isinstance(body.get("records"), list):
        raise ValueError(f"{path}: not a fedsim Flower capture ({CAPTURE_FORMAT})")
    return body["header"], body["records"]


def capture_model(header: dict) -> torch.nn.Module:
    """The public architecture the header names (attack-lab models only: ``attack_model = true``)."""
    if not header.get("attack_model"):
        raise ValueError(f"the capture's model {header.get('model')!r} is not an attack-lab model with maskable "
                         "dropout; capture a run of experiments/flower_leakage.py")
    return build_attack_model(header["model"], tuple(header["input_shape"]), p=float(header["dropout"]))


def client_gradients(header: dict, records: list[dict], round: int = 0) -> tuple[torch.Tensor, dict[int, list]]:
    """(the global model w sent in ``round``, client -> gradient (w - w_i) / lr) for every client whose upload
    was captured; exact for one local SGD step (``update_to_gradient``)."""
    if int(header.get("local_steps", 1)) != 1:
        raise ValueError("the update is a gradient only for one local step; the capture has "
                         f"local_steps = {header.get('local_steps')}")
    model = capture_model(header)
    sent = {r["receiver"]: r["payload"] for r in records if r["round"] == round and r["kind"] == "downlink"}
    ups = {r["sender"]: r["payload"] for r in records if r["round"] == round and r["kind"] == "uplink"
           and r["delivered"]}
    if not ups:
        raise ValueError(f"the capture holds no uploads of round {round}")
    missing = sorted(set(ups) - set(sent))
    if missing:
        raise ValueError(f"the capture lacks the global model sent to clients {missing} in round {round}")
    w = sent[min(ups)]
    grads = {c: update_to_gradient(model, sent[c], ups[c], float(header["lr"])) for c in sorted(ups)}
    return w, grads


def attack_capture(path: str | Path, attacks: tuple[str, ...] = ("ig", "dia"),
                   config: InversionConfig = InversionConfig(), data_dir=None, seed: int = 0, progress=None,
                   device: str = "cpu", round: int = 0) -> tuple[list[dict], dict]:
    """Attack every captured upload of ``round``: rows (one per client and attack: ssim, psnr, mse, label_ok ...)
    and reconstructions in pixels, as ``attacks.experiment.run_attacks`` returns them (``victim`` = the image's
    index in the victim set, ``client`` = the uploading client). "informed" needs the true masks: skipped."""
    header, records = read_capture(path)
    w, grads = client_gradients(header, records, round)
    clients = sorted(grads)
    vs = VICTIM_SETS[header["dataset"]]
    net = capture_model(header).to(device)
    # the model at which the gradients were taken
    torch.nn.utils.vector_to_parameters(w.to(device, torch.float32), net.parameters())
    k = last_linear_weight_index(net)
    targets = [torch.stack([grads[c][j] for c in clients]).to(device) for j in range(len(grads[clients[0]]))]
    inferred = [idlg_label(grads[c][k]) for c in clients]
    labels = torch.tensor(inferred, device=device)[:, None]
    # ground truth, for the metrics only
    images, true_labels = load_victims(header["dataset"], data_dir)
    victims = [int(header["victims"][c]) for c in clients]
    xs = vs.normalize(images[victims]).to(device)
    truth = vs.to_pixels(xs)
    rows, recon = [], {"truth": [t.cpu() for t in truth]}
    for attack in attacks:
        if attack == "informed":
            continue
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
        cb = (lambda it, n, a=attack: progress(a, it, n)) if progress else None
        res = batched_invert(net, targets, labels, (1, *vs.shape), vs.box(device), attack, config=config,
                             seeds=[seed] * len(clients), progress=cb)
        r = vs.to_pixels(res.x[:, 0])
        s, p, m01, mn = ssim(r, truth), psnr(r, truth), mse(r, truth), mse(res.x[:, 0], xs)
        throughput = float(res.iterations.sum()) / max(res.seconds, 1e-9)
        for i, c in enumerate(clients):
            rows.append({"victim": victims[i], "client": c, "attack": attack, "ssim": float(s[i]),
                         "psnr": float(p[i]), "mse": float(mn[i]), "mse_01": float(m01[i]),
                         "label_ok": int(inferred[i] == int(true_labels[victims[i]])),
                         "iterations": int(res.iterations[i]), "loss": float(res.loss[i]), "seconds": res.seconds,
                         "victim_it_per_s": throughput})
        recon[attack] = list(r.cpu())
    return rows, recon
