"""Saving a picture of a topology to a PNG file (matplotlib Agg, no pyplot global state)."""

from __future__ import annotations

import os

import networkx as nx

__all__ = ["draw"]

LABEL_MAX = 50
"""Node labels are drawn only for graphs with at most this many nodes."""

SPRING_MAX = 500
"""Spring layout up to this many nodes; larger graphs are drawn on a circle."""


def _is_cycle(G: nx.Graph) -> bool:
    """True for rings (undirected or directed cycles through every node)."""
    U = G.to_undirected(as_view=True)
    return U.number_of_nodes() >= 3 and all(d == 2 for _, d in U.degree()) and nx.is_connected(U)


def _layout(G: nx.Graph, seed: int) -> dict:
    if _is_cycle(G) or G.number_of_nodes() > SPRING_MAX:
        return nx.circular_layout(sorted(G))
    return nx.spring_layout(G, seed=seed)


def draw(G: nx.Graph, path: str | os.PathLike, seed: int = 0) -> str:
    """Save a drawing of G to the PNG file ``path`` and return the path.

    Layout: circle for rings and for graphs above SPRING_MAX nodes, spring layout (seeded by
    ``seed``) otherwise; node labels only up to LABEL_MAX nodes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = os.fspath(path)
    n = G.number_of_nodes()
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    pos = _layout(G, seed)
    small = n <= LABEL_MAX
    nx.draw_networkx_edges(
        G, pos, ax=ax, width=1.0 if small else 0.3, alpha=0.6, arrows=G.is_directed() or None
    )
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=300 if small else max(5, 3000 // max(n, 1)))
    if small:
        nx.draw_networkx_labels(G, pos, ax=ax, font_size=8)
    ax.set_title(f"{n} nodes, {G.number_of_edges()} edges")
    fig.savefig(path, format="png", dpi=100)
    return path
