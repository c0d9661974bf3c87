"""Each study of ``fedsim experiment`` on a test-sized config: it runs, writes its folder, and its numbers agree with
an independent computation (a hand formula, a direct iteration, the pipeline called directly)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import experiments
from fedsim import studies
from fedsim.cli import main

FIGURE_FILES = lambda names: [f"{n}.{ext}" for n in names for ext in ("png", "svg")]


def has_files(out: Path, names: list[str]) -> None:
    for name in ["config.toml", "metrics.csv", "metrics.json", *names]:
        assert (out / name).is_file(), name


# --- topologies ---------------------------------------------------------------------------------------------------

TOP = experiments.study("topologies")


def test_ring_rate_is_the_hand_computed_second_eigenvalue_and_the_measured_rate_reaches_it():
    import topologies

    n = 16
    W = topologies.metropolis_hastings(topologies.ring(n))      # weight 1/3 to each neighbour and to itself
    x0 = np.random.default_rng(0).standard_normal((n, 4))
    m, logs = TOP.consensus_metrics(W, x0, 400, 1e-3)
    lam2 = 1 / 3 + 2 / 3 * math.cos(2 * math.pi / n)
    assert m["rate_predicted"] == pytest.approx(lam2, rel=1e-9)
    assert m["rate_measured"] == pytest.approx(lam2, rel=1e-4)   # power iteration on the mean-free part
    assert m["rounds_to_eps_predicted"] == pytest.approx(math.log(1e-3) / math.log(lam2))
    # the tracked distance is the plain iteration's, while that is far from rounding (t <= 30)
    x, d0 = x0.copy(), np.linalg.norm(x0 - x0.mean(0))
    Wd = W.toarray()
    for t in range(1, 31):
        x = Wd @ x
        assert logs[t] == pytest.approx(math.log(np.linalg.norm(x - x.mean(0)) / d0), abs=1e-9)
    assert m["rounds_to_eps"] == int(np.flatnonzero(logs <= math.log(1e-3))[0])


def test_topologies_study_measures_each_graph_at_its_predicted_rate(tmp_path):
    run = studies.run_study(TOP, overrides={"graphs": ["ring", "torus", "scale_free", "exponential"], "nodes": [16],
                                            "seeds": [0, 1], "consensus_rounds": 300, "rounds": 3},
                            out=tmp_path / "top", progress=False)
    has_files(run.out, ["curves.csv", *FIGURE_FILES(["consensus_rate", "consensus_decay", "accuracy_vs_gap"])])
    assert len(run.rows) == 8
    for r in run.rows:
        # after 150 rounds the contraction per round is |lambda_2| to within 1% on these graphs
        assert r["rate_measured"] == pytest.approx(r["rate_predicted"], rel=1e-2), r
        assert 0 <= r["acc"] <= 1 and r["spectral_gap"] == pytest.approx(1 - r["rate_predicted"])
    gaps = {g["graph"]: g["spectral_gap"]["mean"] for g in run.groups}
    assert gaps["ring"] < gaps["torus"] < gaps["exponential"]      # better connected, faster averaging


# --- gossip_clients (the framework tests run it too: tests/experiments/test_studies.py) --------------------------

def test_every_study_ships_a_cpu_default_and_a_full_config_that_load():
    from experiments import vanishing_variance as vv

    cfg = studies.load_config(experiments.study("gossip_clients"))
    assert cfg["name"] == "cpu" and min(cfg["nodes"]) == 16 and max(cfg["nodes"]) == 1024 and len(cfg["seeds"]) == 3
    configs = Path(experiments.__file__).parent / "configs"
    for name in experiments.STUDIES:
        for suffix, run_id in (("", "cpu"), ("_full", "full")):
            path = configs / f"{name}{suffix}.toml"
            got = vv.load_study(path).name if name == "vanishing_variance" else \
                studies.load_config(experiments.study(name), path)["name"]
            assert got == run_id, path


# --- fedpca_clients -------------------------------------------------------------------------------------------------

def test_fedpca_clients_rows_match_the_pipeline_called_directly(tmp_path, require_data):
    require_data("nsl-kdd")
    from fedsim.pipelines import fedpca_nslkdd as pipeline

    study = experiments.study("fedpca_clients")
    run = studies.run_study(study, overrides={"clients": [10], "seeds": [0], "k": 10, "local_eval": 3,
                                              "methods": ["exact-federated", "fedpg", "local-only"]},
                            out=tmp_path / "fp", progress=False)
    has_files(run.out, FIGURE_FILES(["fedpca_vs_clients"]))
    rows = {r["method"]: r for r in run.rows}
    data = pipeline.prepare(None, n_clients=10, split="paper", seed=0)
    exact = pipeline.evaluate_method(pipeline.train_method("exact-federated", data, 10), data, "train-quantile")
    for key in ("auc", "f1", "fpr"):
        assert rows["exact-federated"][key] == pytest.approx(exact[key], abs=1e-9)
    assert rows["fedpg"]["angle"] < 1e-3 and rows["fedpg"]["bytes_sent"] > 0 and rows["local-only"]["bytes_sent"] == 0
    local = pipeline.train_method("local-only", data, 10)
    local.Z = local.Z[[0, 4, 9]]                                   # 3 evenly spaced clients of 10 (rounded)
    assert rows["local-only"]["auc"] == pytest.approx(pipeline.evaluate_method(local, data)["auc"], abs=1e-9)
    for r in run.rows:
        assert 50 < r["auc"] <= 100 and 0 <= r["f1"] <= 100


@pytest.mark.parametrize("split", ["paper", "iid", "dirichlet"])
def test_fedpca_clients_with_more_clients_than_normal_rows_is_one_line_before_anything(tmp_path, capsys, require_data,
                                                                                       split):
    """KDDTrain+ has 67,343 normal rows: 100,000 clients cannot all get one. One line naming `clients` (the same
    split as the pipeline's: the dry split raises where ``prepare`` would), and no run folder."""
    require_data("nsl-kdd")
    out = tmp_path / "fp"
    code = main(["experiment", "fedpca_clients", "--out", str(out), "--no-progress", "--set", "clients=[10, 100000]",
                 "--set", "seeds=[0]", "--set", f"split='{split}'", "--set", "methods=['fedpg']"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "clients = 100,000" in err and f"split = '{split}'" in err and "67,343" in err
    assert not out.exists()


def test_fedpca_clients_refuses_q_statistic_with_the_paper_variants_before_training(tmp_path, capsys):
    """The q-statistic threshold is on an orthonormal basis's scale; a paper variant's raw Z flags every normal row
    (and the pipeline refuses it): one line naming `protocol` and `methods`, before any folder or training."""
    out = tmp_path / "fp"
    code = main(["experiment", "fedpca_clients", "--out", str(out), "--no-progress", "--set", "protocol='q-statistic'",
                 "--set", "methods=['fedpg', 'fedpe-paper']"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "protocol = 'q-statistic'" in err and "'fedpe-paper'" in err
    assert not out.exists()


@pytest.mark.parametrize("features, k, d", [("paper", 34, 34), ("onehot", 122, 122)])
def test_fedpca_clients_k_is_checked_against_the_features_d(tmp_path, capsys, require_data, features, k, d):
    """d = 34 paper features, 122 one-hot columns (38 numeric + KDDTrain+'s 84 categories); k = 40 is fine one-hot."""
    require_data("nsl-kdd")
    argv = ["experiment", "fedpca_clients", "--out", str(tmp_path / "fp"), "--no-progress", "--set", "seeds=[0]",
            "--set", f"features='{features}'", "--set", "clients=[10]", "--set", "methods=['exact-federated']"]
    assert main([*argv, "--set", f"k={k}"]) == 2
    err = capsys.readouterr().err
    assert f"k = {k} must be in 1..{d - 1}" in err and f"d = {d}" in err and f"features = '{features}'" in err
    assert not (tmp_path / "fp").exists()
    if features == "onehot":
        assert main([*argv, "--set", "k=40"]) == 0


# --- the wrapped studies --------------------------------------------------------------------------------------------

def test_vanishing_variance_runs_under_fedsim_experiment(tmp_path, capsys):
    argv = ["experiment", "vanishing_variance", "--out", str(tmp_path / "vv"), "--no-progress"]
    for kv in ("run.data.dataset=digits", "run.algorithm.lr=0.1", "sizes=[8]", "seeds=[0]", "degree=3",
               "degrees=[3]", "degree_size=8", "ticks=40", "eval_ticks=20", "checkpoint_ticks=20", "threshold=0.15",
               "run.eval_nodes=0", "methods=['fl', 'corrected']", "degree_methods=['corrected']"):
        argv += ["--set", kv]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 of 2 point(s) run" in out and "ticks to 15% mean node accuracy" in out
    has_files(tmp_path / "vv", ["study.toml", "summary.csv", *FIGURE_FILES(["accuracy_vs_tick", "ticks_vs_degree"])])
    metrics = json.loads((tmp_path / "vv" / "metrics.json").read_text())
    assert {p["method"] for p in metrics["points"]} == {"fl", "corrected"}
    assert main([*argv, "--set", "run.algorithm.lr=0.05"]) == 2     # the points hold runs of another config
    err = capsys.readouterr().err
    assert "holds a run of another config" in err and "--overwrite" in err and err.count("\n") == 1
    assert main([*argv, "--set", "run.algorithm.lr=0.05", "--overwrite"]) == 0   # as vanishing_variance.py --overwrite
    assert "2 of 2 point(s) run" in capsys.readouterr().out
    assert "lr = 0.05" in (tmp_path / "vv" / "study.toml").read_text()


def test_leakage_defences_runs_under_fedsim_experiment(tmp_path, require_data):
    require_data("mnist", "mnist-victims")
    study = experiments.study("leakage_defences")
    run = studies.run_study(study, overrides={"seeds": [0], "sweeps": ["topk"], "victims": 1, "iterations": 3,
                                              "rounds": 1, "clients": 4, "clients_per_round": 2, "local_steps": 1},
                            out=tmp_path / "ld", progress=False)
    has_files(run.out, FIGURE_FILES(["leakage_vs_defence"]))
    assert [(g["strength"], g["attack"]) for g in run.groups] == [(1.0, "ig"), (0.5, "ig"), (0.1, "ig"), (0.01, "ig")]
    script = (run.out / "points" / "s0" / "results.csv").read_text().splitlines()
    assert len(script) == 5                                          # the script's own CSV: header + 4 settings
    for g in run.groups:
        assert -1 <= g["ssim"]["mean"] <= 1 and 0 <= g["test_acc"]["mean"] <= 1
