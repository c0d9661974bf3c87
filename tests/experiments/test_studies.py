"""fedsim.studies and ``fedsim experiment``: config resolution, aggregation against hand computations, the run
folder (files, refusal of another config), resume after an interruption, and serial == workers (== Ray, slow).

The sweeps here are gossip_clients at toy size (digits, 16 nodes, a few rounds: ~1 s a sweep)."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

import experiments
from fedsim import studies
from fedsim.cli import main
from fedsim.config import ConfigError, tomllib
from fedsim.runs import RunFolderError

GC = experiments.study("gossip_clients")
TINY = {"nodes": [16], "methods": ["fedavg", "corrected"], "seeds": [0, 1], "rounds": 6, "eval_every": 2,
        "target": 0.3, "run.eval_nodes": 4}


def tiny(tmp_path: Path, name: str, workers: int = 1, **kw) -> studies.StudyRun:
    return studies.run_study(GC, overrides={**TINY, **kw.pop("overrides", {})}, out=tmp_path / name,
                             workers=workers, progress=False, **kw)


# --- configs ----------------------------------------------------------------------------------------------------

def test_resolve_applies_the_file_then_the_overrides_and_types_them():
    defaults = {"name": "cpu", "seeds": (0, 1, 2), "rate": 0.5, "run": {"model": {"name": "mlp"}}}
    cfg = studies.resolve(defaults, {"seeds": [4], "rate": 1, "run": {"algorithm": {"lr": 0.1}}},
                          {"run.model.hidden": [8], "name": "x"})
    assert cfg == {"name": "x", "seeds": (4,), "rate": 1.0,
                   "run": {"model": {"name": "mlp", "hidden": [8]}, "algorithm": {"lr": 0.1}}}
    assert defaults["run"] == {"model": {"name": "mlp"}}          # the defaults are not changed
    with pytest.raises(ConfigError, match=r"--set sedes: unknown study key 'sedes'; did you mean 'seeds'"):
        studies.resolve(defaults, {}, {"sedes": [1]})
    with pytest.raises(ConfigError, match="seeds must be a list of int"):
        studies.resolve(defaults, {"seeds": [0.5]})
    with pytest.raises(ConfigError, match="rate must be a float"):
        studies.resolve(defaults, {}, {"rate": "fast"})
    with pytest.raises(ConfigError, match="'name' is not a table"):
        studies.resolve(defaults, {}, {"name.x": 1})


def test_toml_text_reads_back_as_the_same_config():
    cfg = studies.load_config(GC, overrides={"run.model.hidden": [8, 4], "target": 0.5})
    back = tomllib.loads(studies.toml_text(cfg))
    assert studies.resolve(GC.DEFAULTS, back) == cfg


def test_parse_set_reads_toml_values_and_bare_strings():
    assert studies.parse_set("seeds=[0, 1]") == ("seeds", [0, 1])
    assert studies.parse_set("run.data.dataset=mnist") == ("run.data.dataset", "mnist")
    assert studies.parse_set("target = 0.5") == ("target", 0.5)
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        studies.parse_set("seeds")


# --- aggregation ------------------------------------------------------------------------------------------------

def test_aggregate_is_mean_sample_std_min_max_per_setting_against_statistics():
    rows = [{"n": 16, "m": "a", "seed": 0, "acc": 0.5, "t": 10},
            {"n": 16, "m": "a", "seed": 1, "acc": 0.7, "t": None},
            {"n": 16, "m": "a", "seed": 2, "acc": 0.9, "t": 30},
            {"n": 16, "m": "b", "seed": 0, "acc": 0.2, "t": float("nan")}]
    groups = studies.aggregate(rows, ("n", "m"))
    assert [(g["n"], g["m"], g["seeds"]) for g in groups] == [(16, "a", 3), (16, "b", 1)]
    a = groups[0]
    assert a["acc"]["mean"] == pytest.approx(0.7, abs=1e-12)
    assert a["acc"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]), abs=1e-12)
    assert (a["acc"]["min"], a["acc"]["max"], a["acc"]["n"], a["acc"]["of"]) == (0.5, 0.9, 3, 3)
    # a target not reached (None / NaN) counts in "of" only
    assert a["t"] == {"mean": 20.0, "std": pytest.approx(math.sqrt(200)), "min": 10.0, "max": 30.0, "n": 2, "of": 3}
    assert groups[1]["t"] == {"mean": None, "std": None, "min": None, "max": None, "n": 0, "of": 1}
    assert groups[1]["acc"]["std"] == 0.0
    assert "seed" not in a


# --- a whole sweep ----------------------------------------------------------------------------------------------

def test_a_sweep_writes_its_folder_and_its_numbers_match_the_points_runs(tmp_path):
    run = tiny(tmp_path, "a")
    out = run.out
    for name in ("config.toml", "metrics.csv", "metrics.json", "points.csv", "curves.csv", "accuracy_vs_nodes.png",
                 "accuracy_vs_nodes.svg", "accuracy_vs_round.png", "accuracy_vs_round.svg"):
        assert (out / name).is_file(), name
    assert (run.ran, run.total) == (4, 4)
    assert studies.resolve(GC.DEFAULTS, tomllib.loads((out / "config.toml").read_text())) == run.config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["study"] == "gossip_clients" and len(metrics["groups"]) == 2 and len(metrics["points"]) == 4
    # each row is what the point's own fedsim run recorded
    for p in GC.points(run.config):
        history = json.loads((out / "points" / p.id / "history.json").read_text())["history"]
        key = "global_acc" if p["method"] == "fedavg" else "nodes_acc"
        final = [r[key] for r in history if key in r][-1]
        row = next(r for r in run.rows if r["method"] == p["method"] and r["seed"] == p.seed)
        assert row["acc"] == final and 0 <= final <= 1
        assert row["rounds_to_target"] is None or (row["rounds_to_target"] % 2 == 0 and row["rounds_to_target"] <= 6)
        assert row["bytes_sent"] == sum(r["bytes_sent"] for r in history)
    # FedAvg's bytes by hand: 2 of 16 clients per round (10%, rounded, at least 1), model down and up, float32
    n_params = 64 * 32 + 32 + 32 * 10 + 10
    fedavg = [r for r in run.rows if r["method"] == "fedavg"]
    assert all(r["bytes_sent"] == 6 * 2 * 2 * n_params * 4 for r in fedavg)
    g = next(g for g in run.groups if g["method"] == "corrected")
    accs = [r["acc"] for r in run.rows if r["method"] == "corrected"]
    assert g["acc"]["mean"] == pytest.approx(statistics.fmean(accs), abs=1e-12)


def test_an_interrupted_sweep_resumes_and_ends_with_the_metrics_of_an_uninterrupted_one(tmp_path, monkeypatch):
    whole = tiny(tmp_path, "whole")
    real, calls = GC.run_point, []

    def dies_after_the_first_point(cfg, point, folder):
        if calls:
            raise KeyboardInterrupt
        calls.append(point.id)
        return real(cfg, point, folder)

    monkeypatch.setattr(GC, "run_point", dies_after_the_first_point)
    with pytest.raises(KeyboardInterrupt):
        tiny(tmp_path, "cut")
    done = [p for p in (tmp_path / "cut" / "points").iterdir() if (p / "result.json").exists()]
    assert [p.name for p in done] == calls                    # the finished point is kept, nothing else is
    monkeypatch.setattr(GC, "run_point", real)
    resumed = tiny(tmp_path, "cut")
    assert resumed.ran == 3                                   # the finished point is not run again
    assert studies.without_time(resumed.groups) == studies.without_time(whole.groups)
    assert studies.without_time(resumed.curves) == studies.without_time(whole.curves)
    again = tiny(tmp_path, "cut")
    assert again.ran == 0


def test_workers_give_the_results_of_a_serial_sweep(tmp_path):
    # the same ops in the same order in another process (one torch thread): bit-equal rows are expected
    serial = tiny(tmp_path, "serial")
    parallel = tiny(tmp_path, "parallel", workers=2)
    key = lambda r: (r["method"], r["seed"])
    strip = lambda rows: sorted(studies.without_time(rows), key=key)
    assert strip(parallel.rows) == strip(serial.rows)
    assert studies.without_time(parallel.groups) == studies.without_time(serial.groups)


def test_a_folder_holding_another_config_is_refused_unless_overwrite(tmp_path):
    tiny(tmp_path, "a", overrides={"seeds": [0]})
    with pytest.raises(RunFolderError, match=r"holds a run of another config \(rounds: 6 -> 8\).*--overwrite"):
        tiny(tmp_path, "a", overrides={"seeds": [0], "rounds": 8})
    (tmp_path / "a" / "mine.txt").write_text("not the study's")
    run = tiny(tmp_path, "a", overrides={"seeds": [0], "rounds": 8}, overwrite=True)
    assert run.ran == 2 and (tmp_path / "a" / "mine.txt").exists()
    assert all(r["rounds_to_target"] is None or r["rounds_to_target"] <= 8 for r in run.rows)


# --- the command ------------------------------------------------------------------------------------------------

def test_fedsim_experiment_lists_the_studies(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("fedpca_clients", "gossip_clients", "topologies", "vanishing_variance", "leakage_defences"):
        assert name in out


def study_help(name: str, capsys) -> str:
    assert main(["experiment", name, "--help"]) == 0
    return capsys.readouterr().out


def test_each_study_has_its_own_help_with_its_time_and_set_keys(capsys):
    gossip, topologies = study_help("gossip_clients", capsys), study_help("topologies", capsys)
    assert gossip != topologies
    assert "Gossip learning vs the number of nodes" in gossip and "Topology sweep" in topologies   # the docstrings
    assert "about 1 min with --workers 2" in gossip and "about 10 s" in topologies            # the CPU default's time
    # the --set keys, with the defaults of configs/<NAME>.toml (and its comments), and no key of the other study
    assert "nodes = [16, 32, 64, 128, 256, 512, 1024]" in gossip and "run.algorithm.lr = 0.1" in gossip
    assert "degree = 4" in gossip and "# random 4-regular graphs" in gossip
    assert "consensus_rounds = 600" in topologies and "run.algorithm.batch_size = 16" in topologies
    assert "consensus_rounds" not in gossip and "fedavg_fraction" not in topologies
    for name, key in (("vanishing_variance", "ticks = 3500"), ("fedpca_clients", "k = 30"),
                      ("leakage_defences", "iterations = 200")):   # no data needed to describe a study
        text = study_help(name, capsys)
        assert f"fedsim experiment {name}" in text and key in text and "CPU default" in text
    general = (main(["experiment", "--help"]), capsys.readouterr().out)
    assert general[0] == 0 and "--list shows the studies" in general[1] and "--set KEY=VALUE keys" not in general[1]
    assert main(["experiment", "gossip_clientz", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsim: error: unknown study 'gossip_clientz'") and err.count("\n") == 1


def test_toml_comments_are_read_per_dotted_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('# a file comment\nname = "a#b"   # the run id\nk = 3\n\n[run]   # the run table\n'
                    'threads = 1 # one thread\n[run.data]\ndataset = "digits"  #  data  \n')
    assert studies.toml_comments(path) == {"name": "the run id", "run": "the run table", "run.threads": "one thread",
                                           "run.data.dataset": "data"}


@pytest.mark.parametrize("argv, message", [
    (["experiment", "gossip_clientz"], "unknown study 'gossip_clientz'; did you mean 'gossip_clients'?"),
    (["experiment", "gossip_clients", "--set", "nodez=[16]"], "--set nodez: unknown study key 'nodez'"),
    (["experiment", "gossip_clients", "--set", "methods=['sgd']"], "methods: unknown method 'sgd'"),
    (["experiment", "gossip_clients", "--set", "run.algorithm.lr=-1"], "[run] for fedavg:"),
    (["experiment", "gossip_clients", "--set", "run.rounds=3"], "run.rounds is set by the study"),
    (["experiment", "gossip_clients", "--workers", "0"], "--workers must be >= 1"),
    (["experiment", "gossip_clients", "--workers", "2", "--ray"], "--workers and --ray exclude each other"),
    (["experiment", "gossip_clients", "--config", "nope.toml"], "--config nope.toml: no such file"),
    (["experiment"], "give a study NAME"),
])
def test_bad_input_is_one_line_naming_the_problem(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x")] if len(argv) > 1 else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsim: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()                       # refused before anything was written


def test_missing_data_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    argv = ["experiment", "gossip_clients", "--set", "run.data.dataset=mnist", "--set",
            f"run.data.dir={tmp_path / 'nodata'}", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsim: error: ") and "MNIST" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_fedsim_experiment_runs_a_study_and_prints_where_the_results_are(tmp_path, capsys):
    argv = ["experiment", "gossip_clients", "--out", str(tmp_path / "cli"), "--no-progress"]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 of 4 point(s) run" in out and str(tmp_path / "cli") in out and "n=   16 corrected" in out
    assert (tmp_path / "cli" / "metrics.csv").is_file()


@pytest.mark.slow
def test_a_killed_subprocess_sweep_resumes_to_the_same_metrics(tmp_path):
    whole = tiny(tmp_path, "whole", overrides={"rounds": 40})
    argv = [sys.executable, "-m", "fedsim.cli", "experiment", "gossip_clients", "--out", str(tmp_path / "cut")]
    for key, value in {**TINY, "rounds": 40}.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "cut").glob("points/*/result.json")):
            time.sleep(0.05)
        proc.kill()
    finally:
        proc.wait()
    resumed = tiny(tmp_path, "cut", overrides={"rounds": 40})
    assert resumed.ran < 4
    assert studies.without_time(resumed.groups) == studies.without_time(whole.groups)


@pytest.mark.slow
def test_ray_tasks_give_the_results_of_a_serial_sweep(tmp_path):
    pytest.importorskip("ray")
    serial = tiny(tmp_path, "serial")
    remote = tiny(tmp_path, "ray", ray="local")
    assert studies.without_time(remote.groups) == studies.without_time(serial.groups)
