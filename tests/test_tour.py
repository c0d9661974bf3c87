"""The quickstart tour (experiments/tour.py, ``fedsim quickstart``): report.md holds every headline number, each
number matches an independent recomputation, and a part without its data is skipped with a one-line note.

Tiny settings throughout (a few rounds, a few attack iterations): ~10 s in all on one thread.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import tour
from fedsim.cli import format_column, main

TINY = tour.TourSettings(gossip_clients=10, gossip_degree=4, gossip_rounds=4, gossip_seeds=(0, 1),
                         gossip_hidden=(16,), fedpca_clients=5, fedpca_k=5, fedpca_methods=("centralized", "fedpg"),
                         attack_victims=2, attack_iterations=20)


def report_tables(text: str) -> dict[str, list[dict]]:
    """{section title: rows of its markdown table} of report.md."""
    tables, title, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            title, header = line[3:], None
        elif line.startswith("| ") and title:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            elif set(cells) != {"---"}:
                tables.setdefault(title, []).append(dict(zip(header, cells)))
    return tables


def assert_report_holds(text: str, parts: list[tour.Part]) -> None:
    tables = report_tables(text)
    for part in parts:
        if part.skipped:
            assert f"**Skipped.** {part.note}" in text
            continue
        rows = tables[part.title]
        assert len(rows) == len(part.rows) and part.rows, part.name
        for c in part.columns:
            want = format_column([row.get(c) for row in part.rows])
            assert [shown[c] for shown in rows] == want, (part.name, c)
        assert all(list(shown) == part.columns for shown in rows)
        for fig in part.figures:
            assert f"({fig})" in text


@pytest.mark.needs_data("nsl-kdd", "mnist-victims")
def test_tour_report_holds_every_headline_number(tmp_path, data_root):
    from sklearn.metrics import roc_auc_score

    from attacks.experiment import run_attacks
    from attacks.inversion import InversionConfig
    from fedsim.anomaly import residual_scores
    from fedsim.experiment import run
    from fedsim.pipelines import fedpca_nslkdd as pipeline

    parts = tour.run_tour(tmp_path, TINY, data_root)
    assert [p.name for p in parts] == ["gossip", "fedpca", "attack"] and not any(p.skipped for p in parts)
    report = tour.write_report(tmp_path, parts)
    text = report.read_text()
    assert_report_holds(text, parts)
    assert json.loads((tmp_path / "tour.json").read_text())[1]["rows"] == parts[1].rows
    for f in ("gossip.png", "roc.png", "reconstructions.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"

    # gossip: each rule's mean/min/max over seeds equals separate runs of the same configs
    gossip = {r["rule"]: r for r in parts[0].rows}
    for rule, label in tour.GOSSIP_RULES.items():
        finals = [run(tour.gossip_config(rule, s, TINY)).final("nodes_acc") for s in TINY.gossip_seeds]
        assert gossip[label]["node_acc_mean"] == pytest.approx(np.mean(finals), abs=1e-12)
        assert (gossip[label]["node_acc_min"], gossip[label]["node_acc_max"]) == (min(finals), max(finals))

    # federated PCA: the AUC (in %) equals scikit-learn's on the method's residual scores; honest threshold FPR
    data = pipeline.prepare(data_root, n_clients=TINY.fedpca_clients)
    for row in parts[1].rows:
        res = pipeline.train_method(row["method"], data, TINY.fedpca_k)
        scores = pipeline.scores_on(res, data)
        assert row["auc"] == pytest.approx(100 * roc_auc_score(data.test().is_attack, scores), abs=1e-6)
        train = residual_scores(data.train_normal, res.Z, orthonormal=res.orthonormal)
        threshold = np.quantile(train, 1 - TINY.fedpca_alpha)
        normal = ~data.test().is_attack
        assert row["fpr"] == pytest.approx(100 * np.mean(scores[normal] > threshold), abs=0.05)

    # the attack: mean SSIM per attack equals a separate run_attacks call's rows
    rows, _ = run_attacks(list(range(TINY.attack_victims)), ("ig", "dia"), "mlp", "mnist", TINY.attack_dropout,
                          InversionConfig(max_iterations=TINY.attack_iterations), data_root, TINY.seed)
    for shown, attack in zip(parts[2].rows, ("ig", "dia")):
        assert shown["ssim"] == pytest.approx(np.mean([r["ssim"] for r in rows if r["attack"] == attack]), abs=1e-9)


def test_tour_without_data_offline_skips_with_one_line_notes(capsys, tmp_path, monkeypatch):
    from attacks import victims
    from fedsim.data import datasets, nslkdd

    monkeypatch.setattr(nslkdd, "NSLKDD_MIRRORS", ("http://127.0.0.1:9/",))    # offline: connection refused
    monkeypatch.setattr(datasets, "MNIST_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.setattr(victims, "VICTIMS_SOURCE", "http://127.0.0.1:9/")
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "no-data"
    empty.mkdir()
    code = main(["quickstart", "--rounds", "2", "--iterations", "5", "--no-progress", "--data-dir", str(empty),
                 "--out", "qs"])
    out, err = capsys.readouterr()
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("fedsim: note:")]
    assert len(notes) == 2, err
    assert "skipped federated PCA" in notes[0] and "nsl-kdd/" in notes[0] and "--data-dir" in notes[0]
    assert "skipped the attack" in notes[1] and "dia_mnist_128.npz" in notes[1] and "--data-dir" in notes[1]
    assert "t10k-images-idx3-ubyte.gz" in notes[1]
    assert list(empty.iterdir()) == []                         # a failed download leaves nothing behind
    text = (tmp_path / "qs" / "report.md").read_text()
    assert text.count("**Skipped.**") == 2
    assert "plain (beta = 0.5)" in text and (tmp_path / "qs" / "gossip.png").is_file()   # the rest still ran
    assert (tmp_path / "qs" / "accuracy.png").is_file() and (tmp_path / "qs" / "summary.txt").is_file()
    assert f"report: {Path('qs') / 'report.md'}" in out


def test_quickstart_parts_none_and_bad_parts(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart", "--rounds", "1", "--no-progress", "--parts", "none", "--out", "qs"]) == 0
    report = tmp_path / "qs" / "report.md"
    assert (tmp_path / "qs" / "summary.txt").is_file()
    assert "## FedAvg vs decentralized SGD" in report.read_text() and "## Variance-corrected" not in report.read_text()
    capsys.readouterr()
    assert main(["quickstart", "--parts", "gossip,nope", "--out", "qs2"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "fedsim: error: unknown --parts entry 'nope'; known: all, none, gossip, fedpca, attack"
    assert not (tmp_path / "qs2").exists()


def test_a_report_of_some_parts_keeps_the_earlier_parts_marked_and_is_rewritten_every_time(capsys, tmp_path,
                                                                                            monkeypatch):
    """--parts runs some parts: report.md still describes every figure in the folder (the parts not run come from
    the last tour.json, marked as earlier), and its runs table is always this invocation's."""
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart", "--rounds", "2", "--no-progress", "--parts", "gossip", "--out", "qs"]) == 0
    gossip = json.loads((tmp_path / "qs" / "tour.json").read_text())[1]
    assert gossip["name"] == "gossip" and not gossip["earlier"]
    assert main(["quickstart", "--rounds", "1", "--no-progress", "--parts", "none", "--out", "qs"]) == 0
    assert "(gossip: from the earlier tour in this folder)" in capsys.readouterr().out
    text = (tmp_path / "qs" / "report.md").read_text()
    runs, rest = text.split("## Variance-corrected")
    assert "Not run this time" not in runs and "Not run this time" in rest and "gossip.png" in rest
    assert re.search(r"\| fedavg \| fedavg \| star \| 1 \|", runs)                     # this time's rounds
    parts = json.loads((tmp_path / "qs" / "tour.json").read_text())
    assert [p["name"] for p in parts] == ["runs", "gossip"] and parts[1]["earlier"]
    assert parts[1]["rows"] == gossip["rows"]                                          # the earlier numbers, kept
    assert main(["quickstart", "--rounds", "1", "--no-progress", "--parts", "gossip", "--out", "qs"]) == 0
    assert "Not run this time" not in (tmp_path / "qs" / "report.md").read_text()     # run again: current


def test_markdown_table_formats_numbers():
    text = tour.markdown_table([{"a": 0.123456, "b": 1234.56, "c": float("nan"), "d": 7}], ["a", "b", "c", "d"])
    assert text.splitlines()[2] == "| 0.1235 | 1,235 | - | 7 |"
    assert re.fullmatch(r"\| a \| b \| c \| d \|", text.splitlines()[0])


@pytest.mark.needs_data("mnist")
def test_attack_part_falls_back_to_mnist_test_images(tmp_path, data_root):
    from attacks.experiment import run_attacks
    from attacks.inversion import InversionConfig
    from fedsim.data import load_mnist_test

    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for f in (data_root / "mnist").glob("t10k-*"):                       # the test set only, no victim set
        (data / f.name).symlink_to(f)
    part = tour.attack_part(tmp_path, TINY, tmp_path / "data")
    assert not part.skipped and "MNIST test images" in part.setting
    test = load_mnist_test(data_root)
    images = ((test.x[:2, 0] * 255).round().astype("uint8"), test.y[:2])
    rows, recon = run_attacks([0, 1], ("ig", "dia"), "mlp", "mnist", TINY.attack_dropout,
                              InversionConfig(max_iterations=TINY.attack_iterations), None, TINY.seed, images=images)
    assert torch.allclose(recon["truth"][1][0], torch.tensor(test.x[1, 0]), atol=1e-6)   # the test images, attacked
    for shown, attack in zip(part.rows, ("ig", "dia")):
        assert shown["ssim"] == pytest.approx(np.mean([r["ssim"] for r in rows if r["attack"] == attack]), abs=1e-9)
