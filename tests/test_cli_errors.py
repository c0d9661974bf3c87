"""Every error a user can cause through the CLI: one line ``fedsim: error: ...`` naming the flag, key or file,
exit status 2, no traceback, and nothing left on disk. Plus Ctrl-C (130), a closed stdout pipe, and help texts.

Most cases run in-process (``fedsim.cli.main``) inside an empty working folder whose contents are compared
before and after; the closed pipe and Ctrl-C during start-up run as real subprocesses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fedsim.cli as cli_module
from fedsim.cli import build_parser, main
from attacks import victims
from fedsim.data import datasets, nslkdd

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
OFFLINE = "http://127.0.0.1:9/"   # the discard port: refused at once, so a "download" fails fast and offline
# KDDTest+.txt line 1: a valid NSL-KDD row (label neptune)
ROW = ("0,tcp,private,REJ,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,229,10,0.00,0.00,1.00,1.00,0.04,0.06,0.00,255,10,0.04,"
       "0.06,0.00,0.00,0.00,0.00,1.00,1.00,neptune,21")


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty working folder; the default data folder points inside it (it must stay absent)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path / "default-data"))
    monkeypatch.setattr(datasets, "MNIST_MIRROR", OFFLINE + "mnist/")
    monkeypatch.setattr(nslkdd, "NSLKDD_MIRRORS", (OFFLINE,))
    monkeypatch.setattr(victims, "VICTIMS_SOURCE", OFFLINE)
    (tmp_path / "somefile.txt").write_text("a file, not a folder\n")
    return tmp_path


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def error_line(capsys, folder: Path, *argv, code: int = 2) -> str:
    """Run the CLI; check the exit status, that stderr is exactly one ``fedsim: error:`` line without a
    traceback, and that nothing was created or removed in ``folder``; return the line."""
    before = snapshot(folder)
    assert main([str(a) for a in argv]) == code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedsim: error: "), err
    assert "Traceback" not in err and out == ""
    assert snapshot(folder) == before, "stray files or folders"
    return lines[0]


# --------------------------------------------------------------------------- run / quickstart


@pytest.mark.parametrize("config, overrides, fragments", [
    # iid, sorted and dirichlet give every client a sample: the hint names the config key, not a Python function
    ("quickstart_gossip_dirichlet.toml", ["clients=2000"], ["clients = 2,000", "1,437 sample(s)", "clients <= 1437"]),
    ("quickstart_fedavg.toml", ["clients=2000"], ["clients = 2,000", "data.partition = 'iid'", "'sampled'"]),
    ("quickstart_fedavg.toml", ["data.partition=sampled", "data.per_client=5000"], ["data.per_client = 5000"]),
    ("quickstart_gossip_dirichlet.toml", ["clients=1000"], ["data.partition = 'dirichlet'", "data.alpha"]),
])
def test_run_with_more_clients_than_samples(capsys, cwd, config, overrides, fragments):
    sets = [a for o in overrides for a in ("--set", o)]
    line = error_line(capsys, cwd, "run", CONFIGS / config, "--out", "out", "--no-progress", *sets)
    for fragment in fragments:
        assert fragment in line
    assert "n_clients" not in line and "sampled()" not in line and "min_size" not in line


@pytest.mark.parametrize("argv, fragments", [
    # a graph the generator cannot build: the keys that made it, not only the generator's words
    (["run", CONFIGS / "quickstart_gossip.toml", "--set", "clients=1"],
     ["topology.name = 'ring' with clients = 1", "n >= 3"]),
    (["run", CONFIGS / "quickstart_gossip.toml", "--set", "topology.name=regular", "--set", "topology.k=3",
      "--set", "clients=9"], ["topology.name = 'regular' with clients = 9, topology.k = 3", "must be even"]),
    (["run", CONFIGS / "quickstart_gossip.toml", "--set", "topology.name=edge_list"],
     ["topology.name = 'edge_list' needs topology.path"]),
    # a generator setting the graph does not read
    (["run", CONFIGS / "quickstart_gossip.toml", "--set", "topology.k=7"],
     ["topology.k = 7 does not apply to topology.name = 'ring'"]),
    (["run", CONFIGS / "quickstart_gossip.toml", "--set", "topology.name=regular", "--set", "topology.m=3"],
     ["topology.m = 3 does not apply to topology.name = 'regular' (it takes topology.k)"]),
    # a study's config given to `fedsim run`
    (["run", CONFIGS / "topologies.toml"], ["is a study config", "fedsim experiment topologies --config"]),
    (["run", CONFIGS / "fedpca_clients_full.toml"], ["fedsim experiment fedpca_clients --config"]),
    # Flower runs name their own run-config keys
    (["flower", "--algorithm", "gossip", "--set", "topology=foo"], ["topology = 'foo' is unknown"]),
    (["flower", "--algorithm", "gossip", "--set", "clients=2"], ["topology = 'ring' with clients = 2"]),
    (["flower", "--algorithm", "gossip", "--set", "topology=regular", "--set", "topology-k=3", "--set", "clients=9"],
     ["topology-k = 3"]),
])
def test_config_errors_name_the_keys_the_user_set(capsys, cwd, argv, fragments):
    line = error_line(capsys, cwd, *argv, "--out", "out", *(["--no-progress"] if argv[0] == "run" else []))
    for fragment in fragments:
        assert fragment in line, line
    assert "topology.name" not in line or argv[0] != "flower"


@pytest.mark.parametrize("command", [["run", CONFIGS / "quickstart_fedavg.toml"], ["quickstart"], ["fedpca"],
                                     ["attack"]])
def test_out_under_a_regular_file(capsys, cwd, command):
    line = error_line(capsys, cwd, *command, "--out", "somefile.txt/run")
    assert line == "fedsim: error: --out somefile.txt/run: somefile.txt is a file, not a folder"


@pytest.mark.parametrize("argv, fragment", [
    (["topology", "ring", "-n", "abc"], "argument -n: invalid int value: 'abc'"),
    (["run"], "required: config"),
    (["fedpca", "--split", "foo"], "argument --split: invalid choice: 'foo'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", CONFIGS / "quickstart_fedavg.toml", "--threads", "-1"], "--threads must be >= 0"),
    (["quickstart", "--rounds", "0"], "--rounds must be >= 1"),
])
def test_usage_errors_are_one_line(capsys, cwd, argv, fragment):
    assert fragment in error_line(capsys, cwd, *argv)


# --------------------------------------------------------------------------- topology


def test_topology_missing_edge_list(capsys, cwd):
    line = error_line(capsys, cwd, "topology", "edge_list", "--path", "missing.edges")
    assert line == "fedsim: error: cannot read edge list missing.edges: No such file or directory"


@pytest.mark.parametrize("draw, fragment", [
    ("/nonexistent/dir/x.png", "--draw /nonexistent/dir/x.png: folder /nonexistent/dir does not exist"),
    (".", "--draw .: is a folder"),
    ("somefile.txt/x.png", "--draw somefile.txt/x.png: somefile.txt is a file, not a folder"),
])
def test_topology_draw_path_is_checked_before_the_work(capsys, cwd, draw, fragment):
    assert fragment in error_line(capsys, cwd, "topology", "ring", "-n", 10, "--draw", draw)  # stdout stays empty


@pytest.mark.parametrize("argv, fragment", [
    (["ring"], "needs -n N"),
    (["hypercube", "-n", "8"], "unknown topology 'hypercube'; known: barabasi_albert, complete, directed_exponential"),
    (["ring", "-n", "5", "--seed", "-1"], "--seed must be >= 0"),
])
def test_topology_bad_arguments(capsys, cwd, argv, fragment):
    assert fragment in error_line(capsys, cwd, "topology", *argv)


# --------------------------------------------------------------------------- data: missing, never created


@pytest.mark.parametrize("argv, fragments", [
    (["run", CONFIGS / "mnist_lenet_fedavg.toml", "--no-progress"],
     ["no typo/mnist/t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz", OFFLINE + "mnist/", "mnist/"]),
    (["fedpca"], ["no typo/nsl-kdd/KDDTrain+.txt", OFFLINE + "KDDTrain+.txt", "nsl-kdd/KDDTrain+.txt"]),
    (["attack"], ["victim set 'mnist' not found: no typo/mnist/dia_mnist_128.npz", OFFLINE + "MNIST_128.tdump",
                  "mnist/dia_mnist_128.npz"]),
])
def test_mistyped_data_dir_is_short_and_not_created(capsys, cwd, argv, fragments):
    line = error_line(capsys, cwd, *argv, "--data-dir", "typo", "--out", "out")
    for fragment in [*fragments, "--data-dir", "FEDSIM_DATA_DIR"]:
        assert fragment in line
    assert "data_dir" not in line
    assert len(line) <= 3 * 100, f"{len(line)} characters"      # fits in three terminal lines
    assert not (cwd / "typo").exists() and not (cwd / "out").exists()


def test_data_dir_that_is_a_file(capsys, cwd):
    assert "--data-dir somefile.txt is a file" in error_line(capsys, cwd, "fedpca", "--data-dir", "somefile.txt")


@pytest.mark.parametrize("file, line_no, row, fragment", [
    ("KDDTrain+.txt", 2, ROW.replace("neptune", "martians"),
     "line 2, column 41 (label): unknown label 'martians'; known: normal, or one of the 39 NSL-KDD attack names"),
    ("KDDTrain+.txt", 2, ROW.replace(",21", ""), "line 2: expected 43 fields, got 42"),
    ("KDDTest+.txt", 2, ROW.replace("229,10", "229,ten"), "line 2, column 23 (srv_count): 'ten' is not a number"),
    ("KDDTest+.txt", 2, ROW.replace("neptune", "neptnue"),
     "line 2, column 41 (label): unknown label 'neptnue' (did you mean 'neptune'?)"),
])
def test_malformed_nslkdd_rows_name_file_and_line(capsys, cwd, file, line_no, row, fragment):
    folder = cwd / "data" / "nsl-kdd"
    folder.mkdir(parents=True)
    for name in ("KDDTrain+.txt", "KDDTest+.txt"):
        rows = [ROW, ROW.replace("neptune", "normal"), ROW]
        if name == file:
            rows[line_no - 1] = row
        (folder / name).write_text("\n".join(rows) + "\n")
    line = error_line(capsys, cwd, "fedpca", "--data-dir", "data", "--out", "out")
    assert f"{folder / file} {fragment}" in line


# --------------------------------------------------------------------------- fedpca and attack arguments


@pytest.mark.parametrize("argv, fragment", [
    (["--eta", "nan"], "--eta must be > 0 and finite, got nan"),
    (["--rho", "-1"], "--rho must be > 0 and finite, got -1.0"),
    (["--tau", "2"], "--tau must be in [0, 1], got 2.0"),
    (["--clients", "-3"], "--clients must be >= 1, got -3"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["-k", "0"], "-k must be >= 1, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--methods", "centralized,fedpgg"], "unknown --methods entry 'fedpgg'; known: centralized"),
    (["--methods", ","], "--methods ',' names no method"),
    (["--methods", ""], "--methods '' names no method"),
    (["--topology", "hypercube"], "unknown --topology 'hypercube'; known: barabasi_albert"),
])
def test_fedpca_bad_arguments(capsys, cwd, argv, fragment):
    assert fragment in error_line(capsys, cwd, "fedpca", *argv)


@pytest.mark.needs_data("nsl-kdd")
@pytest.mark.parametrize("argv, fragment", [
    (["-k", "40", "--methods", "centralized"], "-k 40 must be smaller than d = 34, the number of --features paper "
                                               "columns (k > d); use -k 1..33"),
    (["-k", "34", "--methods", "centralized"], "(k = d leaves every anomaly score 0); use -k 1..33"),
    (["--clients", "100000"], "--clients 100,000 is too many for --split paper"),
    (["--clients", "60000", "--split", "dirichlet"], "--clients 60,000 is too many for --split dirichlet"),
    (["--methods", "fedpg-decentralized", "--topology", "regular", "--degree", "0"],
     "--topology regular with --clients 20, --degree 0: "),
])
def test_fedpca_arguments_checked_against_the_data(capsys, cwd, data_root, argv, fragment):
    assert fragment in error_line(capsys, cwd, "fedpca", "--data-dir", data_root, *argv)


@pytest.mark.parametrize("argv, fragment", [
    (["--victims", "500"], "need 1 <= --victims <= 128, got 500"),
    (["--dropout", "nan"], "need 0 <= --dropout < 1, got nan"),
    (["--iterations", "-1"], "need --iterations >= 1, got -1"),
    (["--threads", "0"], "need --threads >= 1, got 0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--device", "foo"], "--device must be cpu, cuda or cuda:N, got 'foo'"),
    (["--model", "vgg"], "unknown --model 'vgg'"),
    (["--capture", "capture.pt", "--attack", "informed"], "--attack informed needs the victims' true dropout masks"),
    (["--capture", "capture.pt", "--attack", "dia,informed"], "which a --capture does not hold"),
])
def test_attack_bad_arguments(capsys, cwd, argv, fragment):
    assert fragment in error_line(capsys, cwd, "attack", *argv)


def test_attack_on_a_file_that_is_not_a_capture(capsys, cwd):
    """A run checkpoint (a torch file of another shape), a TOML file, junk bytes: one line saying it is not a
    capture, without torch's advice to load it with weights_only=False."""
    import torch

    files = {"checkpoint.pt": None, "run.toml": b'rounds = 2\n', "junk.pt": bytes(range(256))}
    for name, data in files.items():
        path = cwd / name
        if data is None:
            torch.save({"round": 3, "state": {"x": torch.zeros(2, 3)}}, path)
        else:
            path.write_bytes(data)
    for name in files:
        line = error_line(capsys, cwd, "attack", "--capture", cwd / name)
        assert "not a fedsim Flower capture" in line and "weights_only" not in line, line
    assert "cannot read it" in error_line(capsys, cwd, "attack", "--capture", cwd / "missing.pt")


# --------------------------------------------------------------------------- Ctrl-C and closed pipes


def test_ctrl_c_during_a_command_is_one_line(capsys, cwd, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "cmd_topology", interrupted)
    assert main(["topology", "ring", "-n", "5"]) == 130
    out, err = capsys.readouterr()
    assert err == "fedsim: interrupted\n" and out == ""


def test_ctrl_c_during_start_up_imports(tmp_path):
    """A real SIGINT, sent by the process to itself the moment the command first imports numpy (inside main,
    before any of main's error handling is set up): deterministic, no sleeps. Runs the installed console script
    when there is one, else ``python -m fedsim.cli``."""
    script = shutil.which("fedsim", path=str(Path(sys.executable).parent)) or shutil.which("fedsim")
    start = f"runpy.run_path({script!r}, run_name='__main__')" if script else \
        "runpy.run_module('fedsim.cli', run_name='__main__', alter_sys=True)"
    code = (
        "import os, runpy, signal, sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'numpy':\n"
        "            sys.meta_path.remove(self)\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "assert 'numpy' not in sys.modules\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['fedsim', 'topology', 'ring', '-n', '5']\n"
        f"{start}\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "fedsim: interrupted\n" and proc.stdout == ""


def test_closed_stdout_pipe_is_quiet(tmp_path):
    """``fedsim topology ring -n 2000 | head -1`` with the reader gone before the first write (the read end is
    closed before the process starts, so this does not depend on timing)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "topology", "ring", "-n", "2000"], cwd=tmp_path,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr          # no traceback, no "Exception ignored ... BrokenPipeError"
    assert proc.returncode == 141                  # 128 + SIGPIPE, as the shell reports it


def test_closed_stdout_in_process(capsys, monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["topology", "ring", "-n", "5"]) == 141
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- help texts


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_every_option_shows_its_default(command):
    """Each option's rendered help names its default; one without a default value says what happens when it is
    omitted ("default: ..." or "required ..."); on/off flags need a help text only."""
    sub = _subparsers(build_parser())[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"fedsim {command} {action.dest}: no help text"
        if not action.option_strings:
            continue
        formatter = sub.formatter_class(prog=sub.prog)
        formatter.add_argument(action)
        rendered = " ".join(formatter.format_help().split())
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue
        if action.default is None:
            assert "(default: " in rendered or "(required" in rendered or ": required there)" in rendered, rendered
        else:
            assert f"(default: {action.default})" in rendered, rendered


def test_help_exits_0_in_process(capsys):
    assert main(["topology", "--help"]) == 0
    assert "(default: metropolis)" in " ".join(capsys.readouterr().out.split())


def test_a_refused_run_with_progress_on_is_still_one_line(capsys, cwd):
    """The progress bar appears only after the first round, so an error found while building the run (here a
    disconnected graph) is the only thing on stderr."""
    (cwd / "dis.toml").write_text('name = "dis"\nrounds = 3\nclients = 12\n[algorithm]\nname = "gossip"\n'
                                  '[topology]\nname = "erdos_renyi"\np = 0.02\n')
    assert "graph is disconnected" in error_line(capsys, cwd, "run", cwd / "dis.toml", "--out", cwd / "o")
