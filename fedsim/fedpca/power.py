"""The federated power method (plain and accelerated) and its decentralized gossip form: the yardstick for rounds.

The pooled matrix is S = sum_i C_i / n with n = sum_i n_i (``problem.pooled_matrix``); its top-k eigenspace is
the optimum of every federated PCA method here.

``FederatedPower`` (server). A round: the server sends Z (d x k) to the sampled clients; client i returns its part
of the pooled product, P_i = C_i Z / n (computed from the Z that reached it); the server keeps the last P_i that
reached it from every client, sums them, G = sum_i P_i (= S Z with full participation), and takes the Z-step

    plain:        Z+ = polar(G)                                   (block power iteration)
    accelerated:  W = G - c Z - beta Z~,  Z+ = W P^-1,  Z~+ = Z P^-1,  P = (W^T W)^(1/2)

The accelerated step is the heavy ball of Xu et al. (2018, "Accelerated stochastic power iteration"), centred on
the interval [0, lambda_{k+1}] that holds the unwanted eigenvalues of S (S is positive semi-definite):
c = lambda_{k+1} / 2, beta = (lambda_{k+1} / 2)^2 / 4. For an eigenvalue lambda the recurrence
w+ = (lambda - c) w - beta w- has roots of modulus sqrt(beta) = lambda_{k+1} / 4 on the whole interval and a root
(lambda_k - c + sqrt((lambda_k - c)^2 - 4 beta)) / 2 for lambda_k, so the angle contracts by their ratio per
round: 0.70 instead of 0.97 when lambda_{k+1} / lambda_k = 0.97 (the asymptotic rate of the Chebyshev
iteration on the same interval). Z~ (the previous iterate times the same normalisation) keeps the three-term
recurrence linear, so the normalisation does not change the subspaces.

lambda_{k+1} is not known: the server estimates it every round, without extra messages, as the (k+1)-th Ritz value
of S on span(Z_{t-1}, Z_t), from the two products it received (S Z_{t-1} and S Z_t). By Cauchy interlacing a Ritz
value never exceeds the eigenvalue, so the estimate stays on the safe side (beta <= the optimal beta); near
convergence Z_t - Z_{t-1} points along the slowest error direction, v_{k+1}, so the estimate becomes accurate. With
k >= d / 2 the two iterates span R^d and the estimate is exact. ``lambda_next`` gives the value instead (an
oracle, for tests).

The server extrapolates only in rounds where every client's contribution was computed from this round's Z (full
participation, nothing lost): with stale contributions (partial participation) the Ritz estimate is inconsistent
and the heavy ball diverged in our measurements, so those rounds take the plain step.

Partial participation: the server sums every client's *last* contribution (stale for the clients not sampled), as
asynchronous consensus ADMM does with the last (x_i, y_i) of the inactive workers (Zhang and Kwok, 2014). In
expectation the aggregate is an exponential moving average of S Z over the past rounds (a client is refreshed
with probability q per round), so the angle contracts by 1 - q (1 - lambda_{k+1} / lambda_k) per round:
about 1 / q times the rounds of full participation. Clients that never took part are left out of the sum until
they do.

Stopping rule. Each round the server also gets the stationarity residual of the current Z for free,
r = ||G - Z (Z^T G)||_F = ||(I - Z Z^T) S Z||_F (the Riemannian gradient of the objective at Z), and the
Davis-Kahan estimate of the angle sin(theta) <= r / (theta_k - lambda_{k+1}) (theta_k: the smallest Ritz value in
span(Z); lambda_{k+1}: the estimate above, so the estimate is slightly optimistic until that converges). With
``tol > 0`` the server stops (no more messages) once the estimate is below ``tol``.

``DecentralizedPower`` (no server; DeEPCA-style, Ye and Zhang 2021): node i keeps a block W_i (d x p) and a tracker
T_i of the network average of the local contributions F_j = N C_j W_j / n - c_j W_j - beta_j W~_j (gradient
tracking: T_i <- mix(T_i + F_i^new - F_i^old), so the network sum of the trackers equals that of the F_i exactly,
on any doubly stochastic mixing matrix). One round is one gossip exchange per edge; every K rounds a node takes the
power step W_i <- T_i P_i^-1 (the polar factor, W~_i <- W_i^old P_i^-1). The whole heavy-ball numerator is tracked
(a node's own momentum term applied after the mixing stalled at 1e-2 rad in our runs). The K exchanges between two
power steps are Chebyshev-accelerated (FastMix, Liu and Morse 2011): x+ = (1 + eta) W x - eta x-, with
eta = (1 - sqrt(1 - l2^2)) / (1 + sqrt(1 - l2^2)), l2 the second largest |eigenvalue| of the mixing matrix; they
shrink the disagreement by about sqrt(eta)^K, and K is the smallest with sqrt(eta)^K <= ``mix_tol`` (5e-3:
21 exchanges on a ring of 20, 8 on a random 4-regular graph of 20). The heavy ball's lambda_{k+1}: a node cannot
use the two-iterate Ritz estimate (the tracker's consensus error swamps the small difference of two iterates: it
diverged), so the block is oversampled (p = k + ``oversample``, 2 by default) and the node takes its block's
smallest Ritz value (a lower bound of lambda_{k+1} up to the consensus error), smoothed over power steps
(x <- x + ``smoothing`` (new - x), 0.2): a coefficient that jumps moves every F_i by (jump) W_i, a disturbance the
trackers must absorb, and unsmoothed estimates left the ring stalled at 5e-3 rad. A node's subspace is the top-k
Ritz vectors of its block (known one power step late: they need the block's mixed products). A lost message
counts as agreement (the receiver uses its own value): approximate, as in the ADMM of ``decentralized.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedsim.fedpca.fedpg import PCAFederation, send_z
from fedsim.fedpca.grassmann import (
    largest_principal_angle,
    orthonormality_error,
    qr_retract,
)
from fedsim.fedpca.problem import check_k, check_k_positive, objective
from fedsim.messages import SERVER, Messages
from fedsim.mixing import SparseW

MOMENTUM = ("auto", "none")


# -- pure helpers (shared with FedPG's linearized solver) --------------------------------------------------------

def polar_with_inverse(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, P^-1) with W = Q P, Q orthonormal (the polar factor), P = (W^T W)^(1/2); batched over leading dims."""
    U, s, Vh = torch.linalg.svd(W, full_matrices=False)
    return U @ Vh, Vh.mT @ (Vh / s[..., :, None])


def ritz_values(X: torch.Tensor, SX: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """Ritz values (descending) of a symmetric S on span(X), from SX = S X (X: [d, m]).

    Directions of X with a singular value below ``rtol`` times the largest are dropped (their products carry no
    reliable information), so the result may have fewer than m values. Default rtol: max(1e-6, 100 eps) (1e-6 in
    float64, 1.2e-5 in float32).
    """
    if rtol is None:
        rtol = max(1e-6, 100 * torch.finfo(X.dtype).eps)
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    keep = s > rtol * s[0]
    Q = U[:, keep]
    SQ = SX @ (Vh[keep].mT / s[keep])
    H = Q.mT @ SQ
    return torch.linalg.eigvalsh(0.5 * (H + H.mT)).flip(0)


def next_eigenvalue_estimate(Z_prev: torch.Tensor, G_prev: torch.Tensor, Z: torch.Tensor, G: torch.Tensor,
                             k: int) -> float | None:
    """The (k+1)-th Ritz value of S on span(Z_prev, Z) (G = S Z), a lower bound of lambda_{k+1}; None if that span
    has (numerically) at most k dimensions."""
    mu = ritz_values(torch.cat([Z_prev, Z], dim=-1), torch.cat([G_prev, G], dim=-1))
    return float(mu[k]) if len(mu) > k else None


def heavy_ball_coefficients(low: float, high: float) -> tuple[float, float]:
    """(c, beta) of the heavy ball centred on [low, high]: c = (low + high) / 2, beta = ((high - low) / 2)^2 / 4."""
    half = 0.5 * max(high - low, 0.0)
    return 0.5 * (low + high), 0.25 * half * half


def extrapolated_step(G: torch.Tensor, Z: torch.Tensor, Z_scaled: torch.Tensor, c: float, beta: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z+, Z~+): W = G - c Z - beta Z~, Z+ = polar(W) = W P^-1, Z~+ = Z P^-1. c = beta = 0: the power step."""
    W = G
    if c != 0.0:
        W = W - c * Z
    if beta != 0.0:
        W = W - beta * Z_scaled
    Q, Pinv = polar_with_inverse(W)
    return Q, Z @ Pinv


def residual_and_angle_estimate(G: torch.Tensor, Z: torch.Tensor, lam_next: float) -> tuple[float, float]:
    """(||(I - Z Z^T) G||_F, Davis-Kahan angle estimate ||.||_F / (theta_k - lam_next)) for G = S Z, Z orthonormal."""
    H = Z.mT @ G
    r = float(torch.linalg.matrix_norm(G - Z @ H))
    theta_k = float(torch.linalg.eigvalsh(0.5 * (H + H.mT))[0])
    gap = theta_k - lam_next
    return r, (min(r / gap, math.pi / 2) if gap > 0 else math.pi / 2)


def initial_subspace(fed: PCAFederation, k: int) -> torch.Tensor:
    """Z0 from the ``init`` stream: the same starting point as clean FedPG (``FedPG.init``)."""
    clients = fed.clients
    u = fed.streams.uniform("init", torch.zeros(1, dtype=torch.int64), None, (clients.d, k),
                            dtype=torch.float64)[0].to(clients.C)
    return qr_retract(u - 0.5)


# -- server-based power method -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PowerState:
    """Server: ``Z`` [d, k], the heavy-ball memory ``Z_scaled`` [d, k], the previous iterate and its aggregate
    (``Z_prev``, ``G_prev`` [d, k], for the Ritz estimate), the estimate ``lam_next`` [] of lambda_{k+1} (0: none
    yet), every client's last contribution ``M`` [N, d, k] and whether it has one (``has`` [N]), ``stopped`` []."""

    Z: torch.Tensor
    Z_scaled: torch.Tensor
    Z_prev: torch.Tensor
    G_prev: torch.Tensor
    lam_next: torch.Tensor
    M: torch.Tensor
    has: torch.Tensor
    has_prev: torch.Tensor
    stopped: torch.Tensor


def power_z_step(Z: torch.Tensor, Z_scaled: torch.Tensor, Z_prev: torch.Tensor, G_prev: torch.Tensor, lam: float,
                 G: torch.Tensor, *, k: int, fresh: bool, prev_fresh: bool, accelerate: bool,
                 lambda_next: float | None = None):
    """The server's Z-step from G = S Z (stale parts allowed), shared by ``FederatedPower`` and FedPG (pure).

    ``fresh``: every contribution in G was computed from this Z; ``prev_fresh``: the same for ``G_prev``, the
    aggregate of the previous iterate ``Z_prev`` (both needed for the Ritz estimate of lambda_{k+1}, which
    replaces ``lam`` when available; ``lambda_next`` overrides it). Extrapolates (heavy ball on [0, lam]) only when
    ``accelerate`` and ``fresh``. Returns (Z+, Z~+, lam, metrics).
    """
    if lambda_next is not None:
        lam = float(lambda_next)
    elif fresh and prev_fresh:
        est = next_eigenvalue_estimate(Z_prev, G_prev, Z, G, k)
        if est is not None:
            lam = max(est, 0.0)
    r, angle_est = residual_and_angle_estimate(G, Z, lam)
    c, beta = heavy_ball_coefficients(0.0, lam) if (accelerate and fresh and lam > 0) else (0.0, 0.0)
    Z_new, Z_scaled_new = extrapolated_step(G, Z, Z_scaled, c, beta)
    metrics = {"residual": r, "angle_estimate": angle_est, "lambda_next_estimate": lam,
               "extrapolated": float(beta > 0)}
    return Z_new, Z_scaled_new, lam, metrics


def client_products(C: torch.Tensor, got: torch.Tensor, Z_rows: torch.Tensor, one_row: bool, d: int, k: int
                    ) -> torch.Tensor:
    """C_i Z_i for the clients ``got`` [m] from the Z rows that reached them ([m, d*k]); batched.

    ``one_row``: every receiver got the same payload row (an untouched broadcast): one GEMM over the stacked
    C_i (no per-client copy of Z, and none of C when every client got it)."""
    if len(got) == 0:
        return C.new_zeros(0, d, k)
    if one_row:
        Z = Z_rows[0].reshape(d, k).to(C)
        Cg = C if len(got) == C.shape[0] and bool((got == torch.arange(len(got), device=got.device)).all()) else C[got]
        return (Cg.reshape(-1, d) @ Z).reshape(len(got), d, k)
    return torch.bmm(C[got], Z_rows.reshape(len(got), d, k).to(C))


@dataclass(frozen=True)
class FederatedPower:
    """Federated block power method; ``momentum="auto"``: the accelerated Z-step (heavy ball, Ritz-estimated
    lambda_{k+1}) in every round where all contributions are fresh; ``"none"``: plain power iteration.

    ``client_fraction``: clients sampled a round (stale aggregation for the others); ``lambda_next``: use this
    lambda_{k+1} instead of the estimate; ``tol``: stop once the Davis-Kahan angle estimate is below it (0: never).
    """

    k: int
    momentum: str = "auto"
    client_fraction: float = 1.0
    lambda_next: float | None = None
    tol: float = 0.0

    def __post_init__(self):
        check_k_positive(self.k)
        if self.momentum not in MOMENTUM:
            raise ValueError(f"unknown momentum {self.momentum!r}; known: {', '.join(MOMENTUM)}")
        if not 0 < self.client_fraction <= 1:
            raise ValueError(f"client_fraction must be in (0, 1], got {self.client_fraction}")
        if self.tol < 0 or (self.lambda_next is not None and self.lambda_next < 0):
            raise ValueError(f"need tol >= 0 and lambda_next >= 0; got {self.tol}, {self.lambda_next}")

    @property
    def name(self) -> str:
        return "power" if self.momentum == "none" else "power-accelerated"

    def init(self, fed: PCAFederation) -> PowerState:
        clients = fed.clients
        check_k(self.k, clients.d)
        Z = initial_subspace(fed, self.k)
        zero = torch.zeros_like(Z)
        none = torch.zeros(clients.n_clients, dtype=torch.bool, device=Z.device)
        return PowerState(Z, zero, Z.clone(), zero.clone(), torch.zeros((), dtype=Z.dtype, device=Z.device),
                          torch.zeros(clients.n_clients, *Z.shape, dtype=Z.dtype, device=Z.device), none,
                          torch.zeros((), dtype=torch.bool, device=Z.device), torch.zeros((), dtype=torch.bool))

    def round(self, state: PowerState, t: int, fed: PCAFederation, send: Callable[[Messages], Messages]):
        clients = fed.clients
        N, d, k = clients.n_clients, clients.d, self.k
        if bool(state.stopped):
            return state, {"participants": 0}
        dev = state.Z.device
        got, Z_rows, one_row = send_z(state.Z, t, fed, self.client_fraction, send)
        P = client_products(clients.C, got, Z_rows, one_row, d, k) / clients.n.sum()
        up = send(Messages.make(t, "uplink", got, P.reshape(len(got), d * k), torch.arange(len(got)),
                                torch.full((len(got),), SERVER)))
        senders, _, payload = up.arrived()
        senders = senders.to(dev)
        if len(senders) == 0:
            return state, {"participants": 0}
        M = state.M.index_copy(0, senders, payload.to(state.M).reshape(-1, d, k))
        has = state.has.clone()
        has[senders] = True
        G = M[has].sum(0)
        fresh = len(senders) == N
        Z, Z_scaled, lam, metrics = power_z_step(
            state.Z, state.Z_scaled, state.Z_prev, state.G_prev, float(state.lam_next), G, k=k, fresh=fresh,
            prev_fresh=bool(state.has_prev), accelerate=self.momentum == "auto", lambda_next=self.lambda_next)
        stop = self.tol > 0 and metrics["angle_estimate"] < self.tol
        new = PowerState(Z, Z_scaled, state.Z, G, torch.tensor(lam, dtype=Z.dtype, device=dev), M, has,
                         torch.tensor(fresh), torch.tensor(stop))
        return new, {"participants": len(senders), **metrics}

    def subspace(self, state: PowerState) -> torch.Tensor:
        return state.Z

    def evaluate(self, state: PowerState, fed: PCAFederation) -> dict[str, float]:
        w = fed.clients.n / fed.clients.n.sum()
        out = {"objective": float((w * objective(fed.clients, state.Z)).sum()),
               "z_orthonormality_error": float(orthonormality_error(state.Z))}
        if fed.reference is not None:
            out["angle_to_reference"] = float(largest_principal_angle(state.Z, fed.reference))
        return out


# -- decentralized (gossip) power method --------------------------------------------------------------------------

@dataclass(frozen=True)
class DecentralizedPowerState:
    """Per node: block ``W`` [N, d, p], heavy-ball memory ``W_scaled``, last local contribution ``F`` [N, d, p],
    heavy-ball coefficients ``c``, ``beta`` [N], the FastMix iterates ``X``, ``X_prev`` [N, d, p] of the tracker
    being mixed, the exchanges done in this power step ``step`` [], and the node's current subspace ``Z`` [N, d, k]
    (top-k Ritz vectors of its last mixed block)."""

    W: torch.Tensor
    W_scaled: torch.Tensor
    F: torch.Tensor
    c: torch.Tensor
    beta: torch.Tensor
    X: torch.Tensor
    X_prev: torch.Tensor
    step: torch.Tensor
    Z: torch.Tensor


@dataclass(frozen=True)
class DecentralizedPower:
    """DeEPCA-style decentralized power method (gradient tracking + power steps) over ``fed.schedule``.

    ``gossip_steps``: exchanges per power step (None: from the graph's second eigenvalue and ``mix_tol``);
    ``chebyshev``: FastMix acceleration of the exchanges; ``momentum``: "auto" (heavy ball, lambda_{k+1} from the
    smallest Ritz value of the oversampled block) or "none"; ``oversample``: extra columns (None: 2 with momentum,
    0 without); ``smoothing``: weight of a new estimate of lambda_{k+1} (module docstring).

    The graph's second eigenvalue is computed (dense, O(N^3)) once per mixing matrix object the schedule returns:
    with a time-varying schedule, give ``gossip_steps`` and ``chebyshev=False`` (FastMix assumes a fixed matrix).
    """

    k: int
    momentum: str = "auto"
    gossip_steps: int | None = None
    mix_tol: float = 0.005
    chebyshev: bool = True
    oversample: int | None = None
    smoothing: float = 0.2

    def __post_init__(self):
        check_k_positive(self.k)
        if self.momentum not in MOMENTUM:
            raise ValueError(f"unknown momentum {self.momentum!r}; known: {', '.join(MOMENTUM)}")
        if self.gossip_steps is not None and self.gossip_steps < 1:
            raise ValueError(f"gossip_steps must be >= 1, got {self.gossip_steps}")
        if not 0 < self.mix_tol < 1:
            raise ValueError(f"mix_tol must be in (0, 1), got {self.mix_tol}")
        if self.oversample is not None and self.oversample < 0:
            raise ValueError(f"oversample must be >= 0, got {self.oversample}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")

    @property
    def name(self) -> str:
        return "power-decentralized" + ("" if self.momentum == "none" else "-accelerated")

    def block_size(self, d: int) -> int:
        extra = self.oversample if self.oversample is not None else (2 if self.momentum == "auto" else 0)
        return min(d, self.k + extra)

    def _graph(self, fed: PCAFederation, t: int) -> tuple[SparseW, float, int]:
        """The round's mixing matrix (torch), its FastMix eta and the exchanges per power step (cached by identity)."""
        W = fed.schedule.at(t)

        def build() -> tuple[SparseW, float, int]:
            import numpy as np

            if self.gossip_steps is not None and not self.chebyshev:
                l2 = 0.0                                   # not needed: no eigen-decomposition
            else:
                dense = W.toarray() if hasattr(W, "toarray") else np.asarray(W)
                mags = np.sort(np.abs(np.linalg.eigvalsh(0.5 * (dense + dense.T))))[::-1]
                l2 = float(mags[1]) if len(mags) > 1 else 0.0
            root = math.sqrt(max(1.0 - l2 * l2, 0.0))
            eta = (1.0 - root) / (1.0 + root) if self.chebyshev else 0.0
            rate = math.sqrt(eta) if self.chebyshev else l2
            if self.gossip_steps is None:
                # connectivity from W's pattern, not from |lambda_2| = 1: rounding can leave it at 1 - 1e-16, and the
                # step count then comes out in the hundreds of millions instead of an error
                from scipy.sparse import csgraph, csr_matrix

                parts = csgraph.connected_components(csr_matrix(W), directed=False)[0]
                if parts > 1 or rate >= 1:
                    raise ValueError(f"round {t}: the graph of W is disconnected ({parts} components, |lambda_2| = "
                                     f"{l2:.3g}): gossip averaging never reaches mix_tol = {self.mix_tol:g}; use a "
                                     "connected topology or set gossip_steps")
            K = self.gossip_steps or (1 if rate <= 0 else max(1, math.ceil(math.log(self.mix_tol) / math.log(rate))))
            return SparseW.from_scipy(W, device=fed.clients.C.device, dtype=fed.clients.C.dtype), eta, K

        return fed.derived.get(("power graph", self), W, build)

    def gossip_steps_for(self, fed: PCAFederation, t: int = 0) -> int:
        """The exchanges per power step this algorithm uses on the round-t graph."""
        return self._graph(fed, t)[2]

    def init(self, fed: PCAFederation) -> DecentralizedPowerState:
        if fed.schedule is None:
            raise ValueError("the decentralized power method needs a topology (PCAFederation.schedule)")
        if getattr(fed.schedule, "directed", False):
            raise ValueError("the decentralized power method needs an undirected topology")
        clients = fed.clients
        N, d, k = clients.n_clients, clients.d, self.k
        nodes = fed.schedule.at(0).shape[0]
        if nodes != N:
            raise ValueError(f"the topology has {nodes} nodes but the federation {N} clients (one node each)")
        check_k(k, d)
        p = self.block_size(d)
        Z0 = initial_subspace(fed, k)
        if p > k:
            u = fed.streams.uniform("init_extra", torch.zeros(1, dtype=torch.int64), None, (d, p - k),
                                    dtype=torch.float64)[0].to(Z0)
            W0 = torch.linalg.qr(torch.cat([Z0, u - 0.5], dim=1))[0]
            W0 = torch.cat([Z0, W0[:, k:]], dim=1)   # Z0 itself, then the extra directions orthogonal to it
        else:
            W0 = Z0
        W = W0.expand(N, d, p).clone()
        F = self._local(clients, W, torch.zeros(N, dtype=W.dtype), torch.zeros(N, dtype=W.dtype), torch.zeros_like(W))
        zeros = torch.zeros(N, dtype=W.dtype, device=W.device)
        return DecentralizedPowerState(W, torch.zeros_like(W), F, zeros, zeros.clone(), F.clone(), F.clone(),
                                       torch.zeros((), dtype=torch.int64), Z0.expand(N, d, k).clone())

    @staticmethod
    def _local(clients, W, c, beta, W_scaled):
        """F_i = N C_i W_i / n - c_i W_i - beta_i W~_i (the node's part of the heavy-ball numerator)."""
        F = torch.matmul(clients.C, W) * (clients.n_clients / clients.n.sum())
        return F - c[:, None, None] * W - beta[:, None, None] * W_scaled

    def round(self, state: DecentralizedPowerState, t: int, fed: PCAFederation,
              send: Callable[[Messages], Messages]):
        clients = fed.clients
        N, d, p = state.W.shape
        k = self.k
        Wm, eta, K = self._graph(fed, t)
        senders, receivers = Wm.edges()
        msgs = send(Messages.make(t, "gossip", torch.arange(N), state.X.reshape(N, -1), senders, receivers))
        mixed = Wm.mix(state.X.reshape(N, -1), msgs.payload, msgs.src, msgs.delivered.to(senders.device))
        mixed = mixed.reshape(N, d, p).to(state.X)
        X = (1 + eta) * mixed - eta * state.X_prev if eta else mixed   # FastMix, x_{-1} = x_0
        step = int(state.step) + 1
        if step < K:
            return DecentralizedPowerState(state.W, state.W_scaled, state.F, state.c, state.beta, X, state.X,
                                           torch.tensor(step), state.Z), {"participants": N, "power_step": 0}
        # the tracker T = X estimates mean_j F_j: the node's estimate of S W_i is T + c_i W_i + beta_i W~_i
        T = X
        SW = T + state.c[:, None, None] * state.W + state.beta[:, None, None] * state.W_scaled
        H = state.W.mT @ SW
        vals, vecs = torch.linalg.eigh(0.5 * (H + H.mT))          # ascending
        Z = state.W @ vecs.flip(-1)[..., :k]                        # top-k Ritz vectors of the mixed block
        if self.momentum == "auto" and p > k:
            lam = vals[:, 0].clamp(min=0)                  # the block's smallest Ritz value: ~ lambda_{k+1}
            old = 2 * state.c                              # the node's current estimate (0: none yet)
            lam = torch.where(old > 0, old + self.smoothing * (lam - old), lam)
            c, beta = lam / 2, lam * lam / 16
        else:
            c = beta = torch.zeros_like(state.c)
        W, Pinv = polar_with_inverse(T)
        W_scaled = state.W @ Pinv
        F = self._local(clients, W, c, beta, W_scaled)
        X0 = T + F - state.F                                         # gradient tracking
        return (DecentralizedPowerState(W, W_scaled, F, c, beta, X0, X0, torch.zeros((), dtype=torch.int64), Z),
                {"participants": N, "power_step": 1})

    def subspace(self, state: DecentralizedPowerState) -> torch.Tensor:
        """The network's subspace: top-k eigenvectors of the average of the nodes' projectors."""
        P = (state.Z @ state.Z.mT).mean(0)
        return torch.linalg.eigh(P)[1].flip(-1)[:, :self.k]

    def evaluate(self, state: DecentralizedPowerState, fed: PCAFederation) -> dict[str, float]:
        Z = self.subspace(state)
        w = fed.clients.n / fed.clients.n.sum()
        out = {"objective": float((w * objective(fed.clients, Z)).sum()),
               "max_node_angle": float(largest_principal_angle(state.Z, Z.expand_as(state.Z)).max())}
        if fed.reference is not None:
            out["angle_to_reference"] = float(largest_principal_angle(Z, fed.reference))
            out["max_node_angle_to_reference"] = float(
                largest_principal_angle(state.Z, fed.reference.expand_as(state.Z)).max())
        return out
