"""Tests for the ``fedsim`` command line (in-process via ``fedsim.cli.main``, plus one real subprocess)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedsim.cli import SUMMARY_COLUMNS, format_column, format_table, main
from fedsim.config import load

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "experiments" / "configs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = """\
name = "tiny-cli-run"
seed = 0
rounds = 2
clients = 4
eval_every = 100

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


def history_of(folder: Path) -> list[dict]:
    return json.loads((folder / "history.json").read_text())["history"]


@pytest.fixture
def tiny_config(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # nothing may land in the repo's results/
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def disconnected_edge_list(folder: Path) -> Path:
    """7 nodes in 3 components: a triangle and two separate edges."""
    path = folder / "edges.txt"
    path.write_text("# three components\n0 1\n1 2\n2 0\n3 4\n5 6\n")
    return path


# --------------------------------------------------------------------------- topology


def _printed_gap(out: str) -> float:
    match = re.search(r"spectral gap\s+([0-9.eE+-]+)", out)
    assert match, out
    return float(match.group(1))


def test_topology_ring_prints_size_and_closed_form_gap(capsys):
    code, out, err = cli(capsys, "topology", "ring", "-n", 12)
    assert code == 0 and err == ""
    assert re.search(r"nodes\s+12\b", out)
    assert re.search(r"edges\s+12\b", out)
    assert re.search(r"degree\s+min 2, max 2, mean 2\.00", out)
    # Metropolis-Hastings on a ring: W = 1/3 (I + P + P^T), eigenvalues 1/3 + 2/3 cos(2 pi j / n)
    expected = 1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 12))
    assert _printed_gap(out) == pytest.approx(expected, abs=1e-5)
    assert "metropolis" in out


def test_topology_complete_graph_has_gap_one(capsys):
    code, out, _ = cli(capsys, "topology", "complete", "-n", 6)
    assert code == 0
    assert re.search(r"edges\s+15\b", out)  # 6 * 5 / 2
    assert _printed_gap(out) == pytest.approx(1.0, abs=1e-6)


def test_topology_directed_ring_uses_push_sum(capsys):
    code, out, _ = cli(capsys, "topology", "directed_ring", "-n", 5)
    assert code == 0
    assert "(directed)" in out and "push-sum" in out
    assert re.search(r"edges\s+5 \(directed\)", out)


def test_topology_draw_writes_png(capsys, tmp_path):
    png = tmp_path / "ring.png"
    code, out, _ = cli(capsys, "topology", "ring", "-n", 8, "--draw", png)
    assert code == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in out


def test_topology_unknown_name_lists_known(capsys):
    code, out, err = cli(capsys, "topology", "hypercube", "-n", 8)
    assert code == 2 and out == ""
    assert err.startswith("fedsim: error:")
    assert "'hypercube'" in err
    for known in ("ring", "torus", "regular", "erdos_renyi", "edge_list"):
        assert known in err


def test_topology_regular_with_odd_n_times_k(capsys):
    code, out, err = cli(capsys, "topology", "regular", "-n", 5, "-k", 3)
    assert code == 2 and out == ""
    assert err.startswith("fedsim: error:") and "even" in err


def test_topology_missing_parameter(capsys):
    code, _, err = cli(capsys, "topology", "regular", "-n", 6)
    assert code == 2
    assert "needs parameter(s) k" in err


def test_topology_disconnected_edge_list_counts_components(capsys, tmp_path):
    path = disconnected_edge_list(tmp_path)
    code, out, err = cli(capsys, "topology", "edge_list", "--path", path)
    assert code == 2 and out == ""
    assert "3 connected components" in err
    assert "sizes 3, 2, 2" in err
    assert str(path) in err


def test_topology_connected_edge_list(capsys, tmp_path):
    path = tmp_path / "square.txt"
    path.write_text("a b\nb c\nc d\nd a\n")
    code, out, _ = cli(capsys, "topology", "edge_list", "--path", path)
    assert code == 0
    assert re.search(r"nodes\s+4\b", out) and re.search(r"edges\s+4\b", out)
    # a 4-cycle with Metropolis weights 1/3 (I + P + P^T): eigenvalues 1, 1/3, -1/3, 1/3, so the gap is 2/3
    assert _printed_gap(out) == pytest.approx(2 / 3, abs=1e-5)


# --------------------------------------------------------------------------- run


def test_run_writes_all_outputs_and_resume_is_a_no_op(capsys, tiny_config, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "run", tiny_config, "--out", out_dir, "--no-progress")
    assert code == 0, err
    assert "tiny-cli-run" in out

    for name in ("config.toml", "history.json", "history.csv", "summary.txt", "accuracy.png", "checkpoint.pt"):
        assert (out_dir / name).is_file(), name
        assert name in out.split("results:")[1].splitlines()[0], name    # the closing line lists what is there
    assert "<run>" not in out

    history = history_of(out_dir)
    assert [row["round"] for row in history] == [1, 2]
    assert "global_acc" not in history[0]  # eval_every = 100: only the last round is evaluated
    acc = history[-1]["global_acc"]
    assert 0 <= acc <= 1

    # the table is printed and saved, and shows the final accuracy of the run
    table = (out_dir / "summary.txt").read_text()
    assert table.strip() in out
    header, _, row = table.splitlines()[:3]
    assert header.split()[:6] == ["run", "algorithm", "topology", "clients", "rounds", "test_acc"]
    assert row.split()[:6] == ["tiny-cli-run", "fedavg", "star", "4", "2", f"{acc:.4f}"]

    with open(out_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert float(rows[-1]["global_acc"]) == pytest.approx(acc)

    assert load(out_dir / "config.toml") == load(tiny_config)
    assert (out_dir / "accuracy.png").read_bytes()[:8] == PNG_MAGIC

    import torch

    from fedsim.experiment import load_checkpoint  # checksummed container (fedsim.runs), not a bare torch file

    ckpt_round, _, ckpt_history, _ = load_checkpoint(out_dir / "checkpoint.pt", torch.device("cpu"))
    assert ckpt_round == 2 and len(ckpt_history) == 2

    before = (out_dir / "history.json").read_text()
    code, out, err = cli(capsys, "run", tiny_config, "--out", out_dir, "--no-progress", "--resume")
    assert code == 0, err
    assert (out_dir / "history.json").read_text() == before

    # resuming with a different config is refused rather than mixing two runs
    code, _, err = cli(capsys, "run", tiny_config, "--out", out_dir, "--no-progress", "--resume",
                       "--set", "algorithm.lr=0.05")
    assert code == 2 and "different config" in err
    assert (out_dir / "history.json").read_text() == before


def test_run_set_overrides_rounds(capsys, tiny_config, tmp_path):
    out_dir = tmp_path / "three"
    code, out, err = cli(capsys, "run", tiny_config, "--out", out_dir, "--no-progress", "--set", "rounds=3",
                         "--set", "name=three-rounds")
    assert code == 0, err
    assert [row["round"] for row in history_of(out_dir)] == [1, 2, 3]
    saved = tomllib.loads((out_dir / "config.toml").read_text())
    assert saved["rounds"] == 3 and saved["name"] == "three-rounds"
    assert "three-rounds" in out


def test_run_gossip_ring(capsys, tiny_config, tmp_path):
    out_dir = tmp_path / "gossip"
    code, out, err = cli(capsys, "run", tiny_config, "--out", out_dir, "--no-progress",
                         "--set", "algorithm.name=gossip", "--set", "topology.name=ring")
    assert code == 0, err
    last = history_of(out_dir)[-1]
    assert 0 <= last["nodes_acc_min"] <= last["nodes_acc"] <= 1
    row = (out_dir / "summary.txt").read_text().splitlines()[2].split()
    assert row[1:3] == ["gossip", "ring"]
    assert row[6] == f"{last['nodes_acc_min']:.4f}"  # worst_node_acc


def test_run_unknown_key_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text(TINY.replace("lr = 0.1", "lrr = 0.1"))
    code, out, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--no-progress")
    assert code == 2 and out == ""
    assert err.startswith("fedsim: error:")
    assert "'lrr'" in err and "'lr'" in err and "bad.toml" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, fragment", [
    ("algorithm.lr=fast", "algorithm.lr must be a number"),
    ("rounds", "KEY=VALUE"),
    ("optimizer.lr=0.1", "'optimizer'"),
    ("topology.name=ring", "gossip"),
])
def test_run_bad_override_exits_2(capsys, tiny_config, tmp_path, override, fragment):
    code, _, err = cli(capsys, "run", tiny_config, "--out", tmp_path / "out", "--no-progress", "--set", override)
    assert code == 2
    assert fragment in err


def test_run_missing_config_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "run", tmp_path / "missing.toml", "--no-progress")
    assert code == 2 and "does not exist" in err


def test_a_path_the_file_system_refuses_is_one_line_naming_it(capsys, tiny_config, tmp_path, monkeypatch):
    """A folder that cannot be made (e.g. under /proc) or a full disk: one line with the path, exit 2."""
    import fedsim.experiment

    def refuse(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(fedsim.experiment, "atomic_write_text", refuse)
    code, _, err = cli(capsys, "run", tiny_config, "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("fedsim: error: ") and "config.toml" in err and "No space left on device" in err


def test_run_config_that_is_not_utf8_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.toml").write_bytes(TINY.encode("utf-16"))
    code, _, err = cli(capsys, "run", tmp_path / "w.toml", "--no-progress")
    assert code == 2 and "not UTF-8" in err and err.count("\n") == 1


def test_run_gossip_on_disconnected_edge_list_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    edges = disconnected_edge_list(tmp_path)
    path = tmp_path / "disc.toml"
    path.write_text(TINY.replace('name = "fedavg"', 'name = "gossip"').replace("clients = 4", "clients = 7")
                    + f'\n[topology]\nname = "edge_list"\npath = "{edges}"\n')
    code, out, err = cli(capsys, "run", path, "--out", tmp_path / "out", "--no-progress")
    assert code == 2
    assert "component" in err and "3 connected components" in err


def test_run_unknown_topology_in_config_exits_2(capsys, tiny_config, tmp_path):
    code, _, err = cli(capsys, "run", tiny_config, "--out", tmp_path / "out", "--no-progress",
                       "--set", "algorithm.name=gossip", "--set", "topology.name=hypercube")
    assert code == 2
    assert "'hypercube'" in err and "ring" in err


def test_run_mnist_config(capsys, tmp_path, monkeypatch, require_data):
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(require_data("mnist")))     # tests/conftest.py: skip / fail rule
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "mnist"
    code, out, err = cli(capsys, "run", CONFIG_DIR / "mnist_lenet_fedavg.toml", "--out", out_dir, "--no-progress",
                         "--set", "rounds=1", "--set", "clients=4", "--set", "algorithm.clients_per_round=2",
                         "--set", "algorithm.local_steps=1", "--set", "algorithm.momentum=0")
    assert code == 0, err
    assert "mnist-lenet-fedavg" in out
    (row,) = history_of(out_dir)
    assert row["participants"] == 2
    assert 0 <= row["global_acc"] <= 1


# --------------------------------------------------------------------------- quickstart


def test_quickstart_runs_three_configs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "qs"
    code, out, err = cli(capsys, "quickstart", "--parts", "none", "--rounds", 2, "--out", out_dir, "--no-progress")
    assert code == 0, err
    table = (out_dir / "summary.txt").read_text()
    assert table.strip() in out
    rows = [line.split() for line in table.splitlines()[2:]]
    assert [r[0] for r in rows] == ["fedavg", "gossip-ring", "gossip-regular-dirichlet"]
    assert [r[1:3] for r in rows] == [["fedavg", "star"], ["gossip", "ring"], ["gossip", "regular"]]
    assert all(r[4] == "2" for r in rows)  # --rounds 2
    assert (out_dir / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
    for name in ("fedavg", "gossip-ring", "gossip-regular-dirichlet"):
        assert len(history_of(out_dir / name)) == 2


# --------------------------------------------------------------------------- entry points


def test_no_command_prints_help(capsys):
    code, out, _ = cli(capsys)
    assert code == 0
    assert "usage: fedsim" in out


def test_console_script_help():
    exe = Path(sys.executable).with_name("fedsim")
    exe = str(exe) if exe.exists() else shutil.which("fedsim")
    if exe is None:
        pytest.skip("the fedsim console script is not installed")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "quickstart", "topology"):
        assert re.search(rf"^\s+{command}\s", proc.stdout, re.M), command


# --------------------------------------------------------------------------- format_table


def test_format_table_aligns_columns_and_shows_nan_as_dash():
    rows = [{"run": "a", "acc": 0.5, "n": 12345, "mb": 1234.5},
            {"run": "longer-name", "acc": float("nan"), "n": 7, "mb": 0.25},
            {"run": "missing"}]
    text = format_table(rows, ["run", "acc", "n", "mb"])
    lines = text.splitlines()
    assert len(lines) == 5
    assert len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["run", "acc", "n", "mb"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["a", "0.5000", "12,345", "1,234.5000"]   # a column's numbers alike
    assert lines[3].split() == ["longer-name", "-", "7", "0.2500"]
    assert lines[4].split() == ["missing", "-", "-", "-"]
    # right-aligned: every column ends at the same offset in every line
    ends = [m.end() for m in re.finditer(r"\S+", lines[0])]
    for line in lines[2:]:
        assert [m.end() for m in re.finditer(r"\S+", line)] == ends


def test_format_column_writes_a_column_alike():
    assert format_column([300.0, 20.0, None]) == ["300", "20", "-"]                  # whole floats: no decimals
    assert format_column([15.424, 1212.0, 1741.3]) == ["15.42", "1,212.00", "1,741.30"]
    assert format_column([0.9783, 16.74, float("inf")]) == ["0.9783", "16.7400", "-"]
    assert format_column(["fedpg", True, 3]) == ["fedpg", "True", "3"]


def test_format_table_without_rows():
    assert format_table([], ["run", "acc"]).splitlines()[0].split() == ["run", "acc"]


def test_resume_accepts_a_different_thread_count(tmp_path, capsys):
    from fedsim.cli import main as cli_main

    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "t"\nrounds = 4\nclients = 4\neval_every = 2\ncheckpoint_every = 2\n')
    out = tmp_path / "out"
    assert cli_main(["run", str(cfg), "--out", str(out), "--no-progress", "--set", "rounds=2"]) == 0
    before = (out / "history.json").read_text()
    assert cli_main(["run", str(cfg), "--out", str(out), "--no-progress", "--resume", "--threads", "2",
                     "--set", "rounds=2"]) == 0
    assert (out / "history.json").read_text() == before


def test_mixing_choice_with_a_time_varying_schedule_is_rejected():
    from fedsim.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="applies to schedule = 'static' only"):
        from_dict({"algorithm": {"name": "gossip"}, "topology": {"name": "ring", "mixing": "max_degree",
                                                                  "schedule": "failures"}})


def test_progress_off_a_terminal_is_a_few_lines_not_one_per_round(capsys, tiny_config, tmp_path):
    """stderr is a pipe here: the bar may draw at its start and end, not once per round."""
    code, _, err = cli(capsys, "run", tiny_config, "--out", tmp_path / "o", "--set", "rounds=40")
    assert code == 0
    assert err.count("\r") + err.count("\n") <= 4, err


def test_resume_help_and_readme_name_every_key_a_resume_may_change(capsys):
    from fedsim.runs import RESUME_FREE

    assert main(["run", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    readme = " ".join((REPO / "README.md").read_text().split())
    for key in RESUME_FREE:
        assert key.replace("data.dir", "data dir") in help_text, key
        assert f"`{key}`" in readme, key


def test_divergence_is_said_from_the_training_loss():
    from fedsim.cli import divergence

    rows = lambda *losses: [{"round": i + 1, "train_loss": v} for i, v in enumerate(losses)]   # noqa: E731
    assert divergence(rows(2.3, 1.0, 0.4)) is None
    assert "became nan" in divergence(rows(2.3, float("nan")))
    assert "4.18e+05" in divergence(rows(3e29, 4.18e5))
    assert "grew from 0.5 to 6" in divergence(rows(0.5, 1.0, 6.0))
    assert divergence([{"round": 1}]) is None
    # an asynchronous tick in which no clock fired records a NaN loss with 0 participants: not divergence
    idle = {"round": 3, "train_loss": float("nan"), "participants": 0}
    assert divergence([{"round": 1, "train_loss": 2.3, "participants": 2}, idle]) is None
    assert "became nan" in divergence([{"round": 1, "train_loss": float("nan"), "participants": 2}, idle])


def test_an_async_run_with_idle_ticks_is_not_called_diverged(capsys, tiny_config, tmp_path, monkeypatch):
    """10 nodes with U{8..12} clocks: most ticks train nobody (NaN loss). No divergence note; the summary's
    train_loss is the last tick's in which some node trained; both figures count ticks."""
    import fedsim.plots

    labels = {}
    for name in ("plot_runs", "plot_diagnostics"):
        def spy(*args, _name=name, _real=getattr(fedsim.plots, name), **kwargs):
            labels[_name] = kwargs.get("x_label")
            return _real(*args, **kwargs)
        monkeypatch.setattr(fedsim.plots, name, spy)
    code, out, err = cli(capsys, "run", tiny_config, "--out", tmp_path / "a", "--no-progress",
                         "--set", "algorithm.name=gossip", "--set", "clients=10", "--set", "time.mode=async",
                         "--set", "rounds=30", "--set", "topology.name=ring")
    assert code == 0, err
    history = history_of(tmp_path / "a")
    assert history[-1]["participants"] == 0 and history[-1]["train_loss"] is None   # the case at hand
    trained = [r["train_loss"] for r in history if r["participants"]]
    assert "diverged" not in err
    row = out.splitlines()[2].split()
    assert math.isclose(float(row[SUMMARY_COLUMNS.index("train_loss")]), trained[-1], abs_tol=5e-4), (row, trained)
    assert labels == {"plot_runs": "tick", "plot_diagnostics": "tick"}


def test_a_diverged_run_gets_one_note(capsys, tiny_config, tmp_path):
    code, _, err = cli(capsys, "run", tiny_config, "--out", tmp_path / "o", "--no-progress",
                       "--set", "algorithm.lr=1e6", "--set", "rounds=3")
    assert code == 0 and err.count("the run diverged (try a smaller algorithm.lr)") == 1, err
