"""Studies: a TOML config -> points (a grid x seeds) -> one folder per point -> metrics and figures.

A study is a module (``experiments/<name>.py``) with

* ``NAME`` and ``DEFAULTS``: the study keys and their defaults (their types are the types a config may give;
  a dict default is a free-form table, e.g. a partial fedsim run config);
* ``validate(cfg)``: raise ``ConfigError`` for values the study cannot run (after the types are checked);
* ``points(cfg) -> list[Point]``: every point of the sweep (a grid setting x a seed);
* ``run_point(cfg, point, folder) -> list[dict]``: run one point and return its rows (a row: the setting's keys,
  e.g. ``method`` and ``clients``, and numbers); it may write into ``folder`` (e.g. a resumable fedsim run).
  It may return ``{"rows": [...], "curves": [...]}`` instead: curve rows hold the ``GROUP_BY`` keys, ``CURVE_X``
  (e.g. "round") and numbers, aggregated over seeds like the rows into ``curves.csv``;
* ``GROUP_BY``: the row keys of one setting (the seed excluded); the other numeric keys are metrics;
* ``figures(cfg, groups, curves) -> dict[name, Figure]``: the study's figures from the aggregated groups;
* optionally ``check_inputs(cfg)`` (e.g. the data are there; run before anything is written), ``cost(cfg, point)``
  (the costliest points start first) and ``summary(cfg, groups) -> list[str]`` (the lines ``fedsim experiment``
  prints; also kept in metrics.json).

``run_study`` resolves the config (``load_config``), claims ``<out>`` (``claim_study_folder``: a folder holding a
run of another config is refused unless ``overwrite``), writes the resolved ``config.toml``, runs every point
that has no ``result.json`` yet (serially, in ``workers`` processes or as Ray tasks; ``map_tasks``), then
aggregates the rows over seeds (``aggregate``: mean, sample std, min, max and the number of finite values) into
``metrics.csv`` + ``metrics.json`` (+ ``points.csv``, one row per point and setting) and the figures (PNG and
SVG). Every file is written atomically; a point's ``result.json`` is written last, so an interrupted sweep
resumes where it stopped and nothing finished is lost. A point is a deterministic function of the config and
its seed, so the results do not depend on how the points ran; only the columns named ``*seconds*`` (wall time) do.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import importlib
import io
import json
import math
import multiprocessing
import shutil
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.config import ConfigError, tomllib
from fedsim.files import atomic_write_text, save_figure_atomically
from fedsim.runs import RunFolderError

RESULT = "result.json"           # a point's rows; written last (its presence = the point is finished)
STUDY_FILES = ("config.toml", "metrics.csv", "metrics.json", "points.csv", "curves.csv")
TIME_WORD = "seconds"            # row keys holding it measure wall time: they differ between runs


@dataclass(frozen=True)
class Point:
    """One point of a sweep: ``id`` (its folder name), the grid ``setting`` and the ``seed``."""

    id: str
    setting: tuple[tuple[str, Any], ...]
    seed: int

    @staticmethod
    def of(seed: int, **setting) -> Point:
        """A point whose id lists the setting and the seed (``clients=64, method="plain"`` -> ``clients64-plain-s0``)."""
        parts = [f"{k}{v}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
                 for k, v in setting.items()]
        return Point("-".join([*parts, f"s{seed}"]).replace("/", "_").replace(" ", "_"), tuple(setting.items()), seed)

    def __getitem__(self, key: str):
        return dict(self.setting)[key]


# --- configs ----------------------------------------------------------------------------------------------------

def parse_set(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (VALUE in TOML syntax; a bare word is a string) -> (key, value)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value.strip()


def _typed(key: str, value, default, where: str):
    """``value`` in the type of ``default`` (ints are accepted for floats, lists become tuples)."""
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key} must be a table, got {value!r}")
        return value
    if isinstance(default, (tuple, list)):
        kind = type(default[0]) if default else None
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}{key} must be a non-empty list, got {value!r}")
        if kind is float:
            value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if kind is not None and not all(type(v) is kind for v in value):
            raise ConfigError(f"{where}{key} must be a list of {kind.__name__}, got {value!r}")
        return tuple(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{where}{key} must be a {type(default).__name__}, got {value!r}")
    return value


def resolve(defaults: dict, values: dict, overrides: dict | None = None) -> dict:
    """``defaults`` updated by the file's ``values`` and the dotted ``overrides``; unknown keys are ConfigError.

    A key of a dict-valued default (a table) may be set inside it (``run.algorithm.lr``), free-form.
    """
    cfg = copy.deepcopy(dict(defaults))
    for source, items in (("", values), ("--set ", overrides or {})):
        for dotted, value in items.items():
            key, *rest = dotted.split(".")
            if key not in defaults:
                close = difflib.get_close_matches(key, list(defaults), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{source}{dotted}: unknown study key {key!r}{hint} (known: {', '.join(defaults)})")
            if rest:
                if not isinstance(defaults[key], dict):
                    raise ConfigError(f"{source}{dotted}: {key!r} is not a table")
                table = cfg[key]
                for part in rest[:-1]:
                    table = table.setdefault(part, {})
                    if not isinstance(table, dict):
                        raise ConfigError(f"{source}{dotted}: {part!r} is not a table")
                table[rest[-1]] = value
            elif isinstance(defaults[key], dict) and not source:
                cfg[key] = _merge(cfg[key], _typed(key, value, defaults[key], source))
            else:
                cfg[key] = _typed(key, value, defaults[key], source)
    return cfg


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(study, path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The resolved, validated config of ``study`` from ``path`` (default: its ``configs/<NAME>.toml``)."""
    path = Path(path) if path is not None else default_config(study)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: invalid TOML: {e}") from None
    cfg = resolve(study.DEFAULTS, values, overrides)
    study.validate(cfg)
    return cfg


def default_config(study) -> Path:
    """``experiments/configs/<NAME>.toml`` next to the study's module."""
    return Path(study.__file__).resolve().parent / "configs" / f"{study.NAME}.toml"


def toml_value(v) -> str:
    """One value (scalar or list) in TOML syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return repr(v)


def toml_text(values: dict) -> str:
    """``values`` (scalars, lists, nested dicts) as TOML: plain keys first, then one [table] per dict."""
    lines: list[str] = []

    def table(prefix: str, table_values: dict) -> None:
        flat = [(k, v) for k, v in table_values.items() if not isinstance(v, dict)]
        if prefix:
            lines.extend(["", f"[{prefix}]"])
        lines.extend(f"{k} = {toml_value(v)}" for k, v in flat)
        for k, v in table_values.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", values)
    return "\n".join(lines).lstrip("\n") + "\n"


def default_values(study) -> dict:
    """The study's default config resolved (``configs/<NAME>.toml`` over ``DEFAULTS``): the keys ``--set`` accepts
    and their defaults. A study without ``DEFAULTS`` (its own config reader) gives its ``default_values()``."""
    own = getattr(study, "default_values", None)
    return own() if own is not None else load_config(study)


def toml_comments(path: Path) -> dict[str, str]:
    """The end-of-line comments of a TOML file's keys and tables, by dotted key (``run.threads``, ``run``).

    Line by line, with strings masked (``_mask_strings``): a "#" or bracket inside a string is no comment or array,
    and the lines inside a multi-line string or array are values, not keys or table headers."""
    comments, table, depth, open_string = {}, "", 0, None
    for line in path.read_text().splitlines():
        inside = open_string is not None or depth > 0   # the line continues a multi-line string or array
        masked, comment, open_string = _mask_strings(line, open_string)
        text = masked.strip()
        if inside:
            depth = max(0, depth + text.count("[") - text.count("]")) if depth > 0 else depth
            continue
        if text.startswith("["):
            if "]" not in text:
                continue
            lead = len(masked) - len(masked.lstrip())
            table = line[lead + 1:lead + text.index("]")].strip()
            key = table
        elif "=" in text:
            eq = masked.index("=")
            name = line[:eq].strip()
            key = f"{table}.{name}" if table else name
            value = masked[eq + 1:]
            depth = max(0, value.count("[") - value.count("]"))
        else:
            continue
        if comment is not None:
            comments[key] = comment
    return comments


_QUOTES = ('"""', "'''", '"', "'")


def _mask_strings(line: str, open_string: str | None) -> tuple[str, str | None, str | None]:
    """A TOML line's code with every string's content masked ("_", same length), its comment (what follows the
    first "#" outside strings; None without one) and the multi-line string still open at its end. ``open_string``:
    the delimiter of a multi-line string open at the start of the line."""
    out, i, n = [], 0, len(line)
    while i < n:
        if open_string:
            if open_string in ('"', '"""') and line[i] == "\\":   # an escape in a basic string
                out.append("_" * len(line[i:i + 2]))
                i += 2
                continue
            if line.startswith(open_string, i):
                out.append(open_string)
                i += len(open_string)
                open_string = None
                continue
            out.append("_")
            i += 1
            continue
        if line[i] == "#":
            return "".join(out), line[i + 1:].strip(), None
        quote = next((q for q in _QUOTES if line.startswith(q, i)), None)
        if quote:
            out.append(quote)
            i += len(quote)
            open_string = quote
        else:
            out.append(line[i])
            i += 1
    return "".join(out), None, open_string if open_string in _QUOTES[:2] else None


def help_text(study, width: int = 100) -> str:
    """What ``fedsim experiment NAME --help`` says of one study: what it does (its module docstring's first
    paragraph), how long its CPU default takes (``CPU_TIME``), and every key ``--set`` accepts with its default
    (and the comment of the default config, ``configs/<NAME>.toml``)."""
    import textwrap

    path = default_config(study)
    first = " ".join((study.__doc__ or "").split("\n\n")[0].split()).replace("``", "")
    lines = [textwrap.fill(first, width)] if first else []
    cpu = getattr(study, "CPU_TIME", None)
    lines += ["", textwrap.fill(f"CPU default (experiments/configs/{path.name}): {cpu or 'time not stated'}; "
                                f"the full-size config: experiments/configs/{path.stem}_full.toml.", width)]
    values = default_values(study)
    comments = toml_comments(path) if path.is_file() else {}
    rows = []

    def walk(prefix: str, table: dict) -> None:
        for key, value in table.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(f"{dotted}.", value)
            else:
                rows.append((f"{dotted} = {'{}' if isinstance(value, dict) else toml_value(value)}",
                             comments.get(dotted, "")))

    walk("", values)
    lines += ["", f"--set KEY=VALUE keys and their defaults (experiments/configs/{path.name}):"]
    col = min(max((len(r) for r, c in rows if c), default=0), width // 2)
    for setting, comment in rows:
        lines.append(f"  {setting:{col}s}  # {comment}" if comment and len(setting) <= col else
                     f"  {setting}" + (f"  # {comment}" if comment else ""))
    tables = [k for k, v in values.items() if isinstance(v, dict)]
    for key in tables:
        note = comments.get(key)
        lines.append(textwrap.fill(f"--set {key}.KEY or {key}.SECTION.KEY sets any key of the [{key}] table, not only "
                                   "those shown." + (f" [{key}]: {note}." if note else ""), width))
    return "\n".join(lines)


# --- folders ----------------------------------------------------------------------------------------------------

def claim_study_folder(out: Path, config_toml: str, overwrite: bool = False, extra: tuple[str, ...] = ()) -> None:
    """Check that ``out`` may hold this study run: empty, or a run of the same resolved config.

    A run of another config is refused (``RunFolderError`` naming the keys that differ) unless ``overwrite``:
    then the study's own files (``STUDY_FILES`` and the study's ``extra`` ones) and ``points/`` are removed
    (nothing else is).
    """
    old_path = out / "config.toml"
    files = (*STUDY_FILES, *extra)
    present = [n for n in files if (out / n).exists()] + (["points/"] if (out / "points").is_dir() else [])
    if not present:
        return
    if overwrite:
        for name in files:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "points", ignore_errors=True)
        return
    try:
        old = tomllib.loads(old_path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raise RunFolderError(f"--out {out} holds study files ({', '.join(present)}) but no readable config.toml; "
                             "choose another --out, or pass --overwrite to replace them") from None
    from fedsim.runs import flat

    a, b = flat(old), flat(tomllib.loads(config_toml))
    changed = [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in dict.fromkeys([*a, *b])
               if a.get(k, "(unset)") != b.get(k, "(unset)")]
    if changed:
        raise RunFolderError(f"--out {out} holds a run of another config ({'; '.join(changed)}); choose another "
                             "--out (or --set name=...), or pass --overwrite to replace it")


def finished_result(folder: Path, point: Point) -> dict | None:
    """A finished point's result (its ``result.json``: "rows", "curves", "seconds"), else None."""
    try:
        result = json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if result.get("point") != point.id or result.get("seed") != point.seed:
        return None
    return result


def run_one(module: str, cfg: dict, point: Point, folder: str) -> str:
    """Run one point of study ``module`` (an importable name) into ``folder`` unless finished; returns its id.

    A top-level function, so that worker processes and Ray tasks can run it.
    """
    folder = Path(folder)
    if finished_result(folder, point) is None:
        study = importlib.import_module(module)
        start = time.perf_counter()
        got = study.run_point(cfg, point, folder)
        rows, curves = (got["rows"], got.get("curves", [])) if isinstance(got, dict) else (got, [])
        result = {"point": point.id, "setting": dict(point.setting), "seed": point.seed, "rows": rows,
                  "curves": curves, "seconds": round(time.perf_counter() - start, 3)}
        atomic_write_text(folder / RESULT, json.dumps(result, indent=1, allow_nan=True))
    return point.id


# --- running ----------------------------------------------------------------------------------------------------

def map_tasks(fn: Callable, tasks: list[tuple], workers: int = 1, ray: str | None = None,
              progress: bool = True, desc: str = "points") -> Iterable:
    """Call ``fn(*task)`` for every task: serially, in ``workers`` spawned processes, or as Ray tasks.

    ``ray``: None (no Ray), "" or "local" (a local Ray instance) or a cluster ADDRESS (``ray.init(address=...)``).
    A Ray task writes its point's folder on the machine it runs on: on a cluster of several machines the results
    folder must be shared (e.g. NFS) and every node needs fedsim installed. Yields the results as the tasks
    finish; a tqdm bar (stderr) counts them. An error or Ctrl-C cancels the tasks not started yet and is raised.
    """
    from fedsim.progress import progress_bar

    bar = progress_bar(len(tasks), desc, "pt", progress)
    try:
        if ray is not None:
            yield from _ray_map(fn, tasks, ray, bar)
        elif workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                out = fn(*task)
                bar.update()
                yield out
        else:
            ctx = multiprocessing.get_context("spawn")   # no fork of a process that holds torch threads
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx) as pool:
                jobs = [pool.submit(fn, *task) for task in tasks]
                try:
                    for job in as_completed(jobs):
                        out = job.result()
                        bar.update()
                        yield out
                except BaseException:
                    for job in jobs:
                        job.cancel()
                    raise
    finally:
        bar.close()


def _ray_map(fn: Callable, tasks: list[tuple], address: str, bar) -> Iterable:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'flwr[simulation]' (or ray)") from None
    started = not ray.is_initialized()
    if started:
        import os

        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")   # fedsim asks for no GPUs: keep them as set

        root = str(Path(__file__).resolve().parents[1])   # workers import fedsim and experiments from here
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}}
        kwargs = {"address": address} if address not in ("", "local") else {"num_cpus": None}
        ray.init(**kwargs, runtime_env=env, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=1)(fn)
        pending = [remote.remote(*task) for task in tasks]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                out = ray.get(done[0])
                bar.update()
                yield out
        except BaseException:
            for ref in pending:
                ray.cancel(ref)
            raise
    finally:
        if started:
            ray.shutdown()


# --- points that are fedsim runs -------------------------------------------------------------------------------

def run_config(values: dict, where: str = "run"):
    """A fedsim ``RunConfig`` from a dict; a bad key or value is a ConfigError that names ``where``."""
    from fedsim import config as fconfig

    try:
        return fconfig.from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def fedsim_run(values: dict, folder: Path, where: str = "run") -> list[dict]:
    """Run (or resume from its checkpoint) the fedsim run ``values`` in ``folder``; return its history."""
    from fedsim import experiment

    return experiment.run(run_config(values, where), folder, resume=True).history


def series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The rounds and values of ``key`` where the history evaluated it (finite values only)."""
    rows = [r for r in history if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [r["round"] for r in rows], [float(r[key]) for r in rows]


def first_reaching(rounds: list[int], values: list[float], target: float) -> int | None:
    """The first round whose value is >= ``target`` (None if none)."""
    return next((t for t, v in zip(rounds, values) if v >= target), None)


# --- aggregating (pure functions) -------------------------------------------------------------------------------

def spread(values: list) -> dict:
    """Mean, sample std (0 for one value), min, max and ``n`` (how many) of the finite numbers in ``values``.

    ``of`` = how many values there were; a None or NaN (e.g. a target never reached) counts in ``of`` only.
    """
    got = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not got:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "of": len(values)}
    return {"mean": statistics.fmean(got), "std": statistics.stdev(got) if len(got) > 1 else 0.0,
            "min": min(got), "max": max(got), "n": len(got), "of": len(values)}


def aggregate(rows: list[dict], group_by: tuple[str, ...]) -> list[dict]:
    """One group per setting (``group_by`` values, in first-seen order): every other numeric key -> ``spread``.

    ``rows`` hold a ``seed`` key; it is neither a group key nor a metric.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_by), []).append(r)
    out = []
    for key, members in groups.items():
        metrics = [m for m in dict.fromkeys(k for r in members for k in r)
                   if m not in group_by and m != "seed"
                   and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                           for v in (r.get(m) for r in members))]
        g = dict(zip(group_by, key))
        g["seeds"] = len(members)
        g.update({m: spread([r.get(m) for r in members]) for m in metrics})
        out.append(g)
    return out


def flat_group(g: dict) -> dict:
    """A group with its spreads flattened for CSV (``auc_mean``, ``auc_std``, ...)."""
    out = {k: v for k, v in g.items() if not isinstance(v, dict)}
    for k, v in g.items():
        if isinstance(v, dict):
            out.update({f"{k}_{s}": x for s, x in v.items()})
    return out


def without_time(groups: list[dict]) -> list[dict]:
    """``groups`` without the wall-time metrics (what must not depend on how the points ran)."""
    return [{k: v for k, v in g.items() if TIME_WORD not in k} for g in groups]


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


# --- figures ----------------------------------------------------------------------------------------------------

def band_plot(ax, groups: list[dict], x: str, y: str, series: str, labels: dict | None = None,
              band: str = "minmax", order=None) -> list:
    """One line per value of ``series``: the mean of metric ``y`` over seeds against ``x``, with a band (min-max
    over seeds, or ``band="std"``: mean +- std). Groups whose mean is None are left out. Lines differ in colour,
    marker and dash, so that lines on top of each other stay visible. A series' colour, marker and dash are fixed
    by its place in ``order`` (the series of the figure in a fixed order; then any others in the order they
    come), not by which series drew before it: pass the same ``order`` to every panel and a series looks the
    same in each, whichever series a panel cannot draw. Returns the series with nothing to draw (no mean)."""
    present = list(dict.fromkeys(g[series] for g in groups))
    fixed = list(dict.fromkeys([*(order or ()), *present]))
    missing = []
    for s in present:
        i = fixed.index(s)
        pts = sorted((g[x], g[y]) for g in groups if g[series] == s and g.get(y, {}).get("mean") is not None)
        if not pts:
            missing.append(s)
            continue
        xs = [p[0] for p in pts]
        mean = [p[1]["mean"] for p in pts]
        if band == "std":
            lo = [p[1]["mean"] - p[1]["std"] for p in pts]
            hi = [p[1]["mean"] + p[1]["std"] for p in pts]
        else:
            lo, hi = [p[1]["min"] for p in pts], [p[1]["max"] for p in pts]
        (line,) = ax.plot(xs, mean, **band_style(i), markevery=max(1, len(xs) // 12),
                          label=(labels or {}).get(s, str(s)))
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.grid(alpha=0.3)
    return missing


def band_style(i: int) -> dict:
    """The line keywords of ``band_plot``'s i-th series (its place in ``order``): colour, marker and dash."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {"color": cycle[i % len(cycle)], "marker": "osD^vx"[i % 6], "ms": 4, "ls": ("-", "--", "-.", ":")[i % 4],
            "mfc": "none"}


def save_figures(out: Path, figures: dict) -> list[Path]:
    """Each figure as ``<name>.png`` and ``<name>.svg`` (atomically), then closed."""
    import matplotlib.pyplot as plt

    paths = []
    for name, fig in figures.items():
        fig.tight_layout()
        paths.append(save_figure_atomically(fig, out / f"{name}.png", dpi=120))
        paths.append(save_figure_atomically(fig, out / f"{name}.svg"))
        plt.close(fig)
    return paths


# --- the whole study --------------------------------------------------------------------------------------------

@dataclass
class StudyRun:
    """What ``run_study`` did: the folder, the resolved config, the rows, groups, and how many points ran."""

    out: Path
    config: dict
    rows: list[dict]
    groups: list[dict]
    curves: list[dict]
    ran: int
    total: int
    figures: list[Path] = dataclasses.field(default_factory=list)


def collect(points: list[Point], out: Path) -> tuple[list[dict], list[dict]]:
    """Every finished point's rows and curve rows, each with its ``seed`` (a missing point is a RunFolderError)."""
    rows, curves = [], []
    for p in points:
        got = finished_result(out / "points" / p.id, p)
        if got is None:
            raise RunFolderError(f"point {p.id} has no result in {out / 'points' / p.id}; run the study again")
        rows += [{**r, "seed": p.seed} for r in got["rows"]]
        curves += [{**r, "seed": p.seed} for r in got.get("curves", [])]
    return rows, curves


def run_study(study, config: str | Path | None = None, overrides: dict | None = None, out: str | Path | None = None,
              workers: int = 1, ray: str | None = None, progress: bool = True, overwrite: bool = False,
              results: str | Path = "results") -> StudyRun:
    """Resolve, claim the folder, run the unfinished points, aggregate and write metrics and figures.

    ``out`` defaults to ``<results>/<NAME>/<name>`` (``name`` = the config's run id).
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    cfg = load_config(study, config, overrides)
    out = Path(out) if out is not None else Path(results) / study.NAME / cfg["name"]
    text = toml_text(cfg)
    points = study.points(cfg)
    if len({p.id for p in points}) != len(points):
        raise ConfigError("the config's grid repeats a point (a value listed twice?)")
    if hasattr(study, "check_inputs"):
        study.check_inputs(cfg)   # e.g. the data are there, before anything is written
    from fedsim.runs import folder_lock

    with folder_lock(out):   # a second sweep into this folder is refused while this one runs
        claim_study_folder(out, text, overwrite)
        atomic_write_text(out / "config.toml", text)
        todo = [p for p in points if finished_result(out / "points" / p.id, p) is None]
        order = getattr(study, "cost", None)
        if order is not None:
            todo.sort(key=lambda p: -order(cfg, p))   # the longest first: the workers end together
        tasks = [(study.__name__, cfg, p, str(out / "points" / p.id)) for p in todo]
        for _ in map_tasks(run_one, tasks, workers, ray, progress, desc=study.NAME):
            pass
        return finish_study(study, cfg, points, out, ran=len(todo))


def finish_study(study, cfg: dict, points: list[Point], out: Path, ran: int = 0) -> StudyRun:
    """Aggregate the finished points of ``out`` and write metrics.csv, metrics.json, points.csv and figures."""
    rows, curve_rows = collect(points, out)
    groups = aggregate(rows, study.GROUP_BY)
    curves = aggregate(curve_rows, (*study.GROUP_BY, study.CURVE_X)) if curve_rows else []
    metrics = {"study": study.NAME, "run": cfg["name"], "config": cfg, "group_by": list(study.GROUP_BY),
               "groups": groups, "curves": curves, "points": rows}
    extra = getattr(study, "summary", None)
    if extra is not None:
        metrics["summary"] = extra(cfg, groups)
    atomic_write_text(out / "metrics.json", json.dumps(_finite(metrics), indent=1, allow_nan=False))
    atomic_write_text(out / "metrics.csv", csv_text([flat_group(g) for g in groups]))
    atomic_write_text(out / "points.csv", csv_text(rows))
    if curves:
        atomic_write_text(out / "curves.csv", csv_text([flat_group(g) for g in curves]))
    figures = save_figures(out, study.figures(cfg, groups, curves))
    return StudyRun(out, cfg, rows, groups, curves, ran, len(points), figures)


def _finite(value):
    """NaN / inf -> None, recursively (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def load_results(study_name: str, run: str = "cpu", results: str | Path = "results") -> dict:
    """The ``metrics.json`` of ``results/<study_name>/<run>`` (for notebooks and reports)."""
    return json.loads((Path(results) / study_name / run / "metrics.json").read_text())
