"""Faults on a real deployment (SuperLink + 3 SuperNodes as processes, fedsim's apps, FedAvg on digits):
a SuperNode killed mid-run, and nodes that send malformed replies (a fixture ClientApp, deploy_faulty_app/).

The reference for what the run must end with is the in-process runner with the same nodes silent from the
same round: FedAvg over the remaining clients. Tolerance 1e-6 (float32 parameters; the deployment does the
same operations in other processes, and is usually bit-equal)."""

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402

from fedsim.flower.deploy import (APP_DIR, Deployment, DeploymentError, deploy, fedsim_run_config,  # noqa: E402
                                  still_running)
from fedsim.flower.inprocess import run_spec  # noqa: E402
from fedsim.flower.spec import make_spec  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.deploy]
FAULTY = Path(__file__).parent / "deploy_faulty_app" / "faulty.py"


def fedavg(out: Path, **values):
    return make_spec("fedavg", **{"clients": 3, "rounds": 2, "out": str(out), "round-timeout": 60.0, **values})


def final_params(out: Path) -> torch.Tensor:
    return torch.load(out / "final.pt", weights_only=True)["params"]


def assert_all_gone(report: dict) -> None:
    assert report["processes"] and not still_running(report["processes"])


def test_killed_supernode_run_finishes_with_the_rest(tmp_path):
    spec = fedavg(tmp_path, **{"min-nodes": 2})
    # partition 2 answers the query and round 1 (2 replies), then the launcher kills it (SIGKILL, as a crash)
    report = deploy(Deployment(APP_DIR, tmp_path, 3, run_config=fedsim_run_config(spec), kill_after={2: 2}))
    result = json.loads((tmp_path / "result.json").read_text())
    [killed] = report["dropped"]
    assert killed["partition"] == 2 and killed["replies_sent"] == 2 and "killed" in killed["cause"]
    # the ServerApp noticed in round 2 (no reply within round-timeout) and names the same node
    [dropped] = result["dropped"]
    assert dropped["client"] == 2 and dropped["round"] == 2 and dropped["node"] == killed["node_id"]
    assert [h["participants"] for h in result["history"]] == [3, 2]
    assert result["error"] is None and report["status"] == "finished"
    # bounded: one round-timeout (60 s) on top of a normal run (~10-20 s a round here, under load)
    assert report["run_s"] < 60 + 120
    ref, final = run_spec(fedavg(""), silent={2: 2})
    assert ref["dropped"][0]["client"] == 2
    torch.testing.assert_close(final_params(tmp_path), final["params"], rtol=0, atol=1e-6)
    assert_all_gone(report)


def _ref_params(spec, silent) -> torch.Tensor:
    _, final = run_spec(spec, silent=silent)
    return final["params"]


@pytest.mark.slow
def test_killed_supernode_below_min_nodes_fails_clearly(tmp_path):
    spec = fedavg(tmp_path, **{"min-nodes": 3})
    with pytest.raises(DeploymentError, match=r"only 2 node\(s\) remain after round 2.*min-nodes = 3"):
        deploy(Deployment(APP_DIR, tmp_path, 3, run_config=fedsim_run_config(spec), kill_after={1: 2}))
    report = json.loads((tmp_path / "deployment.json").read_text())
    assert report["dropped"][0]["partition"] == 1
    assert_all_gone(report)


def test_malformed_replies_are_rejected_not_averaged(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    toml = (APP_DIR / "pyproject.toml").read_text()
    assert 'clientapp = "fedsim.flower.apps:clientapp"' in toml
    (app / "pyproject.toml").write_text(toml.replace('clientapp = "fedsim.flower.apps:clientapp"',
                                                     'clientapp = "faulty:clientapp"'))
    shutil.copy(FAULTY, app / "faulty.py")
    out = tmp_path / "run"
    spec = fedavg(out, rounds=1)
    report = deploy(Deployment(app, out, 3, run_config=fedsim_run_config(spec, app),
                               node_extra={1: {"fault": "shape"}, 2: {"fault": "nan"}}))
    result = json.loads((out / "result.json").read_text())
    reasons = {(r["round"], r["client"]): r["reason"] for r in result["rejected"]}
    assert set(reasons) == {(1, 1), (1, 2)}
    assert "shape" in reasons[(1, 1)] and "NaN" in reasons[(1, 2)]
    assert [h["participants"] for h in result["history"]] == [1] and result["dropped"] == []
    log = (out / "logs" / "flwr-run.log").read_text()
    assert "rejected the reply of client 1" in log and "rejected the reply of client 2" in log
    # what was averaged: client 0 alone, as when clients 1 and 2 are silent from round 1
    torch.testing.assert_close(final_params(out), _ref_params(fedavg("", rounds=1), {1: 1, 2: 1}), rtol=0,
                               atol=1e-6)
    assert_all_gone(report)
