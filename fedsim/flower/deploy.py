"""Flower's deployment engine as real processes on this machine: one SuperLink, N SuperNodes, ``flwr run``.

``deploy(Deployment(...))`` picks free ports, writes a Flower home per process (the ``flwr`` CLI's one holds
the connection config), starts ``flower-superlink`` and N ``flower-supernode`` processes (node ``i`` gets
``--node-config "partition-id=i num-partitions=N ..."``), waits until the SuperLink answers ``/health`` and
every node has registered (its log names its SuperNode ID), runs ``flwr run APP CONNECTION --stream
--run-config FILE``, and stops every process it started: the whole process tree of each (the
``flower-superexec`` children, ``flwr-serverapp`` / ``flwr-clientapp`` processes), by PID and process group,
SIGTERM then SIGKILL, also on Ctrl-C, SIGTERM and failure; a PID counts as ours only with the start time it had
when seen (PIDs are reused). Logs go to ``OUT/logs/``; ``OUT/deployment.json`` reports ports, node ids per
partition, timings, the run's status as the SuperLink saw it, the nodes that dropped out (which, when, exit
status) and every process seen. The ServerApp writes its own results wherever its run config says (on localhost, into OUT).

``LocalFederation`` is the context manager underneath, for tests that need to start odd nodes (a wrong CA)
or kill one. Linux: the process tree is read from ``/proc`` (elsewhere only the process groups are stopped).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fedsim.files import atomic_write_text
from fedsim.flower.tls import TlsFiles

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # otherwise the SuperLink runs `uv sync` for the app on every run (and fetches a CUDA torch)
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
CONNECTION = "fedsim-local"
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_SENT = "Sent successfully"
_PORT_TAKEN = ("address already in use", "[Errno 98]")


class DeploymentError(RuntimeError):
    """The deployment could not start, the run failed or timed out (the message says which, with log lines)."""


@dataclass(frozen=True)
class Deployment:
    """What to run: the app folder, how many nodes, the run config (keys of the app's ``[tool.flwr.app.config]``).

    ``node_config`` adds keys to every node's config, ``node_extra`` to single nodes' (partition -> dict).
    ``kill_after`` is a fault plan for tests and demos: partition -> number of replies the node sends before
    the launcher kills it (SIGKILL to its process group, as in a crash).
    """

    app_dir: Path
    out_dir: Path
    num_nodes: int
    run_config: dict = field(default_factory=dict)
    node_config: dict = field(default_factory=dict)
    node_extra: dict = field(default_factory=dict)
    tls: TlsFiles | None = None
    kill_after: dict = field(default_factory=dict)
    startup_timeout: float = 60.0
    run_timeout: float = 600.0


# ----------------------------------------------------------------------------------------------- helpers


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]


def toml_value(value) -> str:
    """One TOML value (bool, int, float or string) as Flower's ``--node-config`` / run-config files take it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    raise TypeError(f"config value {value!r}: only bool, int, float and str are allowed")


def node_config_arg(config: dict) -> str:
    """``{"partition-id": 0, "x": "a"}`` -> ``'partition-id=0 x="a"'`` (flower-supernode --node-config)."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())


def app_config_keys(app_dir: str | Path) -> set[str]:
    """The run-config keys an app declares (``[tool.flwr.app.config]`` of its pyproject.toml); flwr run refuses
    any other key."""
    from fedsim.config import tomllib

    path = Path(app_dir) / "pyproject.toml"
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DeploymentError(f"{path}: cannot read the app's pyproject.toml ({e})") from None
    return set(table.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a process from /proc, None if there is no such one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def start_time(pid: int) -> int | None:
    """A process's start time (with its PID, its identity: PIDs are reused); None without /proc."""
    st = _stat(pid)
    return st[2] if st else None


def is_alive(pid: int) -> bool:
    """Whether some process ``pid`` exists and is not a zombie (an exited child nobody has reaped yet)."""
    st = _stat(pid)
    if st is not None:
        return st[0] != "Z"
    if os.path.isdir("/proc"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def still_running(processes) -> list[int]:
    """The PIDs of ``processes`` ((pid, start time) pairs, as ``deployment.json`` lists them) that are still the
    same running processes (a reused PID with another start time does not count)."""
    out = []
    for pid, started in processes:
        st = _stat(pid)
        if st is None:
            if started is None and is_alive(pid):
                out.append(pid)
        elif st[0] != "Z" and (started is None or st[2] == started):
            out.append(pid)
    return sorted(out)


def descendants(roots: dict[int, int | None]) -> dict[int, int | None]:
    """``roots`` (pid -> start time) that still run, and all their running descendants, with start times."""
    tree = {pid: started for pid, started in roots.items() if still_running([(pid, started)])}
    if not os.path.isdir("/proc"):
        return tree
    kids: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None and st[0] != "Z":
            kids.setdefault(st[1], []).append((int(entry), st[2]))
    todo = list(tree)
    while todo:
        for child, started in kids.get(todo.pop(), ()):
            if child not in tree:
                tree[child] = started
                todo.append(child)
    return tree


def _signal(processes: dict[int, int | None], sig: int) -> None:
    """Send ``sig`` to each process that is still the one recorded, and to the group it leads if it leads one."""
    for pid in still_running(processes.items()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _port_taken(proc) -> bool:
    """Whether a process ended because its port was taken (uvicorn's "address already in use")."""
    return proc.popen.poll() is not None and any(t in _tail(proc.log, 40) for t in _PORT_TAKEN)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (so cleanup runs); only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def signals_ignored():
    """Within the block, SIGINT and SIGTERM are ignored (a second Ctrl-C must not cut the clean-up short);
    only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------ the processes


@dataclass
class Proc:
    """One process the launcher started (the leader of its own process group)."""

    name: str
    popen: subprocess.Popen
    log: Path
    port: int
    partition: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid


class LocalFederation:
    """SuperLink + SuperNodes as processes under ``workdir`` (``logs/``, ``flwr-home/``); stops them on exit."""

    def __init__(self, workdir: str | Path, tls: TlsFiles | None = None, host: str = "127.0.0.1"):
        self.workdir = Path(workdir).resolve()
        self.logs = self.workdir / "logs"
        self.homes = self.workdir / "flwr-home"
        self.tls, self.host = tls, host
        self.superlink: Proc | None = None
        self.nodes: dict[int, Proc] = {}
        self.extra: list[Proc] = []
        self.seen: dict[int, int | None] = {}     # every process started here or below: pid -> start time
        self.node_ids: dict[int, int] = {}
        self._node_args: dict[int, dict] = {}     # partition -> how its node was started (for a restart)

    # -- starting
    def _env(self, home: str) -> dict:
        env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.homes / home), "PYTHONUNBUFFERED": "1"}
        (self.homes / home).mkdir(parents=True, exist_ok=True)
        return env

    def _spawn(self, name: str, argv: list[str], home: str, port: int, partition=None) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self._env(home), cwd=self.workdir, start_new_session=True)
        self.seen[popen.pid] = start_time(popen.pid)
        return Proc(name, popen, log, port, partition)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.superlink.port}"

    def start_superlink(self, port: int | None = None) -> Proc:
        """Start the SuperLink (one HTTP port for the Fleet, Control and Runtime APIs)."""
        port = port or free_ports(1, self.host)[0]
        argv = [_exe("flower-superlink"), "--host", self.host, "--port", str(port),
                "--disable-runtime-dependency-installation"]
        if self.tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.server_cert),
                     "--ssl-keyfile", str(self.tls.server_key)]
        self.superlink = self._spawn("superlink", argv, "superlink", port)
        self._write_connection()
        return self.superlink

    def _write_connection(self) -> None:
        lines = [f"[superlink.{CONNECTION}]", f"address = {json.dumps(self.address)}"]
        if self.tls is None:
            lines.append("insecure = true")
        else:
            lines.append(f"root-certificates = {json.dumps(str(Path(self.tls.ca_cert).resolve()))}")
        home = self.homes / "cli"
        home.mkdir(parents=True, exist_ok=True)
        atomic_write_text(home / "config.toml", "\n".join(lines) + "\n")

    def start_supernode(self, partition: int, num_partitions: int, config: dict | None = None,
                        root_certificates: str | Path | None = None, name: str | None = None,
                        insecure: bool = False, port: int | None = None) -> Proc:
        """Start the SuperNode of ``partition`` (its own runtime port, a free one unless ``port``).

        ``root_certificates`` overrides the federation's CA, ``insecure`` makes the node speak plain HTTP;
        ``name`` starts an extra node that ``wait_healthy`` does not wait for (tests of intruders).
        """
        if name is None:
            self._node_args[partition] = dict(num_partitions=num_partitions, config=config,
                                              root_certificates=root_certificates, insecure=insecure)
        port = port or free_ports(1, self.host)[0]
        cfg = {"partition-id": partition, "num-partitions": num_partitions, **(config or {})}
        argv = [_exe("flower-supernode"), "--superlink", self.address, "--host", self.host, "--port", str(port),
                "--node-config", node_config_arg(cfg)]
        ca = root_certificates if root_certificates is not None else (self.tls and self.tls.ca_cert)
        argv += ["--root-certificates", str(ca)] if ca and not insecure else ["--insecure"]
        proc = self._spawn(name or f"supernode-{partition}", argv, name or f"supernode-{partition}", port,
                           partition)
        if name is None:
            self.nodes[partition] = proc
        else:
            self.extra.append(proc)
        return proc

    # -- health
    def superlink_healthy(self) -> bool:
        """Whether the SuperLink answers ``GET /health`` with 200 (over TLS checked against the CA)."""
        scheme = "http" if self.tls is None else "https"
        handlers = [urllib.request.ProxyHandler({})]          # localhost: never through an HTTP(S)_PROXY
        if self.tls is not None:
            handlers.append(urllib.request.HTTPSHandler(
                context=ssl.create_default_context(cafile=str(self.tls.ca_cert))))
        try:
            with urllib.request.build_opener(*handlers).open(f"{scheme}://{self.address}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def registered_id(self, proc: Proc) -> int | None:
        """The SuperNode ID a node logged once the SuperLink accepted it, else None."""
        try:
            m = _NODE_ID.search(proc.log.read_text(errors="replace"))
        except OSError:
            return None
        return int(m.group(1)) if m else None

    def wait_healthy(self, timeout: float, restarts: int = 3) -> dict[int, int]:
        """Wait until the SuperLink is healthy and every node registered; partition -> SuperNode ID.

        A process that could not bind its port (another program took it after ``free_ports`` looked) is started
        again on another port, up to ``restarts`` times (the SuperLink only while no node points at it yet).
        """
        deadline = time.monotonic() + timeout
        while not self.superlink_healthy():
            if _port_taken(self.superlink) and not self.nodes and restarts > 0:
                restarts -= 1
                self.extra.append(self.superlink)
                self.start_superlink()
                continue
            self._check_exited([self.superlink], "while starting")
            if time.monotonic() > deadline:
                raise DeploymentError(f"the SuperLink at {self.address} was not healthy within {timeout:.0f} s; "
                                      f"log {self.superlink.log}:\n{_tail(self.superlink.log)}")
            time.sleep(0.2)
        while True:
            for part, proc in list(self.nodes.items()):
                if part in self.node_ids:
                    continue
                if (nid := self.registered_id(proc)) is not None:
                    self.node_ids[part] = nid
                elif _port_taken(proc) and restarts > 0:
                    restarts -= 1
                    self.extra.append(proc)
                    self.start_supernode(part, **self._node_args[part])
            if len(self.node_ids) == len(self.nodes):
                return dict(self.node_ids)
            self._check_exited(list(self.nodes.values()), "before registering")
            if time.monotonic() > deadline:
                missing = sorted(set(self.nodes) - set(self.node_ids))
                raise DeploymentError(f"SuperNodes of partitions {missing} did not register within "
                                      f"{timeout:.0f} s; log {self.nodes[missing[0]].log}:\n"
                                      f"{_tail(self.nodes[missing[0]].log)}")
            time.sleep(0.2)

    def _check_exited(self, procs, when: str) -> None:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise DeploymentError(f"{proc.name} exited (status {proc.popen.returncode}) {when}; "
                                      f"log {proc.log}:\n{_tail(proc.log)}")

    # -- running
    def run_app(self, app_dir: str | Path, run_config: dict, timeout: float, on_tick=None) -> dict:
        """``flwr run APP CONNECTION --stream --run-config FILE`` (output in ``logs/flwr-run.log``), then the
        run's final status from the SuperLink (``flwr ls``: ``flwr run`` exits 0 even when the ServerApp fails).

        ``on_tick()`` is called about every 0.2 s while the run is going (fault injection, monitoring).
        Returns {"returncode", "run_id", "status" (e.g. "finished:completed"), "details", "elapsed_s",
        "traffic_bytes"}; raises DeploymentError after ``timeout`` seconds (the caller stops the processes).
        """
        cfg_file = self.workdir / "run_config.toml"
        atomic_write_text(cfg_file, "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in run_config.items()))
        argv = [_exe("flwr"), "run", str(Path(app_dir).resolve()), CONNECTION, "--stream",
                "--run-config", str(cfg_file)]
        proc = self._spawn("flwr-run", argv, "cli", 0)
        self.extra.append(proc)
        deadline = time.monotonic() + timeout
        while proc.popen.poll() is None:
            self.seen.update(descendants(self.seen))
            if on_tick is not None:
                on_tick()
            if time.monotonic() > deadline:
                raise DeploymentError(f"the run did not finish within {timeout:.0f} s; "
                                      f"log {proc.log}:\n{_tail(proc.log)}")
            time.sleep(0.2)
        info = {"returncode": proc.popen.returncode, "run_id": None, "status": "unknown", "details": ""}
        ids = re.findall(r"Successfully started run (\d+)", proc.log.read_text(errors="replace"))
        if ids:
            info["run_id"] = int(ids[-1])
            info.update(self.run_status(info["run_id"]))
        return info

    def run_status(self, run_id: int) -> dict:
        """A run's status, details, elapsed seconds and traffic, as the SuperLink reports them (``flwr ls``)."""
        argv = [_exe("flwr"), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"]
        try:
            out = subprocess.run(argv, env=self._env("cli"), capture_output=True, text=True, timeout=60,
                                 cwd=self.workdir).stdout
            run = json.loads(out)["runs"][0]
        except (subprocess.TimeoutExpired, ValueError, KeyError, IndexError) as e:
            return {"status": "unknown", "details": f"flwr ls failed: {e}"}
        return {"status": run.get("status", "unknown"), "details": run.get("status-details", ""),
                "elapsed_s": run.get("elapsed"), "traffic_bytes": run.get("network-traffic", {}).get("total-bytes")}

    def sent_replies(self, proc: Proc) -> int:
        """How many replies a node has sent so far (from its log)."""
        try:
            return proc.log.read_text(errors="replace").count(_SENT)
        except OSError:
            return 0

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a process, its group and its descendants (a crash, with the default SIGKILL)."""
        tree = descendants({proc.pid: self.seen.get(proc.pid)})
        self.seen.update(tree)
        _signal(tree, sig)

    # -- stopping
    def all_procs(self) -> list[Proc]:
        return [p for p in (self.superlink, *self.nodes.values(), *self.extra) if p is not None]

    def stop(self, grace: float = 5.0) -> dict[int, int | None]:
        """Stop every process started here and all their descendants; returns every process seen (pid -> start time).

        SIGTERM to each process and the group it leads, up to ``grace`` seconds, then SIGKILL to whatever is left
        (rescanning for children started meanwhile); the direct children are reaped. A PID counts as ours only
        with the start time it had when it was seen (PIDs are reused). Raises DeploymentError if one survives.
        """
        self.seen.update(descendants(self.seen))
        _signal(self.seen, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and still_running(self.seen.items()):
            for p in self.all_procs():
                p.popen.poll()
            time.sleep(0.1)
        for _ in range(3):
            self.seen.update(descendants(self.seen))
            if not still_running(self.seen.items()):
                break
            _signal(self.seen, signal.SIGKILL)
            time.sleep(0.2)
        for p in self.all_procs():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=5)
        left = still_running(self.seen.items())
        if left:
            raise DeploymentError(f"processes {left} are still running after SIGKILL")
        return dict(self.seen)

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _exe(name: str) -> str:
    """The console script ``name`` next to this Python (the venv's), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


# --------------------------------------------------------------------------------------------- one run

APP_DIR = Path(__file__).resolve().parent / "app"     # fedsim's Flower app folder (part of the package)


def fedsim_run_config(spec, app_dir: str | Path = APP_DIR) -> dict:
    """A ``fedsim.flower.spec.FlowerSpec`` as the run config ``flwr run`` takes for ``app_dir``.

    Keys the app's pyproject does not declare are left out (the apps then use their defaults from
    ``spec.KEYS``); a spec that sets such a key to anything but its default is refused.
    """
    from fedsim.flower.spec import KEYS

    declared = app_config_keys(app_dir)
    values = spec.to_run_config()
    changed = [k for k, v in values.items() if k not in declared and v != KEYS[k][1]]
    if changed:
        raise DeploymentError(f"run-config keys {', '.join(map(repr, changed))} are set but not declared in "
                              f"{Path(app_dir) / 'pyproject.toml'}; declare them there to use them on a deployment")
    return {k: v for k, v in values.items() if k in declared}



def deploy(spec: Deployment, overwrite: bool = False) -> dict:
    """Run ``spec`` as a local deployment and return the report also written to ``OUT/deployment.json``.

    Raises DeploymentError (with log lines) when the federation does not come up, the run fails or times
    out; every process is stopped in any case (Ctrl-C and SIGTERM included). A folder that holds another
    deployment's report is refused unless ``overwrite`` (which clears its ``logs/``).
    """
    out = Path(spec.out_dir).resolve()
    if (out / "deployment.json").exists() and not overwrite:
        raise DeploymentError(f"{out} holds another deployment (deployment.json); choose another folder or overwrite")
    if spec.num_nodes < 1:
        raise DeploymentError(f"num_nodes = {spec.num_nodes}: a deployment needs at least one SuperNode")
    unknown = sorted(set(spec.run_config) - app_config_keys(spec.app_dir))
    if unknown:
        raise DeploymentError(f"run-config keys {', '.join(map(repr, unknown))} are not declared in "
                              f"{Path(spec.app_dir) / 'pyproject.toml'} [tool.flwr.app.config]; flwr run refuses them")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "logs", ignore_errors=True)
    report: dict = {"app": str(Path(spec.app_dir).resolve()), "num_nodes": spec.num_nodes,
                    "tls": spec.tls is not None, "run_config": dict(spec.run_config), "dropped": [],
                    "status": "failed"}
    t0 = time.monotonic()
    fed = LocalFederation(out, tls=spec.tls)
    try:
        with sigterm_as_interrupt():
            try:
                fed.start_superlink()
                fed.wait_healthy(spec.startup_timeout)           # before the nodes: it may move to another port
                for i in range(spec.num_nodes):
                    fed.start_supernode(i, spec.num_nodes, {**spec.node_config, **spec.node_extra.get(i, {})})
                report["node_ids"] = {str(k): v for k, v in sorted(fed.wait_healthy(spec.startup_timeout).items())}
                report["startup_s"] = round(time.monotonic() - t0, 3)
                t_run = time.monotonic()
                watch = _NodeWatch(fed, spec.kill_after, t_run)
                info = fed.run_app(spec.app_dir, spec.run_config, spec.run_timeout, on_tick=watch.tick)
                watch.tick()
                report["run_s"] = round(time.monotonic() - t_run, 3)
                report["dropped"] = watch.events
                report["run"] = info
                if info["returncode"] != 0 or info["status"] != "finished:completed":
                    raise DeploymentError(f"the run failed (flwr run exit status {info['returncode']}, run status "
                                          f"{info['status']}: {info['details']}); log {out / 'logs/flwr-run.log'}:"
                                          f"\n{_tail(out / 'logs' / 'flwr-run.log')}")
                report["status"] = "finished"
            except KeyboardInterrupt:
                report["status"] = "interrupted"
                raise
            except DeploymentError as e:
                report["error"] = str(e).splitlines()[0]
                raise
    finally:
        t_stop = time.monotonic()
        try:
            with signals_ignored():
                fed.stop()
            shutil.rmtree(fed.homes, ignore_errors=True)      # installed app copies; remade by every run
        finally:
            report["superlink"] = fed.superlink and {"port": fed.superlink.port, "pid": fed.superlink.pid}
            report["nodes"] = [{"partition": p.partition, "port": p.port, "pid": p.pid,
                                "node_id": fed.node_ids.get(p.partition)} for p in fed.nodes.values()]
            report["pids"] = sorted(fed.seen)
            report["processes"] = sorted([pid, started] for pid, started in fed.seen.items())
            report["stop_s"] = round(time.monotonic() - t_stop, 3)
            atomic_write_text(out / "deployment.json", json.dumps(report, indent=1) + "\n")
    return report


class _NodeWatch:
    """Notices nodes whose process ended during the run (and kills nodes per the fault plan)."""

    def __init__(self, fed: LocalFederation, kill_after: dict, t0: float):
        self.fed, self.kill_after, self.t0 = fed, dict(kill_after), t0
        self.events: list[dict] = []
        self._gone: set[int] = set()

    def tick(self) -> None:
        for part, proc in self.fed.nodes.items():
            if part in self._gone:
                continue
            cause = None
            if part in self.kill_after and self.fed.sent_replies(proc) >= self.kill_after[part]:
                self.fed.kill(proc)
                proc.popen.wait(timeout=10)
                cause = f"killed by the fault plan after {self.kill_after[part]} replies"
            elif proc.popen.poll() is not None:
                cause = "exited"
            if cause:
                self._gone.add(part)
                self.events.append({"partition": part, "node_id": self.fed.node_ids.get(part),
                                    "after_s": round(time.monotonic() - self.t0, 2),
                                    "returncode": proc.popen.returncode, "replies_sent": self.fed.sent_replies(proc),
                                    "cause": cause})


def run_deployment(spec, *, timeout: float = 600.0, tls: bool = False, startup_timeout: float = 120.0) -> dict:
    """``fedsim flower --mode deployment``: ``spec`` (a FlowerSpec with ``out`` set) on a local deployment of
    ``spec.run.clients`` SuperNodes; with ``tls``, fresh certificates in ``OUT/tls``. Returns the ServerApp's
    result dict with the launcher's report under "deployment"; failures raise ``apps.FlowerRunError``."""
    from fedsim.flower.apps import FlowerRunError
    from fedsim.flower.tls import make_certificates

    if not spec.out:
        raise FlowerRunError("a deployment run needs an output folder (out) for the ServerApp's files")
    out = Path(spec.out)
    try:
        files = make_certificates(out / "tls") if tls else None
        report = deploy(Deployment(APP_DIR, out, spec.run.clients, run_config=fedsim_run_config(spec), tls=files,
                                   startup_timeout=startup_timeout, run_timeout=timeout), overwrite=True)
    except DeploymentError as e:
        raise FlowerRunError(str(e)) from e
    if not (out / "result.json").is_file():
        raise FlowerRunError(f"the deployment finished without the ServerApp writing {out / 'result.json'}")
    result = json.loads((out / "result.json").read_text())
    result["deployment"] = {k: report.get(k) for k in ("startup_s", "run_s", "stop_s", "node_ids", "dropped", "tls")}
    return result
