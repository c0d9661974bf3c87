"""Decentralized FedPG: consensus ADMM over a graph, no server (ours; not in the paper).

Decentralized ADMM (Shi et al., 2014) with inexact Riemannian local solves. Node i keeps U_i and one dual
Y_i (the sum of its edge duals). A round:

1. local solve, R Riemannian steps (Stiefel projection, QR retraction) from U_i on
   g_i(U) = N w_i f_i(U) + <Y_i, U> + rho sum_{j in N(i)} ||U - (U_i + U_j)/2||^2
   (w_i = n_i / sum n: the network then minimizes the same pooled objective as FedPG);
2. every node sends its new U_i to its neighbours (one gossip message per edge, through the taps);
3. dual update Y_i <- Y_i + rho sum_{j in N(i)} (U_i - U_j), with the U_j that arrived (after the taps).

sum_i Y_i stays 0 on an undirected graph, so at a consensus fixed point span(U) is an invariant subspace of
the pooled matrix (the top-k one in practice). A message lost by a tap counts as agreement for that round
(the receiver uses its own U_i in place of U_j): documented, approximate.

That ADMM is the ``solver="admm"`` path (the behaviour before issue 10, with its defaults eta 0.01, rho 1,
10 local steps). The default, ``solver="tracking"``, is the gossip-based method of ``power.DecentralizedPower``
(gradient tracking of the local products + accelerated power steps + Chebyshev-accelerated gossip): a
stable decentralized ADMM needs a penalty of the order of the local Lipschitz constants, which makes its
iteration a power iteration with a large shift (slow: see docs/fedpca.md, "Convergence"), while the tracking
method converges at the accelerated power method's rate times the gossip steps per power step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedsim.fedpca.fedpg import PCAFederation, riemannian_steps, stiefel_project
from fedsim.fedpca.grassmann import largest_principal_angle, orthonormality_error, orthonormalize, qr_retract
from fedsim.fedpca.problem import check_k, check_k_positive, objective
from fedsim.messages import Messages
from fedsim.mixing import SparseW


@dataclass(frozen=True)
class DecentralizedState:
    """Every node's iterate ``U`` [N, d, k], dual ``Y`` [N, d, k], and what it last received: the sum of its
    neighbours' U_j ``received`` [N, d, k] over ``degree`` [N] neighbours."""

    U: torch.Tensor
    Y: torch.Tensor
    received: torch.Tensor
    degree: torch.Tensor


ADMM_DEFAULTS = {"eta": 0.01, "rho": 1.0, "local_steps": 10}
SOLVERS = ("tracking", "admm")


@dataclass(frozen=True)
class DecentralizedFedPG:
    """Decentralized federated PCA over ``fed.schedule`` (any undirected topology).

    ``solver``: "tracking" (the default when none of ``eta``, ``rho``, ``local_steps`` is given:
    ``power.DecentralizedPower`` with ``momentum``, ``gossip_steps``, ``mix_tol``, ``oversample``) or "admm"
    (decentralized consensus ADMM with Riemannian local steps; ``eta``, ``rho``, ``local_steps`` default to
    0.01, 1.0, 10).
    """

    k: int
    eta: float | None = None
    rho: float | None = None
    local_steps: int | None = None
    solver: str = ""
    momentum: str = "auto"
    gossip_steps: int | None = None
    mix_tol: float = 0.005
    oversample: int | None = None

    def __post_init__(self):
        check_k_positive(self.k)
        if self.solver not in ("", *SOLVERS):
            raise ValueError(f"unknown solver {self.solver!r}; known: {', '.join(SOLVERS)}")
        if ((self.eta is not None and self.eta <= 0) or (self.rho is not None and self.rho <= 0)
                or (self.local_steps is not None and self.local_steps < 0)):
            raise ValueError(f"need eta > 0, rho > 0, local_steps >= 0; got {self.eta}, {self.rho}, {self.local_steps}")

    @property
    def solver_name(self) -> str:
        if self.solver:
            return self.solver
        return "tracking" if self.eta is None and self.rho is None and self.local_steps is None else "admm"

    @property
    def eta_value(self) -> float:
        return ADMM_DEFAULTS["eta"] if self.eta is None else self.eta

    @property
    def rho_value(self) -> float:
        return ADMM_DEFAULTS["rho"] if self.rho is None else self.rho

    @property
    def local_steps_value(self) -> int:
        return ADMM_DEFAULTS["local_steps"] if self.local_steps is None else self.local_steps

    @property
    def tracking(self):
        """The ``power.DecentralizedPower`` this algorithm runs with the tracking solver."""
        from fedsim.fedpca.power import DecentralizedPower

        return DecentralizedPower(self.k, momentum=self.momentum, gossip_steps=self.gossip_steps,
                                  mix_tol=self.mix_tol, oversample=self.oversample)

    @property
    def name(self) -> str:
        return "FedPG-decentralized"

    def init(self, fed: PCAFederation):
        if self.solver_name == "tracking":
            return self.tracking.init(fed)
        if fed.schedule is None:
            raise ValueError("decentralized FedPG needs a topology (PCAFederation.schedule)")
        if getattr(fed.schedule, "directed", False):
            raise ValueError("decentralized FedPG needs an undirected topology")
        clients = fed.clients
        nodes = fed.schedule.at(0).shape[0]
        if nodes != clients.n_clients:
            raise ValueError(f"the topology has {nodes} nodes but the federation {clients.n_clients} clients (one "
                             "node each)")
        check_k(self.k, clients.d)
        u = fed.streams.uniform("init", torch.zeros(1, dtype=torch.int64), None, (clients.d, self.k),
                                dtype=torch.float64)[0].to(clients.C)
        U = qr_retract(u - 0.5).expand(clients.n_clients, -1, -1).clone()
        W = self._graph(fed, 0)
        received, degree = self._neighbour_sum(W, torch.ones(len(W.off), dtype=torch.bool, device=U.device), U)
        return DecentralizedState(U, torch.zeros_like(U), received, degree)

    def _graph(self, fed: PCAFederation, t: int) -> SparseW:
        """The round's mixing matrix as a ``SparseW``, converted once per matrix (kept in ``fed.derived``)."""
        W = fed.schedule.at(t)
        C = fed.clients.C
        return fed.derived.get(("pca sparse W", C.dtype, C.device), W,
                               lambda: SparseW.from_scipy(W, device=C.device, dtype=C.dtype))

    def _neighbour_sum(self, W: SparseW, delivered: torch.Tensor, U: torch.Tensor,
                       received: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the U_j a node received, number of neighbours) with undelivered U_j replaced by U_i.

        ``received`` [e, d, k]: what each edge carried after the taps (default: the senders' own U_j).
        """
        senders, receivers = W.edges()
        n, d, k = U.shape
        gathered = torch.where(delivered[:, None, None], U[senders] if received is None else received, U[receivers])
        total = torch.zeros_like(U).index_add_(0, receivers, gathered)
        degree = torch.zeros(n, dtype=U.dtype, device=U.device).index_add_(0, receivers, torch.ones_like(senders, dtype=U.dtype))
        return total, degree

    def round(self, state, t: int, fed: PCAFederation, send: Callable[[Messages], Messages]):
        if not isinstance(state, DecentralizedState):
            return self.tracking.round(state, t, fed, send)
        clients = fed.clients
        n, d, _ = state.U.shape
        W = self._graph(fed, t)
        senders, receivers = W.edges()
        total, degree = state.received, state.degree  # the neighbours' U of the last round
        scale = n / clients.n.sum()
        eye = torch.eye(d, dtype=state.U.dtype, device=state.U.device)
        A = -2.0 * scale * clients.C + 2 * self.rho_value * degree[:, None, None] * eye
        B = state.Y - self.rho_value * (degree[:, None, None] * state.U + total)
        U = riemannian_steps(state.U, A, B, self.eta_value, self.local_steps_value, qr_retract, stiefel_project)
        msgs = send(Messages.make(t, "gossip", torch.arange(n), U.reshape(n, -1), senders, receivers))
        received = msgs.payload[msgs.src.to(msgs.payload.device)].reshape(-1, d, self.k).to(U)  # after the taps
        total, degree = self._neighbour_sum(W, msgs.delivered.to(U.device), U, received)
        Y = state.Y + self.rho_value * (degree[:, None, None] * U - total)
        return DecentralizedState(U, Y, total, degree), {"participants": n}

    def subspace(self, state) -> torch.Tensor:
        """The polar factor of the network-average iterate (tracking: ``DecentralizedPower.subspace``)."""
        if not isinstance(state, DecentralizedState):
            return self.tracking.subspace(state)
        return orthonormalize(state.U.mean(0))

    def evaluate(self, state, fed: PCAFederation) -> dict[str, float]:
        if not isinstance(state, DecentralizedState):
            return self.tracking.evaluate(state, fed)
        Z = self.subspace(state)
        w = fed.clients.n / fed.clients.n.sum()
        out = {"objective": float((w * objective(fed.clients, Z)).sum()),
               "u_orthonormality_error": float(orthonormality_error(state.U).max()),
               "max_node_angle": float(largest_principal_angle(state.U, Z.expand_as(state.U)).max())}
        if fed.reference is not None:
            out["angle_to_reference"] = float(largest_principal_angle(Z, fed.reference))
        return out
