"""Spectral quantities of mixing matrices: |lambda_2| and the spectral gap, plus a graph summary."""

from __future__ import annotations

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from topologies.errors import TopologyError
from topologies.mixing import metropolis_hastings, push_sum_weights

__all__ = ["second_eigenvalue", "spectral_gap", "describe", "DENSE_MAX"]

DENSE_MAX = 2000
"""Largest n for which the eigenvalues are computed with dense LAPACK; sparse ARPACK above."""


def _is_symmetric(W: sp.csr_array, atol: float = 1e-12) -> bool:
    diff = abs(W - W.T)
    return diff.nnz == 0 or float(diff.max()) <= atol


def second_eigenvalue(W, method: str = "auto") -> float:
    """Second largest eigenvalue magnitude |lambda_2| of a stochastic matrix W (dense or sparse).

    Eigenvalue magnitudes are sorted in decreasing order and the second is returned, so a
    disconnected or bipartite graph gives 1. ``method`` is "auto" (dense for n <= DENSE_MAX),
    "dense" or "sparse" (ARPACK: eigsh on W - J/n when W is symmetric and stochastic, eigs
    otherwise; the non-symmetric sparse path is slow when many eigenvalues have magnitude near 1).
    """
    if method not in ("auto", "dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    W = sp.csr_array(W, dtype=np.float64)
    n = W.shape[0]
    if W.ndim != 2 or W.shape[1] != n:
        raise TopologyError(f"a mixing matrix must be square, got shape {W.shape}")
    if n < 2:
        raise TopologyError(f"the second eigenvalue needs n >= 2, got n={n}")
    symmetric = _is_symmetric(W)
    if method == "dense" or (method == "auto" and n <= DENSE_MAX) or n < 4:
        dense = W.toarray()
        eig = np.linalg.eigvalsh(dense) if symmetric else np.linalg.eigvals(dense)
    elif symmetric and np.allclose(W.sum(axis=1), 1.0, rtol=0.0, atol=1e-10):
        return _second_eigenvalue_deflated(W)
    elif symmetric:
        eig = spla.eigsh(W, k=2, which="LM", return_eigenvectors=False)
    else:
        eig = spla.eigs(W, k=2, which="LM", return_eigenvectors=False)
    mags = np.sort(np.abs(eig))[::-1]
    lam2 = float(mags[1])
    return 1.0 if 1.0 < lam2 <= 1.0 + 1e-9 else lam2  # clip rounding above 1 only


def _second_eigenvalue_deflated(W: sp.csr_array) -> float:
    """|lambda_2| of a symmetric stochastic W from the two extreme eigenvalues of W - J/n.

    Removing the known eigenpair (1, ones) makes ARPACK converge fast even when lambda_2 is
    very close to 1 (large rings), where asking for the two largest magnitudes of W is slow.
    """
    n = W.shape[0]
    B = spla.LinearOperator((n, n), matvec=lambda x: W @ x - x.mean(axis=0), dtype=np.float64)
    top = spla.eigsh(B, k=1, which="LA", return_eigenvectors=False)[0]
    # The bottom end only matters if it beats the top in magnitude: estimate it loosely first.
    bottom = spla.eigsh(B, k=1, which="SA", tol=1e-3, return_eigenvectors=False)[0]
    if abs(bottom) + 1e-2 * max(abs(bottom), 1e-3) >= abs(top):
        bottom = spla.eigsh(B, k=1, which="SA", return_eigenvectors=False)[0]
    lam2 = float(max(abs(top), abs(bottom)))
    return 1.0 if 1.0 < lam2 <= 1.0 + 1e-9 else lam2


def spectral_gap(W, method: str = "auto") -> float:
    """Spectral gap 1 - |lambda_2(W)|: consensus error shrinks by |lambda_2| per round."""
    return 1.0 - second_eigenvalue(W, method=method)


def describe(G: nx.Graph, W=None) -> dict:
    """Summary of G: nodes, edges, min/max/mean degree, spectral gap of W, is_directed.

    W defaults to Metropolis-Hastings weights (push-sum weights for a directed graph, whose
    degrees are out-degrees).
    """
    directed = G.is_directed()
    if W is None:
        W = push_sum_weights(G) if directed else metropolis_hastings(G)
    degrees = np.fromiter((d for _, d in (G.out_degree() if directed else G.degree())), dtype=float)
    return {
        "nodes": G.number_of_nodes(),
        "edges": G.number_of_edges(),
        "min_degree": int(degrees.min()) if degrees.size else 0,
        "max_degree": int(degrees.max()) if degrees.size else 0,
        "mean_degree": float(degrees.mean()) if degrees.size else 0.0,
        "spectral_gap": spectral_gap(W),
        "is_directed": directed,
    }
