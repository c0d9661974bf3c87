"""Clean FedPG's linearized solver (client step, server step, penalties, stopping rule), the Riemannian round's
edge cases and FedPG's option checks, against independent references (written to kill mutmut survivors,
docs/testing.md).

The reference for the linearized solver is written from the module docstring in numpy float64: client i's
closed-form step U_i = Z + (2 C_i Z / n - Y_i) / rho_i after the dual update, and on the server the aggregate
G = sum_i C_i Z_(i) / n of every client's last contribution (the duals cancel, module docstring), then the
heavy ball W = G - c Z - beta Z~ on [0, lambda_{k+1}] (c = lambda / 2, beta = lambda^2 / 16, lambda the
(k+1)-th Ritz value of the dense pooled matrix S on span(Z_prev, Z)), Z+ = W P^-1, Z~+ = Z P^-1,
P = (W^T W)^(1/2). Library and reference agree to ~1e-14 over the rounds used; the tolerance is 1e-10.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.engine import simulate
from fedsim.fedpca.fedpg import FedPG, LinearizedState, PCAFederation
from fedsim.fedpca.problem import PCAClients
from fedsim.messages import SERVER, Capture, LinkDrop, Messages
from fedsim.rng import Streams

TOL = 1e-10
F64 = torch.float64
N, D, K = 5, 6, 2


def _clients(d=D, seed=0) -> PCAClients:
    """N clients with C_i = X_i^T X_i of different sizes and spectra (non-IID)."""
    rng = np.random.default_rng(seed)
    ns = [20 + 7 * i for i in range(N)]
    blocks = [rng.standard_normal((m, d)) * rng.uniform(0.3, 2.0, d) for m in ns]
    return PCAClients.from_blocks(blocks)


@pytest.fixture(scope="module")
def clients():
    return _clients()


def _inv_sqrt(A):
    e, V = np.linalg.eigh(A)
    return V @ np.diag(1 / np.sqrt(e)) @ V.T


def _ritz(S, X, k):
    """The (k+1)-th largest Ritz value of S on span(X) (None if that span has at most k dimensions)."""
    U, s, _ = np.linalg.svd(X, full_matrices=False)
    Q = U[:, s > 1e-6 * s[0]]
    mu = np.sort(np.linalg.eigvalsh(Q.T @ S @ Q))[::-1]
    return mu[k] if len(mu) > k else None


def _reference_linearized(clients, Z0, rho, arrivals, k, lambda_next=None, accelerate=True):
    """Every client receives Z and steps each round; ``arrivals[t]``: the clients whose upload reaches the server.

    Returns per round (Z, Z~, U, Y, G, metrics) after the round."""
    C, n = clients.C.numpy(), clients.n.numpy()
    ntot = n.sum()
    S = C.sum(0) / ntot
    rho = rho.numpy()
    Z, Zs, Z_prev = Z0.numpy().copy(), np.zeros_like(Z0.numpy()), Z0.numpy().copy()
    U, Y = np.repeat(Z[None], N, 0), np.zeros((N,) + Z.shape)
    seen, last = np.zeros(N, bool), [None] * N
    lam, prev_fresh, out = 0.0, False, []
    for senders in arrivals:
        for i in range(N):
            if seen[i]:
                Y[i] = Y[i] + rho[i] * (U[i] - Z)
            U[i] = Z + (2 * C[i] @ Z / ntot - Y[i]) / rho[i]
            seen[i] = True
        for i in senders:
            last[i] = Z
        G = sum(C[i] @ last[i] for i in range(N) if last[i] is not None) / ntot
        fresh = len(senders) == N
        if lambda_next is not None:
            lam = lambda_next
        elif fresh and prev_fresh:
            est = _ritz(S, np.hstack([Z_prev, Z]), k)
            lam = max(est, 0.0) if est is not None else lam
        H = Z.T @ G
        r = np.linalg.norm(G - Z @ H)
        gap = np.linalg.eigvalsh(0.5 * (H + H.T))[0] - lam
        angle = min(r / gap, math.pi / 2) if gap > 0 else math.pi / 2
        c, beta = (lam / 2, lam ** 2 / 16) if (accelerate and fresh and lam > 0) else (0.0, 0.0)
        W = G - c * Z - beta * Zs
        Pinv = _inv_sqrt(W.T @ W)
        Z_prev, Z, Zs = Z, W @ Pinv, Z @ Pinv
        prev_fresh = fresh
        out.append((Z, Zs, U.copy(), Y.copy(), G, {"residual": r, "angle_estimate": angle,
                                                     "lambda_next_estimate": lam, "extrapolated": float(beta > 0)}))
    return out


class DropUplink:
    """Drops the uplink of ``client`` in ``round``."""

    def __init__(self, round, client):
        self.round, self.client = round, client

    def __call__(self, msgs: Messages) -> Messages:
        if msgs.kind == "uplink" and msgs.round == self.round:
            return msgs.drop(msgs.edge_senders == self.client)
        return msgs


def _check_round(got, want, metrics):
    Z, Zs, U, Y, G, m = want
    torch.testing.assert_close(got.Z, torch.tensor(Z), atol=TOL, rtol=0)
    torch.testing.assert_close(got.Z_scaled, torch.tensor(Zs), atol=TOL, rtol=0)
    torch.testing.assert_close(got.U, torch.tensor(U), atol=TOL, rtol=0)
    torch.testing.assert_close(got.Y, torch.tensor(Y), atol=TOL, rtol=0)
    torch.testing.assert_close(got.G_prev, torch.tensor(G), atol=TOL, rtol=0)
    for key, value in m.items():
        assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_linearized_rounds_with_a_lost_upload_equal_the_dense_reference(clients):
    """Five rounds of clean FedPG (full participation; client 0's upload lost in round 3): U_i, Y_i, Z, Z~,
    the aggregate and the metrics (residual, angle estimate, Ritz estimate of lambda_{k+1}, extrapolated) follow
    the reference; round 3 takes the plain step on a stale sum, round 4 the heavy ball with the stored
    estimate, round 5 a fresh estimate."""
    alg = FedPG(K, client_fraction=1.0)
    fed = PCAFederation(clients, Streams(0))
    state = alg.init(fed)
    assert isinstance(state, LinearizedState)
    rho = 2 * torch.tensor(np.linalg.eigvalsh(clients.C.numpy())[:, -1]) / clients.n.sum()
    torch.testing.assert_close(state.rho, rho, atol=1e-14, rtol=0)
    everyone = list(range(N))
    arrivals = [everyone, everyone, everyone, everyone[1:], everyone, everyone]
    want = _reference_linearized(clients, state.Z, rho, arrivals, K)
    for t, ref in enumerate(want):
        res = simulate(alg, fed, t + 1, state=state, start_round=t, taps=[DropUplink(3, 0)], eval_every=0)
        state = res.state
        assert res.history[0]["participants"] == len(arrivals[t])
        _check_round(state, ref, res.history[0])
        assert state.lam_next.dtype == F64 and float(state.lam_next) == pytest.approx(
            ref[5]["lambda_next_estimate"], rel=1e-12)
        assert bool(state.prev_fresh) == (len(arrivals[t]) == N)
        assert not bool(state.stopped)
    # what each round did: plain, heavy ball (fresh estimate) x2, plain (stale), heavy ball (stored), heavy ball
    assert [m["extrapolated"] for *_, m in want] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert want[3][5]["lambda_next_estimate"] == want[4][5]["lambda_next_estimate"] == want[2][5][
        "lambda_next_estimate"] > 0
    assert want[5][5]["lambda_next_estimate"] != want[4][5]["lambda_next_estimate"]


@pytest.mark.parametrize("momentum", ["auto", "none"])
def test_linearized_with_a_given_lambda_next_and_without_momentum(clients, momentum):
    """``lambda_next`` (the exact lambda_{k+1} of S, from numpy) replaces the Ritz estimate from round 0 on;
    ``momentum="none"``: the plain power step polar(S Z) every round."""
    S = clients.C.numpy().sum(0) / clients.n.numpy().sum()
    lam = float(np.sort(np.linalg.eigvalsh(S))[::-1][K])
    alg = FedPG(K, client_fraction=1.0, momentum=momentum, lambda_next=lam)
    fed = PCAFederation(clients, Streams(0))
    state = alg.init(fed)
    rounds = 3
    want = _reference_linearized(clients, state.Z, state.rho, [list(range(N))] * rounds, K, lambda_next=lam,
                                 accelerate=momentum == "auto")
    res = simulate(alg, fed, rounds, eval_every=0)
    _check_round(res.state, want[-1], res.history[-1])
    assert [row["extrapolated"] for row in res.history] == [float(momentum == "auto")] * rounds


def test_stopping_rule_stops_once_the_angle_estimate_is_below_tol(clients):
    """``tol``: the round whose Davis-Kahan estimate r / (theta_k - lambda_{k+1}) (reference values) drops
    below tol sets ``stopped``; from then on nothing is sent and the state stays; tol = 0 never stops."""
    S = clients.C.numpy().sum(0) / clients.n.numpy().sum()
    lam = float(np.sort(np.linalg.eigvalsh(S))[::-1][K])
    tol = 1e-2
    alg = FedPG(K, client_fraction=1.0, lambda_next=lam, tol=tol)
    fed = PCAFederation(clients, Streams(0))
    s0 = alg.init(fed)
    rounds = 12
    want = _reference_linearized(clients, s0.Z, s0.rho, [list(range(N))] * rounds, K, lambda_next=lam)
    first = next(t for t, ref in enumerate(want) if ref[5]["angle_estimate"] < tol)
    assert 2 <= first <= rounds - 3 and want[first - 1][5]["angle_estimate"] > tol
    res = simulate(alg, fed, rounds, eval_every=0)
    _check_round(res.state, want[first], res.history[first])
    assert [bool(row["participants"]) for row in res.history] == [True] * (first + 1) + [False] * (rounds - first - 1)
    assert [row["bytes_sent"] > 0 for row in res.history] == [True] * (first + 1) + [False] * (rounds - first - 1)
    assert bool(res.state.stopped)
    never = simulate(FedPG(K, client_fraction=1.0, lambda_next=lam), fed, first + 3, eval_every=0)
    assert all(row["participants"] == N for row in never.history)
    _check_round(never.state, want[first + 2], never.history[-1])


def test_server_step_without_uploads_and_with_float64_uploads_on_a_float32_state(clients):
    """No upload: the state is returned as it is, 0 participants. Uploads in float64 (Flower's wire format) on a
    float32 state are cast to the state's dtype: the float64 result to float32 precision."""
    alg = FedPG(K, client_fraction=1.0, momentum="none")
    fed = PCAFederation(clients, Streams(0))
    s64 = alg.init(fed)
    same, metrics = alg.server_step(s64, torch.zeros(0, dtype=torch.int64), torch.zeros(0, D * K + 1, dtype=F64))
    assert same is s64 and metrics == {"participants": 0}
    # uploads (rho_i U_i + Y_i, rho_i) of the documented client step with arbitrary duals
    g = torch.Generator().manual_seed(1)
    Y = torch.randn(N, D, K, generator=g, dtype=F64)
    U = s64.Z + (2 * clients.C @ s64.Z / clients.n.sum() - Y) / s64.rho[:, None, None]
    up = torch.cat([(s64.rho[:, None, None] * U + Y).reshape(N, -1), s64.rho[:, None]], dim=1)
    senders = torch.arange(N)
    s32 = LinearizedState(*(v.float() if v.is_floating_point() else v for v in vars(s64).values()))
    new32, m32 = alg.server_step(s32, senders, up)
    new64, m64 = alg.server_step(s64, senders, up)
    S = clients.C.sum(0) / clients.n.sum()
    torch.testing.assert_close(new64.G_prev, S @ s64.Z, atol=TOL, rtol=0)      # the duals cancel
    assert all(v.dtype == torch.float32 for v in vars(new32).values() if v.is_floating_point())
    torch.testing.assert_close(new32.Z.double(), new64.Z, atol=1e-5, rtol=0)
    assert m32["participants"] == m64["participants"] == N


def test_downlink_messages_and_a_z_changed_per_receiver(clients):
    """The downlink of round t: kind "downlink", round t, Z to the sampled clients. A tap that gives each of the
    2 receivers its own Z: each client steps from the Z it received (U_i = Z_i + 2 C_i Z_i / (n rho_i))."""
    alg = FedPG(K, client_fraction=0.4)
    fed = PCAFederation(clients, Streams(0))
    s0 = alg.init(fed)
    spy = Capture(kinds=("downlink",), rounds=[1])
    res = simulate(alg, fed, 2, state=s0, start_round=1, taps=[spy], eval_every=0)
    assert len(spy.records) == 2 and all(r.kind == "downlink" and r.round == 1 for r in spy.records)
    assert all(r.sender == SERVER and torch.equal(r.payload, s0.Z.reshape(-1)) for r in spy.records)
    assert sorted(r.receiver for r in spy.records) == torch.nonzero(res.state.seen).flatten().tolist()


class ScaleZ:
    """Downlink tap: receiver j gets (j + 2) Z (one payload row per receiver)."""

    def __call__(self, msgs: Messages) -> Messages:
        if msgs.kind != "downlink":
            return msgs
        m = len(msgs.dst)
        rows = msgs.payload.expand(m, -1) * (msgs.dst.to(msgs.payload) + 2)[:, None]
        return Messages(msgs.round, msgs.kind, msgs.senders.expand(m), rows, torch.arange(m), msgs.dst,
                        msgs.delivered)


@pytest.mark.parametrize("d, k", [(D, K), (1, 1)])
def test_each_receiver_steps_from_the_z_it_received(d, k):
    """Two sampled clients, each with its own Z (ScaleZ tap): U_i = Z_i + 2 C_i Z_i / (n rho_i) (Y_i = 0 at the
    first step), also in one dimension (d = k = 1, a payload of one column)."""
    clients = _clients(d)
    alg = FedPG(k, client_fraction=0.4)
    fed = PCAFederation(clients, Streams(0))
    s0 = alg.init(fed)
    state = simulate(alg, fed, 1, taps=[ScaleZ()], eval_every=0).state
    got = torch.nonzero(state.seen).flatten().tolist()
    assert len(got) == 2
    for i in range(N):
        if i in got:
            Zi = (i + 2) * s0.Z
            want = Zi + 2 * clients.C[i] @ Zi / (clients.n.sum() * s0.rho[i])
        else:
            want = s0.U[i]
        torch.testing.assert_close(state.U[i], want, atol=TOL, rtol=0)


def test_penalties_from_the_largest_eigenvalues_and_never_zero():
    """rho_i = 2 lambda_max(C_i) / n (numpy eigenvalues, some below 1), a client without signal gets 1e-12 times
    the largest, all without signal still > 0; ``rho`` given: rho n_i / n."""
    rng = np.random.default_rng(2)
    X = [rng.standard_normal((m, 4)) * s for m, s in ((30, 0.05), (40, 0.1), (25, 3.0))]
    C = np.stack([x.T @ x for x in X] + [np.zeros((4, 4))])
    n = torch.tensor([30.0, 40.0, 25.0, 10.0], dtype=F64)
    clients = PCAClients(torch.tensor(C), n)
    lam = np.linalg.eigvalsh(C)[:, -1]
    assert 0 < lam[0] < 1 and 0 < lam[1] < 1
    want = 2 * lam / 105.0
    want[3] = 1e-12 * want.max()
    got = FedPG(2).client_penalties(clients)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0)
    small = FedPG(2).penalties(torch.tensor(lam[:2] * 1e-3), n[:2])     # all rho < 1
    np.testing.assert_allclose(small.numpy(), 2 * lam[:2] * 1e-3 / 70.0, rtol=1e-12, atol=0)
    zero_client = FedPG(2).penalties(torch.tensor([0.0, lam[0] * 1e-3]), n[:2])
    np.testing.assert_allclose(zero_client.numpy(), [1e-12 * 2 * lam[0] * 1e-3 / 70.0, 2 * lam[0] * 1e-3 / 70.0],
                               rtol=1e-12, atol=0)
    nothing = FedPG(2).penalties(torch.zeros(3, dtype=F64), n[:3])
    assert bool((nothing > 0).all())
    np.testing.assert_allclose(FedPG(2, rho=0.7).client_penalties(clients).numpy(), 0.7 * n.numpy() / 105.0,
                               rtol=1e-12, atol=0)


def test_riemannian_round_when_every_upload_is_lost(clients):
    """Riemannian schedule, every uplink lost: the clients still step (U and the participants' state change)
    but Z stays; ``participants`` counts the uploads that arrived."""
    alg = FedPG(K, eta=0.05, rho=1.0, local_steps=2, client_fraction=0.6)
    fed = PCAFederation(clients, Streams(0))
    s0 = alg.init(fed)
    res = simulate(alg, fed, 2, taps=[LinkDrop(1.0, kinds=("uplink",))], eval_every=0)
    assert torch.equal(res.state.Z, s0.Z)
    assert float((res.state.U - s0.U).abs().max()) > 1e-3
    assert [row["participants"] for row in res.history] == [0, 0]
    ok = simulate(alg, fed, 2, eval_every=0)
    assert [row["participants"] for row in ok.history] == [3, 3]


def test_paper_variant_subspace_is_the_polar_factor_of_z(clients):
    """The paper variant's Z is not orthonormal; ``subspace`` is its polar factor (numpy SVD)."""
    alg = FedPG(K, eta=0.05, rho=1.0, local_steps=2, client_fraction=0.6, variant="paper")
    state = simulate(alg, PCAFederation(clients, Streams(0)), 1, eval_every=0).state
    Z = state.Z.numpy()
    assert np.abs(Z.T @ Z - np.eye(K)).max() > 1e-3
    u, _, vh = np.linalg.svd(Z, full_matrices=False)
    np.testing.assert_allclose(alg.subspace(state).numpy(), u @ vh, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kw, message", [
    ({"solver": "newton"}, r"unknown solver 'newton'; known: linearized, riemannian"),
    ({"momentum": "heavy"}, r"unknown momentum 'heavy'; known: auto, none"),
    ({"solver": "linearized", "variant": "paper"}, r"solver 'linearized' .*variant='clean', method='grassmann'"),
    ({"solver": "linearized", "method": "euclidean"}, r"solver 'linearized' .*variant='clean', method='grassmann'"),
    ({"tol": -1e-3}, r"tol >= 0 and lambda_next >= 0; got -0.001, None"),
    ({"lambda_next": -0.5}, r"tol >= 0 and lambda_next >= 0; got 0.0, -0.5"),
])
def test_bad_options_are_refused_and_named(kw, message):
    with pytest.raises(ValueError, match=message):
        FedPG(2, **kw)


def test_valid_options_are_accepted():
    """The boundary values and the documented choices construct."""
    assert FedPG(2, solver="linearized").solver_name == "linearized"
    assert FedPG(2, momentum="none").momentum == "none"
    assert FedPG(2, lambda_next=0.0).lambda_next == 0.0
    assert FedPG(2, lambda_next=0.5, tol=0.0).lambda_next == 0.5
