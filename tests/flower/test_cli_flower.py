"""``fedsim flower`` (in process): results files, the summary table, the folder rules and one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("flwr")

from fedsim.cli import main  # noqa: E402

pytestmark = pytest.mark.flower


def test_fedavg_run_writes_results_that_match_the_engine(tmp_path, capsys):
    from fedsim.engine import simulate
    from fedsim.experiment import build
    from fedsim.flower.spec import make_spec

    out = tmp_path / "run"
    args = ["flower", "--algorithm", "fedavg", "--clients", "6", "--rounds", "3", "--set", "hidden='8'",
            "--set", "batch-size=8", "--capture", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fedavg on Flower (inprocess), 6 clients" in printed and "time to first round" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["command"] == "flower" and saved["args"]["mode"] == "inprocess"
    assert [row["round"] for row in saved["history"]] == [1, 2, 3]
    assert (out / "summary.txt").read_text().strip() in printed
    run = make_spec("fedavg", clients=6, rounds=3, hidden="8", batch_size=8).run
    setup = build(dataclasses.replace(run, vectorized=False))
    ref = simulate(setup.algorithm, setup.fed, 3, eval_every=0).state.params
    assert torch.equal(torch.load(out / "final.pt")["params"], ref)
    assert (out / "capture.pt").is_file()
    # the same command again is fine; other settings are refused, then replaced with --overwrite
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args[:-2], "--rounds", "2", "--out", str(out)]) == 2
    assert "rounds: 3 -> 2" in capsys.readouterr().err
    assert main([*args[:-2], "--rounds", "2", "--out", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["--set", "nope=1"], "unknown Flower run-config key(s) 'nope'"),
    (["--set", "lr"], "--set expects KEY=VALUE"),
    (["--algorithm", "gossip", "--set", "topology=directed_ring"], "static undirected"),
    (["--clients", "0"], "--clients and --rounds must be >= 1"),
    (["--set", "topology=erdos_renyi"], "topology = 'erdos_renyi' has no effect with algorithm = 'fedavg' (only "
                                        "gossip reads it)"),
    (["--algorithm", "fedpg", "--set", "lr=0.5"], "lr = 0.5 has no effect with algorithm = 'fedpg'"),
    (["--algorithm", "gossip", "--set", "k=3"], "k = 3 has no effect with algorithm = 'gossip' (only fedpg reads it)"),
    (["--algorithm", "gossip", "--set", "topology=erdos_renyi"], "use a larger p or another seed: G(n, p) is connected"),
    (["--algorithm", "gossip", "--set", "topology=erdos_renyi"], "topology = 'erdos_renyi' with clients = 10, "
                                                                  "topology-p = 0.1:"),
    (["--algorithm", "fedpg", "--set", "k=500"], "k = 500 must be in 1..33: below d = 34"),   # was: every reply
    (["--algorithm", "fedpg", "--set", "k=0"], "k = 0 must be in 1..33"),                     # refused, exit 0
    (["--algorithm", "fedpg", "--data-dir", "{tmp}/nowhere"], "nsl-kdd"),
    (["--set", "dataset=mnist", "--data-dir", "{tmp}/nowhere"], "mnist"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["flower", *argv, "--no-progress", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsim: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_app_folder_declares_every_run_config_key_with_its_default():
    """flwr run refuses keys the app's pyproject does not declare (and values of another type)."""
    import tomllib

    from fedsim.flower.simulation import APP_DIR
    from fedsim.flower.spec import KEYS

    app = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedsim.flower.apps:serverapp",
                                 "clientapp": "fedsim.flower.apps:clientapp"}
    assert {k: (type(v), v) for k, v in app["config"].items()} == {k: (type(d), d) for k, (_, d) in KEYS.items()}


def test_flower_page_snippets_run(capsys):
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "flower.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
    exec(compile(code, "docs/flower.md", "exec"), {"__name__": "docs"})
    assert capsys.readouterr().out.split()[-3:] == ["6", "(6,", "1210)"]   # 64*16+16 + 16*10+10 parameters
