"""From a ``RunConfig`` to a finished run: build data, model, topology and algorithm; run with checkpoints.

``build(cfg)`` returns the pieces; ``run(cfg, out_dir)`` runs them and writes, atomically, into
``out_dir``: ``config.toml``, ``history.json``, ``history.csv`` and a resumable ``checkpoint.pt``
every ``checkpoint_every`` rounds. ``run(..., resume=True)`` continues from the checkpoint and gives
the same history as an uninterrupted run (randomness is keyed by round, not by call order).
Checkpoints are checksummed and verified before they are loaded; a folder that holds another run is
refused unless ``resume`` or ``overwrite`` (``fedsim.runs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import topologies
from fedsim import data as fdata
from fedsim.algorithms import AsyncGossip, AsyncGossipState, FedAvg, FedAvgState, Gossip, GossipState
from fedsim.averaging import Averaging
from fedsim.config import ConfigError, RunConfig, TopologyConfig, to_toml
from fedsim.engine import Federation, Result, atomic_write_text, simulate
from fedsim.messages import LinkDrop
from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.runs import (RESUME_FREE, CheckpointError, RunFolderError, clear_run, config_changes, folder_lock,
                         folder_changes, read_checkpoint, run_files, write_checkpoint)
from fedsim.training import ClientData, LocalSGD

DIRECTED = {"directed_ring": topologies.directed_ring, "directed_exponential": topologies.directed_exponential}
MIXING = {"metropolis": topologies.metropolis_hastings, "max_degree": topologies.max_degree,
          "uniform": topologies.uniform_neighbour}
STATES = {"FedAvgState": FedAvgState, "GossipState": GossipState, "AsyncGossipState": AsyncGossipState}


@dataclass(frozen=True)
class Setup:
    """The built pieces of a run."""

    algorithm: Any
    fed: Federation
    taps: tuple


def device_of(cfg: RunConfig) -> torch.device:
    """The configured device, with a clear error if CUDA is asked for but missing."""
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {cfg.device!r} but CUDA is not available here; use device = 'cpu'")
    return torch.device(cfg.device)


def build_schedule(cfg: RunConfig):
    """The topology schedule of a gossip run (``None`` for a star/FedAvg run)."""
    top = cfg.topology
    if cfg.algorithm.name == "fedavg":
        return None
    if top.name in DIRECTED:
        if top.schedule != "static":
            raise ConfigError(f"topology.schedule = {top.schedule!r} is not supported on directed graphs")
        return topologies.PushSum(DIRECTED[top.name](cfg.clients))
    params = {"k": top.k, "p": top.p, "m": top.m, "path": top.path}
    fn = topologies.GENERATORS.get(top.name)
    if fn is None:
        known = ", ".join(sorted([*topologies.GENERATORS, *DIRECTED]))
        raise ConfigError(f"topology.name = {top.name!r} is unknown; known: {known}")
    if top.name == "edge_list" and not top.path:
        raise ConfigError("topology.name = 'edge_list' needs topology.path, the edge-list file (one 'u v' per line)")
    accepted = inspect.signature(fn).parameters
    used = {k: v for k, v in params.items() if k in accepted}
    defaults = TopologyConfig()
    ignored = [k for k, v in params.items() if k not in accepted and v != getattr(defaults, k)]
    if ignored:
        takes = ", ".join(f"topology.{k}" for k in params if k in accepted) or \
            "none of topology.k, topology.p, topology.m, topology.path"
        raise ConfigError(f"topology.{ignored[0]} = {params[ignored[0]]!r} does not apply to topology.name = "
                          f"{top.name!r} (it takes {takes})")
    try:
        graph = topologies.build(top.name, None if top.name == "edge_list" else cfg.clients, seed=cfg.seed, **used)
    except topologies.TopologyError as e:
        given = ", ".join([*([] if top.name == "edge_list" else [f"clients = {cfg.clients}"]),
                           *(f"topology.{k} = {v!r}" for k, v in used.items())])
        raise ConfigError(f"topology.name = {top.name!r} with {given}: {e}") from None
    if graph.number_of_nodes() != cfg.clients:
        raise ConfigError(f"topology has {graph.number_of_nodes()} nodes but clients = {cfg.clients}")
    if top.schedule == "matching":
        return topologies.RandomMatching(graph, seed=cfg.seed)
    if top.schedule == "failures":
        return topologies.LinkFailures(graph, q=top.q, seed=cfg.seed)
    return topologies.Static(MIXING[top.mixing](graph))


def partition_clients(cfg: RunConfig, train: fdata.Dataset) -> list:
    """The clients' sample indices under ``cfg.data.partition``; a split the data cannot give is a ConfigError."""
    d, n = cfg.data, len(train)
    if d.partition == "sampled":
        if d.per_client > n:
            raise ConfigError(f"data.per_client = {d.per_client} exceeds the {n:,} sample(s) of the {d.dataset} "
                              f"training split; use data.per_client <= {n}")
    elif cfg.clients > n:
        raise ConfigError(f"clients = {cfg.clients:,} exceeds the {n:,} sample(s) of the {d.dataset} training split "
                          f"(data.partition = {d.partition!r} gives every client at least one); use clients <= {n}, "
                          "or data.partition = 'sampled' for overlapping draws")
    params = {"dirichlet": {"alpha": d.alpha}, "sampled": {"per_client": d.per_client}}
    try:
        return fdata.partition(d.partition, train.y, cfg.clients, seed=cfg.seed, **params.get(d.partition, {}))
    except fdata.PartitionError as exc:  # left after the checks above: a dirichlet draw with an empty client
        raise ConfigError(f"data.partition = 'dirichlet' with data.alpha = {d.alpha} leaves a client without "
                          f"samples in every draw ({cfg.clients:,} clients, {n:,} samples); raise data.alpha "
                          "or lower clients") from exc


def build(cfg: RunConfig) -> Setup:
    """Load data, partition it, and build the model, trainer, algorithm and taps of ``cfg``."""
    device = device_of(cfg)
    dataset = fdata.load(cfg.data.dataset, cfg.data.dir or None)
    train, test = fdata.train_test_split(dataset, cfg.data.test_fraction, seed=cfg.seed)
    parts = partition_clients(cfg, train)
    data = ClientData.from_parts(train.x, train.y, parts, device=device)
    fed = Federation(data, torch.as_tensor(test.x, device=device), torch.as_tensor(test.y, device=device),
                     Streams(cfg.seed), build_schedule(cfg), device)
    try:
        model = build_model(cfg.model.name, tuple(train.x.shape[1:]), dataset.n_classes, cfg.model.hidden).to(device)
    except ValueError as e:  # e.g. a CNN on inputs too small for it
        raise ConfigError(f"model.name = {cfg.model.name!r} on {cfg.data.dataset}: {e}") from None
    alg = cfg.algorithm
    trainer = LocalSGD(model, lr=alg.lr, steps=alg.local_steps, batch_size=alg.batch_size,
                       momentum=alg.momentum, weight_decay=alg.weight_decay)
    averaging = Averaging(alg.averaging, alg.beta, alg.correction_target, alg.correction_tensors, alg.correction_eps,
                          alg.correction_unbiased)
    if alg.name == "fedavg":
        algorithm = FedAvg(trainer, alg.clients_per_round or cfg.clients, weighted=alg.weighted,
                           vectorized=cfg.vectorized, keep_momentum=alg.keep_momentum, init_scheme=cfg.model.init)
    elif cfg.time.mode == "async":
        faults = cfg.faults
        algorithm = AsyncGossip(trainer, averaging, interval=tuple(cfg.time.interval), delay=faults.delay,
                                churn=faults.churn, churn_ticks=tuple(faults.churn_ticks), same_init=alg.same_init,
                                init_scheme=cfg.model.init, eval_nodes=cfg.eval_nodes, vectorized=cfg.vectorized)
    else:
        algorithm = Gossip(trainer, alg.active_fraction, same_init=alg.same_init, vectorized=cfg.vectorized,
                           keep_momentum=alg.keep_momentum, averaging=averaging, init_scheme=cfg.model.init,
                           eval_nodes=cfg.eval_nodes, delay=cfg.faults.delay)
    taps = (LinkDrop(cfg.faults.loss, seed=cfg.seed),) if cfg.faults.loss else ()
    return Setup(algorithm, fed, taps)


def save_checkpoint(path: Path, round: int, state, history: list[dict], config_toml: str,
                    seconds: float | None = None) -> None:
    """Atomically save a resumable, checksummed checkpoint (state fields, history, config and, if given, the
    run's wall time so far); see ``fedsim.runs``."""
    payload = {"round": round, "state_type": type(state).__name__,
               "state": {f.name: _to_cpu(getattr(state, f.name)) for f in dataclasses.fields(state)},
               "history": history, "config": config_toml}
    if seconds is not None:
        payload["seconds"] = float(seconds)
    write_checkpoint(path, payload)


def load_checkpoint(path: Path, device: torch.device, reference=None) -> tuple[int, Any, list[dict], str]:
    """(next round, state, history, config TOML) from a verified checkpoint.

    ``reference`` (the run's freshly initialised state) fixes the state type and every field's shape and
    dtype; without it the type is looked up in ``STATES``. Raises ``CheckpointError`` (one line naming the
    file) for a damaged, truncated, foreign or non-finite checkpoint.
    """
    payload = _checked_payload(Path(path))
    state = _restore_state(Path(path), payload, reference, device)
    return payload["round"], state, payload["history"], payload["config"]


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def _checked_payload(path: Path) -> dict:
    """A checkpoint's payload with its fields' types and the history's rounds checked."""
    payload = read_checkpoint(path)
    kinds = {"round": int, "state_type": str, "state": dict, "history": list, "config": str}
    for key, kind in kinds.items():
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise CheckpointError(f"checkpoint {path}: field {key!r} is missing or not a {kind.__name__}")
    seconds = payload.get("seconds", 0.0)   # optional (checkpoints before it had none)
    if not isinstance(seconds, float) or not math.isfinite(seconds) or seconds < 0:
        raise CheckpointError(f"checkpoint {path}: field 'seconds' is not a non-negative number")
    rounds = [row.get("round") if isinstance(row, dict) else None for row in payload["history"]]
    if rounds != list(range(1, payload["round"] + 1)):
        raise CheckpointError(f"checkpoint {path}: its history does not hold rounds 1..{payload['round']}")
    return payload


def _restore_state(path: Path, payload: dict, reference, device: torch.device):
    """The saved state, checked field by field against ``reference`` (type, shapes, dtypes) and for NaN/inf."""
    name = payload["state_type"]
    cls = type(reference) if reference is not None else STATES.get(name)
    if cls is None or cls.__name__ != name:
        expected = cls.__name__ if cls is not None else " or ".join(STATES)
        raise CheckpointError(f"checkpoint {path} holds a {name} but this run's algorithm keeps a {expected}")
    saved = payload["state"]
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in saved if k not in fields]
    missing = [k for k in fields if k not in saved]
    if unknown or missing:
        what = "; ".join(x for x in (unknown and f"unknown state field(s) {', '.join(map(repr, unknown))}",
                                     missing and f"missing state field(s) {', '.join(map(repr, missing))}") if x)
        raise CheckpointError(f"checkpoint {path}: {what} for a {name}")
    values = {}
    variable = getattr(cls, "VARIABLE_ROWS", ())   # fields whose number of rows changes during a run
    for field_name in fields:
        ref = getattr(reference, field_name) if reference is not None else _ANY
        if field_name in variable and isinstance(ref, torch.Tensor) and isinstance(saved[field_name], torch.Tensor):
            ref = ref.new_empty((saved[field_name].shape[0], *ref.shape[1:]))
        _check_value(path, f"state field {field_name!r}", saved[field_name], ref)
        values[field_name] = _to_device(saved[field_name], device)
    try:
        return cls(**values)
    except Exception as e:  # noqa: BLE001 - a state class may validate its fields
        raise CheckpointError(f"checkpoint {path}: its {name} is not valid ({type(e).__name__}: {e})") from None


_ANY = object()  # no reference value: any value passes, tensors must still be finite


def _check_value(path: Path, where: str, value, ref) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {where} {what}")

    if isinstance(value, torch.Tensor):
        if ref is not _ANY and not isinstance(ref, torch.Tensor):
            raise bad(f"is a tensor but this run's is {'None' if ref is None else type(ref).__name__}")
        if ref is not _ANY and (value.shape != ref.shape or value.dtype != ref.dtype):
            raise bad(f"has shape {list(value.shape)} ({value.dtype}) but this run's model and clients need "
                      f"{list(ref.shape)} ({ref.dtype})")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            count = int((~torch.isfinite(value)).sum())
            raise bad(f"holds {count:,} NaN/inf value(s); refusing to resume a non-finite state")
    elif isinstance(value, (list, tuple, dict)):
        if ref is not _ANY and (type(ref) is not type(value) or len(ref) != len(value)
                                or (isinstance(value, dict) and set(ref) != set(value))):
            raise bad(f"has a different structure than this run's ({type(value).__name__} of {len(value)})")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            _check_value(path, f"{where}[{k!r}]", v, _ANY if ref is _ANY else ref[k])
    else:
        if ref is not _ANY and type(ref) is not type(value):
            raise bad(f"is {type(value).__name__} but this run's is "
                      f"{'None' if ref is None else type(ref).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(f"is {value}; refusing to resume a non-finite state")


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def run(cfg: RunConfig, out_dir: str | Path | None = None, resume: bool = False,
        on_round: Callable[[int, Any, list[dict]], None] | None = None, overwrite: bool = False) -> Result:
    """Run ``cfg``; with ``out_dir`` write config, history and checkpoints there.

    A folder that holds another run (any of ``fedsim.runs.RUN_FILES``) is refused with a
    ``RunFolderError`` unless ``resume`` (continue from its checkpoint; the config may differ only in
    ``fedsim.runs.RESUME_FREE``, and ``rounds`` may only grow) or ``overwrite`` (its run files are removed
    first; other files are kept). ``resume`` on a folder without a checkpoint starts at round 0. Every
    check, including the checkpoint's checksum, shapes and finiteness, passes before anything is written.
    ``on_round(t, state, history)`` sees each state until the next round changes it (asynchronous ticks run in
    place): save or copy what it wants to keep.
    """
    if resume and overwrite:
        raise RunFolderError("resume and overwrite exclude each other: resume continues the run in the "
                             "folder, overwrite replaces it")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir) if out_dir is not None else None
    # one process at a time checks and writes a run folder: a second run into it is refused while this one runs
    with folder_lock(out) if out is not None else contextlib.nullcontext():
        return _run(cfg, out, resume, on_round, overwrite)


def _run(cfg: RunConfig, out: Path | None, resume: bool, on_round, overwrite: bool) -> Result:
    config_toml = to_toml(cfg)
    ckpt = out / "checkpoint.pt" if out is not None else None
    payload = _check_folder(out, cfg, config_toml, resume, overwrite) if out is not None else None
    began = time.perf_counter()
    setup = build(cfg)
    state, start, history, before = None, 0, [], 0.0
    if payload is not None:
        state = _restore_state(ckpt, payload, setup.algorithm.init(setup.fed), setup.fed.device)
        start, history, before = payload["round"], payload["history"], payload.get("seconds", 0.0)
    if out is not None:
        if overwrite:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", config_toml)

    def hook(t, st, hist):
        if ckpt is not None and cfg.checkpoint_every and ((t + 1) % cfg.checkpoint_every == 0 or t + 1 == cfg.rounds):
            save_checkpoint(ckpt, t + 1, st, hist, config_toml, before + time.perf_counter() - began)
        if on_round is not None:
            on_round(t, st, hist)

    result = simulate(_owning(setup.algorithm), setup.fed, cfg.rounds, state=state, start_round=start,
                      history=history, taps=setup.taps, eval_every=cfg.eval_every, on_round=hook)
    # the run's time: this invocation's (set-up and rounds) on top of the earlier ones'; none if no round was left
    result.seconds = before + (time.perf_counter() - began if start < cfg.rounds else 0.0)
    if out is not None:
        result.to_json(out / "history.json")
        result.to_csv(out / "history.csv")
    return result


def _owning(algorithm):
    """The algorithm as ``run`` runs it: every state of a run is made by ``run`` itself and read by nobody once
    the next round has run, so asynchronous ticks change the state they are given instead of copying it
    (``AsyncGossip.in_place``: the same numbers, bit for bit; about a third of a tick where a tenth of the nodes
    train)."""
    return dataclasses.replace(algorithm, in_place=True) if isinstance(algorithm, AsyncGossip) else algorithm


def check_run_folder(cfg: RunConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """The folder checks of ``run`` without running or writing anything (raises ``RunFolderError``)."""
    if resume and overwrite:
        raise RunFolderError("resume and overwrite exclude each other")
    _check_folder(Path(out_dir), cfg, to_toml(cfg), resume, overwrite)


def _check_folder(out: Path, cfg: RunConfig, config_toml: str, resume: bool, overwrite: bool) -> dict | None:
    """Refuse what would replace or mix another run; return the verified checkpoint payload when resuming."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output folder {out} is a file")
    present = run_files(out) if out.is_dir() else []
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        payload = _checked_payload(ckpt)
        try:
            changes = config_changes(payload["config"], config_toml)
        except ValueError:  # TOMLDecodeError: the checksum held, so a foreign writer
            raise CheckpointError(f"checkpoint {ckpt}: its config is not valid TOML") from None
        if changes:
            raise RunFolderError(f"{ckpt} was written by a different config: {'; '.join(changes)} "
                                 f"(checkpoint -> now); on resume only {', '.join(RESUME_FREE)} may change. "
                                 "Resume with the same config, or use --overwrite or another output folder")
        if payload["round"] > cfg.rounds:
            raise RunFolderError(f"{ckpt} is at round {payload['round']} but rounds = {cfg.rounds}; "
                                 "rounds may only grow on resume")
        return payload
    if not present or overwrite:
        return None
    changes = folder_changes(out, config_toml)
    files = ", ".join(present)
    if resume:  # a run without a checkpoint: start it again only if it is the same run
        if changes == []:
            return None
        why = f"its config.toml differs: {'; '.join(changes)}" if changes else "it has no readable config.toml"
        raise RunFolderError(f"{out} holds another run without a checkpoint ({files}; {why}); "
                             "use --overwrite or another output folder")
    if changes == []:
        raise RunFolderError(f"{out} holds a run of this config already ({files}); "
                             "pass --resume to continue it, or --overwrite to start it again")
    what = f"another run ({files}; its config differs: {'; '.join(changes)})" if changes else \
        f"fedsim output of another run ({files})"
    raise RunFolderError(f"{out} holds {what}; pass --overwrite to replace it, or choose another output folder")
