"""Gossip mixing over the stacked population: ``x <- W x`` as one sparse matmul.

``SparseW`` holds a scipy mixing matrix as torch CSR on the population's device, with the diagonal
always stored so that undelivered messages can fall back to the node's own weight:

* undirected (row/doubly stochastic W): a receiver that misses neighbour j's message puts W_ij on
  its own model (rows stay stochastic; consensus is kept, the exact mean is not);
* directed (column-stochastic push-sum weights): the sender keeps the undelivered share, A_jj += A_ij,
  so columns stay stochastic and push-sum stays unbiased.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch



@dataclass(frozen=True)
class SparseW:
    """A mixing matrix (row i = weights node i puts on what it receives) in torch CSR form."""

    n: int
    crow: torch.Tensor   # [n+1]
    cols: torch.Tensor   # [nnz] sender of each entry
    rows: torch.Tensor   # [nnz] receiver of each entry
    vals: torch.Tensor   # [nnz]
    diag_pos: torch.Tensor  # [n] position of entry (i, i) in vals
    off: torch.Tensor       # positions of the messages: entries i != j with nonzero weight
    directed: bool

    @staticmethod
    def from_scipy(W, directed: bool = False, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> "SparseW":
        """Convert a scipy sparse (or dense) n x n matrix, storing its diagonal explicitly."""
        W = sp.coo_array(W)
        n = W.shape[0]
        if W.shape != (n, n):
            raise ValueError(f"mixing matrix must be square, got shape {W.shape}")
        rows = np.concatenate([W.row, np.arange(n)])
        cols = np.concatenate([W.col, np.arange(n)])
        vals = np.concatenate([W.data, np.zeros(n)])
        csr = sp.csr_array((vals, (rows, cols)), shape=(n, n))  # sums duplicates, keeps the zero diagonal
        csr.sort_indices()
        crow = torch.as_tensor(csr.indptr, dtype=torch.int64, device=device)
        c = torch.as_tensor(csr.indices, dtype=torch.int64, device=device)
        r = torch.repeat_interleave(torch.arange(n, device=device), crow[1:] - crow[:-1])
        diag_pos = torch.nonzero(r == c).flatten()
        vals = torch.as_tensor(csr.data, dtype=dtype, device=device)
        off = torch.nonzero((r != c) & (vals != 0)).flatten()
        return SparseW(n, crow, c, r, vals, diag_pos, off, directed)

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sender, receiver) of every message this matrix implies."""
        return self.cols[self.off], self.rows[self.off]

    def with_delivered(self, delivered: torch.Tensor) -> "SparseW":
        """The matrix after dropping the messages (in ``edges()`` order) where ``delivered`` is False."""
        if bool(delivered.all()):
            return self
        lost = self.off[~delivered.to(self.off.device)]
        vals = self.vals.clone()
        owner = self.cols[lost] if self.directed else self.rows[lost]
        vals.index_add_(0, self.diag_pos[owner], vals[lost])
        vals[lost] = 0
        return SparseW(self.n, self.crow, self.cols, self.rows, vals, self.diag_pos, self.off, self.directed)

    def to_csr(self) -> torch.Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.cols, self.vals, size=(self.n, self.n),
                                           check_invariants=False)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``W @ x`` for x of shape [n, P] or [n]."""
        if x.ndim == 1:
            return self.matmul(x[:, None])[:, 0]
        return torch.sparse.mm(self.to_csr(), x)

    def matmul_loop(self, x: torch.Tensor) -> torch.Tensor:
        """Reference ``W @ x``: a Python loop over nodes, each averaging the models it received."""
        out = torch.empty_like(x)
        crow = self.crow.tolist()
        for i in range(self.n):
            k = slice(crow[i], crow[i + 1])
            weights = self.vals[k].reshape(-1, *([1] * (x.ndim - 1)))
            out[i] = (weights * x[self.cols[k]]).sum(0)
        return out
