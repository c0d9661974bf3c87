"""Time-varying schedules: stochasticity, reproducibility in (seed, t), link-failure statistics."""

import networkx as nx
import numpy as np
import pytest

import topologies as T

TOL = 1e-12


def assert_doubly_stochastic_symmetric(W, n):
    D = W.toarray()
    assert W.shape == (n, n) and W.dtype == np.float64 and D.min() >= 0
    np.testing.assert_allclose(D.sum(axis=0), 1.0, rtol=0, atol=TOL)
    np.testing.assert_allclose(D.sum(axis=1), 1.0, rtol=0, atol=TOL)
    np.testing.assert_allclose(D, D.T, rtol=0, atol=TOL)


def dense(W):
    return W.toarray()


@pytest.fixture(params=["matching", "failures"])
def schedule(request):
    G = T.random_regular(30, 4, seed=2)
    if request.param == "matching":
        return T.RandomMatching(G, seed=5)
    return T.LinkFailures(G, q=0.3, seed=5)


def test_schedule_matrices_doubly_stochastic(schedule):
    assert isinstance(schedule, T.Schedule) and schedule.n == 30 and schedule.directed is False
    for t in range(10):
        assert_doubly_stochastic_symmetric(schedule.at(t), 30)


def test_schedule_reproducible_and_order_independent(schedule):
    forward = [dense(schedule.at(t)) for t in range(6)]
    backward = [dense(schedule.at(t)) for t in reversed(range(6))][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)  # the same computation repeated: bit-equal
    G = T.random_regular(30, 4, seed=2)
    fresh = type(schedule)(G, **({"q": 0.3} if isinstance(schedule, T.LinkFailures) else {}), seed=5)
    np.testing.assert_array_equal(dense(fresh.at(4)), forward[4])  # a resumed run sees the same W_4


def test_schedule_varies_with_t_and_seed(schedule):
    mats = [dense(schedule.at(t)) for t in range(6)]
    assert all(not np.array_equal(mats[0], m) for m in mats[1:])
    G = T.random_regular(30, 4, seed=2)
    other = type(schedule)(G, **({"q": 0.3} if isinstance(schedule, T.LinkFailures) else {}), seed=6)
    assert not np.array_equal(dense(other.at(0)), mats[0])


def test_random_matching_is_a_maximal_matching():
    G = T.random_regular(40, 3, seed=0)
    S = T.RandomMatching(G, seed=1)
    for t in range(5):
        pairs = S.pairs(t)
        nodes = pairs.ravel()
        assert len(set(nodes.tolist())) == nodes.size  # each node in at most one pair
        assert all(G.has_edge(u, v) for u, v in pairs)
        matched = set(nodes.tolist())
        assert all(u in matched or v in matched for u, v in G.edges())  # maximal
        W = S.at(t).toarray()
        u, v = pairs[0]
        assert W[u, u] == W[u, v] == W[v, u] == W[v, v] == 0.5
        unmatched = [i for i in range(40) if i not in matched]
        assert all(W[i, i] == 1.0 for i in unmatched)


def test_link_failures_q0_equals_metropolis_hastings():
    G = T.watts_strogatz(30, 4, 0.2, seed=0)
    S = T.LinkFailures(G, q=0.0, seed=3)
    # every edge alive: the same arrays through the same code as metropolis_hastings, so bit-equal
    np.testing.assert_array_equal(dense(S.at(7)), dense(T.metropolis_hastings(G)))


def test_link_failures_survival_rate():
    """Mean survival over 400 rounds x 60 edges (24000 draws, std ~0.003) within 0.02 of 1 - q."""
    q = 0.3
    S = T.LinkFailures(T.ring(60), q=q, seed=0)
    alive = np.stack([S.alive(t) for t in range(400)])
    assert abs(alive.mean() - (1 - q)) < 0.02
    # W_t agrees with the mask: an edge has weight iff it survived
    t = 11
    W, mask = S.at(t), S.alive(t)
    for (u, v), ok in zip(S.edges, mask):
        assert (W[u, v] > 0) == ok


def test_link_failures_reweight():
    G = T.ring(10)
    S = T.LinkFailures(G, q=0.5, seed=0, reweight=True)
    mask = S.alive(2)
    H = G.copy()
    H.remove_edges_from(S.edges[~mask].tolist())
    np.testing.assert_allclose(dense(S.at(2)), dense(T.metropolis_hastings(H)), rtol=0, atol=TOL)


def test_static_and_push_sum():
    W = T.metropolis_hastings(T.ring(8))
    S = T.Static(W)
    assert S.n == 8 and not S.directed and S.at(0) is S.at(5)
    P = T.PushSum(T.directed_exponential(8))
    assert P.directed and P.n == 8
    T.check_stochastic(P.at(3), kind="column")
    A = T.push_sum_weights(nx.DiGraph([(0, 1), (1, 2), (2, 0), (0, 2)]))  # irregular out-degrees
    assert T.Static(A, directed=True).directed
    with pytest.raises(T.NotStochasticError, match="row"):
        T.Static(A)  # column-stochastic only: not valid for plain gossip
    with pytest.raises(T.NotStochasticError):
        T.Static(2 * W)
    with pytest.raises(T.DisconnectedGraphError):
        T.LinkFailures(nx.disjoint_union(T.ring(3), T.ring(3)), q=0.1, seed=0)


def test_rounds_and_seeds_are_validated():
    S = T.RandomMatching(T.ring(6), seed=0)
    with pytest.raises(T.InvalidTopologyParameterError, match="t="):
        S.at(-1)
    with pytest.raises(T.InvalidTopologyParameterError, match="seed"):
        T.LinkFailures(T.ring(6), q=0.1, seed=-3)
    with pytest.raises(T.InvalidTopologyParameterError, match="q"):
        T.LinkFailures(T.ring(6), q=1.5, seed=0)
