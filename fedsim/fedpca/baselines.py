"""Baselines for federated PCA, all from client statistics (C_i = X_i^T X_i, n_i), plus the pymanopt reference.

* ``centralized_pca``: top-k eigenspace of the pooled matrix (the accuracy upper bound);
* ``exact_federated_pca``: one round, clients send (n_i, sum x, C_i); identical subspace, d^2 + d + 1 numbers each;
* ``projector_averaging``: one-shot average of the local projectors V_i V_i^T (Fan et al., 2019);
* ``local_only``: every client's own top-k eigenspace (no collaboration);
* ``PymanoptLocalSolver``: the per-client reference for FedPG's batched local steps, built on pymanopt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsim.fedpca.problem import PCAClients, check_k, pooled_matrix, top_k_eigenspace


@dataclass(frozen=True)
class BaselineResult:
    """A subspace (or one per client) and the bytes the clients sent to get it."""

    Z: torch.Tensor            # [d, k], or [N, d, k] for local_only
    bytes_sent: int


def centralized_pca(clients: PCAClients, k: int) -> BaselineResult:
    """Top-k eigenspace of sum_i C_i / sum_i n_i (as if all rows were in one place; nothing is sent)."""
    return BaselineResult(top_k_eigenspace(pooled_matrix(clients), k)[0], 0)


def exact_federated_pca(clients: PCAClients, k: int, sums: torch.Tensor | None = None) -> BaselineResult:
    """One round: each client sends (n_i, sum_i x, C_i); the server eigendecomposes the pooled matrix.

    With ``sums`` ([N, d]) the server can also centre the pooled matrix; the paper's pipeline does not
    centre (clients z-score their own data), so by default the subspace equals ``centralized_pca``.
    """
    S = pooled_matrix(clients)
    if sums is not None:
        mean = sums.sum(0) / clients.n.sum()
        S = S - torch.outer(mean, mean)
    d = clients.d
    per_client = (d * d + d + 1) * clients.C.element_size()
    return BaselineResult(top_k_eigenspace(S, k)[0], per_client * clients.n_clients)


def local_subspaces(clients: PCAClients, k: int) -> torch.Tensor:
    """Each client's own top-k eigenspace, [N, d, k]."""
    check_k(k, clients.d)
    return torch.linalg.eigh(clients.C)[1].flip(-1)[..., :k]


def projector_averaging(clients: PCAClients, k: int, weighted: bool = True) -> BaselineResult:
    """Top-k eigenspace of the (n_i-weighted) average of the clients' projectors V_i V_i^T; one upload of V_i."""
    V = local_subspaces(clients, k)
    w = clients.n / clients.n.sum() if weighted else torch.full_like(clients.n, 1 / clients.n_clients)
    P = (w[:, None, None] * (V @ V.transpose(-2, -1))).sum(0)
    return BaselineResult(top_k_eigenspace(P, k)[0], V[0].numel() * V.element_size() * clients.n_clients)


def local_only(clients: PCAClients, k: int) -> BaselineResult:
    """No collaboration: every client keeps its own top-k eigenspace."""
    return BaselineResult(local_subspaces(clients, k), 0)


class PymanoptLocalSolver:
    """FedPG's local solve for one client at a time, on pymanopt's Grassmann manifold and optimizer.

    The cost is the client's augmented Lagrangian L_i(U) = f_i(U) + <Y, U - Z> + rho/2 ||U - Z||^2 (as a
    ``pymanopt.function.numpy`` cost with its Euclidean gradient), the optimizer pymanopt's
    ``SteepestDescent`` with a fixed step ``eta`` (a constant line search) for ``steps`` iterations, and the
    manifold ``Grassmann(d, k)`` with its tangent projection, given the QR retraction with positive diag(R)
    (pymanopt's own Grassmann retraction is the polar factor, which gives another representative).
    ``projection="stiefel"`` swaps in the Stiefel tangent projection of the clean FedPG variant.
    """

    def __init__(self, d: int, k: int, eta: float, steps: int, projection: str = "grassmann"):
        import pymanopt
        from pymanopt.manifolds import Grassmann

        check_k(k, d)
        if projection not in ("grassmann", "stiefel"):
            raise ValueError(f"unknown projection {projection!r}; use 'grassmann' or 'stiefel'")
        self.pymanopt, self.eta, self.steps = pymanopt, eta, steps
        stiefel = projection == "stiefel"

        class QRGrassmann(Grassmann):
            def retraction(self, point, tangent_vector):
                q, r = np.linalg.qr(point + tangent_vector)
                return q * np.where(np.diag(r) < 0, -1.0, 1.0)

            if stiefel:
                def projection(self, point, vector):
                    sym = point.T @ vector
                    return vector - point @ (0.5 * (sym + sym.T))

                def euclidean_to_riemannian_gradient(self, point, euclidean_gradient):
                    return self.projection(point, euclidean_gradient)

        self.manifold = QRGrassmann(d, k)

    def solve(self, C: np.ndarray, n: float, Y: np.ndarray, Z: np.ndarray, rho: float, U0: np.ndarray) -> np.ndarray:
        """Run the fixed-step local iterations from ``U0``; returns the final U (d x k)."""
        pymanopt = self.pymanopt
        manifold = self.manifold

        @pymanopt.function.numpy(manifold)
        def cost(U):
            f = (np.trace(C) - np.sum(U * (C @ U))) / n
            return f + np.sum(Y * (U - Z)) + 0.5 * rho * np.sum((U - Z) ** 2)

        @pymanopt.function.numpy(manifold)
        def euclidean_gradient(U):
            return -2.0 * C @ U / n + Y + rho * (U - Z)

        problem = pymanopt.Problem(manifold, cost, euclidean_gradient=euclidean_gradient)
        optimizer = pymanopt.optimizers.SteepestDescent(
            max_iterations=self.steps, min_gradient_norm=0.0, min_step_size=0.0, verbosity=0,
            line_searcher=_FixedStep(self.eta))
        return optimizer.run(problem, initial_point=U0).point


class _FixedStep:
    """A pymanopt line searcher that always takes the step x <- R_x(eta * d)."""

    def __init__(self, eta: float):
        self.eta = eta

    def search(self, objective, manifold, x, d, f0, df0):
        return self.eta * manifold.norm(x, d), manifold.retraction(x, self.eta * d)


def fedpg_with_pymanopt(clients: PCAClients, k: int, rounds: int, *, eta: float | None = None,
                        rho: float | None = None, local_steps: int | None = None, client_fraction: float = 1.0,
                        seed: int = 0, projection: str = "stiefel", solver: str = "") -> np.ndarray:
    """Clean FedPG's schedule with every local solve done per client with pymanopt, in NumPy: the reference (and
    speed baseline) for the batched engine. Returns the final Z.

    ``solver`` as in :class:`~fedsim.fedpca.fedpg.FedPG` ("" = "linearized" unless ``eta`` or ``local_steps`` is
    given). "riemannian": the same sampling stream, initial point, dual and server steps as
    ``FedPG(variant="clean", retraction="qr")``, the local steps by :class:`PymanoptLocalSolver`. "linearized":
    :func:`linearized_fedpg_with_pymanopt`.
    """
    from fedsim.fedpca.fedpg import FedPG, sample_clients
    from fedsim.rng import Streams

    alg = FedPG(k, eta=eta, rho=rho, local_steps=local_steps, client_fraction=client_fraction, retraction="qr",
                projection=projection, solver=solver)
    if alg.solver_name == "linearized":
        return linearized_fedpg_with_pymanopt(clients, k, rounds, client_fraction=client_fraction, seed=seed, rho=rho)
    eta, rho, local_steps = alg.eta_value, alg.rho_value, alg.local_steps_value
    streams = Streams(seed)
    C, n = clients.C.cpu().numpy(), clients.n.cpu().numpy()
    N, d = C.shape[0], C.shape[1]
    check_k(k, d)
    u = streams.uniform("init", torch.zeros(1, dtype=torch.int64), None, (d, k), dtype=torch.float64)[0]
    Z = alg_init_z(u)
    U = np.repeat(Z[None], N, axis=0)
    Y = np.zeros_like(U)
    seen = np.zeros(N, dtype=bool)
    solver_ = PymanoptLocalSolver(d, k, eta, local_steps, projection=projection)
    for t in range(rounds):
        S = sample_clients(streams, t, N, alg.client_fraction).numpy()
        for i in S:
            if seen[i]:
                Y[i] = Y[i] + rho * (U[i] - Z)
            U[i] = solver_.solve(C[i], n[i], Y[i], Z, rho, U[i]) if local_steps else U[i]
            seen[i] = True
        w = n[S] / n[S].sum()
        M = np.einsum("i,ijk->jk", w, U[S] + Y[S] / rho)
        a, _, b = np.linalg.svd(M, full_matrices=False)
        Z = a @ b
    return Z


class PymanoptLinearizedSolver:
    """The linearized local solve of clean FedPG for one client, with pymanopt.

    min_U <g + Y, U - Z> + rho / 2 ||U - Z||^2 on pymanopt's ``Euclidean(d, k)`` (g = -2 C Z / n, the gradient of
    the client's weighted objective at Z), by pymanopt's ``TrustRegions`` with the exact Hessian (rho I), run to a
    gradient norm of 1e-13 relative: the closed form U = Z - (g + Y) / rho, found by a generic solver.
    """

    def __init__(self, d: int, k: int):
        import pymanopt
        from pymanopt.manifolds import Euclidean

        self.pymanopt, self.manifold = pymanopt, Euclidean(d, k)

    def solve(self, g: np.ndarray, Y: np.ndarray, Z: np.ndarray, rho: float) -> np.ndarray:
        pymanopt, manifold = self.pymanopt, self.manifold
        b = g + Y

        @pymanopt.function.numpy(manifold)
        def cost(U):
            return float(np.sum(b * (U - Z)) + 0.5 * rho * np.sum((U - Z) ** 2))

        @pymanopt.function.numpy(manifold)
        def gradient(U):
            return b + rho * (U - Z)

        @pymanopt.function.numpy(manifold)
        def hessian(U, V):
            return rho * V

        problem = pymanopt.Problem(manifold, cost, euclidean_gradient=gradient, euclidean_hessian=hessian)
        scale = max(float(np.linalg.norm(b)), 1e-300)
        optimizer = pymanopt.optimizers.TrustRegions(min_gradient_norm=1e-13 * scale, max_iterations=50,
                                                     verbosity=0)
        return optimizer.run(problem, initial_point=Z.copy()).point


def linearized_fedpg_with_pymanopt(clients: PCAClients, k: int, rounds: int, *, client_fraction: float = 1.0,
                                   seed: int = 0, rho: float | None = None, momentum: bool = True) -> np.ndarray:
    """Clean FedPG's linearized schedule, one client at a time: local solves by :class:`PymanoptLinearizedSolver`,
    the dual updates, and the server's step written again in NumPy (shift removal, stale aggregation, Ritz
    estimate of lambda_{k+1} on span(Z_{t-1}, Z_t), heavy ball on [0, lambda_{k+1}], polar factor). The same
    sampling stream and initial point as ``FedPG(k, client_fraction=...)``; returns the final Z."""
    from fedsim.fedpca.fedpg import sample_clients
    from fedsim.rng import Streams

    streams = Streams(seed)
    C, n = clients.C.cpu().numpy(), clients.n.cpu().numpy()
    N, d = C.shape[0], C.shape[1]
    check_k(k, d)
    total = n.sum()
    u = streams.uniform("init", torch.zeros(1, dtype=torch.int64), None, (d, k), dtype=torch.float64)[0]
    Z = alg_init_z(u)
    if rho is None:
        pen = np.array([2.0 * np.linalg.eigvalsh(C[i])[-1] / total for i in range(N)])
    else:
        pen = rho * n / total
    U, Y = np.repeat(Z[None], N, axis=0), np.zeros((N, d, k))
    seen, has = np.zeros(N, dtype=bool), np.zeros(N, dtype=bool)
    H = np.zeros((N, d, k))
    Z_scaled, Z_prev, G_prev, lam, prev_fresh = np.zeros((d, k)), Z.copy(), np.zeros((d, k)), 0.0, False
    solver = PymanoptLinearizedSolver(d, k)
    for t in range(rounds):
        S = sample_clients(streams, t, N, client_fraction).numpy()
        for i in S:
            if seen[i]:
                Y[i] = Y[i] + pen[i] * (U[i] - Z)
            U[i] = solver.solve(-2.0 * C[i] @ Z / total, Y[i], Z, pen[i])
            seen[i] = True
            H[i] = 0.5 * (pen[i] * U[i] + Y[i] - pen[i] * Z)      # what the server derives from the upload
            has[i] = True
        G = H[has].sum(0)
        fresh = len(S) == N
        if fresh and prev_fresh:                                    # Ritz values on span(Z_prev, Z)
            X, SX = np.hstack([Z_prev, Z]), np.hstack([G_prev, G])
            q, s, vt = np.linalg.svd(X, full_matrices=False)
            keep = s > 1e-6 * s[0]
            mu = np.linalg.eigvalsh(q[:, keep].T @ SX @ (vt[keep].T / s[keep]))[::-1]
            if len(mu) > k:
                lam = max(float(mu[k]), 0.0)
        c, beta = (lam / 2, lam * lam / 16) if (momentum and fresh and lam > 0) else (0.0, 0.0)
        W = G - c * Z - beta * Z_scaled
        a, s, b = np.linalg.svd(W, full_matrices=False)
        Z_prev, G_prev, prev_fresh = Z, G, fresh
        Z_scaled = Z @ (b.T @ (b / s[:, None]))
        Z = a @ b
    return Z


def alg_init_z(u: torch.Tensor) -> np.ndarray:
    """The clean variant's initial Z from the ``init`` uniforms (as ``FedPG.init``)."""
    from fedsim.fedpca.grassmann import qr_retract

    return qr_retract(u - 0.5).numpy()
