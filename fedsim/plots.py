"""Figures from run histories (matplotlib, Agg backend; no simulation logic here)."""

from __future__ import annotations

import math
import numbers
import textwrap
from pathlib import Path
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from fedsim.engine import Result  # noqa: E402
from fedsim.files import save_figure_atomically  # noqa: E402


def _wrap_to_width(text, width: float, renderer) -> bool:
    """Re-wrap a Text object's lines until it is at most ``width`` display pixels wide; False if it never fits."""
    original = text.get_text()
    lines = original.split("\n")
    for _ in range(8):
        wide = text.get_window_extent(renderer).width
        if wide <= width:
            return True
        longest = max(lines, key=len)
        chars = max(8, int(len(longest) * width / wide) - 1)
        if chars >= len(longest):
            chars = len(longest) - 1
        lines = [w for line in lines for w in (textwrap.wrap(line, chars, break_on_hyphens=False) or [""])]
        text.set_text("\n".join(lines))
        if max(map(len, lines)) <= 8:
            break
    return text.get_window_extent(renderer).width <= width


def fit_titles(fig) -> None:
    """Lay out a figure (``tight_layout``) so that no title is cut off at the saved size: each axes title wider
    than its axes, and a figure title (``suptitle``) wider than the figure, is wrapped onto more lines."""
    renderer = fig.canvas.get_renderer()
    for _ in range(2):   # wrap, lay out (the axes' widths change a little), and check again
        for ax in fig.axes:
            if ax.get_visible() and ax.title.get_text():
                _wrap_to_width(ax.title, ax.get_window_extent(renderer).width, renderer)
        suptitle = getattr(fig, "_suptitle", None)
        if suptitle is not None and suptitle.get_text():
            _wrap_to_width(suptitle, fig.bbox.width * 0.97, renderer)
        fig.tight_layout()


def legend(ax, **kwargs) -> None:
    """A legend on ``ax`` only when something labelled was drawn (else matplotlib warns "No artists with labels
    found to put in legend")."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


FEW_POINTS = 12   # a series with at most this many points is drawn with markers (one point is no line at all)


def few_points_marker(n: int, marker: str = "o") -> dict:
    """Line keywords that mark each point of a series of ``n`` points when there are few (``FEW_POINTS``): a
    one-point series is otherwise invisible (a line needs two points), a short one hard to read."""
    return {"marker": marker, "ms": 4} if n <= FEW_POINTS else {}


def integer_ticks(ax) -> None:
    """Ticks at whole numbers on the x axis (rounds, ticks): no 2.85 ... 3.15 around a single evaluated round."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def seeds_text(n: int) -> str:
    """``"1 seed"``, ``"3 seeds"``."""
    return f"{n} seed{'' if n == 1 else 's'}"


def series_colours(names) -> dict:
    """A fixed colour per series name, from the colour cycle in the order given: pass the full list of series
    (e.g. every method of a study) so that a series keeps its colour in every panel, drawn or not."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(dict.fromkeys(names))}


NOT_FINITE = "nothing to draw:\nevery recorded value is NaN or inf"


def say_not_finite(ax, what: str = NOT_FINITE) -> None:
    """Say in an empty panel why it is empty (a diverged run records NaN / inf), instead of a blank axis."""
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="dimgrey",
            bbox={"boxstyle": "round", "fc": "white", "ec": "lightgrey"})
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out (``fit_titles``), save (format from the suffix; atomically, creating the folder) and close a
    figure."""
    fit_titles(fig)
    try:
        return save_figure_atomically(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


ACCURACY_KEYS = ("global_acc", "average_acc", "nodes_acc")


def accuracy_key(result: Result) -> str:
    """The headline accuracy metric of a run (global model for FedAvg, average model for gossip)."""
    for key in ACCURACY_KEYS:
        if key in result.keys():
            return key
    raise KeyError(f"no accuracy metric recorded; recorded: {result.keys()}")


def runs_figure(results: dict[str, Result], title: str = "", x_label: str = "round"):
    """Test accuracy and training loss versus round (``x_label``: "tick" for asynchronous gossip) for each named
    run; returns the figure, unsaved.

    The accuracy line is the run's headline model (``accuracy_key``: FedAvg's global model, gossip's network
    average); runs that recorded per-node accuracy get a band from the worst to the best evaluated node, and only
    then does the panel's title mention a band.
    """
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    shaded, positive = False, False
    recorded = {"acc": 0, "loss": 0}   # values recorded, finite or not
    colours = series_colours(results)   # a run's colour in both panels, whatever the other runs drew
    for label, res in results.items():
        key = accuracy_key(res)
        recorded["acc"] += sum(1 for r in res.history if key in r)
        rows = [r for r in res.history if _finite(r.get(key))]   # evaluated rounds (not NaN / inf)
        colour = colours[label]
        if rows:
            ax_acc.plot([r["round"] for r in rows], [r[key] for r in rows], color=colour,
                        **(few_points_marker(len(rows)) or {"marker": "."}),
                        label=f"{label} ({ACCURACY_NAMES.get(key, key)})")
        band = [r for r in rows if all(_finite(r.get(k)) for k in ("nodes_acc_min", "nodes_acc_max"))]
        if band:
            ax_acc.fill_between([r["round"] for r in band], [r["nodes_acc_min"] for r in band],
                                [r["nodes_acc_max"] for r in band], alpha=0.15, color=colour, lw=0,
                                label=f"{label} (worst-best node)")
            shaded = True
        loss = [(r["round"], r["train_loss"]) for r in res.history if "round" in r and "train_loss" in r]
        recorded["loss"] += len(loss)
        loss = [(t, v) for t, v in loss if _finite(v)]
        positive |= any(v > 0 for _, v in loss)
        if loss:
            ax_loss.plot([t for t, _ in loss], [v for _, v in loss], color=colour, label=label,
                         **few_points_marker(len(loss)))
    ax_acc.set(xlabel=x_label, ylabel="test accuracy (fraction correct)",
               title="test accuracy" + (" (band: worst-best node)" if shaded else ""))
    ax_loss.set(xlabel=x_label, ylabel="training loss (cross-entropy)", yscale="log" if positive else "linear",
                title="local training loss (mean over clients)")
    for ax, what in ((ax_acc, "acc"), (ax_loss, "loss")):
        ax.grid(alpha=0.3)
        integer_ticks(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        elif recorded[what]:
            say_not_finite(ax)
    if title:
        fig.suptitle(title)
    return fig


def _finite(v) -> bool:
    """A number that can be drawn: not None, NaN or inf."""
    try:
        return v is not None and math.isfinite(v)
    except TypeError:
        return False


ACCURACY_NAMES = {"global_acc": "global model", "average_acc": "network-average model", "nodes_acc": "node mean"}


def plot_runs(results: dict[str, Result], path: str | Path, title: str = "", x_label: str = "round") -> Path:
    """``runs_figure`` saved as a PNG."""
    return save_figure(runs_figure(results, title, x_label), path)


def plot_roc(curves: dict, path: str | Path, title: str = "") -> Path:
    """ROC curves ``{label: (fpr, tpr)}`` on one axis, saved as a PNG."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="chance")
    ax.set(xlabel="false positive rate (fraction of normal rows flagged)",
           ylabel="true positive rate (fraction of attacks flagged)", title=title or "ROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# Diagnostic panels, in drawing order: (panel id, title). A panel is drawn when some run recorded its metric.
DIAGNOSTIC_PANELS = (
    ("accuracy", "test accuracy"),
    ("weight_var", "weight variance / Xavier (per layer)"),
    ("consensus", "consensus distance"),
    ("bytes", "bytes sent (cumulative)"),
)
_LINESTYLES = ("-", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def _named_results(results: Result | Sequence[Result] | Mapping[str, Result]) -> dict[str, Result]:
    if isinstance(results, Result):
        return {"": results}
    if isinstance(results, Mapping):
        return dict(results)
    return {f"run {i}": r for i, r in enumerate(results)}


def _layer_keys(res: Result) -> list[str]:
    return [k for k in res.keys() if k.startswith("weight_var_ratio.")]


def diagnostic_panels(results: Result | Sequence[Result] | Mapping[str, Result]) -> list[str]:
    """The ids of the ``DIAGNOSTIC_PANELS`` the runs' histories have metrics for, in drawing order."""
    keys = set().union(*(r.keys() for r in _named_results(results).values()))
    present = {
        "accuracy": bool(keys & {"nodes_acc", *ACCURACY_KEYS}),
        "weight_var": any(k == "weight_var_ratio" or k.startswith("weight_var_ratio.") for k in keys),
        "consensus": "consensus" in keys,
        "bytes": "bytes_sent" in keys,
    }
    return [pid for pid, _ in DIAGNOSTIC_PANELS if present[pid]]


def _series(res: Result, key: str, x_key: str) -> tuple[list, list]:
    """(x, y) over the rows that recorded ``key`` (finite values only) and ``x_key``."""
    xs, ys = [], []
    for row in res.history:
        v = row.get(key)
        if x_key in row and _finite(v):
            xs.append(row[x_key])
            ys.append(v)
    return xs, ys


def _label(run: str, what: str) -> str:
    return f"{run}: {what}" if run else what


def _variance_keys(res: Result) -> list[str]:
    """The weight-variance columns a run's panel draws: one per layer, else the mean over layers."""
    return _layer_keys(res) or (["weight_var_ratio"] if "weight_var_ratio" in res.keys() else [])


def _layer_name(key: str) -> str:
    return key.removeprefix("weight_var_ratio.") if "." in key else "all layers"


_LAYER_MARKERS = "osD^vx<>"


def _layer_style(j: int, points: int) -> dict:
    """Line keywords of the j-th layer of the variance panel: its line style; its marker on every point of a short
    series (a one-point series has no line to style), and as well, every few points, past the line styles."""
    marker = _LAYER_MARKERS[j % len(_LAYER_MARKERS)]
    style = {"ls": _LINESTYLES[j % len(_LINESTYLES)], **few_points_marker(points, marker)}
    if "marker" not in style and j >= len(_LINESTYLES):
        style.update(marker=marker, ms=4, markevery=max(1, points // 10))
    return style


def _variance_legend(ax, colours: Mapping[str, str], layer_names: list[str]) -> tuple[list, list, dict]:
    """The variance panel's legend. One run: its lines (layer names; they have the run's colour). Several runs with
    several layers: one entry per run (its colour) and one per layer (its line style, in grey), so that no
    entry needs both; the Xavier line last."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    drawn = {line.get_label() for line in ax.lines}
    runs = [run for run in colours if any(_label(run, name) in drawn for name in layer_names)]
    layers = [name for name in layer_names if any(_label(run, name) in drawn for run in runs)]
    if len(runs) < 2 or len(layers) < 2:
        return handles, labels, {}
    points = max(len(line.get_xdata()) for line in ax.lines if line.get_label() != "Xavier")
    proxies = [Line2D([], [], color=colours[run], lw=2, label=run or "run") for run in runs]
    for name in layers:
        style = _layer_style(layer_names.index(name), points)
        style.pop("markevery", None)
        proxies.append(Line2D([], [], color="dimgrey", label=name, **style))
    xavier = [(h, lab) for h, lab in zip(handles, labels) if lab == "Xavier"]
    proxies += [h for h, _ in xavier]
    return proxies, [h.get_label() for h in proxies], {"title": "colour: run, line: layer", "title_fontsize": 7}


def diagnostics_figure(results: Result | Sequence[Result] | Mapping[str, Result], x_label: str = "round",
                       x_key: str = "round", title: str = ""):
    """A figure with one panel per recorded diagnostic (``diagnostic_panels``), for one or more runs.

    Panels: node test accuracy (mean line; min-max band where recorded; runs without per-node accuracy,
    such as FedAvg, show their headline accuracy), weight variance relative to Xavier per layer (log y,
    dashed line at 1 = Xavier), consensus distance (log y), cumulative bytes sent. The x axis is the
    history column ``x_key`` ("round": an engine round, which is a tick of asynchronous gossip), labelled
    ``x_label`` (e.g. "tick"). Returns the figure, unsaved.
    """
    runs = _named_results(results)
    if not runs:
        raise ValueError("no runs to plot")
    missing = [name or "run" for name, r in runs.items() if r.history and not any(x_key in row for row in r.history)]
    if missing:
        raise KeyError(f"history column {x_key!r} (the x axis) was never recorded in {', '.join(missing)}")
    panels = diagnostic_panels(runs)
    if not panels:
        recorded = sorted(set().union(*(r.keys() for r in runs.values())))
        raise ValueError(f"none of the diagnostic metrics were recorded; recorded: {recorded}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.9), squeeze=False)
    titles = dict(DIAGNOSTIC_PANELS)
    colours = series_colours(runs)   # colour is the run in every panel
    layer_names = list(dict.fromkeys(_layer_name(k) for r in runs.values() for k in _variance_keys(r)))
    whole = all(isinstance(row[x_key], numbers.Integral) for r in runs.values() for row in r.history if x_key in row)
    for ax, pid in zip(axes[0], panels):
        positive = False
        for run, res in runs.items():
            colour = colours[run]
            if pid == "accuracy":
                keys = res.keys()
                key = "nodes_acc" if "nodes_acc" in keys else next((k for k in ACCURACY_KEYS if k in keys), None)
                if key is None:
                    continue
                xs, ys = _series(res, key, x_key)
                if xs:   # NaN / inf everywhere (a diverged run): nothing to draw, no legend entry
                    ax.plot(xs, ys, color=colour, label=_label(run, ACCURACY_NAMES.get(key, key)),
                            **few_points_marker(len(xs)))
                low = f"{key}_min" if f"{key}_min" in keys else None
                high = f"{key}_max" if f"{key}_max" in keys else None
                if low:
                    rows = [r for r in res.history if x_key in r and all(_finite(r.get(k))
                                                                          for k in (key, low, high or key))]
                    if rows:
                        ax.fill_between([r[x_key] for r in rows], [r[low] for r in rows],
                                        [r[high or key] for r in rows], color=colour, alpha=0.2, lw=0,
                                        label=_label(run, "min-max over nodes"))
            elif pid == "weight_var":   # the run's colour; the layer's line style (and marker)
                for key in _variance_keys(res):
                    xs, ys = _series(res, key, x_key)
                    name = _layer_name(key)
                    if xs:
                        ax.plot(xs, ys, color=colour, label=_label(run, name),
                                **_layer_style(layer_names.index(name), len(xs)))
            elif pid == "consensus":
                xs, ys = _series(res, "consensus", x_key)
                positive |= any(y > 0 for y in ys)
                if xs:
                    ax.plot(xs, ys, color=colour, label=_label(run, "consensus"), **few_points_marker(len(xs)))
            else:  # bytes: the history holds each round's bytes; rounds without the column sent nothing
                xs, ys, total = [], [], 0.0
                for row in res.history:
                    v = row.get("bytes_sent", 0)
                    total += v if _finite(v) else 0
                    if x_key in row:
                        xs.append(row[x_key])
                        ys.append(total)
                if "bytes_sent" in res.keys():
                    ax.plot(xs, ys, color=colour, label=_label(run, "bytes sent"), **few_points_marker(len(xs)))
        drawn = bool(ax.get_legend_handles_labels()[0])
        if pid == "weight_var" and drawn:
            ax.axhline(1.0, color="black", ls="--", lw=1, label="Xavier")
        if drawn and (pid == "weight_var" or (pid == "consensus" and positive)):  # all zero: stay linear
            ax.set_yscale("log")
        ax.set_ylabel({"accuracy": "test accuracy (fraction correct)", "weight_var": "variance / Xavier variance",
                       "consensus": "mean sq. distance to the mean model", "bytes": "bytes (cumulative)"}[pid])
        ax.set(xlabel=x_label, title=titles[pid])
        ax.grid(alpha=0.3)
        if whole:
            integer_ticks(ax)
        handles, labels = ax.get_legend_handles_labels()
        keys = {}
        if pid == "weight_var" and drawn:
            handles, labels, keys = _variance_legend(ax, colours, layer_names)
        if len(handles) > 4:   # many runs or layers: below the panel, where it hides no curve
            ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                      frameon=False, **keys)
        elif drawn:
            ax.legend(handles, labels, fontsize=7, **keys)
        else:   # the panel's metric was recorded (diagnostic_panels), but never as a finite number
            say_not_finite(ax)
    if title:
        fig.suptitle(title)
    return fig


def plot_diagnostics(results: Result | Sequence[Result] | Mapping[str, Result], path: str | Path,
                     x_label: str = "round", x_key: str = "round", title: str = "") -> Path:
    """``diagnostics_figure`` saved (atomically, format from the suffix) to ``path``."""
    return save_figure(diagnostics_figure(results, x_label, x_key, title), path)


def plot_convergence(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path, title: str = "") -> Path:
    """Convergence of iterative subspace methods, saved (atomically) as a PNG: the largest principal angle to the
    method's own optimum (left) and the objective gap (right) versus round, log y, one line per method.

    ``curves``: ``{label: {"round": [...], "angle": [...], "objective_gap": [...]}}``. Values <= 0 (an angle or
    gap at the rounding floor) cannot be drawn on a log axis and are left out.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("angle", "largest principal angle to the optimum (rad)"),
              ("objective_gap", "objective gap f(Z) - f(Z*)"))
    for ax, (key, ylabel) in zip(axes, panels):
        drawn = False
        for label, curve in curves.items():
            pairs = [(r, v) for r, v in zip(curve["round"], curve[key]) if v is not None and math.isfinite(v) and v > 0]
            if pairs:
                ax.plot([r for r, _ in pairs], [v for _, v in pairs], label=label)
                drawn = True
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        elif curves:
            say_not_finite(ax, "nothing to draw:\nno finite value > 0 (log axis)")
        ax.set(xlabel="round", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_roc_panels(panels: Mapping[str, Mapping[str, tuple]], path: str | Path, title: str = "") -> Path:
    """ROC curves of several test sets side by side, ``{panel title: {label: (fpr, tpr)}}``, saved as a PNG."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items()):
        for label, (fpr, tpr) in curves.items():
            ax.plot(fpr, tpr, label=label)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=name)
        ax.grid(alpha=0.3)
        legend(ax, fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def seed_bands_figure(panels: Sequence[tuple[str, str, str, bool]], curves: Mapping[str, Mapping[str, tuple]],
                      x_label: str = "round", title: str = ""):
    """Curves repeated over seeds: the mean as a line, the min-max over seeds as a band; one panel per metric.

    ``panels``: ``(key, y label, panel title, log y)``; ``curves``: ``{key: {label: (x, [y of each seed])}}``,
    every seed's y on the same x. Returns the figure, unsaved.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (key, ylabel, panel_title, log) in zip(axes[0], panels):
        for label, (x, ys) in curves[key].items():
            cols = list(zip(*ys))
            mean = [sum(c) / len(c) for c in cols]
            (line,) = ax.plot(x, mean, label=f"{label} (mean of {len(ys)} seed{'s' if len(ys) > 1 else ''})")
            if len(ys) > 1:
                ax.fill_between(x, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(), alpha=0.2,
                                lw=0)
        if log:
            ax.set_yscale("log")
        ax.set(xlabel=x_label, ylabel=ylabel, title=panel_title)
        ax.grid(alpha=0.3)
        legend(ax, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_seed_bands(panels, curves, path: str | Path, x_label: str = "round", title: str = "") -> Path:
    """``seed_bands_figure`` saved (atomically) to ``path``."""
    return save_figure(seed_bands_figure(panels, curves, x_label, title), path)


def frontier_figure(groups: Sequence[Mapping], series: Sequence[str] = ("sweep", "attack"), x: str = "test_acc",
                    y: str = "ssim", order: str = "strength", labels: Mapping | None = None, x_label: str = "",
                    y_label: str = "", title: str = ""):
    """A trade-off frontier from a study's aggregated groups (``fedsim.studies.aggregate``: metric -> {mean, min,
    max, ...}): one line per value of the ``series`` keys through (mean x, mean y), ordered by ``order``, with
    min-max bars over seeds on both axes and each point labelled with its ``order`` value (a label that would
    cover another is moved to a free side of its point, or left out). Returns the figure."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    keys = list(dict.fromkeys(tuple(g[k] for k in series) for g in groups))
    points = []
    for key in keys:
        pts = sorted((g for g in groups if tuple(g[k] for k in series) == key
                      and g[x]["mean"] is not None and g[y]["mean"] is not None), key=lambda g: g[order])
        if not pts:
            continue
        xs, ys = [g[x]["mean"] for g in pts], [g[y]["mean"] for g in pts]
        xerr = [[m - g[x]["min"] for m, g in zip(xs, pts)], [g[x]["max"] - m for m, g in zip(xs, pts)]]
        yerr = [[m - g[y]["min"] for m, g in zip(ys, pts)], [g[y]["max"] - m for m, g in zip(ys, pts)]]
        label = (labels or {}).get(key, ", ".join(map(str, key)))
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", ms=4, capsize=2, lw=1, label=label)
        points += [(f"{g[order]:g}", xi, yi) for g, xi, yi in zip(pts, xs, ys)]
    ax.set(xlabel=x_label or x, ylabel=y_label or y, title=title)
    ax.grid(alpha=0.3)
    legend(ax, fontsize=7)
    label_points(ax, points)
    return fig


_LABEL_OFFSETS = ((3, 3), (3, -10), (-3, 3), (-3, -10), (3, -3), (-3, -3))   # points, right/left of the marker
_FAR_OFFSETS = ((8, 12), (-8, 12), (8, -20), (-8, -20), (14, -4), (-14, -4), (3, 22), (-3, 22), (3, -30), (-3, -30))


def label_points(ax, points: Sequence[tuple[str, float, float]], fontsize: int = 7, avoid: Sequence = (),
                 inside: bool = True, far: bool = False) -> None:
    """Annotate (text, x, y) points in data coordinates, each beside its point where it covers no label placed
    before it (tried on six sides), no marker or error bar in ``avoid`` other than its point's own, and
    (``inside``) lies within the axes; with ``far``, ten places a little further out are tried next, the label
    joined to its point by a thin line. A label with no such place is left out (its point sits on another's).

    ``avoid``: (x, y) markers and (x, y_low, y_high) vertical error bars, in data coordinates. The labels are
    placed for the axes' size and limits now: lay the figure out (``fit_titles``) first."""
    ax.get_xlim(), ax.get_ylim()   # settle the autoscaled limits before measuring in display coordinates
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    r = 3.5 * ax.figure.dpi / 72   # a marker's half size (ms 6), in pixels
    obstacles = []
    for item in avoid:
        x, lo, hi = (item[0], item[1], item[1]) if len(item) == 2 else item
        (u0, v0), (_, v1) = ax.transData.transform([(x, lo), (x, hi)])
        obstacles.append((x, lo, hi, Bbox.from_extents(u0 - r, min(v0, v1) - r, u0 + r, max(v0, v1) + r)))
    placed = []
    for text, x, y in points:
        blocked = placed + [box for ox, lo, hi, box in obstacles if not (ox == x and lo <= y <= hi)]
        for dx, dy in _LABEL_OFFSETS + (_FAR_OFFSETS if far else ()):
            lead = {"arrowprops": {"arrowstyle": "-", "color": "grey", "lw": 0.5, "shrinkA": 0, "shrinkB": 3}} \
                if (dx, dy) in _FAR_OFFSETS else {}
            note = ax.annotate(text, (x, y), fontsize=fontsize, xytext=(dx, dy), textcoords="offset points",
                               ha="left" if dx > 0 else "right", **lead)
            note.get_window_extent(renderer)                          # places the text
            box = matplotlib.text.Text.get_window_extent(note, renderer)   # the text alone, not its leader line
            fits = not inside or (frame.x0 <= box.x0 and box.x1 <= frame.x1
                                  and frame.y0 <= box.y0 and box.y1 <= frame.y1)
            if fits and not any(box.overlaps(other) for other in blocked):
                placed.append(box)
                break
            note.remove()
