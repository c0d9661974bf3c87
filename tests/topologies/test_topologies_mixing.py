"""Mixing matrices: stochasticity, symmetry, exact formulas, mean preservation, failed links."""

import networkx as nx
import numpy as np
import scipy.sparse as sp

import topologies as T

TOL = 1e-12  # float64 row/column sums and symmetry


def assert_doubly_stochastic_symmetric(W, n):
    assert isinstance(W, sp.csr_array) and W.dtype == np.float64 and W.shape == (n, n)
    D = W.toarray()
    assert D.min() >= 0.0
    np.testing.assert_allclose(D.sum(axis=1), 1.0, rtol=0, atol=TOL)
    np.testing.assert_allclose(D.sum(axis=0), 1.0, rtol=0, atol=TOL)
    np.testing.assert_allclose(D, D.T, rtol=0, atol=TOL)


def test_metropolis_hastings_doubly_stochastic(undirected_graph):
    G = undirected_graph
    W = T.metropolis_hastings(G)
    assert_doubly_stochastic_symmetric(W, G.number_of_nodes())
    T.check_stochastic(W, kind="doubly", atol=TOL)
    # sparsity pattern = edges + diagonal
    assert W.nnz == 2 * G.number_of_edges() + G.number_of_nodes()


def test_metropolis_hastings_formula_on_star():
    W = T.metropolis_hastings(T.star(5)).toarray()  # hub degree 4, leaves degree 1
    assert np.allclose(W[0, 1:], 1 / 5) and np.isclose(W[0, 0], 1 / 5)
    assert np.allclose(np.diag(W)[1:], 4 / 5)


def test_max_degree_doubly_stochastic(undirected_graph):
    G = undirected_graph
    W = T.max_degree(G)
    assert_doubly_stochastic_symmetric(W, G.number_of_nodes())
    d_max = max(d for _, d in G.degree())
    u, v = next(iter(G.edges()))
    assert W[u, v] == 1.0 / (1 + d_max)


def test_uniform_neighbour_row_stochastic(undirected_graph):
    G = undirected_graph
    W = T.uniform_neighbour(G)
    D = W.toarray()
    np.testing.assert_allclose(D.sum(axis=1), 1.0, rtol=0, atol=TOL)
    T.check_stochastic(W, kind="row", atol=TOL)
    for i in (0, 1):
        assert np.isclose(D[i, i], 1.0 / (G.degree[i] + 1))


def test_uniform_neighbour_not_symmetric_on_irregular_graph():
    W = T.uniform_neighbour(T.star(6)).toarray()
    assert not np.allclose(W, W.T)
    assert np.isclose(W[0, 1], 1 / 6) and np.isclose(W[1, 0], 1 / 2)


def test_push_sum_column_stochastic():
    for D in (T.directed_ring(7), T.directed_exponential(16), nx.DiGraph([(0, 1), (1, 2), (2, 0), (0, 2)])):
        A = T.push_sum_weights(D)
        M = A.toarray()
        assert A.dtype == np.float64 and M.min() >= 0
        np.testing.assert_allclose(M.sum(axis=0), 1.0, rtol=0, atol=TOL)
        T.check_stochastic(A, kind="column", atol=TOL)
        for j in D:
            share = 1.0 / (D.out_degree(j) + 1)
            assert np.isclose(M[j, j], share)
            for i in D.successors(j):
                assert np.isclose(M[i, j], share)
    # the 3-node graph with an extra edge 0 -> 2 is not row-stochastic
    with np.testing.assert_raises(T.NotStochasticError):
        T.check_stochastic(A, kind="row")


def test_push_sum_recovers_average_on_directed_graph():
    """Push-sum: values and weights mixed with A; values/weights -> the true mean (1e-8 after 150 rounds)."""
    A = T.push_sum_weights(T.directed_exponential(16))
    x0 = np.random.default_rng(0).normal(size=16)
    y, w = x0.copy(), np.ones(16)
    for _ in range(150):
        y, w = A @ y, A @ w
    assert abs(y.sum() - x0.sum()) < 1e-9
    np.testing.assert_allclose(y / w, x0.mean(), rtol=0, atol=1e-8)


def gossip_mean_drift(W, rounds=200, d=5, seed=0):
    """Run x <- W x from float32 data (computed in float64); return the max drift of the mean."""
    n = W.shape[0]
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32).astype(np.float64)
    mean0 = x.mean(axis=0)
    drift = 0.0
    for _ in range(rounds):
        x = W @ x
        drift = max(drift, float(np.abs(x.mean(axis=0) - mean0).max()))
    return drift


def test_gossip_preserves_mean_ring_and_regular():
    """Network mean preserved to 1e-6 (absolute, data ~ N(0, 1)) over 200 rounds."""
    assert gossip_mean_drift(T.metropolis_hastings(T.ring(30))) <= 1e-6
    assert gossip_mean_drift(T.metropolis_hastings(T.random_regular(60, 4, seed=0))) <= 1e-6


def test_uniform_neighbour_does_not_preserve_mean_on_irregular_graph():
    """Sanity check that the mean test can fail: a row-stochastic, non-symmetric W drifts."""
    assert gossip_mean_drift(T.uniform_neighbour(T.star(10)), rounds=20) > 1e-3


def test_with_failed_links_moves_weight_to_diagonal():
    G = T.ring(12)
    W0 = T.metropolis_hastings(G).toarray()
    W = T.with_failed_links(G, [(3, 4), (9, 8)])
    assert_doubly_stochastic_symmetric(W, 12)
    D = W.toarray()
    assert D[3, 4] == 0 and D[8, 9] == 0
    assert np.isclose(D[3, 3], W0[3, 3] + W0[3, 4])
    np.testing.assert_array_equal(D[0], W0[0])  # untouched rows keep their MH weights
    # two failures cut the ring in two: still doubly stochastic, but lambda_2 = 1
    assert abs(T.spectral_gap(W)) < 1e-12


def test_with_failed_links_reweight_equals_mh_of_surviving_graph():
    G = T.random_regular(20, 4, seed=1)
    failed = list(G.edges())[:5]
    H = G.copy()
    H.remove_edges_from(failed)
    W = T.with_failed_links(G, failed, reweight=True)
    np.testing.assert_allclose(W.toarray(), T.metropolis_hastings(H).toarray(), rtol=0, atol=TOL)
    # no failed link: the same arrays through the same _remainder/_assemble as metropolis_hastings, so bit-equal
    np.testing.assert_allclose(
        T.with_failed_links(G, []).toarray(), T.metropolis_hastings(G).toarray(), rtol=0, atol=0
    )


def test_with_failed_links_rejects_non_edges():
    with np.testing.assert_raises_regex(T.TopologyError, r"\(0, 5\) is not an edge"):
        T.with_failed_links(T.ring(10), [(0, 5)])
    with np.testing.assert_raises_regex(T.TopologyError, "not an edge"):
        T.with_failed_links(T.ring(10), [(0, 17)])
