"""FedPG / FedPE / decentralized FedPG against independent references (eigendecomposition, pymanopt, autograd)."""

import numpy as np
import pytest
import torch

import topologies
from fedsim.engine import simulate
from fedsim.fedpca.baselines import PymanoptLocalSolver, fedpg_with_pymanopt
from fedsim.fedpca.decentralized import DecentralizedFedPG
from fedsim.fedpca.fedpg import (FedPE, FedPG, PCAFederation, paper_gradient, qr_retract, riemannian_steps,
                                 stiefel_project)
from fedsim.fedpca.grassmann import (cholesky_qr_retract, largest_principal_angle, orthonormality_error,
                                     principal_angles, tangent_project)
from fedsim.fedpca.problem import PCAClients, SubspaceDimensionError, objective, pooled_matrix, top_k_eigenspace
from fedsim.messages import Capture, LinkDrop
from fedsim.rng import Streams


def fed_of(clients, k, schedule=None):
    ref = top_k_eigenspace(pooled_matrix(clients), k)[0]
    return PCAFederation(clients, Streams(0), reference=ref, schedule=schedule)


def test_principal_angles_hand_computed():
    e = torch.eye(3, dtype=torch.float64)
    U = e[:, :2]
    theta = 0.3
    V = torch.stack([e[:, 0], torch.cos(torch.tensor(theta, dtype=torch.float64)) * e[:, 1] + torch.sin(torch.tensor(theta, dtype=torch.float64)) * e[:, 2]], 1)
    angles = principal_angles(U, V)
    torch.testing.assert_close(angles, torch.tensor([0.0, theta], dtype=torch.float64), atol=1e-12, rtol=0)
    # invariant to the basis of each subspace (rotation and sign)
    R = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(principal_angles(U @ R, -V), angles, atol=1e-12, rtol=0)
    # small angles are accurate (arcsin branch), not lost to arccos near 1
    tiny = 1e-9
    W = torch.stack([e[:, 0], np.cos(tiny) * e[:, 1] + np.sin(tiny) * e[:, 2]], 1)
    assert abs(float(largest_principal_angle(U, W)) - tiny) < 1e-15


def test_cholesky_qr_equals_householder_qr_with_sign_fix():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(5, 34, 30, generator=g, dtype=torch.float64))[0]
    xi = tangent_project(U, torch.randn(5, 34, 30, generator=g, dtype=torch.float64))
    M = U - 0.05 * xi
    torch.testing.assert_close(cholesky_qr_retract(M), qr_retract(M), atol=1e-12, rtol=0)
    assert (torch.diagonal(qr_retract(M).mT @ M, dim1=-2, dim2=-1) > 0).all()


@pytest.mark.parametrize("projection", ["grassmann", "stiefel"])
def test_batched_steps_match_pymanopt_solver_and_stay_orthonormal(projection):
    rng = np.random.default_rng(1)
    d, k, m, steps, eta, rho = 12, 4, 3, 7, 0.05, 0.5
    C = [(lambda X: X.T @ X)(rng.standard_normal((80 + i, d))) for i in range(m)]
    n = np.array([80.0 + i for i in range(m)])
    Z = np.linalg.qr(rng.standard_normal((d, k)))[0]
    U0 = np.stack([np.linalg.qr(rng.standard_normal((d, k)))[0] for _ in range(m)])
    Y = 0.1 * rng.standard_normal((m, d, k))
    solver = PymanoptLocalSolver(d, k, eta, steps, projection=projection)
    want = np.stack([solver.solve(C[i], n[i], Y[i], Z, rho, U0[i]) for i in range(m)])
    Ct = torch.tensor(np.stack(C))
    A = -2.0 * Ct / torch.tensor(n)[:, None, None] + rho * torch.eye(d, dtype=torch.float64)
    project = stiefel_project if projection == "stiefel" else tangent_project
    U = torch.tensor(U0)
    for _ in range(steps):  # orthonormal after every single step
        U = riemannian_steps(U, A, torch.tensor(Y - rho * Z), eta, 1, qr_retract, project)
        assert float(orthonormality_error(U).max()) < 1e-10
    np.testing.assert_allclose(U.numpy(), want, atol=1e-12)
    fast = riemannian_steps(torch.tensor(U0), A, torch.tensor(Y - rho * Z), eta, steps, cholesky_qr_retract, project)
    np.testing.assert_allclose(fast.numpy(), want, atol=1e-12)


def test_engine_schedule_equals_pymanopt_schedule(planted):
    clients, _, k = planted
    kw = dict(eta=0.005, rho=20.0, local_steps=5, client_fraction=0.3)
    Zp = fedpg_with_pymanopt(clients, k, 15, seed=0, **kw)
    Zb = simulate(FedPG(k, retraction="qr", **kw), PCAFederation(clients, Streams(0)), 15, eval_every=0).state.Z
    np.testing.assert_allclose(Zb.numpy(), Zp, atol=1e-12)


def test_clean_fedpg_converges_to_pooled_eigenspace_on_planted_data(planted):
    clients, basis, k = planted
    fed = fed_of(clients, k)
    res = simulate(FedPG(k, eta=0.005, rho=20.0, local_steps=10, client_fraction=1.0), fed, 60, eval_every=10)
    assert res.final("angle_to_reference") < 1e-3
    assert res.final("u_orthonormality_error") < 1e-10 and res.final("z_orthonormality_error") < 1e-10
    # the pooled optimum is close to the planted subspace (a sanity check of the data, not of FedPG)
    assert float(largest_principal_angle(fed.reference, torch.tensor(basis))) < 0.05
    # the objective reaches the pooled optimum
    w = clients.n / clients.n.sum()
    best = float((w * objective(clients, fed.reference)).sum())
    assert abs(res.final("objective") - best) < 1e-8 * best


def test_grassmann_projection_stalls_short_of_the_eigenspace(planted):
    """Documented finding: the paper's (I - UU^T) projection leaves Z a small but nonzero angle away."""
    clients, _, k = planted
    res = simulate(FedPG(k, eta=0.005, rho=20.0, local_steps=10, client_fraction=1.0, projection="grassmann"),
                   fed_of(clients, k), 100, eval_every=50)
    assert 1e-5 < res.final("angle_to_reference") < 1e-2


def test_paper_gradient_matches_autograd_of_the_official_loss():
    g = torch.Generator().manual_seed(0)
    d, k, m, rho = 6, 3, 2, 0.3
    X = torch.randn(m, 40, d, generator=g, dtype=torch.float64)
    C = X.mT @ X
    n = torch.tensor([40.0, 40.0], dtype=torch.float64)
    U = torch.rand(m, d, k, generator=g, dtype=torch.float64)  # not orthonormal, as in the paper's first step
    Y, Z = torch.rand(m, d, k, generator=g, dtype=torch.float64), torch.rand(m, d, k, generator=g, dtype=torch.float64)
    T = torch.rand(m, k, k, generator=g, dtype=torch.float64)
    for euclidean in (False, True):
        Ug = U.clone().requires_grad_(True)
        eye = torch.eye(d, dtype=torch.float64)
        total = 0
        for i in range(m):  # the official code's loss, written as it is there
            u = Ug[i]
            residual = (eye - u @ u.T) @ X[i].T
            loss = torch.norm(residual) ** 2 + torch.sum(torch.inner(Y[i], u - Z[i])) + 0.5 * rho * torch.norm(u - Z[i]) ** 2
            if euclidean:
                h = torch.clamp(u.T @ u - torch.eye(k, dtype=torch.float64), min=0) ** 2
                loss = loss + torch.sum(torch.inner(T[i], h)) + 0.5 * rho * torch.norm(h) ** 2
            total = total + loss / n[i]
        (want,) = torch.autograd.grad(total, Ug)
        torch.testing.assert_close(paper_gradient(U, C, n, Y, Z, T, rho, euclidean), want, atol=1e-10, rtol=1e-10)


def test_paper_variant_quirks(planted):
    clients, _, k = planted
    fed = PCAFederation(clients, Streams(3))
    alg = FedPG(k, variant="paper", client_fraction=0.2)
    s0 = alg.init(fed)
    assert (s0.Z >= 0).all() and (s0.Z < 1).all() and float(orthonormality_error(s0.Z)) > 0.1  # uniform Z0
    assert torch.equal(s0.Y[0], s0.Z) and torch.equal(s0.U[3], s0.Z)  # copies of Z0: bit-equal
    down = Capture(kinds=("downlink",))
    res = simulate(alg, fed, 4, taps=[down], eval_every=0)
    by_round = {t: sorted(r.receiver for r in down.records if r.round == t) for t in range(4)}
    assert by_round[0] == list(range(10))                 # everyone gets Z0
    for t in (1, 2, 3):                                   # then only the previous round's trainers
        trained = sorted(int(c) for c in np.flatnonzero(_trainers(alg, fed, t - 1)))
        assert by_round[t] == trained
    # server Z is the weighted mean of the uploaded U_i, never re-orthonormalized
    assert float(orthonormality_error(res.state.Z)) > 1e-6


def _trainers(alg, fed, t):
    from fedsim.fedpca.fedpg import sample_clients
    mask = np.zeros(fed.clients.n_clients, dtype=bool)
    mask[sample_clients(fed.streams, t, fed.clients.n_clients, alg.client_fraction).numpy()] = True
    return mask


def test_fedpe_reduces_objective_and_keeps_near_orthonormal(planted):
    clients, _, k = planted
    fed = fed_of(clients, k)
    res = simulate(FedPE(k, eta=0.002, rho=20.0, local_steps=10, client_fraction=1.0), fed, 200, eval_every=200)
    assert res.final("angle_to_reference") < 0.01


def test_decentralized_fedpg_converges_on_ring_and_expander(planted):
    clients, _, k = planted
    for graph in (topologies.ring(10), topologies.random_regular(10, 4, seed=0)):
        fed = fed_of(clients, k, topologies.Static(topologies.metropolis_hastings(graph)))
        res = simulate(DecentralizedFedPG(k, eta=0.005, rho=5.0, local_steps=10), fed, 300, eval_every=300)
        assert res.final("angle_to_reference") < 1e-3
        assert res.final("max_node_angle") < 1e-3
        # the dual sum stays zero on an undirected graph
        assert float(res.state.Y.sum(0).abs().max()) < 1e-8


def test_partial_participation_and_message_accounting(planted):
    clients, _, k = planted
    fed = PCAFederation(clients, Streams(0))
    res = simulate(FedPG(k, client_fraction=0.2), fed, 3, eval_every=0)
    d = clients.d
    assert [r["participants"] for r in res.history] == [2, 2, 2]
    # downlink Z to 2 clients + uplink (rho_i U_i + Y_i, rho_i) from 2 clients, float64 (the linearized default)
    assert res.history[0]["bytes_sent"] == (2 * d * k + 2 * (d * k + 1)) * 8
    # the Riemannian schedule uploads (U_i, Y_i)
    old = simulate(FedPG(k, client_fraction=0.2, solver="riemannian"), fed, 1, eval_every=0)
    assert old.history[0]["bytes_sent"] == (2 * d * k + 2 * 2 * d * k) * 8
    dropped = simulate(FedPG(k, client_fraction=1.0), fed, 3, taps=[LinkDrop(1.0)], eval_every=0)
    assert torch.equal(dropped.state.Z, FedPG(k, client_fraction=1.0).init(fed).Z)  # nothing arrived: Z0 itself


def test_k_larger_than_d_is_rejected(planted):
    clients, _, _ = planted
    with pytest.raises(SubspaceDimensionError, match="k > d"):
        FedPG(25).init(PCAFederation(clients, Streams(0)))
    with pytest.raises(SubspaceDimensionError, match="1..20"):
        top_k_eigenspace(pooled_matrix(clients), 0)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="unknown variant 'papr'"):
        FedPG(3, variant="papr")
    with pytest.raises(ValueError, match="client_fraction"):
        FedPG(3, client_fraction=0.0)
    with pytest.raises(ValueError, match="client 1"):
        PCAClients.from_blocks([np.zeros((3, 4)), np.full((3, 4), np.nan)])


@pytest.mark.parametrize("k", [0, -2, 2.0, True, None])
def test_a_subspace_dimension_no_data_can_take_is_refused_when_the_algorithm_is_built(k):
    """k < 1 or not an integer fails when FedPG, FedPE, decentralized FedPG or the power methods are built, not
    later in ``init`` (where it used to surface); numpy integers are accepted."""
    from fedsim.fedpca.power import DecentralizedPower, FederatedPower

    for make in (FedPG, FedPE, DecentralizedFedPG, FederatedPower, DecentralizedPower):
        with pytest.raises(SubspaceDimensionError, match=f"k must be an integer >= 1, got k = {k!r}"):
            make(k)
        assert make(np.int64(2)).k == 2


def test_integer_sample_counts_become_the_statistics_dtype():
    """Hand-built clients with int64 counts: the weights n_i / n are taken in C's float64, not in float32."""
    n = torch.tensor([3, 7, 11])
    clients = PCAClients(torch.eye(4, dtype=torch.float64).expand(3, 4, 4).clone(), n)
    assert clients.n.dtype == torch.float64
    weights = clients.n / clients.n.sum()
    assert abs(float(weights[0]) - 3 / 21) < 1e-15
