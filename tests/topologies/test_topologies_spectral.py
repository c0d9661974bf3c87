"""Spectral gap: closed forms, geometric consensus bound, dense vs sparse paths, describe()."""

import numpy as np
import pytest

import topologies as T


def test_ring_lambda2_closed_form():
    """MH on a ring is I/3 + shifts/3: lambda_2 = 1/3 + 2/3 cos(2 pi / n) (tolerance 1e-12)."""
    for n in (5, 32, 101):
        lam2 = T.second_eigenvalue(T.metropolis_hastings(T.ring(n)))
        assert abs(lam2 - (1 / 3 + 2 / 3 * np.cos(2 * np.pi / n))) < 1e-12


def test_complete_graph_gap_is_one():
    n = 10
    W = T.metropolis_hastings(T.complete(n))
    np.testing.assert_allclose(W.toarray(), np.full((n, n), 1 / n), rtol=0, atol=1e-15)
    assert abs(T.spectral_gap(W) - 1.0) < 1e-12


def consensus_errors(W, rounds, seed=0, x0=None):
    x = np.random.default_rng(seed).normal(size=W.shape[0]) if x0 is None else x0
    xbar = x.mean()
    errs = [np.linalg.norm(x - xbar)]
    for _ in range(rounds):
        x = W @ x
        errs.append(np.linalg.norm(x - xbar))
    return np.array(errs)


@pytest.mark.parametrize(
    "make", [lambda: T.ring(32), lambda: T.random_regular(200, 8, seed=0)], ids=["ring32", "regular8_200"]
)
def test_consensus_error_decays_at_lambda2_rate(make):
    """||x_t - xbar|| <= |lambda_2|^t ||x_0 - xbar|| (1 + 1e-9), plus a float64 rounding floor of
    1e-13 ||x_0 - xbar|| (the expander's bound drops below machine precision before t = 100)."""
    W = T.metropolis_hastings(make())
    lam2 = T.second_eigenvalue(W)
    assert 0 < lam2 < 1
    errs = consensus_errors(W, 100)
    t = np.arange(101)
    bound = lam2**t * errs[0] * (1 + 1e-9) + 1e-13 * errs[0]
    assert np.all(errs <= bound), np.max(errs / bound)


@pytest.mark.parametrize(
    "make", [lambda: T.ring(32), lambda: T.random_regular(200, 8, seed=0)], ids=["ring32", "regular8_200"]
)
def test_consensus_bound_is_attained_by_slowest_mode(make):
    """Starting on the lambda_2 eigenvector the error is exactly |lambda_2|^t ||x_0 - xbar||
    (relative 1e-9, t <= 30), so second_eigenvalue is not an overestimate either."""
    W = T.metropolis_hastings(make())
    vals, vecs = np.linalg.eigh(W.toarray())
    order = np.argsort(-np.abs(vals))
    x, lam2 = vecs[:, order[1]], abs(vals[order[1]])
    assert abs(lam2 - T.second_eigenvalue(W)) < 1e-12
    errs = consensus_errors(W, 30, x0=x)
    np.testing.assert_allclose(errs, lam2 ** np.arange(31) * errs[0], rtol=1e-9, atol=0)


def test_ring_consensus_rate_is_tight():
    """The asymptotic per-round contraction on the ring equals |lambda_2| (to 1e-3), so the bound above
    is not vacuous."""
    W = T.metropolis_hastings(T.ring(32))
    errs = consensus_errors(W, 100)
    assert abs(errs[100] / errs[99] - T.second_eigenvalue(W)) < 1e-3


def test_expander_has_larger_gap_than_ring():
    ring = T.spectral_gap(T.metropolis_hastings(T.ring(200)))
    expander = T.spectral_gap(T.metropolis_hastings(T.random_regular(200, 8, seed=0)))
    assert expander > 100 * ring


def test_sparse_and_dense_paths_agree():
    """ARPACK path vs LAPACK path to 1e-9, symmetric and non-symmetric matrices."""
    cases = [
        T.metropolis_hastings(T.barabasi_albert(300, 2, seed=0)),
        T.metropolis_hastings(T.ring(300)),
        T.max_degree(T.watts_strogatz(300, 4, 0.1, seed=0)),
        T.uniform_neighbour(T.barabasi_albert(300, 3, seed=1)),  # non-symmetric
        T.push_sum_weights(T.directed_exponential(300)),  # non-symmetric
    ]
    for W in cases:
        assert abs(T.second_eigenvalue(W, method="sparse") - T.second_eigenvalue(W, method="dense")) < 1e-9


def test_disconnected_gap_is_zero():
    W = T.with_failed_links(T.ring(10), [(0, 1), (5, 6)])
    assert abs(T.second_eigenvalue(W) - 1.0) < 1e-12
    assert abs(T.second_eigenvalue(W, method="sparse") - 1.0) < 1e-9


def test_directed_ring_push_sum_lambda2():
    """A = (I + P)/2 has eigenvalues (1 + w^k)/2, so |lambda_2| = cos(pi / n)."""
    n = 9
    lam2 = T.second_eigenvalue(T.push_sum_weights(T.directed_ring(n)))
    assert abs(lam2 - np.cos(np.pi / n)) < 1e-12


def test_describe():
    info = T.describe(T.star(6))
    assert info == {
        "nodes": 6, "edges": 5, "min_degree": 1, "max_degree": 5, "mean_degree": 10 / 6,
        "spectral_gap": pytest.approx(T.spectral_gap(T.metropolis_hastings(T.star(6))), abs=1e-15),
        "is_directed": False,
    }
    ring = T.ring(8)
    assert T.describe(ring, W=T.metropolis_hastings(T.complete(8)))["spectral_gap"] == pytest.approx(1.0)
    info = T.describe(T.directed_exponential(16))
    assert info["is_directed"] and info["max_degree"] == 4 and 0 < info["spectral_gap"] < 1
