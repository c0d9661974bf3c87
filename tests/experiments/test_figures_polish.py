"""Study figure polish: a method keeps its colour in every panel of gossip_clients (and the right panel says which
methods never reached the target), topologies' point labels neither overlap nor leave the axes, lambda_2 is set
as mathtext, and one seed is "1 seed"."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.text
import pytest
from matplotlib.colors import to_rgba

import experiments
from fedsim import studies


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _spread(values):
    known = [v for v in values if v is not None]
    return {"mean": sum(known) / len(known) if known else None, "min": min(known, default=None),
            "max": max(known, default=None), "std": 0.0, "n": len(known), "of": len(values)}


def _gossip_figures(seeds=(0,), plain_reaches=()):
    """gossip_clients figures where plain gossip reaches the target only at the sizes in ``plain_reaches``."""
    study = experiments.study("gossip_clients")
    cfg = studies.load_config(study, overrides={"seeds": list(seeds)})
    groups, curves = [], []
    k = len(cfg["seeds"])
    for n in cfg["nodes"]:
        for m, acc, reach in (("fedavg", 0.85, 90), ("plain", 0.3, 150 if n in plain_reaches else None),
                              ("corrected", 0.8, 140)):
            groups.append({"nodes": n, "method": m, "acc": _spread([acc] * k), "rounds_to_target": _spread([reach] * k)})
            curves += [{"nodes": n, "method": m, "round": t, "acc": _spread([acc * t / 200] * k)} for t in (5, 100, 200)]
    return cfg, study.figures(cfg, groups, curves)


def _colours(ax):
    return {line.get_label().split(" (not reached")[0]: to_rgba(line.get_color()) for line in ax.lines
            if line.get_label() and not line.get_label().startswith("_")}


def test_gossip_clients_gives_a_method_one_colour_in_every_panel_and_names_the_methods_that_never_reached():
    _, figs = _gossip_figures()
    acc, rounds = figs["accuracy_vs_nodes"].axes
    left, right = _colours(acc), _colours(rounds)
    assert set(left) == {"FedAvg (star)", "plain gossip", "variance-corrected gossip"}
    assert set(right) == {"FedAvg (star)", "variance-corrected gossip"}        # plain never reached 70 %
    assert all(right[m] == left[m] for m in right)
    assert len(set(left.values())) == 3
    legend = rounds.get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert "plain gossip: never reached 70%" in texts
    (note,) = [h for h, t in zip(legend.legend_handles, texts) if t.startswith("plain gossip")]
    assert to_rgba(note.get_color())[:3] == left["plain gossip"][:3]      # in plain gossip's colour, as on the left
    for ax in figs["accuracy_vs_round"].axes:                           # and the per-size panels agree
        if ax.get_visible():
            assert all(c == left[m] for m, c in _colours(ax).items()), ax.get_title()


def test_gossip_clients_names_the_sizes_where_a_method_did_not_reach_the_target():
    cfg, figs = _gossip_figures(plain_reaches=(16, 32))
    rounds = figs["accuracy_vs_nodes"].axes[1]
    missed = ", ".join(str(n) for n in cfg["nodes"] if n not in (16, 32))
    texts = [t.get_text() for t in rounds.get_legend().get_texts()]
    assert f"plain gossip (not reached at {missed} nodes)" in texts
    assert not any("never reached" in t for t in texts)


@pytest.mark.parametrize("seeds, said", [((0,), "1 seed"), ((0, 1, 2), "mean over 3 seeds")])
def test_gossip_clients_subtitles_count_seeds_in_words(seeds, said):
    _, figs = _gossip_figures(seeds=seeds)
    for fig in figs.values():
        title = fig._suptitle.get_text().replace("\n", " ")
        assert said in title and "1 seeds" not in title


# the topologies study's groups, as its CPU default measured them: two near pairs at the right edge
TOPOLOGY_POINTS = [("ring", 64, 0.0032, 0.559, 0.494, 0.618), ("torus", 64, 0.1172, 0.72, 0.692, 0.755),
                   ("regular", 64, 0.1362, 0.705, 0.698, 0.717), ("small_world", 64, 0.0272, 0.661, 0.606, 0.694),
                   ("scale_free", 64, 0.0536, 0.614, 0.532, 0.662), ("exponential", 64, 0.3333, 0.739, 0.725, 0.759),
                   ("ring", 256, 0.0002, 0.427, 0.4, 0.453), ("torus", 256, 0.0304, 0.602, 0.581, 0.631),
                   ("regular", 256, 0.1157, 0.636, 0.617, 0.666), ("small_world", 256, 0.0146, 0.535, 0.524, 0.558),
                   ("scale_free", 256, 0.0375, 0.431, 0.382, 0.473), ("exponential", 256, 0.25, 0.732, 0.702, 0.749)]


def _topology_figures(seeds=(0, 1, 2)):
    study = experiments.study("topologies")
    cfg = studies.load_config(study, overrides={"seeds": list(seeds)})
    groups, curves = [], []
    for graph, n, gap, acc, lo, hi in TOPOLOGY_POINTS:
        rate = {"mean": 1 - gap, "min": 1 - gap, "max": 1 - gap}
        groups.append({"graph": graph, "nodes": n, "spectral_gap": {"mean": gap}, "rate_predicted": rate,
                       "rate_measured": rate, "acc": {"mean": acc, "min": lo, "max": hi}})
        curves += [{"graph": graph, "nodes": n, "round": t, "log10_distance": _spread([t * gap])} for t in (0, 10)]
    return study.figures(cfg, groups, curves)


def test_topology_labels_stay_inside_the_axes_and_off_each_other():
    fig = _topology_figures()["accuracy_vs_gap"]
    fig.tight_layout()                                  # as fedsim.studies.save_figures lays it out
    (ax,) = fig.axes
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    boxes = [matplotlib.text.Text.get_window_extent(t, renderer) for t in ax.texts]
    assert sorted(t.get_text() for t in ax.texts) == sorted(p[0] for p in TOPOLOGY_POINTS)   # all twelve labelled
    for t, box in zip(ax.texts, boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, t.get_text()
    overlapping = [(a.get_text(), b.get_text()) for i, (a, p) in enumerate(zip(ax.texts, boxes))
                   for b, q in zip(ax.texts[i + 1:], boxes[i + 1:]) if p.overlaps(q)]
    assert not overlapping
    legend = ax.get_legend().get_window_extent(renderer)
    assert not any(box.overlaps(legend) for box in boxes)


def test_topology_figures_write_lambda_2_as_mathtext_and_one_seed_in_the_singular():
    figs = _topology_figures(seeds=(0,))
    rate, gap = figs["consensus_rate"].axes[0], figs["accuracy_vs_gap"].axes[0]
    assert r"$|\lambda_2(W)|$" in rate.get_xlabel() and r"|\lambda_2(W)|$" in gap.get_xlabel()
    assert "lambda_2" not in rate.get_xlabel().replace(r"\lambda_2", "")
    texts = [rate.get_title(), gap.get_title(), figs["consensus_decay"]._suptitle.get_text()]
    assert all("1 seed" in t and "1 seeds" not in t for t in texts)
    renderer = figs["consensus_rate"].canvas.get_renderer()
    rate.xaxis.label.get_window_extent(renderer)          # mathtext parses (a bad expression raises here)
