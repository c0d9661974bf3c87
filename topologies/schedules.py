"""Time-varying topologies: objects with ``n``, ``directed`` and ``at(t) -> csr_array``.

``at(t)`` depends only on (seed, t), never on which rounds were asked for before, so a resumed run
sees the same matrices. ``directed`` tells the engine how to mix: False means W_t is row-stochastic
(doubly stochastic for every schedule here except a ``Static`` row-stochastic matrix) and plain
gossip ``x <- W_t x`` applies; True means W_t is only column-stochastic and the engine must run
push-sum (mix values and weights with W_t, estimate = values / weights).
"""

from __future__ import annotations

import numbers
from typing import Protocol, runtime_checkable

import networkx as nx
import numpy as np
import scipy.sparse as sp

from topologies.errors import DisconnectedGraphError, InvalidTopologyParameterError
from topologies.mixing import _assemble, _EdgeParts, check_stochastic, push_sum_weights
from topologies.validation import check_probability, check_seed, validate

__all__ = ["Schedule", "Static", "PushSum", "RandomMatching", "LinkFailures"]

# Distinct stream ids keep schedules of different kinds independent under the same seed.
_MATCHING_STREAM = 1
_FAILURE_STREAM = 2


@runtime_checkable
class Schedule(Protocol):
    """What the engine needs from a topology: node count, mixing mode and W_t."""

    n: int
    directed: bool

    def at(self, t: int) -> sp.csr_array: ...


def _check_round(t) -> int:
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
        raise InvalidTopologyParameterError(f"round t must be a non-negative integer, got t={t!r}")
    return int(t)


def _round_rng(seed: int, stream: int, t: int) -> np.random.Generator:
    """Generator for round t, keyed by (seed, stream, t) so it does not depend on call order."""
    return np.random.default_rng([seed, stream, t])


class Static:
    """The same matrix every round. ``directed=True`` marks a column-stochastic push-sum matrix.

    W is checked once: row-stochastic when ``directed`` is False, column-stochastic otherwise.
    ``at`` returns the stored matrix itself; do not modify it in place.
    """

    def __init__(self, W, directed: bool = False, allow_disconnected: bool = False):
        self.W = sp.csr_array(W, dtype=np.float64)
        self.directed = bool(directed)
        check_stochastic(self.W, kind="column" if self.directed else "row")
        self.n = self.W.shape[0]
        if not allow_disconnected:
            _check_connected(self.W, self.directed)

    def at(self, t: int) -> sp.csr_array:
        """W (the same for every round t)."""
        _check_round(t)
        return self.W

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, directed={self.directed})"


def _check_connected(W: sp.csr_array, directed: bool) -> None:
    """Refuse a W whose graph is not (strongly) connected: its parts never reach consensus with each other."""
    from scipy.sparse.csgraph import connected_components

    count, labels = connected_components(W, directed=directed, connection="strong")
    if count > 1:
        sizes = sorted(np.bincount(labels).tolist(), reverse=True)
        shown = ", ".join(map(str, sizes[:8])) + (", ..." if count > 8 else "")
        raise DisconnectedGraphError(
            f"the graph of W ({W.shape[0]} nodes) is {'not strongly connected' if directed else 'disconnected'}: "
            f"{count} components (sizes {shown}); gossip needs a connected graph (Static(W, "
            "allow_disconnected=True) to study one anyway)", sizes)


class PushSum(Static):
    """Static push-sum schedule on a strongly connected directed graph (``directed`` is True)."""

    def __init__(self, D: nx.DiGraph):
        validate(D)
        super().__init__(push_sum_weights(D), directed=True)


class RandomMatching:
    """Each round a random maximal matching of G's edges; matched pairs average, others keep their value.

    The matching is greedy over the edges in a random order drawn from (seed, t). W_t is the identity
    with a [[1/2, 1/2], [1/2, 1/2]] block on each matched pair: symmetric and doubly stochastic.
    """

    directed = False

    def __init__(self, G: nx.Graph, seed: int):
        validate(G)
        self.seed = check_seed(seed, "RandomMatching")
        parts = _EdgeParts.of(G, "RandomMatching")
        self.n = parts.n
        self.edges = np.stack(np.divmod(parts.edge_keys, parts.n), axis=1)  # sorted (u < v) pairs

    def pairs(self, t: int) -> np.ndarray:
        """Matched pairs of round t as an int array of shape (k, 2)."""
        rng = _round_rng(self.seed, _MATCHING_STREAM, _check_round(t))
        order = rng.permutation(len(self.edges))
        used = [False] * self.n
        picked = []
        for e, (u, v) in zip(order.tolist(), self.edges[order].tolist()):
            if not used[u] and not used[v]:
                used[u] = used[v] = True
                picked.append(e)
        return self.edges[np.sort(np.asarray(picked, dtype=np.int64))]

    def at(self, t: int) -> sp.csr_array:
        """Mixing matrix of round t."""
        pairs = self.pairs(t)
        u, v = pairs[:, 0], pairs[:, 1]
        diag = np.ones(self.n)
        diag[u] = diag[v] = 0.5
        rows, cols = np.concatenate([u, v]), np.concatenate([v, u])
        return _assemble(self.n, rows, cols, np.full(rows.shape, 0.5), diag)

    def __repr__(self) -> str:
        return f"RandomMatching(n={self.n}, edges={len(self.edges)}, seed={self.seed})"


class LinkFailures:
    """Each round every edge of G fails independently with probability q.

    W_t is the Metropolis-Hastings matrix of G with the failed edges' weight moved to the diagonal
    (``reweight=True``: MH recomputed on the surviving edges); symmetric and doubly stochastic in
    both cases, possibly disconnected in a given round. q = 0 gives ``metropolis_hastings(G)``.
    """

    directed = False

    def __init__(self, G: nx.Graph, q: float, seed: int, reweight: bool = False):
        validate(G)
        self.q = check_probability("q", q, "LinkFailures")
        self.seed = check_seed(seed, "LinkFailures")
        self.reweight = bool(reweight)
        self._parts = _EdgeParts.of(G, "LinkFailures")
        self.n = self._parts.n
        self.edges = np.stack(np.divmod(self._parts.edge_keys, self.n), axis=1)  # sorted (u < v) pairs

    def alive(self, t: int) -> np.ndarray:
        """Boolean mask over ``edges``: True where the edge works in round t."""
        rng = _round_rng(self.seed, _FAILURE_STREAM, _check_round(t))
        return rng.random(len(self.edges)) >= self.q

    def at(self, t: int) -> sp.csr_array:
        """Mixing matrix of round t."""
        return self._parts.without(~self.alive(t), reweight=self.reweight)

    def __repr__(self) -> str:
        return f"LinkFailures(n={self.n}, q={self.q}, seed={self.seed}, reweight={self.reweight})"
