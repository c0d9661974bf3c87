"""The federated power method (plain, accelerated, decentralized) and clean FedPG's linearized solver, against
independent references: numpy eigendecompositions and subspace iteration, pymanopt per-client solves,
hand-computed recurrences. Subspaces are compared by principal angles, never raw matrices."""

import numpy as np
import pytest
import torch

import topologies
from fedsim.engine import simulate
from fedsim.fedpca.baselines import fedpg_with_pymanopt
from fedsim.fedpca.decentralized import DecentralizedFedPG
from fedsim.fedpca.fedpg import FedPG, LinearizedState, PCAFederation
from fedsim.fedpca.grassmann import largest_principal_angle, orthonormality_error
from fedsim.fedpca.power import (
    DecentralizedPower,
    FederatedPower,
    extrapolated_step,
    heavy_ball_coefficients,
    next_eigenvalue_estimate,
    polar_with_inverse,
    ritz_values,
)
from fedsim.fedpca.problem import PCAClients
from fedsim.messages import SERVER, Capture, LinkDrop, Messages
from fedsim.rng import Streams

F64 = torch.float64


def numpy_top_k(clients: PCAClients, k: int) -> tuple[torch.Tensor, np.ndarray]:
    """Top-k eigenspace and all eigenvalues (descending) of the pooled matrix, by numpy (not torch)."""
    S = clients.C.numpy().sum(0) / clients.n.numpy().sum()
    vals, vecs = np.linalg.eigh(S)
    return torch.tensor(vecs[:, ::-1][:, :k].copy()), vals[::-1].copy()


def fed_with_reference(clients, k, schedule=None, seed=0):
    return PCAFederation(clients, Streams(seed), reference=numpy_top_k(clients, k)[0], schedule=schedule)


def first_round_below(result, tol=1e-3, key="angle_to_reference"):
    """The first round whose evaluated ``key`` is below ``tol`` (None: never)."""
    return next((row["round"] for row in result.history if row.get(key, np.inf) < tol), None)


def make_spectrum_clients(n_clients: int = 8):
    """n clients in R^12 whose pooled matrix has the eigenvalues 10, 8, 6, 4.0, 3.6 (k = 4: ratio 0.9), 3, ..., 1.

    Non-IID: each client holds the eigenbasis with its own random weights, so no client's own matrix has the pooled
    eigenvalue order."""
    rng = np.random.default_rng(3)
    d = 12
    lam = np.array([10, 8, 6, 4.0, 3.6, 3, 2.6, 2.2, 1.8, 1.5, 1.2, 1.0])
    Q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    S = Q @ np.diag(lam) @ Q.T
    parts = [rng.uniform(0.2, 1.8, d) for _ in range(n_clients)]
    total = sum(parts)
    ns = np.array([100.0 + 10 * i for i in range(n_clients)])
    C = np.stack([ns.sum() * Q @ np.diag(lam * p / total) @ Q.T for p in parts])
    # scale so that sum_i C_i / sum n = S exactly
    C = C * (S.trace() / (C.sum(0) / ns.sum()).trace())
    return PCAClients(torch.tensor(C), torch.tensor(ns)), lam


@pytest.fixture(scope="module")
def spectrum_clients():
    return make_spectrum_clients(8)


# -- helpers --------------------------------------------------------------------------------------------------

def test_polar_with_inverse_and_ritz_values_against_numpy():
    g = np.random.default_rng(0)
    W = g.standard_normal((9, 4))
    Q, Pinv = polar_with_inverse(torch.tensor(W))
    assert float(orthonormality_error(Q)) < 1e-12
    np.testing.assert_allclose((torch.tensor(W) @ Pinv).numpy(), Q.numpy(), atol=1e-12)
    u, _, vt = np.linalg.svd(W, full_matrices=False)
    np.testing.assert_allclose(Q.numpy(), u @ vt, atol=1e-12)                   # the polar factor
    A = g.standard_normal((9, 9))
    S = A @ A.T
    X = g.standard_normal((9, 5))
    q = np.linalg.qr(X)[0]
    want = np.linalg.eigvalsh(q.T @ S @ q)[::-1]
    np.testing.assert_allclose(ritz_values(torch.tensor(X), torch.tensor(S @ X)).numpy(), want, atol=1e-10)
    # Cauchy interlacing: the j-th Ritz value never exceeds the j-th eigenvalue
    assert (want <= np.linalg.eigvalsh(S)[::-1][:5] + 1e-12).all()
    # a rank-deficient X: the duplicate direction is dropped
    X2 = np.hstack([X, X[:, :1]])
    assert len(ritz_values(torch.tensor(X2), torch.tensor(S @ X2))) == 5


def test_heavy_ball_coefficients_hand_computed():
    assert heavy_ball_coefficients(0.0, 0.8) == pytest.approx((0.4, 0.04))     # c = 0.4, beta = 0.4^2 / 4
    assert heavy_ball_coefficients(1.0, 3.0) == pytest.approx((2.0, 0.25))
    G, Z = torch.tensor([[2.0], [1.0]], dtype=F64), torch.tensor([[1.0], [0.0]], dtype=F64)
    Zs = torch.tensor([[0.0], [1.0]], dtype=F64)
    Q, Zn = extrapolated_step(G, Z, Zs, 0.5, 0.25)        # W = [1.5, 0.75]: |W| = 1.677
    w = np.array([1.5, 0.75])
    np.testing.assert_allclose(Q[:, 0].numpy(), w / np.linalg.norm(w), atol=1e-15)
    np.testing.assert_allclose(Zn[:, 0].numpy(), [1 / np.linalg.norm(w), 0.0], atol=1e-15)


def test_next_eigenvalue_estimate_is_a_lower_bound_and_exact_on_the_next_eigenvector(spectrum_clients):
    clients, lam = spectrum_clients
    S = (clients.C.sum(0) / clients.n.sum()).numpy()
    vecs = np.linalg.eigh(S)[1]
    V = vecs[:, ::-1]
    g = np.random.default_rng(1)
    Z_prev = np.linalg.qr(V[:, :4] + 0.3 * g.standard_normal((12, 4)))[0]
    Z = np.linalg.qr(S @ Z_prev)[0]
    est = next_eigenvalue_estimate(*(torch.tensor(m) for m in (Z_prev, S @ Z_prev, Z, S @ Z)), 4)
    assert 0 < est <= lam[4] + 1e-12
    # span(Z_prev, Z) = span(top-4, v_5): the estimate is lambda_5 exactly
    Zp = V[:, :4].copy()
    Zn = np.linalg.qr(V[:, :4] + 1e-3 * np.outer(V[:, 4], np.ones(4)))[0]
    est = next_eigenvalue_estimate(*(torch.tensor(m) for m in (Zp, S @ Zp, Zn, S @ Zn)), 4)
    assert est == pytest.approx(lam[4], abs=1e-8)


# -- the server-based power method ------------------------------------------------------------------------------

def test_plain_power_equals_numpy_subspace_iteration(spectrum_clients):
    clients, _ = spectrum_clients
    k, rounds = 4, 12
    res = simulate(FederatedPower(k, momentum="none"), fed_with_reference(clients, k), rounds, eval_every=0)
    S = clients.C.numpy().sum(0) / clients.n.numpy().sum()
    Z = FederatedPower(k).init(PCAFederation(clients, Streams(0))).Z.numpy()
    for _ in range(rounds):
        Z = np.linalg.qr(S @ Z)[0]
    assert float(largest_principal_angle(res.state.Z, torch.tensor(Z))) < 1e-10
    assert float(orthonormality_error(res.state.Z)) < 1e-12


def test_accelerated_power_contracts_at_the_predicted_rate(spectrum_clients):
    """lambda_5 / lambda_4 = 0.9: plain power contracts tan(angle) by 0.9 a round; the heavy ball on [0, 3.6] by the
    root ratio sqrt(beta) / r(lambda_4) = 0.9 / ((2.2 + sqrt(2.2^2 - 4 * 0.81)) / 2) = 0.5195 (c = 1.8, beta = 0.81;
    module docstring)."""
    clients, lam = spectrum_clients
    k = 4
    c, beta = heavy_ball_coefficients(0.0, lam[k])
    a = lam[k - 1] - c
    predicted = np.sqrt(beta) / ((a + np.sqrt(a * a - 4 * beta)) / 2)
    assert predicted == pytest.approx(0.5195, abs=1e-4)
    for alg, rate in ((FederatedPower(k, momentum="none"), lam[k] / lam[k - 1]),
                      (FederatedPower(k, lambda_next=lam[k]), predicted)):
        res = simulate(alg, fed_with_reference(clients, k), 26, eval_every=1)
        tans = np.tan([row["angle_to_reference"] for row in res.history])
        t = np.arange(16, 25)                 # rounds t + 1 = 17..25
        ratios = tans[t] / tans[t - 1]
        if alg.momentum == "auto":            # lambda_5 sits on the interval's edge: a double root, tan ~ t r^t
            ratios = ratios * t / (t + 1)
        assert np.median(ratios) == pytest.approx(rate, rel=0.05), (alg.name, ratios)
    # with the Ritz estimate (no oracle) it reaches 1e-8 rad in about as many rounds as with the oracle
    est = first_round_below(simulate(FederatedPower(k), fed_with_reference(clients, k), 80), 1e-8)
    oracle = first_round_below(simulate(FederatedPower(k, lambda_next=lam[k]), fed_with_reference(clients, k), 80),
                               1e-8)
    plain = first_round_below(simulate(FederatedPower(k, momentum="none"), fed_with_reference(clients, k), 400),
                              1e-8)
    assert est <= oracle + 3 and 3 * est < plain, (est, oracle, plain)


def test_power_messages_and_receivers(spectrum_clients):
    clients, _ = spectrum_clients
    d, k = clients.d, 3
    fed = fed_with_reference(clients, k)
    res = simulate(FederatedPower(k, client_fraction=0.25), fed, 2, eval_every=0)
    assert [r["participants"] for r in res.history] == [2, 2]
    assert res.history[0]["bytes_sent"] == (2 * d * k + 2 * d * k) * 8       # Z down, C_i Z / n up, float64

    # the server sums the uploads that arrived (after the taps)
    class Double:
        def __call__(self, msgs):
            if msgs.kind == "uplink":
                return msgs.with_payload(torch.where(msgs.senders[:, None] == 1, 2 * msgs.payload, msgs.payload))
            return msgs

    spy = Capture(receivers=[SERVER])
    res = simulate(FederatedPower(k, momentum="none"), fed, 1, taps=[Double(), spy], eval_every=0)
    got = sum(r.payload for r in spy.records).reshape(d, k)
    torch.testing.assert_close(res.state.G_prev, got, atol=1e-14, rtol=0)
    Z0 = FederatedPower(k).init(fed).Z
    want = (clients.C.sum(0) + clients.C[1]) @ Z0 / clients.n.sum()
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # nothing arrives: Z stays Z0; a lost upload leaves that client's last contribution in the sum (stale)
    assert torch.equal(simulate(FederatedPower(k), fed, 3, taps=[LinkDrop(1.0)], eval_every=0).state.Z, Z0)
    drop_1 = LinkDropFrom(1, round=1)
    res = simulate(FederatedPower(k, momentum="none"), fed, 2, taps=[drop_1], eval_every=0)
    Z1 = simulate(FederatedPower(k, momentum="none"), fed, 1, eval_every=0).state.Z
    stale = (clients.C.sum(0) - clients.C[1]) @ Z1 / clients.n.sum() + clients.C[1] @ Z0 / clients.n.sum()
    torch.testing.assert_close(res.state.G_prev, stale, atol=1e-12, rtol=0)


class LinkDropFrom:
    """Drops the uplink of one client in one round."""

    def __init__(self, client, round):
        self.client, self.round = client, round

    def __call__(self, msgs: Messages) -> Messages:
        if msgs.kind == "uplink" and msgs.round == self.round:
            return msgs.drop(msgs.edge_senders == self.client)
        return msgs


def test_stopping_rule_stops_sending_and_the_estimate_bounds_the_angle(spectrum_clients):
    clients, _ = spectrum_clients
    k = 4
    res = simulate(FederatedPower(k, tol=1e-8), fed_with_reference(clients, k), 60)
    stopped = [r["round"] for r in res.history if r["bytes_sent"] == 0]
    assert stopped and stopped == list(range(stopped[0], 61))           # once stopped, nothing more is sent
    last = res.history[stopped[0] - 2]                                   # the round that decided to stop
    assert last["angle_estimate"] < 1e-8
    assert res.final("angle_to_reference") < 1e-8                       # Davis-Kahan: the estimate holds here
    for row in res.history[3:stopped[0] - 2]:                            # and tracks the true angle before
        assert row["angle_estimate"] > 0


# -- clean FedPG's linearized solver ----------------------------------------------------------------------------

def test_fedpg_default_is_the_linearized_admm_and_equals_accelerated_power(spectrum_clients):
    clients, _ = spectrum_clients
    k = 4
    alg = FedPG(k, client_fraction=1.0)
    assert alg.solver_name == "linearized"
    assert FedPG(k, eta=0.05).solver_name == FedPG(k, local_steps=3).solver_name == "riemannian"
    assert FedPG(k, variant="paper").solver_name == "riemannian"
    fed = fed_with_reference(clients, k)
    a = simulate(alg, fed, 40)
    b = simulate(FederatedPower(k), fed, 40)
    assert isinstance(a.state, LinearizedState)
    for ra, rb in zip(a.history, b.history):          # the same iterates, round by round
        assert abs(ra["angle_to_reference"] - rb["angle_to_reference"]) < 1e-10
    assert float(largest_principal_angle(a.state.Z, b.state.Z)) < 1e-10
    # the duals converge to the local gradients 2 C_i Z / n at the optimum and U_i to Z (consensus)
    V = fed.reference
    torch.testing.assert_close(a.state.Y, 2 * clients.C @ a.state.Z / clients.n.sum(), atol=1e-7, rtol=0)
    assert float((a.state.U - a.state.Z).abs().max()) < 1e-7
    assert float(largest_principal_angle(a.state.Z, V)) < 1e-8


def test_fedpg_linearized_penalty_only_changes_u(spectrum_clients):
    clients, _ = spectrum_clients
    k = 4
    fed = fed_with_reference(clients, k)
    rho = FedPG(k).client_penalties(clients)
    want = 2 * torch.linalg.eigvalsh(clients.C)[:, -1] / clients.n.sum()
    torch.testing.assert_close(rho, want, atol=1e-14, rtol=0)
    a = simulate(FedPG(k, client_fraction=1.0), fed, 6, eval_every=0).state
    b = simulate(FedPG(k, client_fraction=1.0, rho=50.0), fed, 6, eval_every=0).state
    assert float(largest_principal_angle(a.Z, b.Z)) < 1e-10
    assert float((a.U - b.U).abs().max()) > 1e-3


@pytest.mark.parametrize("fraction", [1.0, 0.4])
def test_fedpg_linearized_equals_the_pymanopt_per_client_schedule(spectrum_clients, fraction):
    clients, _ = spectrum_clients
    k, rounds = 3, 10
    Zp = fedpg_with_pymanopt(clients, k, rounds, client_fraction=fraction)
    Zb = simulate(FedPG(k, client_fraction=fraction), PCAFederation(clients, Streams(0)), rounds,
                  eval_every=0).state.Z
    np.testing.assert_allclose(Zb.numpy(), Zp, atol=1e-10)


def test_fedpg_linearized_messages_and_receivers(spectrum_clients):
    clients, _ = spectrum_clients
    N, d, k = clients.n_clients, clients.d, 3
    fed = PCAFederation(clients, Streams(0))
    alg = FedPG(k, client_fraction=1.0, momentum="none")
    spy = Capture(receivers=[SERVER])
    res = simulate(alg, fed, 1, taps=[spy], eval_every=0)
    assert res.history[0]["bytes_sent"] == (N * d * k + N * (d * k + 1)) * 8
    Z0 = alg.init(fed).Z
    rho = alg.client_penalties(clients)
    for r in spy.records:                               # upload = (rho_i U_i + Y_i, rho_i), U_i from the closed form
        i = r.sender
        U = Z0 + (2 * clients.C[i] @ Z0 / clients.n.sum()) / rho[i]
        torch.testing.assert_close(r.payload[:d * k].reshape(d, k), rho[i] * U, atol=1e-13, rtol=0)
        assert float(r.payload[-1]) == pytest.approx(float(rho[i]), abs=0)

    # a client uses the Z that reached it: a downlink tap that doubles client 2's Z
    class DoubleZ:
        def __call__(self, msgs):
            if msgs.kind != "downlink":
                return msgs
            rows = msgs.payload.expand(len(msgs.dst), -1).clone()
            rows[msgs.dst == 2] *= 2
            return Messages(msgs.round, msgs.kind, msgs.senders.expand(len(msgs.dst)), rows, torch.arange(len(msgs.dst)), msgs.dst,
                            msgs.delivered)

    spy = Capture(receivers=[SERVER])
    res = simulate(alg, fed, 1, taps=[DoubleZ(), spy], eval_every=0)
    U2 = 2 * Z0 + (2 * clients.C[2] @ (2 * Z0) / clients.n.sum()) / rho[2]
    rec = next(r for r in spy.records if r.sender == 2)
    torch.testing.assert_close(rec.payload[:d * k].reshape(d, k), rho[2] * U2, atol=1e-13, rtol=0)
    torch.testing.assert_close(res.state.U[2], U2, atol=1e-13, rtol=0)
    # the server removes the shift with the Z it sent: client 2 contributes C_2 (2 Z0) / n + rho_2 Z0 / 2
    want = (clients.C.sum(0) + clients.C[2]) @ Z0 / clients.n.sum() + 0.5 * rho[2] * Z0
    torch.testing.assert_close(res.state.G_prev, want, atol=1e-13, rtol=0)
    # nothing arrives: Z stays Z0
    assert torch.equal(simulate(FedPG(k, client_fraction=1.0), fed, 3, taps=[LinkDrop(1.0)],
                                eval_every=0).state.Z, Z0)


def test_fedpg_partial_participation_converges_with_stale_contributions(spectrum_clients):
    clients, _ = spectrum_clients
    k = 4
    fed = fed_with_reference(clients, k)
    full = first_round_below(simulate(FedPG(k, client_fraction=1.0, momentum="none"), fed, 400), 1e-6)
    part = first_round_below(simulate(FedPG(k, client_fraction=0.25), fed, 1500), 1e-6)
    assert full is not None and part is not None
    # stale aggregation: about 1 / q = 4 times the rounds of plain full participation (module docstring)
    assert part < 6 * full, (part, full)


# -- decentralized --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("graph", ["ring", "torus", "4-regular", "small-world"])
def test_decentralized_power_tracks_the_sum_exactly_and_converges(graph):
    clients, _ = make_spectrum_clients(12)
    k = 4
    build = {"ring": lambda: topologies.ring(12), "torus": lambda: topologies.torus(12),
             "4-regular": lambda: topologies.random_regular(12, 4, seed=0),
             "small-world": lambda: topologies.watts_strogatz(12, 4, 0.3, seed=0)}
    for graph in (build[graph](),):
        sched = topologies.Static(topologies.metropolis_hastings(graph))
        fed = fed_with_reference(clients, k, sched)
        alg = DecentralizedPower(k)
        K = alg.gossip_steps_for(fed)
        l2 = float(np.sort(np.abs(np.linalg.eigvalsh(sched.at(0).toarray())))[-2])
        eta = (1 - np.sqrt(1 - l2 ** 2)) / (1 + np.sqrt(1 - l2 ** 2))
        assert np.sqrt(eta) ** K <= alg.mix_tol < np.sqrt(eta) ** (K - 1)
        state = alg.init(fed)
        for t in range(3 * K):
            state = simulate(alg, fed, t + 1, state=state, start_round=t, eval_every=0).state
            # gradient tracking: the network sum of the mixed trackers equals that of the local contributions
            torch.testing.assert_close(state.X.sum(0), state.F.sum(0), atol=1e-11, rtol=0)
        res = simulate(alg, fed, 60 * K, eval_every=K)
        assert first_round_below(res, 1e-6, "max_node_angle_to_reference") is not None
        assert res.final("max_node_angle_to_reference") < 1e-8


def test_decentralized_power_gossip_messages(spectrum_clients):
    clients, _ = spectrum_clients
    k = 3
    sched = topologies.Static(topologies.metropolis_hastings(topologies.ring(8)))
    fed = PCAFederation(clients, Streams(0), schedule=sched)
    alg = DecentralizedPower(k)
    p = alg.block_size(clients.d)
    assert p == k + 2
    res = simulate(alg, fed, 2, eval_every=0)
    assert res.history[0]["bytes_sent"] == 16 * clients.d * p * 8               # one block per edge and direction
    with pytest.raises(ValueError, match="undirected"):
        alg.init(PCAFederation(clients, Streams(0), schedule=topologies.PushSum(topologies.directed_exponential(8))))


def test_decentralized_fedpg_default_runs_the_tracking_method(spectrum_clients):
    clients, _ = spectrum_clients
    k = 3
    sched = topologies.Static(topologies.metropolis_hastings(topologies.random_regular(8, 4, seed=0)))
    fed = fed_with_reference(clients, k, sched)
    assert DecentralizedFedPG(k).solver_name == "tracking"
    assert DecentralizedFedPG(k, eta=0.01).solver_name == DecentralizedFedPG(k, solver="admm").solver_name == "admm"
    a = simulate(DecentralizedFedPG(k), fed, 30, eval_every=30)
    b = simulate(DecentralizedPower(k), fed, 30, eval_every=30)
    assert a.final("angle_to_reference") == pytest.approx(b.final("angle_to_reference"), abs=1e-12)


def test_decentralized_power_mixes_the_payloads_that_arrived(spectrum_clients):
    """One exchange with a tap that doubles every gossip payload and drops one edge: FastMix over what arrived
    (a lost message counts as agreement), against a dense per-node sum."""
    clients, _ = spectrum_clients
    k = 3
    W = topologies.metropolis_hastings(topologies.ring(8))
    fed = PCAFederation(clients, Streams(0), schedule=topologies.Static(W))
    alg = DecentralizedPower(k)
    s0 = alg.init(fed)

    class DoubleAndDrop:
        def __call__(self, msgs):
            msgs = msgs.with_payload(2 * msgs.payload)
            return msgs.drop((msgs.edge_senders == 3) & (msgs.dst == 4))

    s1 = simulate(alg, fed, 1, state=s0, taps=[DoubleAndDrop()], eval_every=0).state
    D = W.toarray()
    l2 = float(np.sort(np.abs(np.linalg.eigvalsh(D)))[-2])
    eta = (1 - np.sqrt(1 - l2 ** 2)) / (1 + np.sqrt(1 - l2 ** 2))
    X = s0.X.numpy()
    mixed = np.empty_like(X)
    for i in range(8):
        acc = D[i, i] * X[i]
        for j in range(8):
            if j != i and D[i, j] != 0:
                acc = acc + D[i, j] * (X[i] if (j, i) == (3, 4) else 2 * X[j])
        mixed[i] = acc
    np.testing.assert_allclose(s1.X.numpy(), (1 + eta) * mixed - eta * X, atol=1e-12)
    assert int(s1.step) == 1 and torch.equal(s1.W, s0.W)          # no power step before K exchanges


def test_decentralized_power_on_a_time_varying_graph(spectrum_clients):
    """Links fail at random each round (a new doubly stochastic matrix per round): plain gossip steps, fixed K; the
    tracking invariant holds exchange by exchange and the nodes still converge."""
    clients, _ = spectrum_clients
    k = 3
    sched = topologies.LinkFailures(topologies.random_regular(8, 4, seed=0), 0.3, seed=1)
    fed = fed_with_reference(clients, k, sched)
    alg = DecentralizedPower(k, gossip_steps=6, chebyshev=False)
    state = alg.init(fed)
    for t in range(12):
        state = simulate(alg, fed, t + 1, state=state, start_round=t, eval_every=0).state
        torch.testing.assert_close(state.X.sum(0), state.F.sum(0), atol=1e-11, rtol=0)
    res = simulate(alg, fed, 600, eval_every=6)
    assert res.final("max_node_angle_to_reference") < 1e-6


@pytest.mark.parametrize("chebyshev", [True, False])
def test_a_disconnected_graph_is_refused_even_when_lambda_2_rounds_below_1(chebyshev):
    """Two disjoint 5-rings: the eigen-solver gives |lambda_2| = 1 - 1e-16, whose step count would be in the
    hundreds of millions; connectivity is read from W's pattern, so it is always the "disconnected" error."""
    import networkx as nx

    clients, _ = make_spectrum_clients(10)
    g = nx.disjoint_union(topologies.ring(5), topologies.ring(5))
    fed = fed_with_reference(clients, 3, topologies.Static(topologies.metropolis_hastings(g), allow_disconnected=True))
    with pytest.raises(ValueError, match="disconnected \\(2 components"):
        DecentralizedPower(3, chebyshev=chebyshev).gossip_steps_for(fed)
    assert DecentralizedPower(3, gossip_steps=4, chebyshev=False).gossip_steps_for(fed) == 4   # a fixed K: allowed
