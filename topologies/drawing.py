"""Saving a picture of a topology to a PNG file (matplotlib Agg, no pyplot global state)."""

from __future__ import annotations

import os
from collections import Counter

import networkx as nx

__all__ = ["draw", "drawing_figure", "DRAW_MAX"]

LABEL_MAX = 50
"""Node labels are drawn only for graphs with at most this many nodes."""

SPRING_MAX = 500
"""Spring layout up to this many nodes; larger graphs are drawn on a circle."""

DRAW_MAX = 300
"""Above this many nodes a node-link drawing is an unreadable disc: the degree distribution is drawn instead."""


def _is_cycle(G: nx.Graph) -> bool:
    """True for rings (undirected or directed cycles through every node)."""
    U = G.to_undirected(as_view=True)
    return U.number_of_nodes() >= 3 and all(d == 2 for _, d in U.degree()) and nx.is_connected(U)


def _layout(G: nx.Graph, seed: int) -> dict:
    if _is_cycle(G) or G.number_of_nodes() > SPRING_MAX:
        return nx.circular_layout(sorted(G))
    return nx.spring_layout(G, seed=seed)


def drawing_figure(G: nx.Graph, name: str = "", seed: int = 0):
    """A matplotlib Figure of G titled with ``name`` (e.g. "regular, k = 8"), its nodes and edges.

    Up to DRAW_MAX nodes: the graph itself (circle for rings, seeded spring layout otherwise; labels up to
    LABEL_MAX nodes). Above: a bar chart of the degree distribution, and the title says why.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    n, m = G.number_of_nodes(), G.number_of_edges()
    size = f"{n:,} nodes, {m:,} {'directed ' if G.is_directed() else ''}edges"
    head = f"{name}: {size}" if name else size
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if n > DRAW_MAX:
        degrees = Counter(d for _, d in (G.out_degree() if G.is_directed() else G.degree()))
        xs = sorted(degrees)
        mean = m / n if G.is_directed() else 2 * m / n
        ax.bar(xs, [degrees[d] for d in xs], color="C0", label=f"{n:,} nodes (mean degree {mean:.2f})")
        ax.set(xlabel="out-degree (neighbours)" if G.is_directed() else "degree (neighbours)", ylabel="nodes",
               title=f"{head}\ndegree distribution (a drawing is unreadable above {DRAW_MAX} nodes)")
        ax.set_xlim(xs[0] - 1.5, xs[-1] + 1.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        return fig
    ax.set_axis_off()
    pos = _layout(G, seed)
    small = n <= LABEL_MAX
    nx.draw_networkx_edges(G, pos, ax=ax, width=1.0 if small else 0.4, alpha=0.6 if small else 0.35,
                           arrows=G.is_directed() or None)
    node_size = 300 if small else max(8, 3000 // max(n, 1))
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=node_size)
    if small:
        nx.draw_networkx_labels(G, pos, ax=ax, font_size=8)
    ax.legend(handles=[Line2D([], [], ls="", marker="o", color="C0", label=f"{n:,} nodes"),
                       Line2D([], [], color="k", alpha=0.6, label=f"{m:,} edges")], fontsize=8, loc="upper right")
    ax.set_title(head)
    return fig


def draw(G: nx.Graph, path: str | os.PathLike, seed: int = 0, name: str = "") -> str:
    """Save ``drawing_figure(G, name, seed)`` to the PNG file ``path`` and return the path."""
    path = os.fspath(path)
    drawing_figure(G, name, seed).savefig(path, format="png", dpi=100)
    return path
