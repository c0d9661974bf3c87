"""Checks that a graph is usable for gossip, and small parameter checks shared by generators."""

from __future__ import annotations

import numbers

import networkx as nx

from topologies.errors import (
    DisconnectedGraphError,
    InvalidTopologyParameterError,
    TopologyError,
)

__all__ = ["validate"]


def validate(G: nx.Graph) -> nx.Graph:
    """Check that G has nodes 0..n-1 (n >= 2), no self-loops and is connected.

    Directed graphs must be strongly connected. Returns G unchanged so it can be chained;
    raises ``InvalidTopologyParameterError`` or ``DisconnectedGraphError``.
    """
    return _validate(G)


def _validate(G: nx.Graph, where: str = "", hint: str = "") -> nx.Graph:
    """``validate`` with a context prefix (e.g. the generator call) and a hint for disconnection."""
    prefix = f"{where}: " if where else ""
    n = G.number_of_nodes()
    if n < 2:
        raise InvalidTopologyParameterError(f"{prefix}graph has {n} node(s); gossip needs at least 2")
    check_node_labels(G, where)
    check_no_self_loops(G, where)
    if G.is_directed():
        if not nx.is_strongly_connected(G):
            sizes = [len(c) for c in nx.strongly_connected_components(G)]
            raise DisconnectedGraphError.from_sizes(sizes, strongly=True, where=where, hint=hint)
    elif not nx.is_connected(G):
        sizes = [len(c) for c in nx.connected_components(G)]
        raise DisconnectedGraphError.from_sizes(sizes, where=where, hint=hint)
    return G


def check_node_labels(G: nx.Graph, where: str = "") -> None:
    """Raise ``TopologyError`` unless the nodes of G are exactly the integers 0..n-1."""
    n = G.number_of_nodes()
    for v in G:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v < n:
            prefix = f"{where}: " if where else ""
            raise TopologyError(
                f"{prefix}nodes must be the integers 0..{n - 1}, found node {v!r}; "
                "relabel with networkx.convert_node_labels_to_integers(G)"
            )


def check_no_self_loops(G: nx.Graph, where: str = "") -> None:
    """Raise ``InvalidTopologyParameterError`` if G has self-loops, naming one of them."""
    loops = list(nx.nodes_with_selfloops(G))
    if loops:
        prefix = f"{where}: " if where else ""
        raise InvalidTopologyParameterError(
            f"{prefix}graph has {len(loops)} self-loop{'s' if len(loops) != 1 else ''}, "
            f"e.g. at node {loops[0]!r}; mixing weights put a node's own share on the diagonal, "
            "remove the self-loops"
        )


def check_int(name: str, value, minimum: int, where: str) -> int:
    """Return ``value`` as an int if it is an integer >= minimum, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidTopologyParameterError(f"{where}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidTopologyParameterError(f"{where}: needs {name} >= {minimum}, got {name}={value}")
    return int(value)


def check_probability(name: str, value, where: str) -> float:
    """Return ``value`` as a float if it lies in [0, 1], else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise InvalidTopologyParameterError(f"{where}: {name} must be in [0, 1], got {name}={value!r}")
    return float(value)


def check_seed(seed, where: str) -> int:
    """Return ``seed`` if it is a non-negative int; randomness must come from an explicit seed."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InvalidTopologyParameterError(
            f"{where}: seed must be a non-negative integer, got seed={seed!r}"
        )
    return int(seed)
