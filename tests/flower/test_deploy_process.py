"""The deployment launcher as process management: real SuperLink + SuperNodes on localhost, the fixture app
in deploy_fixture_app/ (a ServerApp that sums partition-id + 1 over its nodes each round), and every PID the
launcher saw is gone afterwards: after a good run, a failed run, Ctrl-C and SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from fedsim.flower.deploy import (Deployment, DeploymentError, LocalFederation, deploy, is_alive,  # noqa: E402
                                  node_config_arg, still_running)

pytestmark = [pytest.mark.flower, pytest.mark.deploy]
APP = Path(__file__).parent / "deploy_fixture_app"


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text`` (e.g. our SuperLink's port)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd and is_alive(int(entry)):
                found.append(int(entry))
    return found


def assert_all_gone(report: dict) -> None:
    assert report["processes"], "the launcher recorded no processes"
    alive = still_running(report["processes"])
    assert not alive, f"processes left running: {alive}"
    assert not processes_mentioning(f"127.0.0.1:{report['superlink']['port']}"), "a process still uses our SuperLink"


def test_node_config_is_toml():
    assert node_config_arg({"partition-id": 2, "num-partitions": 3, "data-dir": "/a b", "f": 0.5, "x": True}) \
        == 'partition-id=2 num-partitions=3 data-dir="/a b" f=0.5 x=true'


def test_deployment_runs_the_app_and_stops_every_process(tmp_path):
    report = deploy(Deployment(APP, tmp_path, num_nodes=3, run_config={"result-dir": str(tmp_path), "rounds": 1,
                                                                           "min-nodes": 3}))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["rounds"] == [{"round": 0, "sum": 1 + 2 + 3, "pids": [0, 1, 2], "t": result["rounds"][0]["t"]}]
    assert report["status"] == "finished" and report["dropped"] == []
    assert report["run"]["returncode"] == 0 and report["run"]["status"] == "finished:completed"
    assert sorted(report["node_ids"]) == ["0", "1", "2"] and len(set(report["node_ids"].values())) == 3
    on_disk = json.loads((tmp_path / "deployment.json").read_text())
    assert on_disk["node_ids"] == report["node_ids"] and on_disk["status"] == "finished"
    for name in ("superlink", "supernode-0", "supernode-1", "supernode-2", "flwr-run"):
        assert (tmp_path / "logs" / f"{name}.log").stat().st_size > 0
    # the SuperLink, 3 SuperNodes, flwr run, and their flower-superexec / app children
    assert len(report["pids"]) >= 1 + 3 + 1 + 4
    assert_all_gone(report)


def test_failed_run_is_an_error_and_stops_every_process(tmp_path):
    # the ServerApp raises (int("abc")); flwr run itself exits 0, the launcher asks the SuperLink for the status
    with pytest.raises(DeploymentError, match="finished:failed: ServerApp failed with exception: invalid literal"):
        deploy(Deployment(APP, tmp_path, num_nodes=1, run_config={"rounds": "abc"}))
    report = json.loads((tmp_path / "deployment.json").read_text())
    assert report["status"] == "failed" and report["run"]["status"] == "finished:failed"
    assert_all_gone(report)


def test_undeclared_run_config_key_is_refused_before_starting(tmp_path):
    with pytest.raises(DeploymentError, match="'no-such-key' are not declared in"):
        deploy(Deployment(APP, tmp_path, num_nodes=1, run_config={"rounds": 1, "no-such-key": 1}))
    assert not (tmp_path / "logs").exists()


def test_another_deployments_folder_is_refused(tmp_path):
    (tmp_path / "deployment.json").write_text("{}")
    with pytest.raises(DeploymentError, match="holds another deployment"):
        deploy(Deployment(APP, tmp_path, num_nodes=1, run_config={"rounds": 1}))
    assert (tmp_path / "deployment.json").read_text() == "{}" and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_stops_every_process(tmp_path, sig):
    code = ("import sys; from pathlib import Path; from fedsim.flower.deploy import Deployment, deploy; "
            f"deploy(Deployment(Path({str(APP)!r}), Path({str(tmp_path)!r}), num_nodes=2, "
            "run_config={'rounds': 100, 'min-nodes': 2}))")
    launcher = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        log = tmp_path / "logs" / "supernode-0.log"
        while not (log.exists() and "Sent successfully" in log.read_text()):   # the run is under way
            assert launcher.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        launcher.send_signal(sig)
        _, err = launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert "KeyboardInterrupt" in err
    report = json.loads((tmp_path / "deployment.json").read_text())
    assert report["status"] == "interrupted"
    assert_all_gone(report)


def test_a_port_taken_meanwhile_is_retried_on_another(tmp_path):
    """free_ports() only says a port WAS free: a SuperLink or SuperNode that cannot bind starts again elsewhere."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with LocalFederation(tmp_path) as fed:
            first = fed.start_superlink(port=port)
            fed.wait_healthy(60)
            assert fed.superlink is not first and fed.superlink.port != port and first in fed.extra
            assert "address already in use" in first.log.read_text()
            first_node = fed.start_supernode(0, 1, port=port)
            assert list(fed.wait_healthy(60)) == [0]
            assert fed.nodes[0] is not first_node and first_node.popen.returncode not in (None, 0)
    assert first.pid in fed.seen and not still_running(fed.seen.items())
