"""Mixing matrices for gossip averaging.

Every matrix is a ``scipy.sparse.csr_array`` of float64 with shape (n, n). Row i holds node i's
weights on what it receives, so one gossip round is ``x_new = W @ x`` (x stacked by node).
Graphs must have nodes 0..n-1 and no self-loops; edge weights are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx
import numpy as np
import scipy.sparse as sp

from topologies.errors import NotStochasticError, TopologyError
from topologies.validation import check_no_self_loops, check_node_labels

__all__ = [
    "metropolis_hastings",
    "max_degree",
    "uniform_neighbour",
    "push_sum_weights",
    "check_stochastic",
    "with_failed_links",
]


def _edges(G: nx.Graph, fn: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, rows, cols) of the adjacency of an undirected graph, both directions listed."""
    if G.is_directed():
        raise TopologyError(f"{fn} needs an undirected graph; use push_sum_weights for a DiGraph")
    check_node_labels(G, fn)
    check_no_self_loops(G, fn)
    n = G.number_of_nodes()
    A = nx.to_scipy_sparse_array(G, nodelist=range(n), weight=None, format="coo")
    return n, A.row.astype(np.int64), A.col.astype(np.int64)


def _assemble(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, diag: np.ndarray) -> sp.csr_array:
    """csr_array with the given off-diagonal entries plus a full diagonal."""
    idx = np.arange(n)
    W = sp.coo_array(
        (np.concatenate([vals, diag]), (np.concatenate([rows, idx]), np.concatenate([cols, idx]))),
        shape=(n, n),
        dtype=np.float64,
    ).tocsr()
    W.sum_duplicates()
    W.sort_indices()
    return W


def _remainder(n: int, rows: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """Diagonal that makes every row sum to 1."""
    return 1.0 - np.bincount(rows, weights=vals, minlength=n)


def metropolis_hastings(G: nx.Graph) -> sp.csr_array:
    """Metropolis-Hastings weights: W_ij = 1/(1 + max(d_i, d_j)) on edges, W_ii = 1 - sum_j W_ij.

    Symmetric and doubly stochastic, so gossip with it preserves the network mean.
    """
    n, rows, cols = _edges(G, "metropolis_hastings")
    vals = _mh_values(n, rows, cols)
    return _assemble(n, rows, cols, vals, _remainder(n, rows, vals))


def max_degree(G: nx.Graph) -> sp.csr_array:
    """Maximum-degree weights: W_ij = 1/(1 + d_max) on edges, diagonal = remainder (doubly stochastic)."""
    n, rows, cols = _edges(G, "max_degree")
    d_max = int(np.bincount(rows, minlength=n).max()) if rows.size else 0
    vals = np.full(rows.shape, 1.0 / (1.0 + d_max))
    return _assemble(n, rows, cols, vals, _remainder(n, rows, vals))


def uniform_neighbour(G: nx.Graph) -> sp.csr_array:
    """Equal weights 1/(d_i + 1) on node i and each neighbour: row-stochastic, symmetric only if regular."""
    n, rows, cols = _edges(G, "uniform_neighbour")
    share = 1.0 / (1.0 + np.bincount(rows, minlength=n))
    return _assemble(n, rows, cols, share[rows], share)


def push_sum_weights(D: nx.Graph) -> sp.csr_array:
    """Column-stochastic push-sum weights: A_ij = 1/(out_deg(j) + 1) for each edge j -> i and for i = j.

    Node j splits its value equally between itself and its out-neighbours. An undirected graph
    is treated as having both directions of every edge.
    """
    check_node_labels(D, "push_sum_weights")
    check_no_self_loops(D, "push_sum_weights")
    n = D.number_of_nodes()
    M = nx.to_scipy_sparse_array(D, nodelist=range(n), weight=None, format="coo")  # M[j, i]: j -> i
    src, dst = M.row.astype(np.int64), M.col.astype(np.int64)
    share = 1.0 / (1.0 + np.bincount(src, minlength=n))
    return _assemble(n, dst, src, share[src], share)


def check_stochastic(W, kind: str = "doubly", atol: float = 1e-10) -> None:
    """Raise ``NotStochasticError`` unless W (dense or sparse, square) is non-negative and its
    rows (``kind="row"``), columns (``"column"``) or both (``"doubly"``) sum to 1 within atol."""
    if kind not in ("doubly", "row", "column"):
        raise ValueError(f"kind must be 'doubly', 'row' or 'column', got {kind!r}")
    W = sp.csr_array(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise NotStochasticError(f"a mixing matrix must be square, got shape {W.shape}")
    data = W.data
    if not np.all(np.isfinite(data)):
        raise NotStochasticError("matrix has non-finite entries (nan or inf)")
    if data.size and data.min() < 0:
        coo = W.tocoo()
        k = int(np.argmin(coo.data))
        raise NotStochasticError(
            f"matrix is not {kind}-stochastic: it has negative entries, "
            f"most negative W[{coo.row[k]}, {coo.col[k]}] = {coo.data[k]:.6g}"
        )
    checks = {"row": ("row", 1), "column": ("column", 0)}
    for axis_name in (("row", "column") if kind == "doubly" else (kind,)):
        label, axis = checks[axis_name]
        sums = np.asarray(W.sum(axis=axis)).ravel()
        err = np.abs(sums - 1.0)
        worst = int(np.argmax(err)) if err.size else 0
        if err.size and err[worst] > atol:
            raise NotStochasticError(
                f"matrix is not {kind}-stochastic: {label} sums must be 1, but {label} {worst} "
                f"sums to {sums[worst]:.12g} (|error| {err[worst]:.3g} > atol {atol:g})"
            )
    return None


def with_failed_links(
    G: nx.Graph, failed: Iterable[tuple[int, int]], *, reweight: bool = False
) -> sp.csr_array:
    """Metropolis-Hastings weights of G after the undirected edges in ``failed`` drop out.

    By default (``reweight=False``) the surviving edges keep their MH weights computed on G and each
    failed edge's weight moves to both endpoints' diagonals (a node uses its own value when a
    message is lost). With ``reweight=True`` the MH weights are recomputed on the surviving graph.
    Either way W stays symmetric and doubly stochastic; the result may be disconnected.
    """
    parts = _EdgeParts.of(G, "with_failed_links")
    failed = np.asarray(list(failed), dtype=np.int64).reshape(-1, 2)
    bad = (failed < 0) | (failed >= parts.n)
    if bad.any():
        u, v = failed[np.flatnonzero(bad.any(axis=1))[0]]
        raise TopologyError(f"with_failed_links: ({u}, {v}) is not an edge of G")
    keys = np.minimum(failed[:, 0], failed[:, 1]) * parts.n + np.maximum(failed[:, 0], failed[:, 1])
    dead = np.isin(parts.edge_keys, keys)
    missing = np.setdiff1d(keys, parts.edge_keys)
    if missing.size:
        u, v = divmod(int(missing[0]), parts.n)
        raise TopologyError(f"with_failed_links: ({u}, {v}) is not an edge of G")
    return parts.without(dead, reweight=reweight)


class _EdgeParts:
    """Precomputed MH entries of an undirected graph, to drop edges quickly round after round."""

    def __init__(self, n: int, rows: np.ndarray, cols: np.ndarray):
        self.n, self.rows, self.cols = n, rows, cols
        self.vals = _mh_values(n, rows, cols)
        lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
        # edge_keys: sorted undirected edges (u < v) as u * n + v; edge_of: entry -> edge index
        self.edge_keys, self.edge_of = np.unique(lo * n + hi, return_inverse=True)

    @classmethod
    def of(cls, G: nx.Graph, fn: str) -> "_EdgeParts":
        return cls(*_edges(G, fn))

    def without(self, dead_edges: np.ndarray, *, reweight: bool = False) -> sp.csr_array:
        """MH matrix with the edges flagged in ``dead_edges`` (one bool per edge) removed."""
        alive = ~dead_edges[self.edge_of]
        rows, cols = self.rows[alive], self.cols[alive]
        vals = _mh_values(self.n, rows, cols) if reweight else self.vals[alive]
        return _assemble(self.n, rows, cols, vals, _remainder(self.n, rows, vals))


def _mh_values(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """MH off-diagonal weights 1/(1 + max(d_i, d_j)) for the listed (both-direction) entries."""
    deg = np.bincount(rows, minlength=n)
    return 1.0 / (1.0 + np.maximum(deg[rows], deg[cols]))
