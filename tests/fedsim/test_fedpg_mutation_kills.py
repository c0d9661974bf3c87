"""FedPG / FedPE and decentralized FedPG against per-client references (written to kill mutmut survivors,
docs/testing.md).

The references are loops over clients that differentiate each documented loss with autograd (never the
library's closed-form gradients), project, retract with a plain Householder QR, and apply the documented dual
and server updates. Everything is float64; library and reference agree to ~1e-14 over the few steps used, the
tolerance is 1e-10; every defect targeted here moves the result by far more (checked per test).
"""

from __future__ import annotations

import pytest
import torch

import topologies
from fedsim.engine import simulate
from fedsim.fedpca.decentralized import DecentralizedFedPG
from fedsim.fedpca.fedpg import (
    FedPE,
    FedPG,
    PCAFederation,
    clean_penalty_gradient,
    penalty,
)
from fedsim.fedpca.problem import PCAClients
from fedsim.messages import Capture
from fedsim.rng import Streams

TOL = 1e-10
F64 = torch.float64


def _h(U):
    """max(0, U^T U - I)^2, entrywise (the FedPE penalty)."""
    return (U.mT @ U - torch.eye(U.shape[-1], dtype=U.dtype)).clamp(min=0) ** 2


def _qf(M, sign_fix=True):
    Q, R = torch.linalg.qr(M)
    return Q * torch.sign(torch.diagonal(R))[None, :] if sign_fix else Q


def _polar(M):
    u, _, vh = torch.linalg.svd(M, full_matrices=False)
    return u @ vh


def _grad(loss, U):
    Ug = U.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(Ug), Ug)
    return g


def _local_loss(alg, C, n, Y, Z, T):
    """The client's loss as a function of U, as the module docstring states it (clean or paper variant)."""
    rho, euclid = alg.rho, alg.method == "euclidean"
    eye = torch.eye(C.shape[0], dtype=F64)

    def clean(U):
        out = (torch.trace(C) - torch.trace(U.T @ C @ U)) / n + (Y * (U - Z)).sum() + rho / 2 * ((U - Z) ** 2).sum()
        if euclid:
            h = _h(U)
            out = out + (T * h).sum() + rho / 2 * (h ** 2).sum()
        return out

    def paper(U):
        P = eye - U @ U.T
        out = torch.trace(P @ C @ P) + torch.sum(Y @ (U - Z).T) + rho / 2 * ((U - Z) ** 2).sum()
        if euclid:
            h = _h(U)
            out = out + torch.sum(T @ h.T) + rho / 2 * (h ** 2).sum()
        return out / n

    return paper if alg.variant == "paper" else clean


def _reference_round(alg, s, clients, recipients, trainers):
    """The documented round: dual updates on receipt, local steps of the trainers, the server's Z-step."""
    rho, eta, paper, euclid = alg.rho, alg.eta, alg.variant == "paper", alg.method == "euclidean"
    Y, T, Z_local = s.Y.clone(), s.T.clone(), s.Z_local.clone()
    for i in recipients:
        if paper or bool(s.seen[i]):
            Y[i] = Y[i] + rho * (s.U[i] - s.Z)
            if euclid:
                T[i] = T[i] + rho * _h(s.U[i])
        Z_local[i] = s.Z
    U_new = s.U.clone()
    for i in trainers:
        loss = _local_loss(alg, clients.C[i], clients.n[i], Y[i], Z_local[i], T[i])
        U = s.U[i].clone()
        for _ in range(alg.local_steps):
            G = _grad(loss, U)
            if euclid:
                U = U - eta * G
            elif paper:                                  # Grassmann projection, QR without the sign fix
                U = _qf(U - eta * (G - U @ (U.T @ G)), sign_fix=False)
            else:                                        # Stiefel projection, QR with diag(R) > 0
                UtG = U.T @ G
                U = _qf(U - eta * (G - U @ (0.5 * (UtG + UtG.T))))
        U_new[i] = U
    S = torch.tensor(trainers)
    w = (clients.n[S] / clients.n[S].sum())[:, None, None]
    Z = (w * U_new[S]).sum(0) if paper else _polar((w * (U_new[S] + Y[S] / rho)).sum(0))
    return U_new, Y, T, Z_local, Z


ALGORITHMS = {
    "FedPG": lambda: FedPG(2, eta=0.05, rho=1.0, local_steps=4, client_fraction=0.6),
    "FedPE": lambda: FedPE(2, eta=0.01, rho=2.0, local_steps=4, client_fraction=0.6),
    "FedPG-paper": lambda: FedPG(2, eta=0.05, rho=1.0, local_steps=4, client_fraction=0.6, variant="paper"),
    "FedPE-paper": lambda: FedPE(2, eta=0.002, rho=1.0, local_steps=4, client_fraction=0.6, variant="paper"),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_three_rounds_equal_the_per_client_reference(clients, name):
    alg = ALGORITHMS[name]()
    assert alg.name == name
    fed = PCAFederation(clients, Streams(0))
    state = alg.init(fed)
    for t in range(3):
        spy = Capture(kinds=("downlink", "uplink"))
        new = simulate(alg, fed, t + 1, state=state, start_round=t, taps=[spy], eval_every=0).state
        recipients = sorted(r.receiver for r in spy.records if r.kind == "downlink")
        trainers = sorted(r.sender for r in spy.records if r.kind == "uplink")
        U, Y, T, Z_local, Z = _reference_round(alg, state, clients, recipients, trainers)
        torch.testing.assert_close(new.U, U, atol=TOL, rtol=0)
        torch.testing.assert_close(new.Y, Y, atol=TOL, rtol=0)
        torch.testing.assert_close(new.T, T, atol=TOL, rtol=0)
        torch.testing.assert_close(new.Z_local, Z_local, atol=0, rtol=0)
        torch.testing.assert_close(new.Z, Z, atol=TOL, rtol=0)
        if t == 2:   # by now the dual updates (and FedPE's penalty duals) are far from zero
            assert float((Y - state.Y).abs().max()) > 1e-3
            if alg.method == "euclidean":
                assert float((T - state.T).abs().max()) > 1e-6
        state = new


def test_penalty_hand_computed():
    U = torch.tensor([[1.5, 0.0], [0.0, 1.0], [0.5, 0.0]], dtype=F64)     # U^T U = [[2.5, 0], [0, 1]]
    torch.testing.assert_close(penalty(U), torch.tensor([[2.25, 0.0], [0.0, 0.0]], dtype=F64), atol=0, rtol=0)
    V = torch.tensor([[1.0, -1.0], [0.5, 0.0]], dtype=F64)                # V^T V - I = [[0.25, -1], [-1, 0]]
    torch.testing.assert_close(penalty(V), torch.tensor([[0.0625, 0.0], [0.0, 0.0]], dtype=F64), atol=0, rtol=0)


def test_clean_penalty_gradient_equals_autograd():
    """Gradient of <T, h(U)> + rho/2 ||h(U)||^2 for any T (not only the symmetric ones the algorithm builds)."""
    g = torch.Generator().manual_seed(0)
    U = torch.rand(3, 6, 3, generator=g, dtype=F64)
    T = torch.rand(3, 3, 3, generator=g, dtype=F64)
    rho = 0.7
    want = _grad(lambda u: (T * _h(u)).sum() + rho / 2 * (_h(u) ** 2).sum(), U)
    torch.testing.assert_close(clean_penalty_gradient(U, T, rho), want, atol=1e-10, rtol=0)
    assert float(want.abs().max()) > 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_follows_the_clients_dtype(dtype, pca_blocks):
    clients = PCAClients.from_blocks(pca_blocks, dtype=dtype)
    ring = topologies.Static(topologies.metropolis_hastings(topologies.ring(5)))
    fed = PCAFederation(clients, Streams(0), schedule=ring)
    results = {}
    for alg in (FedPG(2, eta=0.05, rho=1.0, local_steps=3, client_fraction=1.0), FedPE(2, eta=0.01, rho=2.0),
                DecentralizedFedPG(2, eta=0.01, rho=1.0, local_steps=3)):
        s0 = alg.init(fed)
        state = simulate(alg, fed, 2, eval_every=0).state
        for s in (s0, state):
            floats = [v for v in vars(s).values() if v.is_floating_point()]
            assert floats and all(v.dtype == dtype for v in floats)
        results[alg.name] = state
    if dtype == torch.float32:      # float32 follows the float64 run closely
        ref = PCAFederation(PCAClients.from_blocks(pca_blocks), Streams(0), schedule=ring)
        want = simulate(FedPG(2, eta=0.05, rho=1.0, local_steps=3, client_fraction=1.0), ref, 2, eval_every=0)
        torch.testing.assert_close(results["FedPG"].Z.double(), want.state.Z, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kw, message", [
    ({"client_fraction": 1.5}, "client_fraction"),
    ({"eta": 0.0}, "eta > 0"),
    ({"rho": 0.0}, "rho > 0"),
    ({"local_steps": -1}, "local_steps >= 0"),
    ({"method": "newton"}, "unknown method 'newton'"),
    ({"retraction": "svd"}, "unknown retraction 'svd'"),
    ({"projection": "flat"}, "unknown projection 'flat'"),
])
def test_bad_hyperparameters_are_refused_and_named(kw, message):
    with pytest.raises(ValueError, match=message):
        FedPG(2, **kw)


def test_zero_local_steps_and_full_participation_are_allowed(clients):
    fed = PCAFederation(clients, Streams(0))
    alg = FedPG(2, local_steps=0, client_fraction=1.0)
    state = simulate(alg, fed, 1, eval_every=0).state
    torch.testing.assert_close(state.U, alg.init(fed).U, atol=0, rtol=0)     # no step: U_i = Z0


def test_client_sampling_draws_max_1_round_fraction_n_fresh_each_round(clients):
    fed = PCAFederation(clients, Streams(0))
    for fraction, k in ((0.1, 1), (0.4, 2)):
        spy = Capture(kinds=("uplink",))
        res = simulate(FedPG(2, client_fraction=fraction), fed, 6, taps=[spy], eval_every=0)
        assert [row["participants"] for row in res.history] == [k] * 6
        sets = {tuple(sorted(r.sender for r in spy.records if r.round == t)) for t in range(6)}
        assert len(sets) > 1


def test_paper_variant_uploads_only_u(clients):
    """Round 0 of the paper variant: Z to all 5 clients, U_i (d x k) from the 3 sampled ones, float64."""
    d, k = clients.d, 2
    res = simulate(FedPG(k, client_fraction=0.6, variant="paper"), PCAFederation(clients, Streams(0)), 1,
                   eval_every=0)
    assert res.history[0]["bytes_sent"] == (5 * d * k + 3 * d * k) * 8


# -- decentralized ---------------------------------------------------------------------------------------

def _neighbours(W) -> list[list[int]]:
    D = W.toarray()
    return [[j for j in range(len(D)) if j != i and D[i, j] != 0] for i in range(len(D))]


def _node_objective(C, scale, Y, rho, d, U_last, total):
    """g_i(U) = N w_i f_i(U) + <Y_i, U> + rho sum_j ||U - (U_i + U_j)/2||^2, the last term up to a constant:
    rho (d ||U||^2 - <U, d U_i + sum_j U_j>) (only the neighbours' sum is kept in the state)."""
    def g(U):
        return (scale * (torch.trace(C) - torch.trace(U.T @ C @ U)) + (Y * U).sum()
                + rho * (d * (U ** 2).sum() - (U * (d * U_last + total)).sum()))
    return g


def _reference_decentralized_round(alg, s, clients, W):
    """Local solve on g_i (module docstring) with the neighbours' U of the last round, then exchange over W."""
    N = len(s.U)
    rho, scale = alg.rho, N / clients.n.sum()
    U_new = s.U.clone()
    for i in range(N):
        g = _node_objective(clients.C[i], scale, s.Y[i], rho, s.degree[i], s.U[i], s.received[i])
        U = s.U[i].clone()
        for _ in range(alg.local_steps):
            G = _grad(g, U)
            UtG = U.T @ G
            U = _qf(U - alg.eta * (G - U @ (0.5 * (UtG + UtG.T))))
        U_new[i] = U
    nb = _neighbours(W)
    received = torch.stack([sum((U_new[j] for j in nb[i]), torch.zeros_like(U_new[i])) for i in range(N)])
    degree = torch.tensor([len(x) for x in nb], dtype=F64)
    Y = s.Y + rho * (degree[:, None, None] * U_new - received)
    return U_new, Y, received, degree


def test_decentralized_rounds_on_a_time_varying_graph_equal_the_per_node_reference(clients):
    sched = topologies.LinkFailures(topologies.complete(5), 0.5, seed=1)
    assert _neighbours(sched.at(0)) != _neighbours(sched.at(1)) != _neighbours(sched.at(2))
    fed = PCAFederation(clients, Streams(0), schedule=sched)
    alg = DecentralizedFedPG(2, eta=0.01, rho=1.0, local_steps=4)
    state = alg.init(fed)
    deg0 = torch.tensor([len(x) for x in _neighbours(sched.at(0))], dtype=F64)
    torch.testing.assert_close(state.degree, deg0, atol=0, rtol=0)                 # the graph of round 0
    torch.testing.assert_close(state.received, deg0[:, None, None] * state.U, atol=TOL, rtol=0)
    for t in range(3):
        spy = Capture(kinds=("gossip",))
        res = simulate(alg, fed, t + 1, state=state, start_round=t, taps=[spy], eval_every=0)
        assert {r.round for r in spy.records} == {t}
        assert res.history[0]["participants"] == 5
        U, Y, received, degree = _reference_decentralized_round(alg, state, clients, sched.at(t))
        new = res.state
        torch.testing.assert_close(new.U, U, atol=TOL, rtol=0)
        torch.testing.assert_close(new.degree, degree, atol=0, rtol=0)
        torch.testing.assert_close(new.received, received, atol=TOL, rtol=0)
        torch.testing.assert_close(new.Y, Y, atol=TOL, rtol=0)
        state = new
    assert float(state.Y.abs().max()) > 1e-3


def test_decentralized_evaluate_hand_computed(clients):
    fed = PCAFederation(clients, Streams(0), schedule=topologies.Static(topologies.metropolis_hastings(
        topologies.ring(5))))
    alg = DecentralizedFedPG(2, eta=0.01, rho=1.0, local_steps=3)
    state = simulate(alg, fed, 2, eval_every=0).state
    Z = _polar(state.U.mean(0))
    w = clients.n / clients.n.sum()
    f = torch.stack([(torch.trace(C) - torch.trace(Z.T @ C @ Z)) / n for C, n in zip(clients.C, clients.n)])
    eye = torch.eye(2, dtype=F64)
    got = alg.evaluate(state, fed)
    assert got["objective"] == pytest.approx(float((w * f).sum()), abs=1e-10)
    assert got["u_orthonormality_error"] == pytest.approx(
        max(float((U.T @ U - eye).abs().max()) for U in state.U), abs=1e-15)


class _BareSchedule:
    """A schedule with only ``at`` (no ``directed`` attribute): taken as undirected."""

    def __init__(self, W):
        self.W = W

    def at(self, t):
        return self.W


def test_decentralized_needs_an_undirected_schedule(clients):
    directed = topologies.PushSum(topologies.directed_exponential(5))
    with pytest.raises(ValueError, match="undirected"):
        DecentralizedFedPG(2).init(PCAFederation(clients, Streams(0), schedule=directed))
    W = topologies.metropolis_hastings(topologies.ring(5))
    bare = DecentralizedFedPG(2, solver="admm").init(PCAFederation(clients, Streams(0), schedule=_BareSchedule(W)))
    ref = DecentralizedFedPG(2, solver="admm").init(PCAFederation(clients, Streams(0), schedule=topologies.Static(W)))
    torch.testing.assert_close(bare.received, ref.received, atol=0, rtol=0)
