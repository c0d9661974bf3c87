"""Safe checkpoints and run folders, through the command line (``fedsim.cli.main`` in-process, plus subprocesses).

Damaged, truncated, empty, random, foreign and non-finite checkpoints fail ``--resume`` with one
``fedsim: error:`` line that names the file, exit code 2 and the run folder untouched; a folder that holds
another run is refused unless ``--resume`` (same config; rounds may grow) or ``--overwrite``; history.json is
strict JSON.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import fedsim
from fedsim.algorithms import FedAvgState, GossipState
from fedsim.cli import main
from fedsim.engine import Result
from fedsim.experiment import load_checkpoint, save_checkpoint
from fedsim.runs import MAGIC, write_checkpoint

REPO = Path(__file__).resolve().parents[1]

TINY = """\
name = "tiny-runs"
seed = 0
rounds = 2
clients = 4
eval_every = 100
checkpoint_every = 1

[data]
dataset = "digits"

[model]
hidden = [16]

[algorithm]
name = "fedavg"
lr = 0.1
local_steps = 1
batch_size = 32
"""


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with its bytes and mtime."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedsim: error:"), err
    assert "Traceback" not in err and "weights_only" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """One finished 2-round run (checkpoint at round 2), made once and copied by ``run_dir``."""
    root = tmp_path_factory.mktemp("base")
    (root / "tiny.toml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["run", "tiny.toml", "--out", "out", "--no-progress"]) == 0
    return root


@pytest.fixture
def run_dir(base_run, tmp_path, monkeypatch) -> Path:
    """A copy of the base run in ``tmp_path/out`` (cwd = tmp_path, config at tmp_path/tiny.toml)."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(base_run / "tiny.toml", tmp_path / "tiny.toml")
    shutil.copytree(base_run / "out", tmp_path / "out")
    return tmp_path / "out"


def _good(ckpt: Path):
    """round, state, history and config of a valid checkpoint."""
    return load_checkpoint(ckpt, torch.device("cpu"))


def _flip_weight_byte(ckpt: Path) -> None:
    params = _good(ckpt)[1].params
    raw = bytearray(ckpt.read_bytes())
    at = bytes(raw).find(params.numpy().tobytes())
    assert at > 0  # the weights are stored verbatim in the body
    raw[at + 4 * 100 + 1] ^= 0x40  # one bit of one weight: still a finite float
    ckpt.write_bytes(bytes(raw))


def _rewrite(ckpt: Path, make_state) -> None:
    """A checkpoint from the valid writer with another state (same round, history and config)."""
    rnd, state, history, config = _good(ckpt)
    save_checkpoint(ckpt, rnd, make_state(state), history, config)


class Evil:
    """Unpickling this (without weights_only) would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


DAMAGE = {
    "flipped weight bytes": (_flip_weight_byte, "SHA-256"),
    "truncated body": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "truncated"),
    "truncated header": (lambda p: p.write_bytes(p.read_bytes()[:10]), "truncated"),
    "trailing bytes": (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "trailing bytes"),
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "random bytes": (lambda p: p.write_bytes(random.Random(0).randbytes(5000)), "not a fedsim checkpoint"),
    "foreign torch file": (lambda p: torch.save({"round": 2, "state": {"params": torch.zeros(3)}}, p),
                           "plain torch.save file"),
    "damaged header": (lambda p: p.write_bytes(p.read_bytes().replace(b'"sha256"', b'"sha257"', 1)), "header"),
    "newer format": (lambda p: p.write_bytes(p.read_bytes().replace(b'"format": 1', b'"format": 9', 1)),
                     "format 9"),
    "another state type": (lambda p: _rewrite(p, lambda s: GossipState(s.params.repeat(4, 1), torch.ones(4))),
                           "holds a GossipState but this run's algorithm keeps a FedAvgState"),
    "wrong shape": (lambda p: _rewrite(p, lambda s: FedAvgState(torch.zeros(7))), "'params' has shape [7]"),
    "wrong dtype": (lambda p: _rewrite(p, lambda s: FedAvgState(s.params.double())), "float64"),
    "NaN state": (lambda p: _rewrite(p, lambda s: FedAvgState(torch.full_like(s.params, math.nan))), "NaN/inf"),
    "one inf": (lambda p: _rewrite(p, lambda s: FedAvgState(s.params.index_fill(0, torch.tensor([5]), math.inf))),
                "1 NaN/inf"),
    "short history": (lambda p: save_checkpoint(p, 2, _good(p)[1], _good(p)[2][:1], _good(p)[3]), "rounds 1..2"),
    "negative seconds": (lambda p: save_checkpoint(p, *_good(p), -1.0), "'seconds'"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_bad_checkpoint_fails_resume_with_one_line_and_leaves_the_folder_unchanged(capsys, run_dir, kind):
    damage, fragment = DAMAGE[kind]
    ckpt = run_dir / "checkpoint.pt"
    damage(ckpt)
    before = snapshot(run_dir)
    code, out, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume")
    assert code == 2 and out == ""
    assert_one_error_line(err, str(ckpt), fragment)
    assert snapshot(run_dir) == before


def test_checkpoint_that_would_run_code_is_refused_without_unpickling_it(capsys, run_dir, tmp_path):
    marker = tmp_path / "pwned"
    rnd, state, history, config = _good(run_dir / "checkpoint.pt")
    write_checkpoint(run_dir / "checkpoint.pt", {"round": rnd, "state_type": "FedAvgState",
                                                 "state": {"params": Evil(marker)}, "history": history,
                                                 "config": config})
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume")
    assert code == 2
    assert_one_error_line(err, str(run_dir / "checkpoint.pt"), "plain tensors")
    assert not marker.exists()
    assert snapshot(run_dir) == before


def test_checkpoint_carries_format_version_and_checksum(run_dir):
    raw = (run_dir / "checkpoint.pt").read_bytes()
    assert raw.startswith(MAGIC)
    header_line, body = raw[len(MAGIC):].split(b"\n", 1)
    header = strict_json(header_line)
    assert header["format"] == 1 and header["fedsim"] == fedsim.__version__
    assert header["body_bytes"] == len(body) and header["sha256"] == hashlib.sha256(body).hexdigest()
    rnd, state, history, config = _good(run_dir / "checkpoint.pt")
    assert rnd == 2 and len(history) == 2 and isinstance(state, FedAvgState)
    assert tomllib.loads(config)["name"] == "tiny-runs"


def test_damaged_checkpoint_in_a_real_process_exits_2_without_traceback(run_dir, tmp_path):
    _flip_weight_byte(run_dir / "checkpoint.pt")
    before = snapshot(run_dir)
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", "tiny.toml", "--out", "out", "--resume",
                           "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, "out/checkpoint.pt", "SHA-256")
    assert snapshot(run_dir) == before


def test_console_script_refuses_an_existing_run(run_dir, tmp_path):
    exe = Path(sys.executable).with_name("fedsim")
    exe = str(exe) if exe.exists() else shutil.which("fedsim")
    if exe is None:
        pytest.skip("the fedsim console script is not installed")
    before = snapshot(run_dir)
    proc = subprocess.run([exe, "run", "tiny.toml", "--out", "out", "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "out", "--overwrite", "--resume")
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------- run folders


def test_rerun_into_a_run_folder_is_refused(capsys, run_dir):
    before = snapshot(run_dir)
    code, out, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress")
    assert code == 2 and out == ""
    assert_one_error_line(err, str(run_dir), "this config", "--resume", "--overwrite")
    assert snapshot(run_dir) == before


def test_another_config_into_a_run_folder_is_refused_naming_the_keys(capsys, run_dir):
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress",
                       "--set", "algorithm.lr=0.05", "--set", "model.hidden=[8]")
    assert code == 2
    assert_one_error_line(err, str(run_dir), "another run", "algorithm.lr: 0.1 -> 0.05",
                          "model.hidden: [16] -> [8]", "--overwrite")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("leftover", ["summary.txt", "accuracy.png"])
def test_a_folder_with_fedsim_output_files_is_refused(capsys, tmp_path, monkeypatch, leftover):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / leftover).write_text("someone's file")
    before = snapshot(tmp_path / "out")
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", "out", "--no-progress")
    assert code == 2
    assert_one_error_line(err, leftover, "--overwrite")
    assert snapshot(tmp_path / "out") == before


def test_overwrite_replaces_only_fedsim_files(capsys, run_dir):
    (run_dir / "notes.txt").write_text("my notes")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "mine.png").write_bytes(b"png?")
    (run_dir / ".checkpoint.pt.tmp1234").write_bytes(b"leftover of an interrupted write")
    old_checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--overwrite",
                       "--set", "algorithm.lr=0.05", "--set", "rounds=1")
    assert code == 0, err
    assert tomllib.loads((run_dir / "config.toml").read_text())["algorithm"]["lr"] == 0.05
    assert [row["round"] for row in strict_json((run_dir / "history.json").read_text())["history"]] == [1]
    assert (run_dir / "checkpoint.pt").read_bytes() != old_checkpoint
    assert _good(run_dir / "checkpoint.pt")[0] == 1
    assert (run_dir / "notes.txt").read_text() == "my notes"
    assert (run_dir / "plots" / "mine.png").read_bytes() == b"png?"
    assert not (run_dir / ".checkpoint.pt.tmp1234").exists()


def test_resume_and_overwrite_exclude_each_other(capsys, run_dir):
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume", "--overwrite")
    assert code == 2
    assert_one_error_line(err, "exclude each other")
    assert snapshot(run_dir) == before


def test_resume_with_a_different_config_names_each_differing_key(capsys, run_dir):
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume",
                       "--set", "algorithm.lr=0.05", "--set", "seed=3", "--set", "rounds=5", "--threads", "2")
    assert code == 2
    assert_one_error_line(err, str(run_dir / "checkpoint.pt"), "different config", "algorithm.lr: 0.1 -> 0.05",
                          "seed: 0 -> 3", "rounds")
    line = err.split("different config:", 1)[1].split("(checkpoint -> now)")[0]
    assert "rounds" not in line and "threads" not in line  # allowed to change: not listed as differences
    assert snapshot(run_dir) == before


def test_resume_may_not_shrink_rounds(capsys, run_dir):
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume", "--set", "rounds=1")
    assert code == 2
    assert_one_error_line(err, "round 2", "rounds = 1", "only grow")
    assert snapshot(run_dir) == before


def test_resume_extends_a_run_like_an_uninterrupted_longer_run(capsys, run_dir, tmp_path):
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume",
                       "--set", "rounds=4", "--set", "checkpoint_every=2")
    assert code == 0, err
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", tmp_path / "long", "--no-progress", "--set", "rounds=4")
    assert code == 0, err
    extended = strict_json((run_dir / "history.json").read_text())["history"]
    straight = strict_json((tmp_path / "long" / "history.json").read_text())["history"]
    assert [row["round"] for row in extended] == [1, 2, 3, 4]
    # the same training; the extended run keeps the evaluation of its old last round (2) as well
    for a, b in zip(extended, straight):
        assert a.items() >= b.items()
    assert extended[-1] == straight[-1] and "global_acc" in extended[1] and "global_acc" not in straight[1]
    assert torch.equal(_good(run_dir / "checkpoint.pt")[1].params, _good(tmp_path / "long" / "checkpoint.pt")[1].params)


def test_the_summary_seconds_add_up_over_resumed_invocations(capsys, run_dir):
    """summary.txt's seconds: the run's time over every invocation (carried in the checkpoint); resuming a finished
    run adds nothing."""
    def seconds() -> float:
        table = (run_dir / "summary.txt").read_text().splitlines()
        return float(table[2].split()[table[0].split().index("seconds")])

    first = seconds()
    assert cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume", "--set", "rounds=4",
               "--set", "checkpoint_every=1")[0] == 0
    both = seconds()
    assert both > first
    assert cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume", "--set", "rounds=4",
               "--set", "checkpoint_every=1")[0] == 0
    assert first < seconds() <= both                 # the checkpoint's time: the last round's, before the files
    assert seconds() == pytest.approx(both, abs=0.5)


def test_interrupted_run_resumes_to_the_same_files(capsys, tmp_path, monkeypatch):
    import fedsim.experiment as experiment

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY.replace("rounds = 2", "rounds = 4"))
    assert cli(capsys, "run", "tiny.toml", "--out", "straight", "--no-progress")[0] == 0

    real = experiment.save_checkpoint

    def save_then_interrupt(path, rnd, *args):
        real(path, rnd, *args)
        if rnd == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "save_checkpoint", save_then_interrupt)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", "cut", "--no-progress")
    assert code == 130 and "--resume" in err
    assert _good(tmp_path / "cut" / "checkpoint.pt")[0] == 2
    monkeypatch.setattr(experiment, "save_checkpoint", real)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", "cut", "--no-progress", "--resume")
    assert code == 0, err
    for name in ("history.json", "history.csv", "config.toml"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name


def test_an_interrupt_before_the_first_checkpoint_does_not_suggest_resume(capsys, tmp_path, monkeypatch):
    import fedsim.experiment as experiment

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "simulate", interrupt)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", "early", "--no-progress")
    assert code == 130 and "--resume" not in err and "no checkpoint was written yet" in err


def test_resume_without_a_checkpoint_starts_at_round_0_and_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", "fresh", "--no-progress", "--resume")
    assert code == 0, err
    assert "no checkpoint" in err and "round 0" in err
    assert [row["round"] for row in strict_json((tmp_path / "fresh" / "history.json").read_text())["history"]] == [1, 2]


def test_resume_without_a_checkpoint_refuses_another_runs_folder(capsys, run_dir):
    (run_dir / "checkpoint.pt").unlink()
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", run_dir, "--no-progress", "--resume",
                       "--set", "clients=5")
    assert code == 2
    assert_one_error_line(err, str(run_dir), "without a checkpoint", "clients: 4 -> 5")
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------- quickstart


def test_quickstart_reruns_its_own_runs_and_refuses_a_different_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qs = tmp_path / "results" / "quickstart"
    assert cli(capsys, "quickstart", "--parts", "none", "--rounds", 1, "--no-progress")[0] == 0
    code, _, err = cli(capsys, "quickstart", "--parts", "none", "--rounds", 2, "--no-progress")  # README command 1, again
    assert code == 0, err
    assert len(strict_json((qs / "gossip-ring" / "history.json").read_text())["history"]) == 2

    before = snapshot(qs)
    code, out, err = cli(capsys, "quickstart", "--parts", "none", "--rounds", 1, "--no-progress", "--set", "algorithm.lr=0.05")
    assert code == 2 and out == ""
    assert_one_error_line(err, str(Path("results", "quickstart", "fedavg")), "algorithm.lr: 0.1 -> 0.05",
                          "--overwrite")
    assert snapshot(qs) == before  # no run replaced, not even the first

    code, _, err = cli(capsys, "quickstart", "--parts", "none", "--rounds", 1, "--no-progress", "--set", "algorithm.lr=0.05",
                       "--overwrite")
    assert code == 0, err
    for run in ("fedavg", "gossip-ring", "gossip-regular-dirichlet"):
        assert tomllib.loads((qs / run / "config.toml").read_text())["algorithm"]["lr"] == 0.05

    # a different run in the last sub-folder only: refused before the first two are run again
    last = qs / "gossip-regular-dirichlet" / "config.toml"
    last.write_text(last.read_text().replace("seed = 0", "seed = 7"))
    before = snapshot(qs)
    code, _, err = cli(capsys, "quickstart", "--parts", "none", "--rounds", 1, "--no-progress", "--set", "algorithm.lr=0.05")
    assert code == 2
    assert_one_error_line(err, "gossip-regular-dirichlet", "seed: 7 -> 0")
    assert snapshot(qs) == before


def test_quickstart_refuses_a_single_runs_folder(capsys, run_dir):
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "quickstart", "--parts", "none", "--rounds", 1, "--no-progress", "--out", run_dir)
    assert code == 2
    assert_one_error_line(err, str(run_dir), "single run", "--overwrite")
    assert snapshot(run_dir) == before


# --------------------------------------------------------------------------- strict history files


def test_history_json_is_strict_json_with_null_for_nan(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    # every message lost: no client trains, so the training loss is NaN in every round
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", "lost", "--no-progress", "--set", "faults.loss=1.0")
    assert code == 0, err
    rows = strict_json((tmp_path / "lost" / "history.json").read_text())["history"]
    assert [row["train_loss"] for row in rows] == [None, None]
    with open(tmp_path / "lost" / "history.csv", newline="") as f:
        assert [r["train_loss"] for r in csv.DictReader(f)] == ["", ""]
    back = Result.from_json(tmp_path / "lost" / "history.json")
    assert math.isnan(back.final("train_loss")) and 0 <= back.final("global_acc") <= 1
    assert all(math.isnan(v) for v in back.column("train_loss"))


def test_result_round_trip_writes_non_finite_values_as_null(tmp_path):
    result = Result([{"round": 1, "a": math.nan, "b": math.inf, "c": 0.5},
                     {"round": 2, "a": 1.0, "b": -math.inf}])
    result.to_json(tmp_path / "h.json")
    rows = strict_json((tmp_path / "h.json").read_text())["history"]
    assert rows == [{"round": 1, "a": None, "b": None, "c": 0.5}, {"round": 2, "a": 1.0, "b": None}]
    back = Result.from_json(tmp_path / "h.json")
    assert back.final("a") == 1.0 and math.isnan(back.final("b")) and back.final("c") == 0.5
    assert math.isnan(back.column("a")[0]) and math.isnan(back.column("c")[1])  # missing stays missing
    result.to_csv(tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text().splitlines() == ["round,a,b,c", "1,,,0.5", "2,1.0,,"]


def test_a_run_folder_in_use_by_another_process_is_refused(capsys, tmp_path, monkeypatch):
    """Two runs into one folder at once would mix their files (each passes the empty-folder check): the folder is
    locked while a run checks and writes it, and a second run is refused at once, in one line, writing nothing.
    (flock locks of two opens conflict within one process too, so the other process is played by this one.)"""
    from fedsim.runs import folder_lock

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    with folder_lock(tmp_path / "busy"):
        assert (tmp_path / "busy").is_dir()
        code, out, err = cli(capsys, "run", "tiny.toml", "--out", "busy", "--no-progress")
        assert code == 2 and out == ""
        assert_one_error_line(err, "busy", "in use by another fedsim process")
        assert list((tmp_path / "busy").iterdir()) == []
        code, _, err = cli(capsys, "experiment", "topologies", "--out", "busy", "--no-progress")
        assert code == 2 and "in use by another fedsim process" in err
    assert not (tmp_path / "busy").exists()            # made by the lock for nothing: removed with it
    code, _, err = cli(capsys, "run", "tiny.toml", "--out", "busy", "--no-progress")
    assert code == 0, err                               # free again
    with folder_lock(tmp_path / "busy"):
        code, _, err = cli(capsys, "run", "tiny.toml", "--out", "busy", "--no-progress", "--resume")
        assert code == 2 and "in use" in err        # a resume too: it would write beside the live run
    assert (tmp_path / "busy" / "history.json").is_file()   # the finished run's folder stays


@pytest.mark.parametrize("command", [["fedpca", "--methods", "pca"],
                                     ["attack", "--victims", "1", "--iterations", "1", "--no-progress"],
                                     ["flower", "--algorithm", "fedavg", "--rounds", "1", "--no-progress"],
                                     ["quickstart", "--parts", "none", "--no-progress"]])
def test_one_shot_commands_refuse_an_out_folder_in_use(capsys, tmp_path, monkeypatch, command):
    """`fedsim fedpca`, `attack`, `flower` and `quickstart` hold their --out folder while they run, as `fedsim run`
    does: a second process writing there meanwhile is refused in one line before any work, and writes nothing."""
    from fedsim.runs import folder_lock

    monkeypatch.chdir(tmp_path)
    with folder_lock(tmp_path / "busy"):
        code, out, err = cli(capsys, *command, "--out", "busy")
        assert code == 2 and out == ""
        assert_one_error_line(err, "busy", "in use by another fedsim process")
        assert list((tmp_path / "busy").iterdir()) == []
