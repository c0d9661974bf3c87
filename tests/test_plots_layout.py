"""Figures at their saved size: no title cut off at the figure's edge, and a diverged run (NaN / inf everywhere)
draws no empty legend (matplotlib's "No artists with labels found to put in legend") but says in the panel that
there is nothing finite to draw."""

from __future__ import annotations

import math
import warnings

import pytest

import experiments
from fedsim import studies
from fedsim.engine import Result
from fedsim.plots import (
    DIAGNOSTIC_PANELS,
    diagnostics_figure,
    fit_titles,
    plot_diagnostics,
    plot_runs,
    plt,
    runs_figure,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def diverged(rounds=8, x_key="round", value=math.nan) -> Result:
    """A gossip history as a diverged run records it: every evaluated metric NaN (or inf; None in history.json)."""
    rows = []
    for t in range(1, rounds + 1):
        row = {x_key: t, "train_loss": value, "bytes_sent": 1000}
        if t % 2 == 0:
            row.update({k: value for k in ("average_acc", "nodes_acc", "nodes_acc_min", "nodes_acc_max",
                                           "consensus", "weight_var_ratio", "weight_var_ratio.fc1.weight")})
            row["nodes_acc_max"] = None                            # history.json stores NaN as null
        rows.append(row)
    return Result(rows)


def healthy(rounds=8) -> Result:
    rows = []
    for t in range(1, rounds + 1):
        row = {"round": t, "train_loss": 1 / t, "bytes_sent": 1000}
        if t % 2 == 0:
            row.update({"average_acc": 0.5 + t / 40, "nodes_acc": 0.45 + t / 40, "nodes_acc_min": 0.3 + t / 40,
                        "nodes_acc_max": 0.5 + t / 40, "consensus": 2.0 ** -t, "weight_var_ratio": 0.3,
                        "weight_var_ratio.fc1.weight": 0.28, "weight_var_ratio.fc2.weight": 0.32})
        rows.append(row)
    return Result(rows)


def panel_texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_diverged_run_draws_no_empty_legend_and_says_why_the_panel_is_empty(tmp_path, value):
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # "No artists with labels found to put in legend" would raise here
        fig = diagnostics_figure({"diverged": diverged(value=value)}, title="lr = 1e6")
        plot_diagnostics({"diverged": diverged(value=value)}, tmp_path / "diagnostics.png")
        plot_runs({"diverged": diverged(value=value)}, tmp_path / "accuracy.png")
        acc_fig = runs_figure({"diverged": diverged(value=value)})
    titles = dict(DIAGNOSTIC_PANELS)
    by_title = {ax.get_title(): ax for ax in fig.axes}
    for pid in ("accuracy", "weight_var", "consensus"):
        ax = by_title[titles[pid]]
        assert ax.get_legend() is None and not ax.lines and not ax.collections
        assert "NaN or inf" in panel_texts(ax)
        assert ax.get_yscale() == "linear"                         # nothing to put on a log axis
    sent = by_title[titles["bytes"]]                               # bytes were counted: drawn, with a legend
    assert sent.lines and sent.get_legend() is not None and not sent.texts
    for ax in acc_fig.axes:
        assert ax.get_legend() is None and "NaN or inf" in panel_texts(ax)
    assert (tmp_path / "diagnostics.png").stat().st_size > 10_000 and (tmp_path / "accuracy.png").is_file()


def test_a_run_next_to_a_diverged_one_keeps_its_curves_and_legend():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = diagnostics_figure({"ok": healthy(), "diverged": diverged()})
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels and not any(label.startswith("diverged") for label in labels if "bytes" not in label)
        assert not ax.texts
    acc = fig.axes[0]
    assert [line.get_label() for line in acc.lines] == ["ok: node mean"]
    assert [c.get_label() for c in acc.collections] == ["ok: min-max over nodes"]


def _title_boxes(fig):
    renderer = fig.canvas.get_renderer()
    texts = [(ax.title, ax) for ax in fig.axes if ax.get_visible() and ax.title.get_text()]
    if getattr(fig, "_suptitle", None) is not None:
        texts.append((fig._suptitle, None))
    return [(t.get_text(), t.get_window_extent(renderer), ax and ax.get_window_extent(renderer)) for t, ax in texts]


def assert_titles_fit(fig):
    """Every title lies inside the figure, and every axes title within its axes' width (so it neither reaches
    the figure's edge nor runs into the next panel's title), at the size the figure is saved at."""
    page = fig.bbox
    for text, box, axes_box in _title_boxes(fig):
        assert page.x0 - 0.5 <= box.x0 and box.x1 <= page.x1 + 0.5, (text, box, page)
        assert page.y0 - 0.5 <= box.y0 and box.y1 <= page.y1 + 0.5, (text, box, page)
        if axes_box is not None:
            assert axes_box.x0 - 1 <= box.x0 and box.x1 <= axes_box.x1 + 1, (text, box, axes_box)


def test_long_titles_are_wrapped_to_fit_their_panel_and_the_figure():
    fig = diagnostics_figure({"gossip-ring": healthy()}, title="gossip-ring: gossip on a ring graph, 10 clients, "
                                                                "digits, seed 0, " + "a long setting " * 12)
    fig.axes[0].set_title("test accuracy (line: node mean, band: min-max over nodes, and some more words)")
    fit_titles(fig)
    assert_titles_fit(fig)
    assert "\n" in fig.axes[0].get_title() and "\n" in fig._suptitle.get_text()
    # the words survive the wrapping
    words = "test accuracy (line: node mean, band: min-max over nodes, and some more words)"
    assert fig.axes[0].get_title().split() == words.split()
    short = diagnostics_figure({"gossip-ring": healthy()})
    fit_titles(short)
    assert_titles_fit(short)
    assert [ax.get_title() for ax in short.axes] == [t for _, t in DIAGNOSTIC_PANELS]   # short titles stay as they are


def _spread(values):
    known = [v for v in values if v is not None]
    mean = sum(known) / len(known) if known else None
    return {"mean": mean, "min": min(known, default=None), "max": max(known, default=None), "std": 0.0,
            "n": len(known), "of": len(values)}


@pytest.mark.parametrize("reached", [True, False])
def test_gossip_clients_figures_fit_their_titles_and_say_when_no_run_reached_the_target(reached):
    study = experiments.study("gossip_clients")
    cfg = studies.load_config(study)
    groups, curves = [], []
    for n in cfg["nodes"]:
        for m in cfg["methods"]:
            groups.append({"nodes": n, "method": m, "acc": _spread([0.6, 0.7, 0.75]),
                           "rounds_to_target": _spread([40, None, 60] if reached else [None] * 3)})
            curves += [{"nodes": n, "method": m, "round": t, "acc": _spread([t / 250] * 3)} for t in (5, 100, 200)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figs = study.figures(cfg, groups, curves)
    for fig in figs.values():
        fig.tight_layout()                                         # as fedsim.studies.save_figures lays them out
        assert_titles_fit(fig)
    acc, rounds = figs["accuracy_vs_nodes"].axes
    assert rounds.get_title() == f"rounds to {cfg['target']:.0%} test accuracy"
    if reached:
        assert rounds.get_legend().get_title().get_text() == "k/n: k of n seeds reached it"
        assert {t.get_text() for t in rounds.texts} == {"2/3"}
    else:
        assert rounds.get_legend() is None and "no run reached 70%" in panel_texts(rounds)
    assert acc.get_legend() is not None


def test_a_legend_of_many_layers_sits_below_its_panel_not_on_the_curves():
    import math

    from fedsim.engine import Result
    from fedsim.plots import diagnostics_figure, fit_titles

    rows = [{"round": t, "weight_var_ratio": 0.5, **{f"weight_var_ratio.l{i}.weight": 0.3 + 0.01 * t * (i + 1)
                                                      for i in range(6)}, "consensus": math.exp(-t)}
            for t in range(1, 20)]
    fig = diagnostics_figure(Result(rows))
    fit_titles(fig)
    renderer = fig.canvas.get_renderer()
    weight, consensus = fig.axes[0], fig.axes[1]
    assert weight.get_legend().get_window_extent(renderer).y1 <= weight.get_window_extent(renderer).y0
    assert consensus.get_legend().get_window_extent(renderer).y0 >= consensus.get_window_extent(renderer).y0
