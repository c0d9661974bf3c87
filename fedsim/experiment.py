"""From a ``RunConfig`` to a finished run: build data, model, topology and algorithm; run with checkpoints.

``build(cfg)`` returns the pieces; ``run(cfg, out_dir)`` runs them and writes, atomically, into
``out_dir``: ``config.toml``, ``history.json``, ``history.csv`` and a resumable ``checkpoint.pt``
every ``checkpoint_every`` rounds. ``run(..., resume=True)`` continues from the checkpoint and gives
the same history as an uninterrupted run (randomness is keyed by round, not by call order).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import topologies
from fedsim import data as fdata
from fedsim.algorithms import FedAvg, FedAvgState, Gossip, GossipState
from fedsim.config import ConfigError, RunConfig, to_toml
from fedsim.engine import Federation, Result, atomic_write_text, simulate
from fedsim.messages import LinkDrop
from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.training import ClientData, LocalSGD

DIRECTED = {"directed_ring": topologies.directed_ring, "directed_exponential": topologies.directed_exponential}
MIXING = {"metropolis": topologies.metropolis_hastings, "max_degree": topologies.max_degree,
          "uniform": topologies.uniform_neighbour}
STATES = {"FedAvgState": FedAvgState, "GossipState": GossipState}


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
    accepted = inspect.signature(fn).parameters
    graph = topologies.build(top.name, None if top.name == "edge_list" else cfg.clients, seed=cfg.seed,
                             **{k: v for k, v in params.items() if k in accepted})
    if graph.number_of_nodes() != cfg.clients:
        raise ConfigError(f"topology has {graph.number_of_nodes()} nodes but clients = {cfg.clients}")
    if top.schedule == "matching":
        return topologies.RandomMatching(graph, seed=cfg.seed)
    if top.schedule == "failures":
        return topologies.LinkFailures(graph, q=top.q, seed=cfg.seed)
    return topologies.Static(MIXING[top.mixing](graph))


def build(cfg: RunConfig) -> Setup:
    """Load data, partition it, and build the model, trainer, algorithm and taps of ``cfg``."""
    device = device_of(cfg)
    dataset = fdata.load(cfg.data.dataset, cfg.data.dir or None)
    train, test = fdata.train_test_split(dataset, cfg.data.test_fraction, seed=cfg.seed)
    params = {"dirichlet": {"alpha": cfg.data.alpha}, "sampled": {"per_client": cfg.data.per_client}}
    parts = fdata.partition(cfg.data.partition, train.y, cfg.clients, seed=cfg.seed,
                            **params.get(cfg.data.partition, {}))
    data = ClientData.from_parts(train.x, train.y, parts, device=device)
    fed = Federation(data, torch.as_tensor(test.x, device=device), torch.as_tensor(test.y, device=device),
                     Streams(cfg.seed), build_schedule(cfg), device)
    model = build_model(cfg.model.name, tuple(train.x.shape[1:]), dataset.n_classes, cfg.model.hidden).to(device)
    alg = cfg.algorithm
    trainer = LocalSGD(model, lr=alg.lr, steps=alg.local_steps, batch_size=alg.batch_size,
                       momentum=alg.momentum, weight_decay=alg.weight_decay)
    if alg.name == "fedavg":
        algorithm = FedAvg(trainer, alg.clients_per_round or cfg.clients, weighted=alg.weighted,
                           vectorized=cfg.vectorized, keep_momentum=alg.keep_momentum)
    else:
        algorithm = Gossip(trainer, alg.active_fraction, same_init=alg.same_init, vectorized=cfg.vectorized,
                           keep_momentum=alg.keep_momentum)
    taps = (LinkDrop(cfg.taps.link_drop, seed=cfg.seed),) if cfg.taps.link_drop else ()
    return Setup(algorithm, fed, taps)


def save_checkpoint(path: Path, round: int, state, history: list[dict], config_toml: str) -> None:
    """Atomically save a resumable checkpoint (state tensors, history, config)."""
    payload = {"round": round, "state_type": type(state).__name__,
               "state": {f.name: None if getattr(state, f.name) is None else getattr(state, f.name).cpu()
                         for f in dataclasses.fields(state)},
               "history": history, "config": config_toml}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_checkpoint(path: Path, device: torch.device) -> tuple[int, Any, list[dict], str]:
    """(next round, state, history, config TOML) from a checkpoint."""
    payload = torch.load(path, map_location=device, weights_only=True)
    state = STATES[payload["state_type"]](**payload["state"])
    return payload["round"], state, payload["history"], payload["config"]


def run(cfg: RunConfig, out_dir: str | Path | None = None, resume: bool = False,
        on_round: Callable[[int, Any, list[dict]], None] | None = None) -> Result:
    """Run ``cfg``; with ``out_dir`` write config, history and checkpoints there (``resume`` continues)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    setup = build(cfg)
    config_toml = to_toml(cfg)
    state, start, history = None, 0, []
    ckpt = Path(out_dir) / "checkpoint.pt" if out_dir is not None else None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if resume and ckpt.exists():
            start, state, history, saved = load_checkpoint(ckpt, setup.fed.device)
            if _resume_key(saved) != _resume_key(config_toml):
                raise ConfigError(f"{ckpt} was written by a different config; use a new output folder "
                                  "or the same config to resume")
        atomic_write_text(out / "config.toml", config_toml)

    def hook(t, st, hist):
        if ckpt is not None and cfg.checkpoint_every and ((t + 1) % cfg.checkpoint_every == 0 or t + 1 == cfg.rounds):
            save_checkpoint(ckpt, t + 1, st, hist, config_toml)
        if on_round is not None:
            on_round(t, st, hist)

    result = simulate(setup.algorithm, setup.fed, cfg.rounds, state=state, start_round=start, history=history,
                      taps=setup.taps, eval_every=cfg.eval_every, on_round=hook)
    if out_dir is not None:
        result.to_json(Path(out_dir) / "history.json")
        result.to_csv(Path(out_dir) / "history.csv")
    return result


def _resume_key(config_toml: str) -> dict:
    """A config without the settings that do not change results (threads, device, data folder)."""
    from fedsim.config import tomllib

    values = tomllib.loads(config_toml)
    for key in ("threads", "device"):
        values.pop(key, None)
    values.get("data", {}).pop("dir", None)
    return values
