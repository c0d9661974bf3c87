"""The Flower run config (flat ``key = value`` pairs) -> the fedsim settings both drivers use, and node-side data.

FedAvg and gossip runs map onto a ``fedsim.config.RunConfig`` (``run_config_of``), so the fedsim engine and the
Flower apps build the same model, trainer, partition and topology from one description. FedPG runs use the
NSL-KDD paper split (``nslkdd_block``). A node loads only its own partition (``node_data``), from its own data
folder, with the engine's partitioner and seed.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass

import numpy as np
import torch

from fedsim import config as fconfig
from fedsim import data as fdata
from fedsim.config import ConfigError, RunConfig

ALGORITHMS = ("fedavg", "fedpg", "gossip")

# run-config key -> (dotted RunConfig key or None for Flower-only settings, default)
KEYS: dict[str, tuple[str | None, object]] = {
    "algorithm": ("algorithm.name", "fedavg"),
    "rounds": ("rounds", 5),
    "seed": ("seed", 0),
    "clients": ("clients", 10),
    "dataset": ("data.dataset", "digits"),
    "partition": ("data.partition", "iid"),
    "alpha": ("data.alpha", 0.5),
    "data-dir": ("data.dir", ""),
    "model": ("model.name", "mlp"),
    "hidden": ("model.hidden", "32"),
    "init": ("model.init", "default"),
    "lr": ("algorithm.lr", 0.1),
    "batch-size": ("algorithm.batch_size", 32),
    "local-steps": ("algorithm.local_steps", 1),
    "clients-per-round": ("algorithm.clients_per_round", 0),
    "weighted": ("algorithm.weighted", True),
    "active-fraction": ("algorithm.active_fraction", 1.0),
    "topology": ("topology.name", "ring"),
    "topology-k": ("topology.k", 4),
    "topology-p": ("topology.p", 0.1),
    "topology-m": ("topology.m", 2),
    "mixing": ("topology.mixing", "metropolis"),
    "averaging": ("algorithm.averaging", "plain"),
    "beta": ("algorithm.beta", 0.5),
    "vectorized": ("vectorized", False),
    # FedPG (NSL-KDD paper split) and the ServerApp's own settings
    "k": (None, 5),
    "client-fraction": (None, 1.0),
    "out": (None, ""),
    "capture": (None, False),
    "min-nodes": (None, 1),
    "round-timeout": (None, 0.0),
    "node-wait": (None, 120.0),
}

# keys that only some algorithms read (the others apply to all); a non-default value elsewhere is refused
LEARNING = ("dataset", "partition", "alpha", "model", "hidden", "init", "lr", "batch-size", "local-steps")
ONLY_FOR = {
    **{k: ("fedavg", "gossip") for k in LEARNING},
    **{k: ("fedavg",) for k in ("clients-per-round", "weighted")},
    **{k: ("gossip",) for k in ("active-fraction", "topology", "topology-k", "topology-p", "topology-m", "mixing",
                                "averaging", "beta")},
    **{k: ("fedpg",) for k in ("k", "client-fraction")},
}


@dataclass(frozen=True)
class FlowerSpec:
    """A validated Flower run config: the fedsim ``RunConfig`` (FedAvg / gossip settings) plus FedPG's and the
    ServerApp's own settings."""

    algorithm: str
    run: RunConfig
    k: int = 5
    client_fraction: float = 1.0
    out: str = ""
    capture: bool = False
    min_nodes: int = 1
    round_timeout: float = 0.0
    node_wait: float = 120.0

    def to_run_config(self) -> dict:
        """The flat run config that ``parse`` turns back into this spec (for ``flwr run --run-config``)."""
        r = self.run
        values = {"algorithm": self.algorithm, "rounds": r.rounds, "seed": r.seed, "clients": r.clients,
                  "dataset": r.data.dataset, "partition": r.data.partition, "alpha": r.data.alpha,
                  "data-dir": r.data.dir, "model": r.model.name, "hidden": ",".join(map(str, r.model.hidden)),
                  "init": r.model.init, "lr": r.algorithm.lr, "batch-size": r.algorithm.batch_size,
                  "local-steps": r.algorithm.local_steps, "clients-per-round": r.algorithm.clients_per_round,
                  "weighted": r.algorithm.weighted, "active-fraction": r.algorithm.active_fraction,
                  "topology": r.topology.name, "topology-k": r.topology.k, "topology-p": r.topology.p,
                  "topology-m": r.topology.m, "mixing": r.topology.mixing,
                  "averaging": r.algorithm.averaging, "beta": r.algorithm.beta, "vectorized": r.vectorized,
                  "k": self.k, "client-fraction": self.client_fraction, "out": self.out, "capture": self.capture,
                  "min-nodes": self.min_nodes, "round-timeout": self.round_timeout, "node-wait": self.node_wait}
        return {k: KEYS[k][1] if self.algorithm not in ONLY_FOR.get(k, ALGORITHMS) else v for k, v in values.items()}


def parse(run_config: dict) -> FlowerSpec:
    """Validate a flat run config (unknown keys, types, choices) into a ``FlowerSpec``; errors are ConfigErrors
    naming the key. Cached: every message of a run parses the same config."""
    try:
        return _parse(tuple(sorted(run_config.items())))
    except TypeError:   # an unhashable value (a list): no cache
        return _parse.__wrapped__(tuple(sorted(run_config.items())))


@functools.lru_cache(maxsize=64)
def _parse(items: tuple) -> FlowerSpec:
    run_config = dict(items)
    unknown = sorted(set(run_config) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown Flower run-config key(s) {', '.join(map(repr, unknown))}; known: "
                          f"{', '.join(KEYS)}")
    values = {k: run_config.get(k, default) for k, (_, default) in KEYS.items()}
    algorithm = values["algorithm"]
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm = {algorithm!r} is not one of {', '.join(map(repr, ALGORITHMS))} (--algorithm)")
    unused = [k for k, users in ONLY_FOR.items() if algorithm not in users and values[k] != KEYS[k][1]]
    if unused:
        k = unused[0]
        raise ConfigError(f"{k} = {values[k]!r} has no effect with algorithm = {algorithm!r} (only "
                          f"{' and '.join(ONLY_FOR[k])} read{'s' if len(ONLY_FOR[k]) == 1 else ''} it); drop it or "
                          "change --algorithm")
    overrides = {}
    for k, (dotted, _) in KEYS.items():
        if dotted is None or k == "algorithm":
            continue
        v = values[k]
        if k == "hidden":
            try:
                v = [int(h) for h in str(v).split(",") if h.strip()]
            except ValueError:
                raise ConfigError(f"hidden = {values[k]!r} must be comma-separated integers, e.g. '64,32'") from None
        overrides[dotted] = v
    overrides["algorithm.name"] = "gossip" if algorithm == "gossip" else "fedavg"
    if algorithm != "gossip":
        overrides["topology.name"] = "star"
    try:
        run = fconfig.replace(RunConfig(), overrides).validate()
        supported = not run.topology.name.startswith("directed") and run.topology.schedule == "static"
        if algorithm == "gossip" and supported:
            from fedsim.experiment import build_schedule

            build_schedule(run)   # a graph that cannot be built is refused here, before any app starts
    except ConfigError as e:
        raise ConfigError(in_flower_words(str(e))) from None
    if algorithm == "gossip" and not supported:
        raise ConfigError(f"topology = {run.topology.name!r}: Flower gossip runs support static undirected "
                          "topologies only")
    if run.algorithm.momentum:
        raise ConfigError("momentum is not supported on Flower runs")
    spec = FlowerSpec(algorithm, run, int(values["k"]), float(values["client-fraction"]), str(values["out"]),
                      bool(values["capture"]), int(values["min-nodes"]), float(values["round-timeout"]),
                      float(values["node-wait"]))
    if algorithm == "fedpg":
        from fedsim.data.nslkdd import PAPER_FEATURES

        d = len(PAPER_FEATURES)   # FedPG on Flower runs on the paper's NSL-KDD features
        if not 1 <= spec.k < d:
            raise ConfigError(f"k = {spec.k} must be in 1..{d - 1}: below d = {d}, the NSL-KDD paper features "
                              "(k = d leaves every anomaly score 0)")
    if not 0 < spec.client_fraction <= 1:
        raise ConfigError(f"client-fraction = {spec.client_fraction} must be in (0, 1]")
    if spec.min_nodes < 1 or spec.min_nodes > run.clients:
        raise ConfigError(f"min-nodes = {spec.min_nodes} must be in [1, clients = {run.clients}]")
    if spec.round_timeout < 0 or spec.node_wait < 0:
        raise ConfigError(f"round-timeout = {spec.round_timeout} and node-wait = {spec.node_wait} must be >= 0")
    return spec


def in_flower_words(message: str) -> str:
    """A fedsim config error with its dotted keys (``topology.name``) written as the Flower run-config keys
    (``topology``) that set them."""
    for key, (dotted, _) in sorted(KEYS.items(), key=lambda item: -len(item[1][0] or "")):
        if dotted:
            message = re.sub(rf"(?<![\w.]){re.escape(dotted)}(?![\w])", key, message)
    return message


def make_spec(algorithm: str = "fedavg", **values) -> FlowerSpec:
    """``parse`` from keyword arguments (underscores for dashes):
    ``make_spec("gossip", clients=8, topology="regular", topology_k=3)``."""
    return parse({"algorithm": algorithm, **{k.replace("_", "-"): v for k, v in values.items()}})


def check_data(spec: FlowerSpec) -> None:
    """Load the run's data here, through the same cached functions the nodes call (in process they then reuse it),
    so that a missing or damaged data folder is one error before any node starts, not a rejected reply per node."""
    if spec.algorithm == "fedpg":
        _nslkdd_raw(spec.run.data.dir, spec.run.clients, spec.run.seed)
    else:
        split_of(spec.run)


# -- data a node loads for itself ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _split(run: RunConfig):
    """(dataset, train, test, parts) of a run: the engine's split and partition (``fedsim.experiment``), cached per
    process so that many in-process nodes (or one Ray worker's many nodes) do not repeat it."""
    from fedsim.experiment import partition_clients

    d = run.data
    ds = fdata.load(d.dataset, d.dir or None)
    train, test = fdata.train_test_split(ds, d.test_fraction, seed=run.seed)
    return ds, train, test, partition_clients(run, train)


def _model_key(run: RunConfig) -> RunConfig:
    """What the data, partition and model depend on (rounds, algorithm details etc. do not change them)."""
    return dataclasses.replace(run, rounds=1, vectorized=False)


def split_of(run: RunConfig):
    """(dataset, train split, test split, every client's indices) of ``run``, as ``experiment.build`` makes them."""
    return _split(_model_key(run))


@functools.lru_cache(maxsize=4096)
def _node_data(run: RunConfig, client: int):
    from fedsim.training import ClientData

    _, train, _, parts = split_of(run)
    idx = parts[client]
    return ClientData.own(train.x[idx], train.y[idx], client)


def node_data(run: RunConfig, client: int):
    """Client ``client``'s own training data as a one-row ``ClientData`` (global id ``client``), cached."""
    return _node_data(_model_key(run), client)


@functools.lru_cache(maxsize=4)
def _trainer(run: RunConfig):
    from fedsim.models import build_model
    from fedsim.training import LocalSGD

    ds, train, _, _ = split_of(run)
    model = build_model(run.model.name, tuple(train.x.shape[1:]), ds.n_classes, run.model.hidden)
    a = run.algorithm
    return LocalSGD(model, lr=a.lr, steps=a.local_steps, batch_size=a.batch_size, momentum=a.momentum,
                    weight_decay=a.weight_decay)


def trainer_of(run: RunConfig):
    """The ``LocalSGD`` trainer (and its model) of ``run``, as ``experiment.build`` makes it (cached)."""
    return _trainer(_model_key(run))


@functools.lru_cache(maxsize=64)
def _nslkdd_raw(data_dir: str, n_clients: int, seed: int):
    from fedsim.data import nslkdd as K

    train = K.load_nslkdd("train", data_dir or None)
    X, names = K.features(train, "paper", None)
    normal = X[~train.is_attack]
    parts = K.split_clients(len(normal), normal[:, names.index("dst_bytes")], n_clients, how="paper", seed=seed)
    return normal, parts


def nslkdd_block(data_dir: str, n_clients: int, client: int, seed: int = 0) -> np.ndarray:
    """Client ``client``'s NSL-KDD block of the paper split, z-scored with its own scaler (as
    ``pipelines.fedpca_nslkdd.prepare`` makes ``blocks[client]``)."""
    from fedsim.data import nslkdd as K

    normal, parts = _nslkdd_raw(data_dir, n_clients, seed)
    raw = normal[parts[client]]
    return K.standardize(raw, *K.fit_scaler(raw))


def pca_statistics(block: np.ndarray) -> tuple[torch.Tensor, int]:
    """(C_i = X_i^T X_i as float64 [d, d], n_i) of one client's block, as ``PCAClients.from_blocks`` computes them."""
    return torch.as_tensor(block.T @ block, dtype=torch.float64), len(block)


def replace_run(spec: FlowerSpec, **changes) -> FlowerSpec:
    """A copy of ``spec`` with FlowerSpec fields changed."""
    return dataclasses.replace(spec, **changes)
