"""Vanishing variance: FL vs plain gossip vs variance-corrected gossip, in ticks (docs/gossip.md).

Reproduces the comparison of Tian, Al-Ars, Kitsak, Hofstee, "Vanishing Variance Problem in Fully Decentralized
Neural-Network Systems" (2024) on fedsim's engine. Methods (``METHOD_SETTINGS``):

  fl         FedAvg on a star of n clients, a fraction (0.5) sampled per round, one round per ``fl_round_ticks``
             ticks (10 = the mean training interval of a gossip node), each sampled client one local step
             (momentum kept per client, as the authors' leaves are long-lived solvers); the centre takes the
             plain mean of the models it received (``weighted = false``)
  plain      asynchronous gossip with the authors' buffer rule (``averaging = "beta"``), nodes from their own
             Xavier initialisations, on a random k-regular graph
  corrected  the same with the variance correction (``averaging = "variance_corrected"``)

Every point (method x size x seed at the main degree, and plain/corrected x degree x seed at ``degree_size``
nodes) is one fedsim run folder ``<out>/points/<point>/`` written by ``fedsim.experiment.run`` (atomic,
checksummed, resumable). Re-running skips finished points and resumes interrupted ones; ``--workers N`` runs
points in N processes (each point is a deterministic function of its config, so the results equal a serial run).
The aggregated metrics (``points.csv``, ``summary.csv``, ``curves.csv``, ``metrics.json``) and the figures
(``accuracy_vs_tick``, ``weight_variance_vs_tick``, ``ticks_vs_degree``, PNG and SVG) are written atomically, with
the resolved study config in ``study.toml``.

    python experiments/vanishing_variance.py --workers 2                       # CPU default (6-13 min on 2 cores)
    python experiments/vanishing_variance.py --config experiments/configs/vanishing_variance_full.toml
    python experiments/vanishing_variance.py --set ticks=500 --set "sizes=[50]" --out results/vv-small
    fedsim experiment vanishing_variance --workers 2            # the same study under the common command (--ray too)

A study config holds the study keys (``Study``) at the top level and a ``[run]`` table: a partial fedsim run
config (data, model, algorithm hyper-parameters, time.interval, device, threads, eval_nodes) shared by all points.
``--set KEY=VALUE`` overrides either (``--set ticks=1000``, ``--set run.model.hidden=[64]``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedsim import config as fconfig
from fedsim.config import ConfigError
from fedsim.studies import csv_text, flat_group, parse_set

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "vanishing_variance.toml"
METHODS = ("fl", "plain", "corrected")
LABELS = {"fl": "FL (FedAvg, star)", "plain": "plain gossip (beta rule)", "corrected": "corrected gossip"}
COLOURS = {"fl": "tab:blue", "plain": "tab:red", "corrected": "tab:green"}

# What each method sets in a point's fedsim config (on top of [run]).
METHOD_SETTINGS = {
    "fl": {"algorithm": {"name": "fedavg", "momentum_buffer": "keep", "weighted": False},
           "topology": {"name": "star"}, "time": {"mode": "sync"}},
    "plain": {"algorithm": {"name": "gossip", "averaging": "beta", "same_init": False},
              "topology": {"name": "regular"}, "time": {"mode": "async"}},
    "corrected": {"algorithm": {"name": "gossip", "averaging": "variance_corrected", "same_init": False},
                  "topology": {"name": "regular"}, "time": {"mode": "async"}},
}
# Keys of a point's fedsim config that the study sets; [run] may not set them.
SET_BY_STUDY = ("name", "seed", "clients", "rounds", "eval_every", "checkpoint_every", "algorithm.name",
                "algorithm.averaging", "algorithm.clients_per_round", "algorithm.same_init",
                "algorithm.momentum_buffer", "algorithm.weighted", "topology.name", "topology.k", "time.mode")
# [run] keys that only gossip points use (left out of FL points) and that only the correction uses.
GOSSIP_ONLY = ("algorithm.beta", "time", "faults.delay", "faults.churn", "faults.churn_ticks")
CORRECTION_ONLY = ("algorithm.correction_target", "algorithm.correction_tensors", "algorithm.correction_eps",
                   "algorithm.correction_unbiased")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the study config -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Study:
    """The study: which points to run, for how long, and how to read them."""

    name: str = "cpu"                               # the run id: results/vanishing_variance/<name>
    sizes: tuple[int, ...] = (50, 200)              # network sizes of the method comparison
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    degree: int = 8                                 # degree of the random regular graph in the comparison
    degrees: tuple[int, ...] = (3, 8, 16, 30, 45)   # degree sweep ...
    degree_size: int = 50                           # ... on this many nodes ...
    degree_methods: tuple[str, ...] = ("plain", "corrected")   # ... for these methods
    ticks: int = 3000
    eval_ticks: int = 20                            # evaluate every this many ticks
    checkpoint_ticks: int = 500
    keep_checkpoints: bool = True                   # false: delete a point's checkpoint once it is finished
    threshold: float = 0.8                          # "ticks to threshold" of the mean node test accuracy
    fl_round_ticks: int = 10                        # one FL round per this many ticks
    fl_fraction: float = 0.5                        # share of the FL clients sampled per round
    run: dict = field(default_factory=dict)         # the [run] table: the fedsim config shared by all points

    def validate(self) -> Study:
        for key in ("sizes", "seeds", "degrees"):
            if not getattr(self, key):
                raise ConfigError(f"{key} must not be empty")
        for key in ("methods", "degree_methods"):
            bad = [m for m in getattr(self, key) if m not in METHODS]
            if bad:
                raise ConfigError(f"{key}: unknown method {bad[0]!r}; known: {', '.join(METHODS)}")
        if not self.methods:
            raise ConfigError("methods must not be empty")
        for key in ("ticks", "eval_ticks", "fl_round_ticks", "degree", "degree_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.checkpoint_ticks < 0 or any(s < 0 for s in self.seeds):
            raise ConfigError("checkpoint_ticks and seeds must be >= 0")
        if not 0 < self.threshold <= 1 or not 0 < self.fl_fraction <= 1:
            raise ConfigError(f"threshold and fl_fraction must be in (0, 1], got {self.threshold}, {self.fl_fraction}")
        if "fl" in self.methods or "fl" in self.degree_methods:
            for key in ("ticks", "eval_ticks", "checkpoint_ticks"):
                if getattr(self, key) % self.fl_round_ticks:
                    raise ConfigError(f"{key} = {getattr(self, key)} must be a multiple of fl_round_ticks = "
                                      f"{self.fl_round_ticks} (FL rounds are placed on the tick axis)")
        graphs = [(n, self.degree) for n in self.sizes if set(self.methods) - {"fl"}]
        graphs += [(self.degree_size, k) for k in self.degrees if set(self.degree_methods) - {"fl"}]
        for n, k in graphs:
            if not 1 <= k < n or n * k % 2:
                raise ConfigError(f"a random {k}-regular graph on {n} nodes does not exist (need k < n and n k even)")
        for dotted in SET_BY_STUDY:
            if _get(self.run, dotted) is not _MISSING:
                raise ConfigError(f"run.{dotted} is set by the study for every point; remove it from [run]")
        return self


_MISSING = object()


def _get(table: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(table, dict) or part not in table:
            return _MISSING
        table = table[part]
    return table


def _drop(table: dict, dotted: str) -> None:
    *path, key = dotted.split(".")
    for part in path:
        table = table.get(part, {})
    table.pop(key, None)


def study_from_dict(values: dict) -> Study:
    """A validated ``Study`` from a parsed TOML table (unknown keys and wrong types are ``ConfigError``)."""
    fields = {f.name: f for f in dataclasses.fields(Study)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise ConfigError(f"unknown study key {key!r}{f'; did you mean {close[0]!r}?' if close else ''} "
                              f"(known: {', '.join(fields)})")
        default = fields[key].default if fields[key].default is not dataclasses.MISSING else {}
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(type(v) is type(default[0]) for v in value):
                raise ConfigError(f"{key} must be a list of {type(default[0]).__name__}, got {value!r}")
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif type(value) is not type(default):
            raise ConfigError(f"{key} must be a {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    return Study(**kwargs).validate()


def load_study(path: str | Path, overrides: dict | None = None) -> Study:
    """Read a study TOML, apply dotted ``overrides`` (``{"ticks": 500, "run.model.hidden": [64]}``), validate."""
    values = fconfig.read_toml(Path(path))
    for dotted, value in (overrides or {}).items():
        *parents, key = dotted.split(".")
        table = values
        for part in parents:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {dotted}: {part!r} is not a table")
        table[key] = value
    study = study_from_dict(values)
    for point in {p.method: p for p in expand(study)}.values():
        point_config(study, point)   # the [run] keys, checked once per method
    return study


def study_toml(study: Study) -> str:
    """The resolved study config as TOML (study keys, then [run] as fedsim writes its sections)."""
    from fedsim.studies import toml_text

    values = {f.name: getattr(study, f.name) for f in dataclasses.fields(Study) if f.name != "run"}
    return toml_text({**values, "run": study.run})


# --- points -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """One fedsim run: a method on n nodes (degree k; None for FL) with one seed."""

    method: str
    n: int
    k: int | None
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method}-n{self.n}-s{self.seed}" if self.k is None else \
            f"{self.method}-n{self.n}-k{self.k}-s{self.seed}"


def expand(study: Study) -> list[Point]:
    """Every point of the study, once (a degree-sweep point that is also a comparison point is shared)."""
    def point(method, n, k, seed):
        return Point(method, n, None if method == "fl" else k, seed)

    points = [point(m, n, study.degree, s) for n in study.sizes for m in study.methods for s in study.seeds]
    points += [point(m, study.degree_size, k, s) for k in study.degrees for m in study.degree_methods
               for s in study.seeds]
    return list(dict.fromkeys(points))


def point_config(study: Study, point: Point) -> fconfig.RunConfig:
    """The fedsim ``RunConfig`` of one point: [run], the method's settings and the point's size, degree, seed."""
    values = copy.deepcopy(study.run)
    fl = point.method == "fl"
    for dotted in (GOSSIP_ONLY + CORRECTION_ONLY if fl else CORRECTION_ONLY if point.method == "plain" else ()):
        _drop(values, dotted)
    for section, settings in METHOD_SETTINGS[point.method].items():
        values.setdefault(section, {}).update(settings)
    scale = study.fl_round_ticks if fl else 1   # FL runs in rounds of fl_round_ticks ticks; gossip in ticks
    values.update(name=point.id, seed=point.seed, clients=point.n, rounds=study.ticks // scale,
                  eval_every=max(1, study.eval_ticks // scale), checkpoint_every=study.checkpoint_ticks // scale)
    if fl:
        values["algorithm"]["clients_per_round"] = max(1, round(study.fl_fraction * point.n))
    else:
        values["topology"]["k"] = point.k
    try:
        return fconfig.from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"[run] for point {point.id}: {e}") from None


# --- running ----------------------------------------------------------------------------------------------------

def finished(cfg: fconfig.RunConfig, folder: Path) -> bool:
    """Whether ``folder`` holds the complete history of ``cfg`` (history.json ends at round ``cfg.rounds``)."""
    from fedsim.config import to_toml
    from fedsim.runs import config_changes

    try:
        rows = json.loads((folder / "history.json").read_text())["history"]
        same = config_changes((folder / "config.toml").read_text(), to_toml(cfg)) == []
    except (OSError, ValueError, KeyError):
        return False
    return same and bool(rows) and rows[-1].get("round") == cfg.rounds


def run_point(cfg: fconfig.RunConfig, folder: str, keep_checkpoint: bool = True) -> dict:
    """Run (or resume) one point into ``folder``; append this session's wall time to ``timing.json``.

    ``keep_checkpoint=False`` deletes the checkpoint once the history is written (saves disk; the point can then
    no longer be extended to more ticks without running it again)."""
    from fedsim import experiment
    from fedsim.files import atomic_write_text

    folder = Path(folder)
    first = []
    start = time.perf_counter()
    experiment.run(cfg, folder, resume=True, on_round=lambda t, *_: first or first.append(t))
    session = {"from_round": first[0] if first else cfg.rounds, "to_round": cfg.rounds,
               "seconds": round(time.perf_counter() - start, 3)}
    if not keep_checkpoint:
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    if not first:   # nothing left to simulate (only history.json was missing): no timing to record
        return session
    path = folder / "timing.json"
    sessions = json.loads(path.read_text())["sessions"] if path.exists() else []
    atomic_write_text(path, json.dumps({"sessions": sessions + [session]}, indent=1))
    return session


def check_inputs(study: Study, out: Path, overwrite: bool = False) -> dict[Point, fconfig.RunConfig]:
    """Every point's config, with the data, partitions and existing point folders checked before anything runs.

    A point folder holding a run of another config is a ``RunFolderError`` (one line) unless ``overwrite`` (the
    caller then removes the study's results: ``run_study``)."""
    from fedsim import data as fdata
    from fedsim import experiment
    from fedsim.config import to_toml
    from fedsim.runs import RunFolderError, folder_changes

    configs = {p: point_config(study, p) for p in expand(study)}
    cfg0 = next(iter(configs.values()))
    dataset = fdata.load(cfg0.data.dataset, cfg0.data.dir or None)
    for n, seed in dict.fromkeys((p.n, p.seed) for p in configs):
        cfg = next(c for p, c in configs.items() if (p.n, p.seed) == (n, seed))
        train, _ = fdata.train_test_split(dataset, cfg.data.test_fraction, seed=seed)
        experiment.partition_clients(cfg, train)
    for p, cfg in configs.items():
        if overwrite:
            break
        folder = out / "points" / p.id
        try:
            experiment.check_run_folder(cfg, folder, resume=True)
        except RunFolderError:
            changes = folder_changes(folder, to_toml(cfg))
            if not changes:
                raise
            raise RunFolderError(f"point {p.id}: {folder} holds a run of another config ({'; '.join(changes)}); "
                                 f"pass --overwrite to replace the study's results in {out}, or choose another "
                                 "--out") from None
    return configs


def run_points(configs: dict[Point, fconfig.RunConfig], out: Path, workers: int = 1, progress: bool = True,
               keep_checkpoints: bool = True, ray: str | None = None) -> int:
    """Run the unfinished points (serially, in ``workers`` processes, or as Ray tasks: ``fedsim.studies.map_tasks``);
    return how many ran."""
    from fedsim.studies import map_tasks

    todo = [p for p, cfg in configs.items() if not finished(cfg, out / "points" / p.id)]
    todo.sort(key=lambda p: (-p.n, p.method == "fl"))   # the longest first: the workers end together
    tasks = [(configs[p], str(out / "points" / p.id), keep_checkpoints) for p in todo]
    for _ in map_tasks(run_point, tasks, workers, ray, progress, desc="points"):
        pass
    return len(todo)


# --- reading and aggregating (pure functions) -------------------------------------------------------------------

def point_series(history: list[dict], method: str, round_ticks: int = 10) -> dict[str, list]:
    """The evaluated rows of a point's history on the tick axis.

    ``tick``: the row's round (gossip: one round = one tick; FL: ``round * round_ticks``); ``acc``: mean node test
    accuracy (gossip ``nodes_acc``; FL the global model, which every client receives: ``global_acc``);
    ``weight_var_ratio`` and ``weight_var_ratio.<layer>`` as recorded.
    """
    key = "global_acc" if method == "fl" else "nodes_acc"
    scale = round_ticks if method == "fl" else 1
    rows = [r for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    out = {"tick": [r["round"] * scale for r in rows], "acc": [r[key] for r in rows]}
    for k in dict.fromkeys(k for r in rows for k in r if k.startswith("weight_var_ratio")):
        out[k] = [r.get(k, math.nan) for r in rows]
    return out


def ticks_to_threshold(ticks: list[int], acc: list[float], threshold: float) -> int | None:
    """The first evaluated tick at which ``acc >= threshold`` (None if never)."""
    return next((t for t, a in zip(ticks, acc) if a is not None and a >= threshold), None)


def spread(values: list[float | None]) -> dict:
    """Mean, std (sample; 0 for one value), min and max of ``values`` with ``reached`` of ``of`` not None.

    The statistics are over all values, so they are None when any value is None (a seed that never reached
    the threshold: the mean is then only known to exceed the run's length).
    """
    got = [v for v in values if v is not None]
    out = {"reached": len(got), "of": len(values)}
    if got and len(got) == len(values):
        out.update(mean=statistics.fmean(got), std=statistics.stdev(got) if len(got) > 1 else 0.0,
                   min=min(got), max=max(got))
    else:
        out.update(mean=None, std=None, min=min(got) if got else None, max=None)
    return out


def aggregate(study: Study, series: dict[Point, dict], wall: dict[Point, float] | None = None) -> dict:
    """Per point and per group (comparison: method x size; sweep: method x degree) the ticks to threshold.

    ``wall`` (seconds per tick of each point) adds ``wall_s``: that times the ticks to threshold.
    """
    wall = wall or {}
    points = []
    for p, s in series.items():
        t = ticks_to_threshold(s["tick"], s["acc"], study.threshold)
        row = {"point": p.id, "method": p.method, "n": p.n, "k": p.k, "seed": p.seed, "ticks_to_threshold": t,
               "final_acc": s["acc"][-1] if s["acc"] else None, "final_tick": s["tick"][-1] if s["tick"] else None,
               "final_weight_var_ratio": s.get("weight_var_ratio", [None])[-1]}
        if p in wall:
            row["wall_s_per_tick"] = wall[p]
            row["wall_s"] = None if t is None else wall[p] * t
        points.append(row)
    by_id = {r["point"]: r for r in points}

    def group(sweep: str, method: str, n: int, k: int | None) -> dict:
        members = [by_id[Point(method, n, None if method == "fl" else k, s).id] for s in study.seeds]
        row = {"sweep": sweep, "method": method, "n": n, "k": None if method == "fl" else k,
               "ticks": spread([m["ticks_to_threshold"] for m in members]),
               "final_acc": spread([m["final_acc"] for m in members])}
        if all("wall_s" in m for m in members):
            row["wall_s"] = spread([m["wall_s"] for m in members])
        return row

    groups = [group("size", m, n, study.degree) for n in study.sizes for m in study.methods]
    groups += [group("degree", m, study.degree_size, k) for m in study.degree_methods for k in study.degrees]
    return {"threshold": study.threshold, "points": points, "groups": groups}


def seed_band(curves: list[dict], key: str = "acc") -> dict[str, list]:
    """Mean over seeds and min-max band of ``key`` on the ticks every seed recorded."""
    common = sorted(set.intersection(*(set(c["tick"]) for c in curves)))
    at = [dict(zip(c["tick"], c[key])) for c in curves]
    values = [[a[t] for a in at] for t in common]
    return {"tick": common, "mean": [statistics.fmean(v) for v in values], "min": [min(v) for v in values],
            "max": [max(v) for v in values]}


# --- writing ----------------------------------------------------------------------------------------------------

def write_metrics(out: Path, metrics: dict, curves: list[dict]) -> None:
    from fedsim.files import atomic_write_text

    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, allow_nan=False))
    atomic_write_text(out / "points.csv", csv_text(metrics["points"]))
    atomic_write_text(out / "summary.csv", csv_text([flat_group(g) for g in metrics["groups"]]))
    atomic_write_text(out / "curves.csv", csv_text(curves))


def size_curves(study: Study, series: dict[Point, dict]) -> list[dict]:
    """Long-format curves of the comparison: per method, size and tick the seed mean and min-max (for CSV)."""
    rows = []
    for n in study.sizes:
        for m in study.methods:
            runs = [series[Point(m, n, None if m == "fl" else study.degree, s)] for s in study.seeds]
            keys = [k for k in runs[0] if k.startswith("weight_var_ratio") or k == "acc"]
            for key in keys:
                band = seed_band(runs, key)
                rows += [{"method": m, "n": n, "metric": key, "tick": t, "mean": a, "min": lo, "max": hi}
                         for t, a, lo, hi in zip(band["tick"], band["mean"], band["min"], band["max"])]
    return rows


# --- figures ----------------------------------------------------------------------------------------------------

def plot_accuracy(study: Study, series: dict[Point, dict]):
    import matplotlib.pyplot as plt  # fedsim.plots has set the Agg backend

    from fedsim.plots import seeds_text

    fig, axes = plt.subplots(1, len(study.sizes), figsize=(5.2 * len(study.sizes), 4), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], study.sizes):
        for m in study.methods:
            band = seed_band([series[Point(m, n, None if m == "fl" else study.degree, s)] for s in study.seeds])
            ax.plot(band["tick"], band["mean"], color=COLOURS[m], label=LABELS[m])
            ax.fill_between(band["tick"], band["min"], band["max"], color=COLOURS[m], alpha=0.2, lw=0)
        ax.axhline(study.threshold, color="grey", ls="--", lw=0.8)
        ax.set(title=f"{n} nodes" + ("" if study.methods == ("fl",) else f", {study.degree}-regular"),
               xlabel="tick", ylabel="mean node test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"line: mean over {seeds_text(len(study.seeds))}; band: min-max over seeds")
    return fig


def plot_weight_variance(study: Study, series: dict[Point, dict]):
    import matplotlib.pyplot as plt

    rows, cols = len(study.sizes), len(study.methods)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for i, n in enumerate(study.sizes):
        for j, m in enumerate(study.methods):
            ax = axes[i][j]
            runs = [series[Point(m, n, None if m == "fl" else study.degree, s)] for s in study.seeds]
            for key in [k for k in runs[0] if k.startswith("weight_var_ratio.")]:
                band = seed_band(runs, key)
                (line,) = ax.plot(band["tick"], band["mean"], label=key.removeprefix("weight_var_ratio."))
                ax.fill_between(band["tick"], band["min"], band["max"], color=line.get_color(), alpha=0.2, lw=0)
            ax.axhline(1.0, color="black", ls="--", lw=0.8)
            ax.set(yscale="log", title=f"{LABELS[m]}, {n} nodes", xlabel="tick",
                   ylabel="weight variance / Xavier" if j == 0 else None)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("per-layer weight variance relative to Xavier (node mean; line: mean over seeds, band: min-max)")
    return fig


def plot_degree(study: Study, metrics: dict):
    import matplotlib.pyplot as plt

    from fedsim.plots import seeds_text

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m in study.degree_methods:
        groups = [g for g in metrics["groups"] if g["sweep"] == "degree" and g["method"] == m]
        done = [g for g in groups if g["ticks"]["mean"] is not None]
        if done:
            mean = [g["ticks"]["mean"] for g in done]
            err = [[a - g["ticks"]["min"] for a, g in zip(mean, done)], [g["ticks"]["max"] - a for a, g in zip(mean, done)]]
            ax.errorbar([g["k"] for g in done], mean, yerr=err, color=COLOURS[m], marker="o", capsize=3, label=LABELS[m])
        late = [g for g in groups if g["ticks"]["mean"] is None]
        if late:
            ax.scatter([g["k"] for g in late], [study.ticks] * len(late), marker="^", facecolors="none",
                       edgecolors=COLOURS[m], label=f"{LABELS[m]}: not reached by every seed in {study.ticks} ticks")
    fl = next((g for g in metrics["groups"] if g["method"] == "fl" and g["n"] == study.degree_size), None)
    if fl is not None and fl["ticks"]["mean"] is not None:
        ax.axhline(fl["ticks"]["mean"], color=COLOURS["fl"], ls="--", label=f"{LABELS['fl']} ({study.degree_size} clients)")
        ax.axhspan(fl["ticks"]["min"], fl["ticks"]["max"], color=COLOURS["fl"], alpha=0.15, lw=0)
    ax.set(xlabel="degree k of the random regular graph", ylabel=f"ticks to {study.threshold:.0%} mean node accuracy",
           title=f"{study.degree_size} nodes; mean over {seeds_text(len(study.seeds))}, bars: min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def write_figures(out: Path, study: Study, series: dict[Point, dict], metrics: dict) -> list[Path]:
    from fedsim.files import save_figure_atomically
    from fedsim.plots import save_figure

    figures = {"accuracy_vs_tick": lambda: plot_accuracy(study, series),
               "weight_variance_vs_tick": lambda: plot_weight_variance(study, series)}
    if study.degree_methods:
        figures["ticks_vs_degree"] = lambda: plot_degree(study, metrics)
    paths = []
    for name, make in figures.items():
        fig = make()
        fig.tight_layout()
        paths.append(save_figure_atomically(fig, out / f"{name}.png", dpi=120))
        paths.append(save_figure(fig, out / f"{name}.svg"))   # lays out again and closes the figure
    return paths


# --- main -------------------------------------------------------------------------------------------------------

def collect(study: Study, out: Path) -> tuple[dict, dict]:
    """Every point's series and seconds per tick, read from its run folder."""
    series, wall = {}, {}
    for p in expand(study):
        folder = out / "points" / p.id
        history = json.loads((folder / "history.json").read_text())["history"]
        series[p] = point_series(history, p.method, study.fl_round_ticks)
        timing = folder / "timing.json"
        if timing.exists():
            sessions = json.loads(timing.read_text())["sessions"]
            ticks = sum(s["to_round"] - s["from_round"] for s in sessions)
            scale = study.fl_round_ticks if p.method == "fl" else 1
            if ticks:
                wall[p] = sum(s["seconds"] for s in sessions) / (ticks * scale)
    return series, wall


def summary_table(metrics: dict) -> str:
    def fmt(s: dict, digits: int | None = 0) -> str:
        if s["mean"] is None:
            return f"not reached ({s['reached']}/{s['of']} seeds)"
        return f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]" if digits is not None else \
            f"{s['mean']:.3g} [{s['min']:.3g}, {s['max']:.3g}]"

    lines = [f"ticks to {metrics['threshold']:.0%} mean node accuracy: mean [min, max] over seeds"]
    for g in metrics["groups"]:
        where = f"n={g['n']}" + ("" if g["k"] is None else f" k={g['k']}")
        wall = f"  wall {fmt(g['wall_s'], None)} s" if g.get("wall_s", {}).get("mean") is not None else ""
        lines.append(f"  {g['sweep']:6s} {g['method']:9s} {where:12s} {fmt(g['ticks'])}{wall}")
    return "\n".join(lines)


NAME = "vanishing_variance"
OWN_FILES = ("study.toml", "summary.csv")   # the study's files beyond fedsim.studies.STUDY_FILES (--overwrite removes)
CPU_TIME = "6-13 min with --workers 2 (needs MNIST in the data folder)"   # docs/gossip.md


def default_values() -> dict:
    """The resolved CPU default config (``fedsim experiment vanishing_variance --help`` lists its keys)."""
    return dataclasses.asdict(load_study(DEFAULT_CONFIG))


def summary(cfg: dict, groups: list[dict]) -> list[str]:
    """The summary table's lines (``fedsim experiment vanishing_variance``)."""
    return summary_table({"threshold": cfg["threshold"], "groups": groups}).splitlines()


def run_study(config: str | Path | None = None, overrides: dict | None = None, out: str | Path | None = None,
              workers: int = 1, ray: str | None = None, progress: bool = True, overwrite: bool = False):
    """The whole study (``fedsim experiment vanishing_variance``): resolve, check, run the unfinished points, write
    the metrics (also ``metrics.csv`` = ``summary.csv``, and ``config.toml`` = ``study.toml``) and the figures.

    A folder whose points hold runs of another config is refused (``check_inputs``) unless ``overwrite``: then,
    once the inputs are checked, ``points/`` and the study's files are removed (``fedsim.studies.claim_study_folder``;
    nothing else is). Returns a ``fedsim.studies.StudyRun``."""
    from fedsim.files import atomic_write_text
    from fedsim.runs import folder_lock
    from fedsim.studies import StudyRun, claim_study_folder

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    study = load_study(config or DEFAULT_CONFIG, overrides)
    out = Path(out or Path("results") / NAME / study.name)
    with folder_lock(out):   # a second sweep into this folder is refused while this one runs
        configs = check_inputs(study, out, overwrite)
        text = study_toml(study)
        if overwrite:
            claim_study_folder(out, text, overwrite=True, extra=OWN_FILES)
        atomic_write_text(out / "study.toml", text)
        atomic_write_text(out / "config.toml", text)
        if progress:
            log(f"{len(configs)} points in {out}/points ({workers} worker(s){', Ray' if ray is not None else ''})")
        ran = run_points(configs, out, workers, progress=progress, keep_checkpoints=study.keep_checkpoints, ray=ray)
        series, wall = collect(study, out)
        metrics = aggregate(study, series, wall)
        write_metrics(out, metrics, size_curves(study, series))
        atomic_write_text(out / "metrics.csv", (out / "summary.csv").read_text())
        figures = write_figures(out, study, series, metrics)
    return StudyRun(out, dataclasses.asdict(study), metrics["points"], metrics["groups"], [], ran, len(configs),
                    figures)


def main(argv: list[str] | None = None) -> int:
    from fedsim.cli import HelpFormatter

    # fedsim's help format: each default shown once ("(default: X)"; none for None and on/off flags)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="study config (TOML)")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a study key or a run.<section>.<key>; repeatable (default: none)")
    ap.add_argument("--workers", type=int, default=1, help="points run in parallel processes")
    ap.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="run the points as Ray tasks (local Ray, or the cluster at ADDRESS) (default: no Ray)")
    ap.add_argument("--out", default=None, help="results folder (default: results/vanishing_variance/<name>)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace a run of another config in the results folder (removes only the study's files "
                         "and points/; without it such a folder is refused)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    from fedsim.data import DataNotFoundError, MalformedDataError
    from fedsim.runs import RunFolderError

    started = time.perf_counter()
    try:
        done = run_study(args.config, dict(parse_set(s) for s in args.set or []), args.out, args.workers, args.ray,
                         progress=not args.quiet, overwrite=args.overwrite)
    except (ConfigError, DataNotFoundError, MalformedDataError, RunFolderError) as e:
        print(f"vanishing_variance: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vanishing_variance: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print("\n".join(summary(done.config, done.groups)))
    print(f"\n{done.ran} point(s) run in {time.perf_counter() - started:.0f} s; results in {done.out} "
          f"({', '.join(p.name for p in done.figures if p.suffix == '.png')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
