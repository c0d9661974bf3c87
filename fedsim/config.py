"""Run configuration: frozen dataclasses loaded from TOML and validated once, with errors that name the key.

A config file looks like ``experiments/configs/quickstart.toml``::

    name = "fedavg-digits"
    seed = 0
    rounds = 50
    clients = 10

    [data]        dataset, dir, test_fraction, partition, alpha, per_client
    [model]       name, hidden, init
    [algorithm]   name, lr, momentum, weight_decay, local_steps, batch_size, clients_per_round,
                  active_fraction, same_init, weighted, momentum_buffer, averaging, beta,
                  correction_target, correction_tensors, correction_eps, correction_unbiased
    [topology]    name, k, p, m, path, mixing, schedule, q
    [time]        mode, interval
    [faults]      loss, delay, churn, churn_ticks
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# the models a run config may name (fedsim.models.SIMULATION_MODELS; kept here so that reading a config needs no torch)
MODEL_NAMES = ("mlp", "lenet", "lenet_caffe")


class ConfigError(ValueError):
    """A bad configuration: the message names the key, the bad value and what is allowed."""


def _choice(where: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{where} = {value!r} is not one of {', '.join(map(repr, allowed))}")


def _positive(where: str, value, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{where} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"          # digits | mnist
    dir: str = ""                    # data directory ("" = $FEDSIM_DATA_DIR or the user cache)
    test_fraction: float = 0.2       # held-out share of the data set (stratified)
    partition: str = "iid"           # iid | dirichlet | sorted | sampled
    alpha: float = 0.5               # Dirichlet concentration (partition = "dirichlet")
    per_client: int = 32             # samples per client (partition = "sampled", clients may overlap)

    def validate(self) -> None:
        _choice("data.dataset", self.dataset, ("digits", "mnist"))
        _choice("data.partition", self.partition, ("iid", "dirichlet", "sorted", "sampled"))
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        _positive("data.alpha", self.alpha)
        _positive("data.per_client", self.per_client)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"                # mlp | lenet (LeNet-5) | lenet_caffe (Caffe's MNIST LeNet 20-50-500-10)
    hidden: tuple[int, ...] = (32,)  # MLP hidden sizes
    init: str = "default"            # default (PyTorch's) | xavier (Glorot uniform) | xavier_fan_in (Caffe's); biases 0

    def validate(self) -> None:
        _choice("model.name", self.name, MODEL_NAMES)
        _choice("model.init", self.init, ("default", "xavier", "xavier_fan_in"))
        for h in self.hidden:
            _positive("model.hidden entries", h)


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = "fedavg"             # fedavg (star) | gossip (D-PSGD; local_steps = 0: plain averaging)
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    local_steps: int = 1
    batch_size: int = 32
    clients_per_round: int = 0       # fedavg: clients sampled per round (0 = all)
    active_fraction: float = 1.0     # gossip: share of nodes that train each round
    same_init: bool = True           # gossip: all nodes start from one model
    weighted: bool = True            # fedavg: weight clients by their sample counts
    momentum_buffer: str = "auto"    # auto (gossip: keep, fedavg: reset) | keep (across rounds) | reset (every round)
    averaging: str = "plain"         # gossip: plain (W) | beta (beta own + (1 - beta) mean received) | variance_corrected
    beta: float = 0.5                # weight of the own model in the beta / variance_corrected rules, in [0, 1)
    correction_target: str = "others"     # variance_corrected: others | follow_beta
    correction_tensors: str = "weights"   # variance_corrected: weights (ndim >= 2) | all_but_bn_stats
    correction_eps: float = 0.0           # variance_corrected: eps in sqrt((target + eps) / (var + eps))
    correction_unbiased: bool = False     # variance_corrected: unbiased (n - 1) instead of population variance

    @property
    def keep_momentum(self) -> bool:
        """Whether momentum buffers live across rounds (``momentum_buffer``, resolved for the algorithm)."""
        if self.momentum_buffer == "auto":
            return self.name == "gossip"
        return self.momentum_buffer == "keep"

    def validate(self) -> None:
        _choice("algorithm.name", self.name, ("fedavg", "gossip"))
        _positive("algorithm.lr", self.lr)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"algorithm.momentum must be in [0, 1), got {self.momentum!r}")
        _positive("algorithm.weight_decay", self.weight_decay, zero_ok=True)
        _positive("algorithm.local_steps", self.local_steps, zero_ok=True)
        _positive("algorithm.batch_size", self.batch_size)
        _positive("algorithm.clients_per_round", self.clients_per_round, zero_ok=True)
        if not 0 < self.active_fraction <= 1:
            raise ConfigError(f"algorithm.active_fraction must be in (0, 1], got {self.active_fraction!r}")
        _choice("algorithm.momentum_buffer", self.momentum_buffer, ("auto", "keep", "reset"))
        _choice("algorithm.averaging", self.averaging, ("plain", "beta", "variance_corrected"))
        _choice("algorithm.correction_target", self.correction_target, ("others", "follow_beta"))
        _choice("algorithm.correction_tensors", self.correction_tensors, ("weights", "all_but_bn_stats"))
        if not 0 <= self.beta < 1:
            raise ConfigError(f"algorithm.beta must be in [0, 1), got {self.beta!r}")
        _positive("algorithm.correction_eps", self.correction_eps, zero_ok=True)
        if self.name == "fedavg" and self.averaging != "plain":
            raise ConfigError(f"algorithm.averaging = {self.averaging!r} is a gossip rule; FedAvg averages on the "
                              "server (use algorithm.name = 'gossip')")
        defaults = AlgorithmConfig.__dataclass_fields__
        if self.name == "gossip" and self.clients_per_round:
            raise ConfigError("algorithm.clients_per_round applies to algorithm.name = 'fedavg' (server-side "
                              "sampling); gossip nodes train with algorithm.active_fraction")
        if self.name == "gossip" and not self.weighted:
            raise ConfigError("algorithm.weighted applies to algorithm.name = 'fedavg' (the server's aggregation "
                              "weights); gossip weights come from topology.mixing or algorithm.averaging")
        if self.name == "fedavg" and self.active_fraction != 1:
            raise ConfigError("algorithm.active_fraction applies to algorithm.name = 'gossip'; FedAvg samples "
                              "algorithm.clients_per_round clients per round")
        if self.averaging != "variance_corrected":
            changed = [k for k in ("correction_target", "correction_tensors", "correction_eps", "correction_unbiased")
                       if getattr(self, k) != defaults[k].default]
            if changed:
                raise ConfigError(f"algorithm.{changed[0]} applies to algorithm.averaging = 'variance_corrected', "
                                  f"not {self.averaging!r}")
        if self.averaging == "plain" and self.beta != defaults["beta"].default:
            raise ConfigError("algorithm.beta applies to algorithm.averaging = 'beta' or 'variance_corrected', "
                              "not 'plain' (which mixes with the topology's weights)")
        if self.momentum and self.local_steps == 0:
            raise ConfigError(f"algorithm.momentum = {self.momentum!r} has no effect with algorithm.local_steps = 0 "
                              "(plain averaging); set momentum = 0 or take local steps")
        if self.momentum and self.local_steps == 1 and not self.keep_momentum:
            raise ConfigError(f"algorithm.momentum = {self.momentum!r} has no effect with algorithm.local_steps = 1 "
                              f"when the buffers restart every round (algorithm.momentum_buffer = "
                              f"{self.momentum_buffer!r}); set algorithm.momentum_buffer = 'keep' or more local steps")


@dataclass(frozen=True)
class TopologyConfig:
    name: str = "star"               # star, or any graph of topologies.GENERATORS
    k: int = 4                       # degree (regular, watts_strogatz)
    p: float = 0.1                   # edge / rewiring probability (erdos_renyi, watts_strogatz)
    m: int = 2                       # attachment edges (barabasi_albert)
    path: str = ""                   # edge-list file (edge_list)
    mixing: str = "metropolis"       # metropolis | max_degree | uniform
    schedule: str = "static"         # static | matching (random matching per round) | failures (i.i.d. link failures)
    q: float = 0.1                   # link failure probability (schedule = "failures")

    def validate(self) -> None:
        _choice("topology.mixing", self.mixing, ("metropolis", "max_degree", "uniform"))
        _choice("topology.schedule", self.schedule, ("static", "matching", "failures"))
        if self.schedule != "static" and self.mixing != "metropolis":
            raise ConfigError(f"topology.mixing = {self.mixing!r} applies to schedule = 'static' only; the "
                              f"{self.schedule!r} schedule sets its own weights (use mixing = 'metropolis')")
        if not 0 <= self.q <= 1:
            raise ConfigError(f"topology.q must be in [0, 1], got {self.q!r}")
        if self.schedule != "failures" and self.q != TopologyConfig.__dataclass_fields__["q"].default:
            raise ConfigError(f"topology.q (link failure probability) applies to schedule = 'failures', not "
                              f"{self.schedule!r} (for lost messages see faults.loss)")
        if self.name in ("directed_ring", "directed_exponential") and self.mixing != "metropolis":
            raise ConfigError(f"topology.mixing = {self.mixing!r} does not apply to {self.name!r}: push-sum sets "
                              "its own column-stochastic weights (leave mixing = 'metropolis')")


def _int_range(where: str, value: tuple[int, ...], minimum: int) -> None:
    if len(value) != 2 or not minimum <= value[0] <= value[1]:
        raise ConfigError(f"{where} must be [low, high] with {minimum} <= low <= high, got {list(value)!r}")


@dataclass(frozen=True)
class TimeConfig:
    mode: str = "sync"               # sync (rounds: every node trains, sends, mixes) | async (ticks, per-node clocks)
    interval: tuple[int, ...] = (8, 12)   # async: ticks between a node's trainings, uniform in [low, high]

    def validate(self) -> None:
        _choice("time.mode", self.mode, ("sync", "async"))
        _int_range("time.interval", self.interval, 1)


@dataclass(frozen=True)
class FaultsConfig:
    loss: float = 0.0                # probability that any one message is lost
    delay: int = 0                   # gossip: rounds (sync, static topology) or ticks (async) a message is in flight
    churn: float = 0.0               # async: per-tick probability that an online node goes offline
    churn_ticks: tuple[int, ...] = (10, 50)   # async: how long it stays offline, uniform in [low, high] ticks

    def validate(self) -> None:
        if not 0 <= self.loss <= 1:
            raise ConfigError(f"faults.loss must be in [0, 1], got {self.loss!r}")
        _positive("faults.delay", self.delay, zero_ok=True)
        if not 0 <= self.churn < 1:
            raise ConfigError(f"faults.churn must be in [0, 1), got {self.churn!r}")
        _int_range("faults.churn_ticks", self.churn_ticks, 1)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    rounds: int = 50
    clients: int = 10
    device: str = "cpu"              # cpu | cuda | cuda:N
    threads: int = 1                 # torch intra-op threads (0 = torch default); see benchmarks/RESULTS.md
    eval_every: int = 1
    eval_nodes: int = 10             # gossip: nodes evaluated (evenly spaced) for node accuracy mean/min/max; 0 = all
    checkpoint_every: int = 10       # rounds between resumable checkpoints (0 = never)
    vectorized: bool = True          # False: the per-client reference loop (slow; for checking)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    time: TimeConfig = field(default_factory=TimeConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)

    def validate(self) -> "RunConfig":
        """Check every value; return self so ``RunConfig(...).validate()`` chains."""
        separators = {"/", "\0", os.sep, os.altsep or "/"}
        if not self.name.strip() or self.name in (".", "..") or any(c in self.name for c in separators):
            raise ConfigError(f"name = {self.name!r} must be a plain folder name (results/<name>/): not empty, "
                              "not '.' or '..', no '/'")
        _positive("seed", self.seed, zero_ok=True)
        _positive("rounds", self.rounds)
        if self.clients < 1:
            raise ConfigError(f"clients must be >= 1, got {self.clients!r}")
        _positive("eval_every", self.eval_every)
        _positive("eval_nodes", self.eval_nodes, zero_ok=True)
        _positive("checkpoint_every", self.checkpoint_every, zero_ok=True)
        _positive("threads", self.threads, zero_ok=True)
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"device = {self.device!r} is not 'cpu', 'cuda' or 'cuda:N'")
        for section in (self.data, self.model, self.algorithm, self.topology, self.time, self.faults):
            section.validate()
        directed = self.topology.name in ("directed_ring", "directed_exponential")
        if directed and self.algorithm.averaging != "plain":
            raise ConfigError(f"algorithm.averaging = {self.algorithm.averaging!r} needs an undirected topology; "
                              f"topology.name = {self.topology.name!r} runs push-sum, which needs 'plain'")
        if self.time.mode == "async":
            if self.algorithm.name != "gossip":
                raise ConfigError("time.mode = 'async' runs gossip nodes on their own clocks; "
                                  f"algorithm.name = {self.algorithm.name!r} runs in rounds (time.mode = 'sync')")
            if directed:
                raise ConfigError(f"time.mode = 'async' needs an undirected topology, got {self.topology.name!r}")
            if self.algorithm.momentum_buffer == "reset":
                raise ConfigError("algorithm.momentum_buffer = 'reset' does not apply to time.mode = 'async': a node "
                                  "keeps its optimizer (and momentum) across its training events")
            if self.algorithm.active_fraction != 1:
                raise ConfigError("algorithm.active_fraction applies to time.mode = 'sync'; in 'async' mode every "
                                  "node trains on its own clock (time.interval)")
        else:
            if self.faults.churn:
                raise ConfigError("faults.churn needs time.mode = 'async' (offline periods are counted in ticks)")
            if self.faults.delay and self.algorithm.name != "gossip":
                raise ConfigError("faults.delay applies to gossip (algorithm.name = 'gossip'), in rounds or ticks")
            if self.faults.delay and self.topology.schedule != "static":
                raise ConfigError(f"faults.delay in time.mode = 'sync' needs topology.schedule = 'static' (messages "
                                  f"in flight keep the edges they were sent on), got {self.topology.schedule!r}")
            if self.time.interval != TimeConfig().interval:
                raise ConfigError("time.interval applies to time.mode = 'async'")
        if self.algorithm.name == "fedavg" and self.topology.name != "star":
            raise ConfigError(f"algorithm 'fedavg' runs on a star; got topology.name = {self.topology.name!r} "
                              "(use algorithm.name = 'gossip' for other graphs)")
        if self.algorithm.name == "gossip" and self.topology.name == "star" and self.clients < 2:
            raise ConfigError("gossip needs at least 2 clients")
        if self.algorithm.clients_per_round > self.clients:
            raise ConfigError(f"algorithm.clients_per_round = {self.algorithm.clients_per_round} exceeds "
                              f"clients = {self.clients}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    """Instantiate dataclass ``cls`` from a TOML table, checking key names and value types."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if cls is RunConfig and key == "taps":
            raise ConfigError("[taps] link_drop is now [faults] loss (the section holds every fault: loss, delay, "
                              "churn)")
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            section = f" in [{where}]" if where else ""
            raise ConfigError(f"unknown key {key!r}{section}{hint} (known keys: {', '.join(fields)})")
        name = f"{where}.{key}" if where else key
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key] = _build(hint_type, value, name)
        else:
            kwargs[key] = _coerce(name, value, hint_type)
    return cls(**kwargs)


def _coerce(name: str, value, hint):
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{name}: unsupported type {hint}")  # pragma: no cover
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value!r}" + (" (NaN)" if value != value else ""))
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported type {hint}")  # pragma: no cover


def from_dict(values: dict) -> RunConfig:
    """Build and validate a ``RunConfig`` from nested dicts (as parsed from TOML)."""
    return _build(RunConfig, values, "").validate()


def read_toml(path: Path) -> dict:
    """The TOML table of a config file; a missing or unreadable file, text that is not UTF-8 or invalid TOML is
    a ConfigError naming it."""
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")   # TOML is UTF-8; a byte-order mark is tolerated
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (TOML files are UTF-8; save it as UTF-8)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load(path: str | Path) -> RunConfig:
    """Load and validate a TOML config file."""
    path = Path(path)
    values = read_toml(path)
    topo = values.get("topology")
    if isinstance(topo, dict) and isinstance(topo.get("path"), str) and topo["path"]:
        beside = path.parent / topo["path"]
        if not Path(topo["path"]).is_absolute() and beside.exists():
            topo["path"] = str(beside)  # edge lists are found relative to the config file
    try:
        return from_dict(values)
    except ConfigError as e:
        if "seeds" in values or isinstance(values.get("run"), dict):   # a study's grid, not one run
            study = path.stem.removesuffix("_full")
            raise ConfigError(f"{path} is a study config (it has {'seeds' if 'seeds' in values else '[run]'}), not "
                              f"one run's: use `fedsim experiment {study} --config {path}`") from None
        raise ConfigError(f"{path}: {e}") from None


def replace(cfg: RunConfig, overrides: dict) -> RunConfig:
    """A copy of ``cfg`` with dotted-key overrides, e.g. ``{"algorithm.lr": 0.05, "rounds": 10}``."""
    values = cfg.to_dict()
    for dotted, value in overrides.items():
        *path, key = dotted.split(".")
        table = values
        for part in path:
            if part not in table or not isinstance(table[part], dict):
                raise ConfigError(f"unknown section {part!r} in override {dotted!r}")
            table = table[part]
        if isinstance(table.get(key), str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # --set name=2024 means the string "2024"
        table[key] = list(value) if isinstance(value, tuple) else value
    return from_dict(values)


def to_toml(cfg: RunConfig) -> str:
    """Serialise a config back to TOML (flat keys first, then one table per section)."""
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    values = cfg.to_dict()
    lines = [f"{k} = {fmt(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for k, v in values.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {fmt(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"
