"""Figures a reader can trust: titles that name the setting, labelled axes, legends, bands only where promised,
graph drawings that stay readable at 1,000 nodes, attack grids with the attack names and SSIM per image."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

import topologies
from fedsim.engine import Result
from fedsim.plots import plt, runs_figure, seed_bands_figure


def gossip_result() -> Result:
    return Result([{"round": t, "train_loss": 1 / t, "average_acc": 0.5 + t / 20, "nodes_acc_min": 0.4 + t / 20,
                    "nodes_acc_max": 0.6 + t / 20} for t in range(1, 5)])


def fedavg_result() -> Result:
    return Result([{"round": t, "train_loss": 1 / t, "global_acc": 0.6 + t / 20} for t in range(1, 5)])


def labelled(ax) -> None:
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), (ax.get_xlabel(), ax.get_ylabel(), ax.get_title())
    assert ax.get_legend() is not None and ax.get_legend().get_texts()


def test_fedavg_plot_promises_no_band_and_gossip_plot_draws_the_one_it_promises():
    fig = runs_figure({"fedavg": fedavg_result()}, title="quickstart: FedAvg on digits")
    acc, loss = fig.axes
    assert len(acc.collections) == 0 and "band" not in acc.get_title() and "shad" not in acc.get_title()
    assert fig._suptitle.get_text() == "quickstart: FedAvg on digits"
    for ax in (acc, loss):
        labelled(ax)
    assert "fraction" in acc.get_ylabel()
    plt.close(fig)

    fig = runs_figure({"fedavg": fedavg_result(), "gossip": gossip_result()})
    acc = fig.axes[0]
    (band,) = acc.collections
    assert "band" in acc.get_title()
    assert "gossip (worst-best node)" in [t.get_text() for t in acc.get_legend().get_texts()]
    ys = band.get_paths()[0].vertices[:, 1]
    assert math.isclose(min(ys), 0.45) and math.isclose(max(ys), 0.8)       # the node min-max, not the mean
    plt.close(fig)


def test_seed_bands_show_mean_line_and_min_max_band():
    curves = {"acc": {"plain": ([1, 2, 3], [[0.1, 0.2, 0.3], [0.3, 0.4, 0.5]]), "single": ([1, 2], [[0.5, 0.6]])}}
    fig = seed_bands_figure([("acc", "test accuracy (fraction)", "accuracy, band: min-max over seeds", False)], curves,
                            title="study: setting")
    (ax,) = fig.axes
    labelled(ax)
    assert list(ax.lines[0].get_ydata()) == pytest.approx([0.2, 0.3, 0.4])
    assert len(ax.collections) == 1                                     # one seed: no band
    ys = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(0.1) and max(ys) == pytest.approx(0.5)
    assert "2 seeds" in ax.lines[0].get_label() and "1 seed)" in ax.lines[1].get_label()
    plt.close(fig)


def test_large_graph_draws_its_degree_distribution_titled_with_its_name():
    G = topologies.build("regular", 1000, seed=0, k=8)
    fig = topologies.drawing_figure(G, "regular (k = 8)")
    (ax,) = fig.axes
    assert ax.get_title().startswith("regular (k = 8): 1,000 nodes, 4,000 edges")
    assert "degree distribution" in ax.get_title()
    labelled(ax)
    heights = [p.get_height() for p in ax.patches]
    assert heights == [1000]                                            # every node has degree 8
    assert ax.patches[0].get_x() + ax.patches[0].get_width() / 2 == pytest.approx(8)

    small = topologies.drawing_figure(nx.cycle_graph(12), "ring")
    (ax,) = small.axes
    assert ax.get_title() == "ring: 12 nodes, 12 edges" and len(ax.patches) == 0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["12 nodes", "12 edges"]
    assert len(ax.collections) >= 2                                    # nodes and edges drawn
    assert topologies.drawing_figure(nx.cycle_graph(3)).axes[0].get_title() == "3 nodes, 3 edges"


def test_topology_cli_names_the_graph_and_says_when_it_draws_degrees(capsys, tmp_path):
    from fedsim.cli import main

    assert main(["topology", "regular", "-n", "400", "-k", "4", "--draw", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "degree distribution" in out and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_attack_grid_names_attacks_and_scores_each_image():
    from attacks.experiment import grid_figure

    g = torch.Generator().manual_seed(0)
    truth = [torch.rand(1, 28, 28, generator=g) for _ in range(3)]
    recon = {"truth": truth, "ig": [torch.rand(1, 28, 28, generator=g) for _ in range(3)],
             "dia": [t.clone() for t in truth]}
    fig = grid_figure(recon, title="IG vs DIA on MNIST, p = 0.25")
    axes = fig.axes
    assert fig._suptitle.get_text().replace("\n", " ") == "IG vs DIA on MNIST, p = 0.25"
    assert [axes[3 * i].get_ylabel() for i in range(3)] == ["original", "IG", "DIA"]
    assert [ax.get_xlabel() for ax in axes[:3]] == ["", "", ""]
    assert [ax.get_xlabel() for ax in axes[6:]] == ["SSIM 1.000"] * 3      # a perfect reconstruction
    ig = [float(ax.get_xlabel().split()[1]) for ax in axes[3:6]]
    assert all(s < 0.2 for s in ig), ig                                    # noise vs noise
    assert "IG, DIA" in grid_figure(recon).texts[0].get_text().replace("\n", " ")   # default title names the attacks
    plt.close("all")


def test_frontier_orders_by_strength_with_min_max_bars():
    from fedsim.plots import frontier_figure

    def stat(mean, lo, hi):
        return {"mean": mean, "min": lo, "max": hi}

    groups = [{"sweep": "noise", "attack": "ig", "strength": s, "test_acc": stat(a, a - 0.01, a + 0.02),
               "ssim": stat(q, q - 0.1, q + 0.05)} for s, a, q in [(0.1, 0.7, 0.1), (0.0, 0.8, 0.9), (0.01, 0.75, 0.6)]]
    groups.append({"sweep": "topk", "attack": "ig", "strength": 1.0, "test_acc": stat(None, None, None),
                   "ssim": stat(0.9, 0.9, 0.9)})                       # no accuracy: not drawn
    fig = frontier_figure(groups, x_label="test accuracy (fraction)", y_label="attack SSIM", title="leakage: MNIST")
    (ax,) = fig.axes
    labelled(ax)
    (line,) = [ln for ln in ax.lines if ln.get_marker() == "o"]          # not the error bars' caps
    assert list(line.get_xdata()) == [0.8, 0.75, 0.7] and list(line.get_ydata()) == [0.9, 0.6, 0.1]  # by strength
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["noise, ig"]
    assert [t.get_text() for t in ax.texts] == ["0", "0.01", "0.1"]
    plt.close(fig)


def test_frontier_labels_do_not_cover_each_other():
    """Points closer than a label's size: each label moves to a free side or is left out; none overlap."""
    from fedsim.plots import frontier_figure

    def stat(v):
        return {"mean": v, "min": v, "max": v}

    strengths = [0.0, 0.001, 0.01, 0.1, 1.0]
    groups = [{"sweep": sweep, "attack": "dia", "strength": s, "test_acc": stat(0.9 - 0.001 * i),
               "ssim": stat(0.5 + 0.002 * i)} for sweep in ("noise", "clip") for i, s in enumerate(strengths)]
    groups.append({"sweep": "noise", "attack": "dia", "strength": 10.0, "test_acc": stat(0.5), "ssim": stat(0.05)})
    fig = frontier_figure(groups)
    (ax,) = fig.axes
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    texts = [t.get_text() for t in ax.texts]
    assert "10" in texts and len(texts) >= 4            # the lone point and some of the cluster keep their labels
    assert len(texts) < len(groups)                     # eleven labels do not fit around one spot
    plt.close(fig)
