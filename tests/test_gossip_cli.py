"""Variance-corrected and asynchronous gossip through ``fedsim run`` (TOML in, history and figures out)."""

from __future__ import annotations

import json
import shutil

import pytest

from fedsim.cli import main

NINE = """\
name = "nine"
rounds = 1
clients = 9
eval_every = 1
eval_nodes = 0

[model]
name = "mlp"
hidden = [128]
init = "xavier"

[algorithm]
name = "gossip"
local_steps = 0
same_init = false
averaging = "beta"
beta = 0.5

[topology]
name = "complete"
"""

ASYNC = """\
name = "async"
rounds = 30
clients = 8
eval_every = 10
checkpoint_every = 5

[model]
hidden = [16]
init = "xavier_fan_in"

[algorithm]
name = "gossip"
lr = 0.05
momentum = 0.9
local_steps = 1
same_init = false
averaging = "variance_corrected"
correction_eps = 1e-4

[topology]
name = "regular"
k = 3

[time]
mode = "async"
interval = [1, 4]

[faults]
loss = 0.1
delay = 2
churn = 0.05
churn_ticks = [2, 4]
"""


def _last(folder, key="weight_var_ratio"):
    rows = json.loads((folder / "history.json").read_text())["history"]
    return rows[-1][key]


@pytest.mark.parametrize("averaging, want", [("beta", 0.25 + 1 / 32), ("variance_corrected", 1.0)])
def test_one_mix_of_nine_xavier_nodes_through_the_cli(tmp_path, monkeypatch, capsys, averaging, want):
    """9 independent Xavier nodes on a complete graph, one 0.5/0.5 buffer-rule mix: 1/4 + 1/32 of the Xavier
    variance is left (the vanishing variance); the correction restores it. Sampling error here ~0.005."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nine.toml").write_text(NINE)
    assert main(["run", "nine.toml", "--out", "out", "--no-progress", "--set", f"algorithm.averaging={averaging}"]) == 0
    assert _last(tmp_path / "out") == pytest.approx(want, abs=0.02)
    assert (tmp_path / "out" / "diagnostics.png").read_bytes()[:4] == b"\x89PNG"


def test_async_run_resumes_mid_flight_to_the_same_history(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.toml").write_text(ASYNC)
    assert main(["run", "a.toml", "--out", "full", "--no-progress"]) == 0
    # a run stopped after tick 15 (checkpoint at 15, messages in flight), then resumed to 30
    assert main(["run", "a.toml", "--out", "part", "--no-progress", "--set", "rounds=15"]) == 0
    assert main(["run", "a.toml", "--out", "part", "--no-progress", "--resume"]) == 0
    full = json.loads((tmp_path / "full" / "history.json").read_text())["history"]
    part = json.loads((tmp_path / "part" / "history.json").read_text())["history"]
    # the stopped run evaluated its last tick (15) as well; otherwise the rows are the same
    assert [r for r in part if r["round"] != 15] == [r for r in full if r["round"] != 15]
    assert {r["round"] for r in full if "nodes_acc" in r} == {10, 20, 30}
    assert max(r["offline"] for r in full) > 0 and sum(r["averaged"] for r in full) > 0


def test_a_checkpoint_with_messages_in_flight_of_another_size_is_still_checked(tmp_path, monkeypatch, capsys):
    """Messages in flight change the number of rows of some state fields; their other dims are still checked."""
    import torch

    from fedsim.experiment import load_checkpoint, save_checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.toml").write_text(ASYNC)
    assert main(["run", "a.toml", "--out", "part", "--no-progress", "--set", "rounds=15"]) == 0
    ckpt = tmp_path / "part" / "checkpoint.pt"
    round_, state, history, config = load_checkpoint(ckpt, torch.device("cpu"))
    assert len(state.flight_payload) > 0
    broken = type(state)(**{**state.__dict__, "flight_payload": state.flight_payload[:, :-1]})
    shutil.copy(ckpt, tmp_path / "good.pt")
    save_checkpoint(ckpt, round_, broken, history, config)
    capsys.readouterr()
    assert main(["run", "a.toml", "--out", "part", "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "flight_payload" in err and "shape" in err and len(err.strip().splitlines()) == 1


def test_run_ticks_in_place_with_the_same_numbers_as_copying_ticks(tmp_path):
    """``experiment.run`` owns its states, so asynchronous ticks change them in place (the hook sees one models
    tensor throughout); the run equals ``simulate`` of the copying algorithm, bit for bit."""
    import torch

    from fedsim import config, experiment
    from fedsim.engine import simulate

    (tmp_path / "a.toml").write_text(ASYNC)
    cfg = config.load(tmp_path / "a.toml")
    seen = []
    got = experiment.run(cfg, on_round=lambda t, state, history: seen.append(state.x))
    assert all(x is seen[0] for x in seen)                              # in place: no copy per tick
    setup = experiment.build(cfg)
    assert not setup.algorithm.in_place
    want = simulate(setup.algorithm, setup.fed, cfg.rounds, taps=setup.taps, eval_every=cfg.eval_every)
    assert got.history == want.history and torch.equal(got.state.x, want.state.x)
