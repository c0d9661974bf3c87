"""Flower's simulation engine (Ray): ``flwr run fedsim/flower/app --stream --federation-config ...``.

``flwr run`` against the local federation starts a detached ``flower-superlink --simulation`` (with its
``flower-superexec``, the simulation process and Ray) that keeps running after the run. Every run here gets its own
``FLWR_HOME`` (a temporary folder); afterwards every process whose environment holds that ``FLWR_HOME`` (the
SuperLink and everything it started) is stopped by PID, also on failure, timeout or Ctrl-C. Runtime dependency
installation, telemetry and update checks are switched off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent / "app"
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


class SimulationError(RuntimeError):
    """``flwr run`` failed, timed out or left no result."""


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def processes_with_env(key: str, value: str) -> list[int]:
    """PIDs of this user's processes whose environment has ``key=value`` (Linux /proc; [] elsewhere)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def stop_pids(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM the given PIDs, wait up to ``grace`` seconds, SIGKILL what is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _alive(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def run_simulation(run_config: dict, n_nodes: int, *, cpus_per_node: float = 1.0, timeout: float = 600.0,
                   log_path: str | Path | None = None) -> str:
    """Run fedsim's apps on Flower's simulation engine with ``n_nodes`` simulated SuperNodes; returns the log.

    ``run_config`` must name an ``out`` folder: the ServerApp writes its results there (it runs in another
    process). Raises ``SimulationError`` with the log's tail when ``flwr run`` fails or times out."""
    if not run_config.get("out"):
        raise ValueError("run_config needs an 'out' folder for the ServerApp's results")
    cpus = int(cpus_per_node) if float(cpus_per_node).is_integer() else cpus_per_node   # flwr wants an int here
    flwr = shutil.which("flwr", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if flwr is None:
        raise SimulationError("the flwr command is not installed (pip install 'fedsim[flower]')")
    home = tempfile.mkdtemp(prefix="fedsim-flwr-")
    env = {**os.environ, **ENV, "FLWR_HOME": home}
    config = Path(home) / "run-config.toml"
    config.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()))
    cmd = [flwr, "run", str(APP_DIR), "--stream", "--run-config", str(config),
           "--federation-config", f"num-supernodes={n_nodes} client-resources-num-cpus={cpus:g}"]
    log = Path(log_path) if log_path else Path(home) / "flwr-run.log"
    try:
        with open(log, "w") as fh:
            proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                if proc.poll() is None:
                    stop_pids([proc.pid])
                    proc.wait()
        text = log.read_text(errors="replace")
        if rc != 0:
            what = f"timed out after {timeout:.0f} s" if rc is None else f"exited with status {rc}"
            raise SimulationError(f"flwr run {what}; log tail:\n" + "\n".join(text.splitlines()[-20:]))
        return text
    finally:
        stop_pids(processes_with_env("FLWR_HOME", home))
        shutil.rmtree(home, ignore_errors=True)
