"""The federated PCA problem through each client's sufficient statistics C_i = X_i^T X_i.

f_i(U) = (1/n_i) ||X_i - X_i U U^T||_F^2 = (tr C_i - tr(U^T C_i U)) / n_i  for orthonormal U,
so a client never needs its raw rows after computing (C_i, n_i) once: every local step costs O(d^2 k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


class SubspaceDimensionError(ValueError):
    """k is not in 1..d."""


def _is_integer(k) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, bool)


def check_k_positive(k) -> None:
    """Refuse a subspace dimension that no data can take (not an integer, or < 1) when an algorithm is built;
    ``check_k`` checks it against d once the data is known."""
    if not _is_integer(k) or k < 1:
        raise SubspaceDimensionError(f"k must be an integer >= 1, got k = {k!r}")


def check_k(k: int, d: int) -> int:
    """Validate the subspace dimension against the feature dimension."""
    if not _is_integer(k) or not 1 <= k <= d:
        raise SubspaceDimensionError(f"k must be an integer in 1..d = 1..{d}, got k = {k!r}"
                                     + (" (k > d: a k-dim subspace of R^d needs k <= d)" if isinstance(k, int)
                                        and k > d else ""))
    return int(k)


@dataclass(frozen=True)
class PCAClients:
    """Stacked client statistics: ``C`` [N, d, d] (X_i^T X_i) and ``n`` [N] sample counts."""

    C: torch.Tensor
    n: torch.Tensor

    def __post_init__(self):
        if not torch.is_floating_point(self.n):   # integer counts: weights n_i / n in C's precision, not float32
            object.__setattr__(self, "n", self.n.to(self.C.dtype))

    @staticmethod
    def from_blocks(blocks: Sequence[np.ndarray], dtype: torch.dtype = torch.float64,
                    device: str | torch.device = "cpu") -> "PCAClients":
        """Compute C_i = X_i^T X_i for each client's (already standardized) data block."""
        if len(blocks) == 0:
            raise ValueError("need at least one client block")
        if np.ndim(blocks[0]) != 2:
            raise ValueError(f"client 0: expected an (n, d) block of n samples, got shape {np.shape(blocks[0])}")
        d = blocks[0].shape[1]
        for i, X in enumerate(blocks):
            if X.ndim != 2 or X.shape[1] != d:
                raise ValueError(f"client {i}: expected an (n, {d}) block, got shape {X.shape}")
            if len(X) == 0:
                raise ValueError(f"client {i} has no rows")
            if not np.isfinite(X).all():
                raise ValueError(f"client {i}: data contains NaN or inf")
        C = torch.stack([torch.as_tensor(X.T @ X, dtype=dtype) for X in blocks]).to(device)
        n = torch.tensor([len(X) for X in blocks], dtype=dtype, device=device)
        return PCAClients(C, n)

    @property
    def n_clients(self) -> int:
        return self.C.shape[0]

    @property
    def d(self) -> int:
        return self.C.shape[1]

    def subset(self, idx: torch.Tensor) -> "PCAClients":
        return PCAClients(self.C[idx], self.n[idx])


def objective(clients: PCAClients, U: torch.Tensor) -> torch.Tensor:
    """f_i(U) for every client, [N] (U: [d, k] shared, or [N, d, k] per client)."""
    CU = clients.C @ U
    UtCU = (U * CU).sum(dim=(-2, -1))
    trace = torch.diagonal(clients.C, dim1=-2, dim2=-1).sum(-1)
    return (trace - UtCU) / clients.n


def pooled_matrix(clients: PCAClients) -> torch.Tensor:
    """The pooled second-moment matrix sum_i C_i / sum_i n_i.

    FedPG's server weights w_i = n_i / sum_j n_j make its consensus objective sum_i w_i f_i(U), the
    centralized PCA objective on all clients' rows; its minimizer is the top-k eigenspace of this matrix.
    """
    return clients.C.sum(0) / clients.n.sum()


def top_k_eigenspace(S: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k eigenvectors [d, k], all eigenvalues descending) of a symmetric matrix."""
    check_k(k, S.shape[-1])
    vals, vecs = torch.linalg.eigh(S)
    return vecs.flip(-1)[..., :k], vals.flip(-1)
