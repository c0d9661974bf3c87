"""experiments/vanishing_variance.py: the pure functions, and the script end to end on digits-sized settings
(serial == parallel, resume of an interrupted sweep without re-running finished points, one-line errors)."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from experiments import vanishing_variance as vv
from fedsim import experiment
from fedsim.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def study(**kw) -> vv.Study:
    return vv.Study(**kw).validate()


# --- pure functions ---------------------------------------------------------------------------------------------

def test_ticks_to_threshold_is_the_first_evaluated_tick_at_or_above_it():
    ticks, acc = [20, 40, 60, 80], [0.5, 0.8, 0.79, 0.9]
    assert vv.ticks_to_threshold(ticks, acc, 0.8) == 40        # >= counts; a later dip does not matter
    assert vv.ticks_to_threshold(ticks, acc, 0.85) == 80
    assert vv.ticks_to_threshold(ticks, acc, 0.95) is None
    assert vv.ticks_to_threshold([], [], 0.5) is None


def test_point_series_puts_fl_rounds_on_the_tick_axis_and_skips_unevaluated_rows():
    fl = [{"round": 1, "train_loss": 1.0}, {"round": 2, "global_acc": 0.3, "weight_var_ratio": 1.0},
          {"round": 3}, {"round": 4, "global_acc": 0.6, "weight_var_ratio": 1.1}]
    s = vv.point_series(fl, "fl", round_ticks=10)
    assert s == {"tick": [20, 40], "acc": [0.3, 0.6], "weight_var_ratio": [1.0, 1.1]}
    gossip = [{"round": 5, "nodes_acc": 0.2, "global_acc": 0.9, "weight_var_ratio.a": 0.5},
              {"round": 10, "nodes_acc": math.nan}, {"round": 15, "nodes_acc": 0.4, "weight_var_ratio.a": 0.25}]
    s = vv.point_series(gossip, "corrected", round_ticks=10)
    assert s == {"tick": [5, 15], "acc": [0.2, 0.4], "weight_var_ratio.a": [0.5, 0.25]}   # nodes_acc, ticks as is


def test_expand_gives_every_point_once_and_shares_the_degree_sweep_points_of_the_comparison():
    s = study(sizes=(50, 200), seeds=(0, 1, 2), degree=8, degrees=(3, 8, 16), degree_size=50)
    points = vv.expand(s)
    assert len(points) == len(set(points)) == 3 * 2 * 3 + 2 * 2 * 3     # k = 8 on 50 nodes is in both
    assert vv.Point("plain", 50, 8, 1) in points and vv.Point("corrected", 50, 16, 2) in points
    assert [p for p in points if p.method == "fl"] == [vv.Point("fl", n, None, s) for n in (50, 200) for s in (0, 1, 2)]
    assert vv.Point("fl", 50, None, 0).id == "fl-n50-s0" and vv.Point("plain", 200, 8, 2).id == "plain-n200-k8-s2"


def test_point_config_maps_methods_and_fl_rounds_onto_ticks():
    s = study(ticks=300, eval_ticks=20, checkpoint_ticks=100, fl_round_ticks=10, fl_fraction=0.5,
              run={"algorithm": {"lr": 0.01, "momentum": 0.9, "beta": 0.5, "correction_eps": 1e-4},
                   "time": {"interval": [8, 12]}})
    fl = vv.point_config(s, vv.Point("fl", 50, None, 2))
    assert (fl.algorithm.name, fl.topology.name, fl.time.mode, fl.seed, fl.clients) == ("fedavg", "star", "sync", 2, 50)
    assert (fl.rounds, fl.eval_every, fl.checkpoint_every, fl.algorithm.clients_per_round) == (30, 2, 10, 25)
    assert fl.algorithm.keep_momentum and not fl.algorithm.weighted and fl.algorithm.lr == 0.01
    plain = vv.point_config(s, vv.Point("plain", 200, 8, 1))
    assert (plain.algorithm.averaging, plain.topology.name, plain.topology.k, plain.time.mode) == \
        ("beta", "regular", 8, "async")
    assert (plain.rounds, plain.eval_every, plain.clients, plain.algorithm.same_init) == (300, 20, 200, False)
    assert plain.algorithm.correction_eps == 0.0                       # the correction's options: corrected only
    corrected = vv.point_config(s, vv.Point("corrected", 200, 8, 1))
    assert corrected.algorithm.averaging == "variance_corrected" and corrected.algorithm.correction_eps == 1e-4


@pytest.mark.parametrize("values, message", [
    ({"tick": 5}, "unknown study key 'tick'; did you mean 'ticks'?"),
    ({"sizes": [50.0]}, "sizes must be a list of int"),
    ({"methods": ["fl", "gossip"]}, "unknown method 'gossip'"),
    ({"degrees": [3, 7], "degree_size": 51}, "random 3-regular graph on 51 nodes"),
    ({"ticks": 105}, "multiple of fl_round_ticks"),
    ({"run": {"rounds": 10}}, "run.rounds is set by the study"),
    ({"run": {"topology": {"k": 4}}}, "run.topology.k is set by the study"),
])
def test_bad_study_configs_are_refused_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        vv.study_from_dict(values)


def test_spread_and_aggregate_over_seeds():
    assert vv.spread([100, 200, 300]) == {"reached": 3, "of": 3, "mean": 200, "std": 100.0, "min": 100, "max": 300}
    assert vv.spread([100, None, 300]) == {"reached": 2, "of": 3, "mean": None, "std": None, "min": 100, "max": None}
    s = study(sizes=(10,), methods=("fl", "plain"), seeds=(0, 1), degree=4, degrees=(4,), degree_size=10,
              degree_methods=("plain",), threshold=0.5)
    curve = lambda *acc: {"tick": [10, 20, 30], "acc": list(acc), "weight_var_ratio": [1.0, 0.5, 0.25]}  # noqa: E731
    series = {vv.Point("fl", 10, None, 0): curve(0.2, 0.5, 0.7), vv.Point("fl", 10, None, 1): curve(0.6, 0.7, 0.8),
              vv.Point("plain", 10, 4, 0): curve(0.1, 0.2, 0.3), vv.Point("plain", 10, 4, 1): curve(0.1, 0.2, 0.6)}
    wall = {p: 0.5 for p in series}
    m = vv.aggregate(s, series, wall)
    rows = {r["point"]: r for r in m["points"]}
    assert rows["fl-n10-s0"]["ticks_to_threshold"] == 20 and rows["fl-n10-s0"]["wall_s"] == 10.0
    assert rows["plain-n10-k4-s0"]["ticks_to_threshold"] is None and rows["plain-n10-k4-s0"]["wall_s"] is None
    assert rows["plain-n10-k4-s1"]["final_acc"] == 0.6 and rows["plain-n10-k4-s1"]["final_weight_var_ratio"] == 0.25
    groups = {(g["sweep"], g["method"]): g for g in m["groups"]}
    assert groups["size", "fl"]["ticks"] == {"reached": 2, "of": 2, "mean": 15, "std": pytest.approx(7.0711, abs=1e-4),
                                            "min": 10, "max": 20}
    assert groups["size", "plain"]["ticks"]["reached"] == 1 and groups["size", "plain"]["ticks"]["mean"] is None
    assert groups["degree", "plain"]["k"] == 4 and groups["size", "fl"]["k"] is None
    band = vv.seed_band([series[vv.Point("fl", 10, None, 0)], series[vv.Point("fl", 10, None, 1)]])
    assert band == {"tick": [10, 20, 30], "mean": pytest.approx([0.4, 0.6, 0.75]), "min": [0.2, 0.5, 0.7],
                    "max": [0.6, 0.7, 0.8]}


def test_the_shipped_configs_load_and_expand():
    cpu = vv.load_study(CONFIGS / "vanishing_variance.toml")
    full = vv.load_study(CONFIGS / "vanishing_variance_full.toml")
    assert cpu.sizes == full.sizes == (50, 200) and cpu.seeds == full.seeds == (0, 1, 2)
    assert full.run["model"]["name"] == "lenet_caffe" and full.run["device"] == "cuda"
    assert full.degrees[0] == 3 and full.degrees[-1] == 45 and 8 in full.degrees
    cfg = vv.point_config(full, vv.Point("corrected", 200, 8, 0))
    assert (cfg.model.name, cfg.algorithm.lr, cfg.algorithm.momentum, cfg.algorithm.batch_size) == \
        ("lenet_caffe", 0.01, 0.9, 64)
    assert (cfg.data.partition, cfg.data.alpha, tuple(cfg.time.interval)) == ("dirichlet", 0.5, (8, 12))


# --- the script end to end --------------------------------------------------------------------------------------

TINY = ["--set", "run.data.dataset=digits", "--set", "run.algorithm.lr=0.1", "--set", "sizes=[8]",
        "--set", "seeds=[0, 1]", "--set", "degree=3", "--set", "degrees=[3, 4]", "--set", "degree_size=8",
        "--set", "ticks=60", "--set", "eval_ticks=20", "--set", "checkpoint_ticks=20", "--set", "threshold=0.15",
        "--quiet"]


def deterministic(metrics: dict) -> dict:
    """metrics.json without the wall times (which differ from run to run)."""
    strip = lambda row: {k: v for k, v in row.items() if not k.startswith("wall_")}  # noqa: E731
    return {**metrics, "points": [strip(r) for r in metrics["points"]], "groups": [strip(g) for g in metrics["groups"]]}


def read(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def serial_and_parallel(tmp_path_factory):
    root = tmp_path_factory.mktemp("vv")
    one, two = root / "w1", root / "w2"
    assert vv.main([*TINY, "--workers", "1", "--out", str(one)]) == 0
    assert vv.main([*TINY, "--workers", "2", "--set", "keep_checkpoints=false", "--out", str(two)]) == 0
    return one, two


def test_workers_give_the_serial_results(serial_and_parallel):
    one, two = serial_and_parallel
    m1, m2 = read(one), read(two)
    assert deterministic(m1) == deterministic(m2)
    assert len(m1["points"]) == 10 and all(r["wall_s_per_tick"] > 0 for r in m1["points"])
    assert any(r["ticks_to_threshold"] is not None for r in m1["points"])
    assert (one / "curves.csv").read_text() == (two / "curves.csv").read_text()
    for name in ("points.csv", "summary.csv", "study.toml", "accuracy_vs_tick.png", "weight_variance_vs_tick.svg",
                 "ticks_vs_degree.png"):
        assert (one / name).is_file()
    for point in (one / "points").iterdir():
        assert (point / "history.json").read_text() == (two / "points" / point.name / "history.json").read_text()
        assert (point / "checkpoint.pt").is_file() and not (two / "points" / point.name / "checkpoint.pt").exists()
    assert vv.main([*TINY, "--workers", "2", "--set", "keep_checkpoints=false", "--out", str(two)]) == 0
    assert deterministic(read(two)) == deterministic(m2)             # finished without checkpoints: nothing re-run


def test_an_interrupted_sweep_is_completed_without_rerunning_finished_points(serial_and_parallel, tmp_path):
    import shutil

    done = tmp_path / "sweep"
    shutil.copytree(serial_and_parallel[0], done)
    points = done / "points"
    mtimes = {p.name: (p / "history.json").stat().st_mtime_ns for p in points.iterdir()}
    before = deterministic(read(done))
    lost = points / "plain-n8-k3-s0"                   # finished, but its history.json is gone
    (lost / "history.json").unlink()
    stopped = points / "corrected-n8-k4-s1"            # stopped at tick 30 (checkpoint at 20, no history)
    shutil.rmtree(stopped)
    s = vv.load_study(vv.DEFAULT_CONFIG, dict(vv.parse_set(v) for v in TINY[1::2] if "=" in v))
    cfg = vv.point_config(s, vv.Point("corrected", 8, 4, 1))

    def stop(t, *_):
        if t == 29:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg, stopped, on_round=stop)
    assert (stopped / "checkpoint.pt").is_file() and not (stopped / "history.json").exists()

    assert vv.main([*TINY, "--out", str(done)]) == 0
    assert deterministic(read(done)) == before
    for p in points.iterdir():
        if p.name not in (lost.name, stopped.name):
            assert (p / "history.json").stat().st_mtime_ns == mtimes[p.name], p.name   # not run again
    sessions = json.loads((stopped / "timing.json").read_text())["sessions"]
    assert [(x["from_round"], x["to_round"]) for x in sessions] == [(20, 60)]     # resumed from the checkpoint


def test_a_folder_of_another_config_is_refused_before_anything_runs(serial_and_parallel, capsys):
    one = serial_and_parallel[0]
    mtimes = {p.name: (p / "history.json").stat().st_mtime_ns for p in (one / "points").iterdir()}
    assert vv.main([*TINY, "--set", "run.algorithm.lr=0.05", "--out", str(one)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a run of another config (algorithm.lr: 0.1 -> 0.05)" in err and "\n" not in err, err
    assert "pass --overwrite to replace the study's results" in err, err
    assert mtimes == {p.name: (p / "history.json").stat().st_mtime_ns for p in (one / "points").iterdir()}


def test_overwrite_replaces_the_study_results_of_another_config_and_nothing_else(serial_and_parallel, tmp_path,
                                                                                 capsys):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(serial_and_parallel[0], out)
    (out / "notes.txt").write_text("mine")
    (out / "points" / "stale-point").mkdir()                     # a point of the old config only
    assert vv.main([*TINY, "--set", "run.algorithm.lr=0.05", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vanishing_variance: error: ") and "--overwrite" in err and "\n" not in err, err
    assert vv.main([*TINY, "--set", "run.algorithm.lr=0.05", "--out", str(out), "--overwrite"]) == 0
    assert "10 point(s) run" in capsys.readouterr().out          # every point ran again
    metrics = read(out)
    assert len(metrics["points"]) == 10 and not (out / "points" / "stale-point").exists()
    assert "lr = 0.05" in (out / "study.toml").read_text() and (out / "config.toml").read_text() == \
        (out / "study.toml").read_text()
    assert (out / "notes.txt").read_text() == "mine"              # not the study's: kept
    assert deterministic(metrics) != deterministic(read(serial_and_parallel[0]))
    assert vv.main([*TINY, "--set", "run.algorithm.lr=0.05", "--out", str(out)]) == 0   # now its own: resumes
    assert "\n0 point(s) run" in capsys.readouterr().out


def test_help_shows_each_default_once_and_the_overwrite_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        vv.main(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and text.count("(default: results/vanishing_variance/<name>)") == 1
    assert "--overwrite" in text and "(default: 1)" in text


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cases = [(["--set", "tick=5"], "unknown study key 'tick'"),
             (["--set", "run.model.nmae=mlp"], "unknown key 'nmae'"),
             (["--config", str(tmp_path / "none.toml")], "does not exist"),
             (["--set", f"run.data.dir={tmp_path / 'nodata'}"], "MNIST test set not found"),
             (["--workers", "0"], "--workers must be >= 1")]
    for argv, message in cases:
        assert vv.main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("vanishing_variance: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "nodata").exists()
