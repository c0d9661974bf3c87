"""Figure polish of fedsim.plots: colour means the run in every diagnostics panel, short series get markers and
whole-number round ticks, point labels stay inside the axes and off each other, "1 seed" in the singular."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.colors import to_rgba

from fedsim.engine import Result
from fedsim.plots import FEW_POINTS, diagnostics_figure, label_points, runs_figure, seeds_text


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _run(rounds: int, layers=("fc1.weight", "fc2.weight"), scale: float = 1.0, evaluate_every: int = 1) -> Result:
    rows = []
    for t in range(1, rounds + 1):
        row = {"round": t, "train_loss": 1.0 / t, "bytes_sent": 100}
        if t % evaluate_every == 0 or t == rounds:
            row.update({"nodes_acc": 0.5 + t / 100, "nodes_acc_min": 0.4, "nodes_acc_max": 0.9, "consensus": scale / t,
                        "weight_var_ratio": 0.5 * scale,
                        **{f"weight_var_ratio.{name}": (0.3 + 0.1 * j) * scale for j, name in enumerate(layers)}})
        rows.append(row)
    return Result(rows)


def _visible_marker(line) -> bool:
    return line.get_marker() not in (None, "None", "none", "", " ") and line.get_markersize() > 0


def test_every_diagnostics_panel_colours_by_run_and_the_variance_panel_styles_by_layer():
    runs = {"ring": _run(8), "torus": _run(8, scale=2.0), "star": _run(8, scale=3.0)}
    fig = diagnostics_figure(runs)
    acc, var, cons, sent = fig.axes
    colour = {line.get_label().split(":")[0]: to_rgba(line.get_color()) for line in acc.lines}
    assert len(set(colour.values())) == 3                         # three runs, three colours
    for ax in (var, cons, sent):
        for line in ax.lines:
            if line.get_label() == "Xavier":
                continue
            run = line.get_label().split(":")[0]
            assert to_rgba(line.get_color()) == colour[run], (ax.get_title(), line.get_label())
    # within one run the layers differ by line style (not by colour); across runs a layer keeps its style
    style = {}
    for line in var.lines:
        if line.get_label() != "Xavier":
            run, layer = line.get_label().split(": ")
            style.setdefault(layer, set()).add(str(line.get_linestyle()))
    assert all(len(s) == 1 for s in style.values()) and len({next(iter(s)) for s in style.values()}) == 2
    # the legend names each run once (its colour) and each layer once (its style), not run x layer
    legend = var.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["ring", "torus", "star", "fc1.weight", "fc2.weight", "Xavier"]
    handles = legend.legend_handles
    assert [to_rgba(h.get_color()) for h in handles[:3]] == [colour[r] for r in ("ring", "torus", "star")]
    assert {str(h.get_linestyle()) for h in handles[3:5]} == {next(iter(s)) for s in style.values()}
    assert "run" in legend.get_title().get_text() and "layer" in legend.get_title().get_text()


def test_one_run_variance_panel_keeps_its_own_lines_in_the_legend_in_the_run_colour():
    fig = diagnostics_figure({"gossip": _run(6)})
    acc, var = fig.axes[:2]
    (mean,) = acc.lines
    drawn = [line for line in var.lines if line.get_label() != "Xavier"]
    assert {to_rgba(line.get_color()) for line in drawn} == {to_rgba(mean.get_color())}
    assert [t.get_text() for t in var.get_legend().get_texts()] == ["gossip: fc1.weight", "gossip: fc2.weight",
                                                                     "Xavier"]


def test_a_one_point_series_is_drawn_with_a_marker_on_a_whole_round_axis():
    """rounds = 3, evaluated once (round 3): the accuracy, variance and consensus 'lines' are single points."""
    res = _run(3, evaluate_every=5)
    fig = diagnostics_figure({"short": res})
    for ax in fig.axes:
        lines = [line for line in ax.lines if line.get_label() != "Xavier"]
        assert lines and all(_visible_marker(line) for line in lines), ax.get_title()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    var = fig.axes[1]
    layers = [line for line in var.lines if line.get_label() != "Xavier"]
    assert len({line.get_marker() for line in layers}) == len(layers)   # one point per layer: the marker tells them apart

    acc, loss = runs_figure({"short": res}).axes
    assert all(_visible_marker(line) for line in acc.lines + loss.lines)
    assert acc.lines[0].get_markersize() >= 4
    ticks = [t for t in acc.get_xticks() if acc.get_xlim()[0] <= t <= acc.get_xlim()[1]]
    assert ticks == [3]


def test_long_series_have_no_markers_and_runs_keep_one_colour_in_both_panels():
    fig = diagnostics_figure({"long": _run(FEW_POINTS + 10)})
    assert not any(_visible_marker(line) for line in fig.axes[2].lines)   # consensus: a plain line
    acc, loss = runs_figure({"a": _run(FEW_POINTS + 10), "b": Result([{"round": 1, "train_loss": 0.5, "global_acc": float("nan")}]),
                             "c": _run(FEW_POINTS + 10)}).axes
    # run b recorded no accuracy: c must not take b's place in the colour cycle on one panel only
    assert [to_rgba(line.get_color()) for line in acc.lines] == [to_rgba(loss.lines[i].get_color()) for i in (0, 2)]


def _boxes(ax):
    renderer = ax.figure.canvas.get_renderer()
    return [matplotlib.text.Text.get_window_extent(t, renderer) for t in ax.texts], ax.get_window_extent(renderer)


def test_label_points_keeps_labels_inside_the_axes_and_off_the_other_markers():
    fig, ax = plt.subplots(figsize=(4, 3))
    pts = [("exponential", 0.333, 0.739), ("exponential", 0.25, 0.732), ("torus", 0.117, 0.72),
           ("regular", 0.136, 0.705), ("ring", 0.0002, 0.43)]
    ax.plot([x for _, x, _ in pts], [y for _, _, y in pts], "o")
    ax.set_xscale("log")
    label_points(ax, pts, avoid=[(x, y) for _, x, y in pts], far=True)
    boxes, frame = _boxes(ax)
    assert sorted(t.get_text() for t in ax.texts) == sorted(p[0] for p in pts)   # every point keeps its label
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    r = 3.5 * fig.dpi / 72   # a marker's half size, in pixels
    for text, box in zip(ax.texts, boxes):   # no label sits on another point's marker
        others = [(x, y) for _, x, y in pts if (x, y) != tuple(text.xy)]
        covered = [(u, v) for u, v in ax.transData.transform(others)
                   if box.x0 < u + r and u - r < box.x1 and box.y0 < v + r and v - r < box.y1]
        assert not covered, (text.get_text(), covered)


def test_seeds_text_is_singular_for_one_seed():
    assert seeds_text(1) == "1 seed" and seeds_text(3) == "3 seeds" and seeds_text(0) == "0 seeds"


def test_the_runs_figure_counts_ticks_when_told():
    from fedsim.engine import Result
    from fedsim.plots import runs_figure

    history = [{"round": t, "train_loss": 1.0 / (t + 1), "average_acc": 0.1 * t} for t in range(3)]
    for x_label in ("round", "tick"):
        fig = runs_figure({"a": Result(state=None, history=history)}, x_label=x_label)
        assert [ax.get_xlabel() for ax in fig.axes] == [x_label, x_label]
