"""Linearized FedPG (the clean default solver) against per-client float64 references (written to kill mutmut
survivors, docs/testing.md).

The references follow the module docstring of ``fedsim.fedpca.fedpg``: client i, with the Z_i that reached it,
applies Y_i <- Y_i + rho_i (U_i - Z_i) if it took part before, sets U_i = Z_i + (2 C_i Z_i / n - Y_i) / rho_i and
uploads (rho_i U_i + Y_i, rho_i); the server removes the shift rho_i Z it sent, halves, keeps every client's last
contribution and takes a (heavy-ball) power step on their sum. The references compute that contribution from the
derived form C_i Z_i / n + rho_i (Z_i - Z) / 2 (the duals cancel), the polar factor from an SVD and the penalties
from numpy's eigenvalues; library and references agree to ~1e-14, the tolerance is 1e-10.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.fedpca.fedpg import FedPG, LinearizedState, PCAFederation, linearized_client_step
from fedsim.fedpca.problem import PCAClients
from fedsim.messages import SERVER, LinkDrop, Messages
from fedsim.rng import Streams

TOL = 1e-10
F64 = torch.float64
K = 2


def _blocks():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((8, 2)))[0]
    return [rng.standard_normal((40 + 10 * i, 2)) * [3.0, 2.0] @ basis.T + (0.3 + 0.2 * i) * rng.standard_normal(
        (40 + 10 * i, 8)) for i in range(5)]


@pytest.fixture(scope="module")
def clients():
    return PCAClients.from_blocks(_blocks())


def _polar(M):
    u, _, vh = torch.linalg.svd(M, full_matrices=False)
    return u @ vh


def _penalties(clients):
    """rho_i = 2 lambda_max(C_i) / n (module docstring), from numpy."""
    lam = np.array([np.linalg.eigvalsh(C)[-1] for C in clients.C.numpy()])
    return torch.tensor(2.0 * lam / float(clients.n.sum()), dtype=F64)


class _Wire:
    """``send``: link drops (``LinkDrop``), optionally every downlink lost in some rounds or every downlink row
    rounded to float32 (a quantising tap); records what arrived and the uplink batches' payload shapes."""

    def __init__(self, p=0.0, lose_rounds=(), float32_down=False):
        self.drop = LinkDrop(p, seed=3)
        self.lose_rounds, self.float32_down = set(lose_rounds), float32_down
        self.down, self.up, self.uplink_batches = {}, [], []

    def __call__(self, msgs: Messages) -> Messages:
        msgs = self.drop(msgs)
        if msgs.kind == "downlink":
            if msgs.round in self.lose_rounds:
                msgs = msgs.drop(torch.ones_like(msgs.delivered))
            if self.float32_down:
                msgs = msgs.with_payload(msgs.payload.to(torch.float32))
            _, receivers, rows = msgs.arrived()
            self.down = {int(i): row.to(F64).reshape(-1, K) for i, row in zip(receivers, rows)}
        else:
            senders, receivers, _ = msgs.arrived()
            assert set(receivers.tolist()) <= {SERVER}
            self.up = sorted(int(i) for i in senders)
            self.uplink_batches.append((tuple(msgs.payload.shape), msgs.payload.dtype, len(msgs.senders)))
        return msgs


def _reference_round(s, clients, down, up):
    """The documented linearized round, client by client, with plain power steps (``momentum="none"``)."""
    n = float(clients.n.sum())
    U, Y, seen, H, has = s.U.clone(), s.Y.clone(), s.seen.clone(), s.H.clone(), s.has.clone()
    for i, Zi in down.items():
        if bool(seen[i]):
            Y[i] = Y[i] + s.rho[i] * (U[i] - Zi)
        U[i] = Zi + (2.0 * clients.C[i] @ Zi / n - Y[i]) / s.rho[i]
        seen[i] = True
    for i in up:
        Zi = down[i]
        H[i] = clients.C[i] @ Zi / n + 0.5 * s.rho[i] * (Zi - s.Z)
        has[i] = True
    Z = _polar(H[has].sum(0)) if up else s.Z
    return U, Y, seen, H, has, Z


def test_client_step_hand_computed():
    """``linearized_client_step``: the dual update only for clients seen before, U_i = Z_i + (2 C_i Z_i / n - Y_i)
    / rho_i, and the upload [rho_i U_i + Y_i, rho_i] (which equals rho_i Z_i + 2 C_i Z_i / n: the duals cancel)."""
    g = torch.Generator().manual_seed(1)
    m, d, k, n = 3, 4, 2, 37.0
    CZ, Z, U, Y = (torch.randn(m, d, k, generator=g, dtype=F64) for _ in range(4))
    seen = torch.tensor([True, False, True])
    rho = torch.tensor([0.5, 2.0, 3.0], dtype=F64)
    got_U, got_Y, upload = linearized_client_step(CZ, Z, U, Y, seen, rho, n)
    for i in range(m):
        y = Y[i] + rho[i] * (U[i] - Z[i]) if seen[i] else Y[i]
        u = Z[i] + (2.0 * CZ[i] / n - y) / rho[i]
        torch.testing.assert_close(got_Y[i], y, atol=TOL, rtol=0)
        torch.testing.assert_close(got_U[i], u, atol=TOL, rtol=0)
        torch.testing.assert_close(upload[i, :-1], (rho[i] * u + y).reshape(-1), atol=TOL, rtol=0)
        torch.testing.assert_close(upload[i, :-1], (rho[i] * Z[i] + 2.0 * CZ[i] / n).reshape(-1), atol=TOL, rtol=0)
        assert float(upload[i, -1]) == float(rho[i])
    assert float((got_Y - Y).abs().max()) > 0.1      # the dual update moved the seen clients


@pytest.mark.parametrize("vectorized", [True, False])
@pytest.mark.parametrize("float32_down", [False, True])
def test_rounds_equal_the_per_client_reference(clients, vectorized, float32_down):
    """Five rounds with partial participation and lost links, on the batched and on the per-client (Flower node)
    path: every client's U, Y, seen and last contribution H, and the server's Z, against the reference; round 3
    loses every downlink (nothing changes). A quantising tap that rounds the downlink Z to float32: the clients use
    the rounded Z. Every uplink batch is well formed: one [d*k + 1] float64 row per sender, also when empty."""
    d = clients.d
    alg = FedPG(K, client_fraction=0.6, momentum="none", vectorized=vectorized)
    fed = PCAFederation(clients, Streams(0))
    state = alg.init(fed)
    assert isinstance(state, LinearizedState)
    torch.testing.assert_close(state.rho, _penalties(clients), atol=0, rtol=1e-12)
    wire = _Wire(p=0.25, lose_rounds=(3,), float32_down=float32_down)
    twice = False
    for t in range(5):
        new, metrics = alg.round(state, t, fed, wire)
        U, Y, seen, H, has, Z = _reference_round(state, clients, wire.down, wire.up)
        assert metrics["participants"] == len(wire.up)
        torch.testing.assert_close(new.U, U, atol=TOL, rtol=0)
        torch.testing.assert_close(new.Y, Y, atol=TOL, rtol=0)
        torch.testing.assert_close(new.H, H, atol=TOL, rtol=0)
        assert new.seen.tolist() == seen.tolist() and new.has.tolist() == has.tolist()
        torch.testing.assert_close(new.Z, Z, atol=TOL, rtol=0)
        if t == 3:
            assert not wire.down and metrics["participants"] == 0
        twice |= any(bool(state.seen[i]) for i in wire.down)
        state = new
    assert twice and float(state.Y.abs().max()) > 1e-3            # dual updates happened
    assert [b[0][1:] for b in wire.uplink_batches] == [(d * K + 1,)] * 5
    assert all(shape[0] == m and dtype == F64 for shape, dtype, m in wire.uplink_batches)
    assert wire.uplink_batches[3][2] == 0


def test_heavy_ball_starts_from_rest(clients):
    """Full participation with a given lambda_next: W = G - c Z - beta Z~, c = lam / 2, beta = lam^2 / 16,
    Z+ = polar(W) = W P^-1, Z~+ = Z P^-1, starting with Z~ = 0; G = S Z (S = sum_i C_i / n)."""
    lam = 0.5
    alg = FedPG(K, client_fraction=1.0, lambda_next=lam)
    fed = PCAFederation(clients, Streams(0))
    state = alg.init(fed)
    S = (clients.C.sum(0) / clients.n.sum()).numpy()
    Z, Zs = state.Z.numpy(), np.zeros_like(state.Z.numpy())
    for t in range(3):
        state, metrics = alg.round(state, t, fed, lambda m: m)
        W = S @ Z - lam / 2 * Z - lam * lam / 16 * Zs
        u, s, vh = np.linalg.svd(W, full_matrices=False)
        Z, Zs = u @ vh, Z @ (vh.T / s) @ vh
        np.testing.assert_allclose(state.Z.numpy(), Z, atol=TOL, rtol=0)
        np.testing.assert_allclose(state.Z_scaled.numpy(), Zs, atol=TOL, rtol=0)
        assert metrics["extrapolated"] == 1.0


def test_a_stopped_run_sends_nothing_and_keeps_its_state(clients):
    """``tol``: the round whose Davis-Kahan estimate falls below tol is the last one that trains; every later
    round sends no message, reports 0 participants and returns the state unchanged."""
    alg = FedPG(K, client_fraction=1.0, tol=1e-4)
    fed = PCAFederation(clients, Streams(0))
    state = alg.init(fed)
    sent = []

    def send(msgs):
        sent.append(msgs.round)
        return msgs

    for t in range(40):
        state, metrics = alg.round(state, t, fed, send)
        if metrics["participants"] == 0:
            break
        assert metrics["participants"] == clients.n_clients
        assert bool(state.stopped) == (metrics["angle_estimate"] < 1e-4)
    assert bool(state.stopped) and 2 < t < 40
    for t2 in range(t, t + 2):
        same, metrics = alg.round(state, t2, fed, send)
        assert metrics == {"participants": 0} and same is state
    assert max(sent) == t - 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_follows_the_clients_dtype(dtype):
    """Every floating tensor of the linearized state (at init and after rounds) has the clients' dtype, the flags
    are bool, also for integer sample counts; with ``rho`` given the penalties are rho n_i / n."""
    base = PCAClients.from_blocks(_blocks(), dtype=dtype)
    counts = torch.tensor([len(b) for b in _blocks()])
    for clients in (base, PCAClients(base.C, counts)):
        for alg in (FedPG(K, client_fraction=0.6), FedPG(K, rho=0.3, client_fraction=1.0)):
            fed = PCAFederation(clients, Streams(0))
            state = alg.init(fed)
            for t in range(3):
                for name, v in vars(state).items():
                    want = torch.bool if name in ("has", "prev_fresh", "stopped", "seen") else dtype
                    assert v.dtype == want, (name, t)
                state, _ = alg.round(state, t, fed, lambda m: m)
            if alg.rho is not None:      # integer counts: rho n_i / n is formed in float32 first (reported)
                exact = dtype == F64 and clients is base
                want = 0.3 * counts.double() / counts.sum()
                torch.testing.assert_close(state.rho.double(), want, atol=0, rtol=1e-15 if exact else 2e-7)
