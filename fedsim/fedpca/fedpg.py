"""FedPG (Grassmann ADMM) and FedPE (Euclidean penalty ADMM) for federated PCA (Nguyen et al., INFOCOM 2023).

min sum_i w_i f_i(U_i)  s.t.  U_i = Z,  U_i^T U_i = I,   f_i(U) = (tr C_i - tr U^T C_i U) / n_i.

Clean variant, default (``solver="linearized"``, issue 10): consensus ADMM on sum_i w_i f_i(U_i) with the
consensus variable Z on the Stiefel manifold and the local objectives linearized at the Z a client receives.
One round:

1. the server sends Z to the sampled clients;
2. client i applies its pending dual update Y_i <- Y_i + rho_i (U_i - Z) (if it took part before) and solves
   its local problem exactly: U_i = argmin_U <grad(w_i f_i)(Z) + Y_i, U - Z> + rho_i / 2 ||U - Z||^2
   = Z + (2 C_i Z / n - Y_i) / rho_i (n = sum_j n_j; rho_i = 2 lambda_max(C_i) / n, the Lipschitz constant of
   grad(w_i f_i): a 1/L gradient step, computed by the client from its own C_i);
3. it uploads its term of the ADMM Z-step, rho_i U_i + Y_i, and rho_i;
4. the server's ADMM Z-step would be polar(sum_i (rho_i U_i + Y_i)). Substituting step 2,
   rho_i U_i + Y_i = (rho_i I + 2 C_i / n) Z: the duals cancel, and that Z-step is block power iteration on
   (sum_i rho_i) I + 2 S (S = sum_i C_i / n), a power method shifted by the penalties, whose angle contracts by
   (rho/2 + lambda_{k+1}) / (rho/2 + lambda_k) per round: the larger the penalty, the slower. The server knows
   the shift it sent (rho_i Z), removes it, keeps the last contribution C_i Z / n of every client (stale for the
   clients not sampled, as asynchronous ADMM keeps the last (x_i, y_i) of an inactive worker) and takes the
   accelerated power step of ``power.power_z_step`` on their sum: a heavy ball on [0, lambda_{k+1}] with
   lambda_{k+1} estimated from the Ritz values of the last two iterates, when every contribution is fresh; the
   plain power step otherwise. With full participation the Z-sequence is exactly that of
   ``power.FederatedPower`` (tested to 1e-10). Why it converges and why no other local solve does better:
   docs/fedpca.md, "Convergence". ``tol`` > 0: stop once the Davis-Kahan estimate of the angle (from the
   residual ||(I - Z Z^T) S Z||) is below it.

Riemannian schedule (``solver="riemannian"``: the paper variant, and the clean default before issue 10, chosen
automatically when ``eta`` or ``local_steps`` is given), one clean round:

1. the server sends Z to the sampled clients;
2. a client that took part before applies its pending dual update with the Z it receives,
   Y_i <- Y_i + rho (U_i - Z) (consensus-ADMM order: with full participation, the update with the newest Z);
3. from its last U_i (warm start) it takes R Riemannian gradient steps on
   L_i(U) = f_i(U) + <Y_i, U - Z> + rho/2 ||U - Z||^2:  G = A_i U + B_i with A_i = -2 C_i / n_i + rho I and
   B_i = Y_i - rho Z;  xi = tangent projection of G;  U <- qf(U - eta xi), the QR retraction with
   diag(R) > 0, computed by default as Cholesky-QR (the same Q; faster for these small, well-conditioned
   matrices; ``retraction="qr"`` uses Householder QR with a sign fix);
4. it uploads (U_i, Y_i); the server sets Z <- polar( sum_i w_i (U_i + Y_i / rho) ), w_i = n_i / sum_S n_j.

Receivers use what arrived: a client's dual update and local steps use the Z of its downlink message and the
server's Z-step the uploads that reached it, after the taps (noise or quantisation taps change the result).

All sampled clients' steps run batched (batched matmul + batched QR), float64 by default.

Projection. f_i depends only on span(U), but the ADMM terms depend on the representative U, so L_i lives on
the Stiefel manifold. ``projection="stiefel"`` (the clean default) uses its Riemannian gradient
G - U sym(U^T G); FedPG then converges to the pooled top-k eigenspace exactly (~1e-12 rad in tests).
``projection="grassmann"`` uses (I - U U^T) G as the paper does: the component that would rotate U_i
towards Z inside its own span is dropped, U_i never reaches Z, and Z stalls 1e-4 to 1e-3 rad away from the
eigenspace (measured on a planted-subspace problem; docs/fedpca.md).

``variant="paper"`` reproduces the official code (dual-grp/FedPCA_Abnormal_Detection @ 8ded3b7,
``UserADMM2`` / ``Server2``), quirk by quirk:

* the loss is (1/n_i) ||(I - U U^T) X_i^T||_F^2 (not assuming U orthonormal: gradient -2 (P C + C P) U / n_i,
  P = I - U U^T), and the ADMM terms are scaled by 1/n_i as well;
* <Y, U - Z> is computed as sum(Y (U - Z)^T) over all entries: its gradient is ones(d, d) @ Y;
* Z0 is uniform in [0, 1) (not orthonormal) and every client starts with U_i = Y_i = Z_i = Z0;
* the QR retraction has no sign fix (Householder QR as LAPACK returns it);
* the server's Z goes only to the clients that trained in the previous round (all clients at round 0), so a
  newly sampled client trains against the last Z and dual it received (possibly many rounds old);
* the server step is Z = sum_i w_i U_i (no Y / rho term), never re-orthonormalized.

FedPE (``method="euclidean"``): plain Euclidean gradient steps U <- U - eta grad, no projection or
retraction; orthogonality enters as the penalty h(U) = max(0, U^T U - I)^2 (entrywise) with its own dual
T_i (<T, h> + rho/2 ||h||^2 in the Lagrangian; T_i <- T_i + rho h(U_i) when Z arrives; T starts at
Z0^T Z0 in the paper variant, 0 in the clean one). Z is orthonormalized (polar) for evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from fedsim.derived import Derived
from fedsim.fedpca.grassmann import (
    cholesky_qr_retract,
    largest_principal_angle,
    orthonormality_error,
    orthonormalize,
    qr_retract,
    tangent_project,
)
from fedsim.fedpca.problem import PCAClients, check_k, check_k_positive, objective
from fedsim.messages import SERVER, Messages
from fedsim import rng
from fedsim.rng import Streams

VARIANTS = ("clean", "paper")
METHODS = ("grassmann", "euclidean")


def stiefel_project(U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Riemannian gradient on the Stiefel manifold (embedded metric): G - U sym(U^T G)."""
    UtG = U.transpose(-2, -1) @ G
    return G - U @ (0.5 * (UtG + UtG.transpose(-2, -1)))


def householder_qf(M: torch.Tensor) -> torch.Tensor:
    """Q of the Householder QR without a sign fix (what the official code does)."""
    return torch.linalg.qr(M)[0]


PROJECTIONS = {"stiefel": stiefel_project, "grassmann": tangent_project}
RETRACTIONS = {"qr": qr_retract, "cholesky": cholesky_qr_retract, "householder": householder_qf}


@dataclass(frozen=True)
class PCAFederation:
    """What a federated PCA round reads: client statistics, random streams, optional reference subspace."""

    clients: PCAClients
    streams: Streams
    reference: torch.Tensor | None = None   # e.g. the pooled top-k eigenspace, for the angle metric
    schedule: object = None                 # topology schedule (decentralized variant)
    device: torch.device = torch.device("cpu")
    derived: Derived = field(default_factory=Derived, compare=False, repr=False)   # e.g. sparse mixing matrices


@dataclass(frozen=True)
class FedPGState:
    """Server consensus ``Z`` [d, k]; per client: last iterate ``U``, dual ``Y``, the last Z it received
    ``Z_local`` [N, d, k], the FedPE penalty dual ``T`` [N, k, k], whether it has taken part (``seen``) and
    whether it trained in the previous round (``last_round``) [N]."""

    Z: torch.Tensor
    U: torch.Tensor
    Y: torch.Tensor
    Z_local: torch.Tensor
    T: torch.Tensor
    seen: torch.Tensor
    last_round: torch.Tensor


def riemannian_steps(U: torch.Tensor, A: torch.Tensor, B: torch.Tensor, eta: float, steps: int,
                     retract: Callable[[torch.Tensor], torch.Tensor] = qr_retract,
                     project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = tangent_project) -> torch.Tensor:
    """``steps`` Riemannian gradient steps for a batch of clients (clean objective).

    The Euclidean gradient is ``A @ U + B`` (A: [m, d, d], B: [m, d, k]); it is projected to the tangent
    space at U with ``project`` and the step is retracted with ``retract``.
    """
    if project is stiefel_project and retract is cholesky_qr_retract:
        return _stiefel_cholesky_steps(U, A, B, eta, steps)
    for _ in range(steps):
        G = torch.baddbmm(B, A, U)
        U = retract(U - eta * project(U, G))
    return U


def _stiefel_cholesky_steps(U, A, B, eta, steps):
    """The same iteration as the generic loop for (stiefel, cholesky) in 8 tensor calls a step.

    M = U - eta (G - U sym(U^T G)) = (U - eta G) + (eta / 2) U (K + K^T), K = U^T G; then Q = M chol(M^T M)^-T.
    """
    for _ in range(steps):
        G = torch.baddbmm(B, A, U)
        K = torch.bmm(U.mT, G)
        M = torch.baddbmm(torch.add(U, G, alpha=-eta), U, K + K.mT, alpha=0.5 * eta)
        L = torch.linalg.cholesky_ex(torch.bmm(M.mT, M))[0]  # M^T M = I + eta^2 xi^T xi: always SPD
        U = torch.linalg.solve_triangular(L.mT, M, upper=True, left=False)
    return U


def paper_gradient(U, C, n, Y, Z, T, rho, euclidean: bool) -> torch.Tensor:
    """Euclidean gradient of the official code's per-client loss (autograd there; closed form here).

    (1/n) [ ||(I - U U^T) X^T||^2 + sum(Y (U - Z)^T) + rho/2 ||U - Z||^2
            (+ sum(T h^T) + rho/2 ||h||^2 with h = max(0, U^T U - I)^2 for FedPE) ].
    """
    eye = torch.eye(U.shape[-2], dtype=U.dtype, device=U.device)
    P = eye - U @ U.transpose(-2, -1)
    PC = P @ C
    G = -2.0 * (PC + PC.transpose(-2, -1)) @ U + Y.sum(-2, keepdim=True) + rho * (U - Z)
    if euclidean:
        M = U.transpose(-2, -1) @ U - torch.eye(U.shape[-1], dtype=U.dtype, device=U.device)
        pos = M.clamp(min=0)
        h = pos * pos
        # sum(T h^T) has gradient ones(k, k) @ T in h (like the Y term); then chain through h = max(0, M)^2
        D = (T.sum(-2, keepdim=True) + rho * h) * 2 * pos     # dLoss/dM, M = U^T U - I
        G = G + U @ (D + D.transpose(-2, -1))
    return G / n[:, None, None]


def clean_penalty_gradient(U, T, rho) -> torch.Tensor:
    """Gradient of <T, h(U)> + rho/2 ||h(U)||^2, h = max(0, U^T U - I)^2 (FedPE, clean variant)."""
    M = U.transpose(-2, -1) @ U - torch.eye(U.shape[-1], dtype=U.dtype, device=U.device)
    pos = M.clamp(min=0)
    D = (T + rho * pos * pos) * 2 * pos
    return U @ (D + D.transpose(-2, -1))


def penalty(U: torch.Tensor) -> torch.Tensor:
    """h(U) = max(0, U^T U - I)^2, entrywise, [..., k, k]."""
    M = U.transpose(-2, -1) @ U - torch.eye(U.shape[-1], dtype=U.dtype, device=U.device)
    return M.clamp(min=0) ** 2


def round_half_up(x: float) -> int:
    return int(x + 0.5)


def sample_clients(streams: Streams, round: int, n: int, fraction: float) -> torch.Tensor:
    """max(1, round(fraction * n)) distinct clients, sorted, from the ``sample`` stream of the round."""
    return rng.sample_clients(streams, round, n, max(1, min(n, round_half_up(fraction * n))))


def send_z(Z: torch.Tensor, t: int, fed: "PCAFederation", fraction: float,
           send: Callable[[Messages], Messages]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The downlink of a power-type round: sample this round's clients and send them the server's ``Z``.

    Returns the clients it reached [m] (on Z's device), the Z rows they received [m or 1, d*k] and whether
    that is one untouched broadcast row (``power.client_products``' ``one_row``)."""
    S = sample_clients(fed.streams, t, fed.clients.n_clients, fraction).to(Z.device)
    down = send(Messages.make(t, "downlink", [SERVER], Z.reshape(1, -1), torch.zeros(len(S)), S))
    _, got, Z_rows = down.arrived()       # each client uses the Z that reached it
    return got.to(Z.device), Z_rows, down.payload.shape[0] == 1


def linearized_client_step(CZ: torch.Tensor, Z: torch.Tensor, U: torch.Tensor, Y: torch.Tensor, seen: torch.Tensor,
                           rho: torch.Tensor, n_total) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The node step of linearized FedPG for m clients (pure): from C_i Z ``CZ`` [m, d, k] and the Z that reached
    them ``Z`` [m, d, k], their last ``U``, ``Y`` [m, d, k], whether they took part before ``seen`` [m], their
    penalties ``rho`` [m] and the total sample count ``n_total``: the dual update Y_i <- Y_i + rho_i (U_i - Z) (if
    seen), U_i = Z + (2 C_i Z / n - Y_i) / rho_i, and the upload [rho_i U_i + Y_i, rho_i] [m, d*k + 1].
    Returns (U, Y, upload). A Flower node calls it for itself (m = 1)."""
    m, d, k = Z.shape
    rho = rho[:, None, None]
    Y = Y + torch.where(seen[:, None, None], rho * (U - Z), torch.zeros_like(Z))
    U = Z + (2.0 * (CZ / n_total) - Y) / rho
    return U, Y, torch.cat([(rho * U + Y).reshape(m, d * k), rho.reshape(-1, 1)], dim=1)


SOLVERS = ("linearized", "riemannian")
PAPER_DEFAULTS = {"eta": 1e-4, "rho": 0.01, "local_steps": 30}   # the paper's (and the pre-issue-10 defaults)


@dataclass(frozen=True)
class LinearizedState:
    """Clean FedPG with the linearized local solve (the default).

    Server: ``Z`` [d, k] (orthonormal), heavy-ball memory ``Z_scaled``, the previous iterate and its aggregate
    (``Z_prev``, ``G_prev``), the estimate ``lam_next`` [] of lambda_{k+1}, every client's last un-shifted
    contribution ``H`` [N, d, k] (= C_i Z / n for the Z it was computed from) and whether it has one (``has``),
    whether the last aggregate was fresh (``prev_fresh``) and ``stopped``. Clients: ``U``, ``Y`` [N, d, k],
    penalties ``rho`` [N], ``seen`` [N]."""

    Z: torch.Tensor
    Z_scaled: torch.Tensor
    Z_prev: torch.Tensor
    G_prev: torch.Tensor
    lam_next: torch.Tensor
    H: torch.Tensor
    has: torch.Tensor
    prev_fresh: torch.Tensor
    stopped: torch.Tensor
    U: torch.Tensor
    Y: torch.Tensor
    rho: torch.Tensor
    seen: torch.Tensor


@dataclass(frozen=True)
class FedPG:
    """Federated PCA by ADMM: Grassmann (FedPG, default) or Euclidean penalty (FedPE, ``method="euclidean"``).

    ``k``: subspace dimension. ``solver``: "linearized" (the clean default: exact minimizer of the linearized
    augmented Lagrangian, data-derived penalties, accelerated server step; see the module docstring) or
    "riemannian" (``local_steps`` Riemannian steps of size ``eta`` with penalty ``rho``: the paper's schedule, and
    the clean schedule before issue 10). "" picks "linearized" for clean FedPG unless ``eta`` or ``local_steps``
    is given, else "riemannian". ``eta``, ``rho``, ``local_steps``: None = the paper's 1e-4, 0.01, 30 (riemannian);
    with the linearized solver ``rho`` (None: rho_i = 2 lambda_max(C_i) / n, the local Lipschitz constant) only
    sets the size of U_i, never the Z-sequence. ``momentum`` ("auto" | "none"), ``lambda_next``, ``tol``: the
    server step and stopping rule of the linearized solver (as ``power.FederatedPower``).
    """

    k: int
    eta: float | None = None
    rho: float | None = None
    local_steps: int | None = None
    client_fraction: float = 0.1
    variant: str = "clean"
    method: str = "grassmann"
    retraction: str = ""   # "" = the variant's default: cholesky (clean), householder (paper)
    projection: str = ""   # "" = the variant's default: stiefel (clean), grassmann (paper)
    solver: str = ""       # "" = linearized for clean FedPG without eta / local_steps, else riemannian
    momentum: str = "auto"
    lambda_next: float | None = None
    tol: float = 0.0
    vectorized: bool = True   # linearized solver: False runs each client's node step alone (the Flower node's path)

    def __post_init__(self):
        check_k_positive(self.k)
        for name, value, known in (("variant", self.variant, VARIANTS), ("method", self.method, METHODS),
                                   ("retraction", self.retraction, ("", *RETRACTIONS)),
                                   ("projection", self.projection, ("", *PROJECTIONS)),
                                   ("solver", self.solver, ("", *SOLVERS)),
                                   ("momentum", self.momentum, ("auto", "none"))):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(k for k in known if k)}")
        if not 0 < self.client_fraction <= 1:
            raise ValueError(f"client_fraction must be in (0, 1], got {self.client_fraction}")
        if ((self.eta is not None and self.eta <= 0) or (self.rho is not None and self.rho <= 0)
                or (self.local_steps is not None and self.local_steps < 0)):
            raise ValueError(f"need eta > 0, rho > 0, local_steps >= 0; got {self.eta}, {self.rho}, {self.local_steps}")
        if self.solver == "linearized" and (self.variant != "clean" or self.method != "grassmann"):
            raise ValueError("solver 'linearized' is for clean FedPG (variant='clean', method='grassmann') only")
        if self.tol < 0 or (self.lambda_next is not None and self.lambda_next < 0):
            raise ValueError(f"need tol >= 0 and lambda_next >= 0; got {self.tol}, {self.lambda_next}")

    @property
    def solver_name(self) -> str:
        if self.solver:
            return self.solver
        if (self.variant == "clean" and self.method == "grassmann" and self.eta is None
                and self.local_steps is None):
            return "linearized"
        return "riemannian"

    @property
    def eta_value(self) -> float:
        """eta of the Riemannian (or FedPE Euclidean) local steps."""
        return PAPER_DEFAULTS["eta"] if self.eta is None else self.eta

    @property
    def rho_value(self) -> float:
        """rho of the Riemannian schedule (the linearized solver's penalties: ``client_penalties``)."""
        return PAPER_DEFAULTS["rho"] if self.rho is None else self.rho

    @property
    def local_steps_value(self) -> int:
        return PAPER_DEFAULTS["local_steps"] if self.local_steps is None else self.local_steps

    @property
    def name(self) -> str:
        return ("FedPG" if self.method == "grassmann" else "FedPE") + ("-paper" if self.variant == "paper" else "")

    @property
    def projection_name(self) -> str:
        return self.projection or ("grassmann" if self.variant == "paper" else "stiefel")

    @property
    def retraction_name(self) -> str:
        return self.retraction or ("householder" if self.variant == "paper" else "cholesky")

    def init(self, fed: PCAFederation) -> FedPGState | LinearizedState:
        if self.solver_name == "linearized":
            return self._init_linearized(fed)
        clients = fed.clients
        d, n, k = clients.d, clients.n_clients, self.k
        check_k(k, d)
        dev, dt = clients.C.device, clients.C.dtype
        u = fed.streams.uniform("init", torch.zeros(1, dtype=torch.int64), None, (d, k),
                                dtype=torch.float64)[0].to(device=dev, dtype=dt)
        if self.variant == "paper":
            Z = u
            Y = Z.expand(n, d, k).clone()
            T = (Z.T @ Z).expand(n, k, k).clone()
        else:
            Z = qr_retract(u - 0.5)
            Y = torch.zeros(n, d, k, dtype=dt, device=dev)
            T = torch.zeros(n, k, k, dtype=dt, device=dev)
        copies = Z.expand(n, d, k).clone()
        none = torch.zeros(n, dtype=torch.bool, device=dev)
        return FedPGState(Z, copies, Y, copies.clone(), T, none, none.clone())

    # -- one round -------------------------------------------------------------------------------------
    def round(self, state: FedPGState, t: int, fed: PCAFederation, send: Callable[[Messages], Messages]):
        if isinstance(state, LinearizedState):
            return self._round_linearized(state, t, fed, send)
        n_clients = fed.clients.n_clients
        dev = state.Z.device
        S = sample_clients(fed.streams, t, n_clients, self.client_fraction).to(dev)
        if self.variant == "paper":  # Z goes to last round's trainers (everyone at round 0), not to S
            recipients = torch.arange(n_clients, device=dev) if t == 0 else state.last_round.nonzero().flatten()
        else:
            recipients = S
        state, received = self._deliver(state, t, recipients, send)
        if self.variant != "paper":
            S = S[received[S]]  # clean: a client whose Z was lost does not train this round
        U = self._local_steps(state, S, fed.clients)
        up = send(Messages.make(t, "uplink", S, self._upload(U, state.Y[S]), torch.arange(len(S)),
                                torch.full((len(S),), SERVER)))
        senders, _, payload = up.arrived()
        senders = senders.to(dev)
        new_U = state.U.clone()
        new_U[S] = U
        seen = state.seen.clone()
        seen[S] = True
        trained = torch.zeros_like(seen)
        trained[senders] = True
        Z = self._aggregate(senders, payload.to(dev), fed.clients) if len(senders) else state.Z
        metrics = {"participants": len(senders)}
        return FedPGState(Z, new_U, state.Y, state.Z_local, state.T, seen, trained), metrics

    def _deliver(self, state: FedPGState, t: int, recipients: torch.Tensor, send) -> tuple[FedPGState, torch.Tensor]:
        """Send Z to ``recipients``; each applies its dual updates with it (paper: on every receipt; clean: if
        it took part before). Returns the new state and a mask of who received Z."""
        down = send(Messages.make(t, "downlink", [SERVER], state.Z.reshape(1, -1), torch.zeros(len(recipients)),
                                  recipients))
        _, got, Z_got = down.arrived()   # each client uses the Z that reached it
        got = got.to(recipients.device)
        Z_got = Z_got.reshape(len(got), *state.Z.shape).to(state.Z)
        Y, T, Z_local = state.Y.clone(), state.T.clone(), state.Z_local.clone()
        mask = torch.ones_like(got, dtype=torch.bool) if self.variant == "paper" else state.seen[got]
        update = got[mask]
        Y[update] += self.rho_value * (state.U[update] - Z_got[mask])
        if self.method == "euclidean":
            T[update] += self.rho_value * penalty(state.U[update])
        Z_local[got] = Z_got
        received = torch.zeros_like(state.seen)
        received[got] = True
        return FedPGState(state.Z, state.U, Y, Z_local, T, state.seen, state.last_round), received

    def _local_steps(self, state: FedPGState, S: torch.Tensor, clients: PCAClients) -> torch.Tensor:
        U, Y, Z, T = state.U[S], state.Y[S], state.Z_local[S], state.T[S]
        C, n = clients.C[S], clients.n[S]
        retract = RETRACTIONS[self.retraction_name]
        project = PROJECTIONS[self.projection_name]
        if self.variant == "clean" and self.method == "grassmann":
            eye = torch.eye(clients.d, dtype=C.dtype, device=C.device)
            return riemannian_steps(U, -2.0 * C / n[:, None, None] + self.rho_value * eye, Y - self.rho_value * Z,
                                    self.eta_value, self.local_steps_value, retract, project)
        euclidean = self.method == "euclidean"
        for _ in range(self.local_steps_value):
            if self.variant == "paper":
                G = paper_gradient(U, C, n, Y, Z, T, self.rho_value, euclidean)
            else:
                G = -2.0 * C @ U / n[:, None, None] + Y + self.rho_value * (U - Z) + clean_penalty_gradient(U, T, self.rho_value)
            U = U - self.eta_value * G if euclidean else retract(U - self.eta_value * project(U, G))
        return U

    def _upload(self, U: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Paper: U_i only (the server ignores Y); clean: (U_i, Y_i) for the Z-step."""
        flat_U = U.reshape(len(U), U.shape[-2] * U.shape[-1])
        if self.variant == "paper":
            return flat_U
        return torch.cat([flat_U, Y.reshape(len(U), U.shape[-2] * U.shape[-1])], dim=1)

    def _aggregate(self, senders: torch.Tensor, payload: torch.Tensor, clients: PCAClients) -> torch.Tensor:
        """The server's Z-step from the uploads that arrived: (U_i) in the paper variant, (U_i, Y_i) otherwise."""
        d, k = clients.d, self.k
        n = clients.n[senders]
        w = (n / n.sum())[:, None, None]
        U = payload[:, :d * k].reshape(-1, d, k)
        if self.variant == "paper":
            return (w * U).sum(0)
        Y = payload[:, d * k:].reshape(-1, d, k)
        return orthonormalize((w * (U + Y / self.rho_value)).sum(0))

    # -- the linearized solver (clean default) ---------------------------------------------------------
    def client_penalties(self, clients: PCAClients) -> torch.Tensor:
        """rho_i [N]: 2 lambda_max(C_i) / n (n = sum_j n_j), the Lipschitz constant of the gradient of client i's
        weighted objective w_i f_i, computed by each client from its own statistics; ``rho`` given: rho n_i / n
        (the Riemannian schedule's penalty on the unweighted f_i). Never 0 (a client without signal gets 1e-12
        times the largest)."""
        return self.penalties(torch.linalg.eigvalsh(clients.C)[:, -1], clients.n)

    def penalties(self, lam_max: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """``client_penalties`` from each client's largest eigenvalue of C_i ``lam_max`` [N] and count ``n`` [N]
        (what a Flower node reports about its own data)."""
        total = n.sum()
        if self.rho is not None:
            return self.rho * n / total
        rho = 2.0 * lam_max.clamp(min=0) / total
        return rho.clamp(min=1e-12 * float(rho.max()) if float(rho.max()) > 0 else 1e-300)

    def _init_linearized(self, fed: PCAFederation) -> LinearizedState:
        from fedsim.fedpca.power import initial_subspace

        clients = fed.clients
        N, d, k = clients.n_clients, clients.d, self.k
        check_k(k, d)
        Z = initial_subspace(fed, k)
        zero = torch.zeros_like(Z)
        none = torch.zeros(N, dtype=torch.bool, device=Z.device)
        flag = torch.zeros((), dtype=torch.bool, device=Z.device)
        return LinearizedState(Z, zero, Z.clone(), zero.clone(), torch.zeros((), dtype=Z.dtype, device=Z.device),
                               torch.zeros(N, d, k, dtype=Z.dtype, device=Z.device), none, flag, flag.clone(),
                               Z.expand(N, d, k).clone(), torch.zeros(N, d, k, dtype=Z.dtype, device=Z.device),
                               self.client_penalties(clients).to(Z), none.clone())

    def _round_linearized(self, state: LinearizedState, t: int, fed: PCAFederation, send):
        """One round of consensus ADMM with the linearized local solve and the accelerated server step.

        Client i with the Z that reached it: Y_i <- Y_i + rho_i (U_i - Z) (if it took part before), then
        U_i = argmin_U <grad(w_i f_i)(Z) + Y_i, U - Z> + rho_i / 2 ||U - Z||^2 = Z + (2 C_i Z / n - Y_i) / rho_i,
        upload (rho_i U_i + Y_i, rho_i): its term of the ADMM Z-step. The server removes the shift,
        (rho_i U_i + Y_i - rho_i Z) / 2 (= C_i Z / n: the duals cancel), keeps the last one of every client and takes
        ``power.power_z_step`` on their sum.
        """
        from fedsim.fedpca.power import client_products

        clients = fed.clients
        d, k = clients.d, self.k
        if bool(state.stopped):
            return state, {"participants": 0}
        dev = state.Z.device
        got, Z_rows, one_row = send_z(state.Z, t, fed, self.client_fraction, send)
        n_total = clients.n.sum()
        if self.vectorized:
            CZ = client_products(clients.C, got, Z_rows, one_row, d, k)
            U, Y, payload = linearized_client_step(CZ, Z_rows.reshape(len(got), d, k).to(state.Z), state.U[got],
                                                   state.Y[got], state.seen[got], state.rho[got], n_total)
        else:   # the per-client path: each client's node step alone, as a Flower node runs it
            steps = [linearized_client_step(torch.bmm(clients.C[c][None], Z_rows[r].reshape(1, d, k).to(state.Z)),
                                            Z_rows[r].reshape(1, d, k).to(state.Z), state.U[c][None], state.Y[c][None],
                                            state.seen[c][None], state.rho[c][None], n_total)
                     for r, c in enumerate(got.tolist())]
            if steps:
                U, Y, payload = (torch.cat(parts) for parts in zip(*steps))
            else:
                U, Y, payload = state.U[:0], state.Y[:0], state.U.new_zeros(0, d * k + 1)
        up = send(Messages.make(t, "uplink", got, payload, torch.arange(len(got)), torch.full((len(got),), SERVER)))
        senders, _, arrived = up.arrived()
        new_U = state.U.index_copy(0, got, U)
        new_Y = state.Y.index_copy(0, got, Y)
        seen_all = state.seen.clone()
        seen_all[got] = True
        state = dataclasses.replace(state, U=new_U, Y=new_Y, seen=seen_all)
        return self.server_step(state, senders.to(dev), arrived)

    def server_step(self, state: LinearizedState, senders: torch.Tensor, arrived: torch.Tensor):
        """The server's part of a linearized round (pure): from the uploads ``arrived`` [m, d*k + 1] of the clients
        ``senders`` [m] (in client-id order), remove the known shift, keep each client's last contribution and take
        ``power.power_z_step`` on their sum. Reads and writes only the server's fields of ``state`` (Z, Z_scaled,
        Z_prev, G_prev, lam_next, H, has, prev_fresh, stopped); a Flower ServerApp calls it with its own state.
        Returns (state, metrics)."""
        from fedsim.fedpca.power import power_z_step

        N, d, k = state.H.shape
        dev = state.Z.device
        if len(senders) == 0:
            return state, {"participants": 0}
        arrived = arrived.to(state.Z)
        M = arrived[:, :d * k].reshape(-1, d, k)
        H_new = 0.5 * (M - arrived[:, d * k:, None] * state.Z)    # the server removes the shift it knows
        H = state.H.index_copy(0, senders, H_new)
        has = state.has.clone()
        has[senders] = True
        G = H[has].sum(0)
        fresh = len(senders) == N
        Z, Z_scaled, lam, metrics = power_z_step(
            state.Z, state.Z_scaled, state.Z_prev, state.G_prev, float(state.lam_next), G, k=k, fresh=fresh,
            prev_fresh=bool(state.prev_fresh), accelerate=self.momentum == "auto", lambda_next=self.lambda_next)
        stop = self.tol > 0 and metrics["angle_estimate"] < self.tol
        new = dataclasses.replace(state, Z=Z, Z_scaled=Z_scaled, Z_prev=state.Z, G_prev=G,
                                  lam_next=torch.tensor(lam, dtype=Z.dtype, device=dev), H=H, has=has,
                                  prev_fresh=torch.tensor(fresh, device=dev), stopped=torch.tensor(stop, device=dev))
        return new, {"participants": len(senders), **metrics}

    # -- evaluation ------------------------------------------------------------------------------------
    def subspace(self, state: FedPGState | LinearizedState) -> torch.Tensor:
        """An orthonormal basis of span(Z) (Z itself in the clean Grassmann variant)."""
        return state.Z if isinstance(state, LinearizedState) else orthonormalize(state.Z)

    def evaluate(self, state: FedPGState, fed: PCAFederation) -> dict[str, float]:
        """Objective sum_i w_i f_i at span(Z), orthonormality errors, angle to the reference subspace."""
        Z = self.subspace(state)
        w = fed.clients.n / fed.clients.n.sum()
        out = {"objective": float((w * objective(fed.clients, Z)).sum()),
               "z_orthonormality_error": float(orthonormality_error(state.Z))}
        if not isinstance(state, LinearizedState):   # the linearized solver's U_i are not on the manifold
            out["u_orthonormality_error"] = float(orthonormality_error(state.U).max())
        if fed.reference is not None:
            out["angle_to_reference"] = float(largest_principal_angle(Z, fed.reference))
        return out


def FedPE(k: int, **kwargs) -> FedPG:
    """FedPE: the Euclidean-penalty variant of :class:`FedPG`."""
    return FedPG(k, method="euclidean", **kwargs)
