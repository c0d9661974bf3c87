"""topologies.mixing against hand-written dense references, on the inputs mutation testing found untested.

Written to kill mutmut survivors (docs/testing.md): graphs whose nodes were not inserted in label order,
an isolated last node, a sink as the last node of a digraph, the default arguments, exact tolerances and
the errors' context (which function, which pair). All references are dense loops over the definitions.
"""

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

import topologies as T
from topologies.errors import NotStochasticError, TopologyError

EXACT = 1e-15   # float64 sums of a few weights 1/(1 + d): the builders and the loops agree to rounding


def _shuffled_graph() -> nx.Graph:
    """Irregular graph (degrees 2, 3, 2, 4, 1, 0), nodes inserted out of label order, last node isolated."""
    G = nx.Graph()
    G.add_nodes_from([4, 2, 0, 3, 5, 1])
    G.add_edges_from([(3, 4), (1, 2), (0, 1), (2, 3), (0, 3), (1, 3)])
    return G


def _shuffled_digraph() -> nx.DiGraph:
    """Out-degrees 2, 2, 2, 1, 0: node 4 (the last label) is a sink; nodes inserted out of label order."""
    D = nx.DiGraph()
    D.add_nodes_from([3, 1, 4, 0, 2])
    D.add_edges_from([(0, 1), (1, 2), (2, 0), (0, 3), (3, 1), (1, 4), (2, 4)])
    return D


def _degrees(G) -> np.ndarray:
    return np.array([G.degree(i) for i in range(G.number_of_nodes())])


def _with_remainder_diagonal(W: np.ndarray) -> np.ndarray:
    np.fill_diagonal(W, 1.0 - W.sum(1))
    return W


def _mh_reference(G) -> np.ndarray:
    n, d = G.number_of_nodes(), _degrees(G)
    W = np.zeros((n, n))
    for i, j in G.edges():
        W[i, j] = W[j, i] = 1.0 / (1.0 + max(d[i], d[j]))
    return _with_remainder_diagonal(W)


def _max_degree_reference(G) -> np.ndarray:
    n, d = G.number_of_nodes(), _degrees(G)
    W = np.zeros((n, n))
    for i, j in G.edges():
        W[i, j] = W[j, i] = 1.0 / (1.0 + d.max())
    return _with_remainder_diagonal(W)


def _uniform_reference(G) -> np.ndarray:
    n, d = G.number_of_nodes(), _degrees(G)
    W = np.zeros((n, n))
    for i in range(n):
        for j in [i, *G.neighbors(i)]:
            W[i, j] = 1.0 / (1.0 + d[i])
    return W


def _push_sum_reference(D) -> np.ndarray:
    n = D.number_of_nodes()
    A = np.zeros((n, n))
    for j in range(n):
        share = 1.0 / (1.0 + D.out_degree(j))
        A[j, j] = share
        for i in D.successors(j):
            A[i, j] = share
    return A


@pytest.mark.parametrize("builder, reference", [
    (T.metropolis_hastings, _mh_reference),
    (T.max_degree, _max_degree_reference),
    (T.uniform_neighbour, _uniform_reference),
])
def test_undirected_weights_follow_node_labels_on_a_shuffled_graph_with_an_isolated_node(builder, reference):
    G = _shuffled_graph()
    want = reference(G)
    assert want[5, 5] == 1.0                                   # the isolated node keeps its own value
    np.testing.assert_allclose(builder(G).toarray(), want, atol=EXACT, rtol=0)


def test_push_sum_weights_follow_node_labels_with_a_sink_as_last_node():
    D = _shuffled_digraph()
    A = T.push_sum_weights(D)
    np.testing.assert_allclose(A.toarray(), _push_sum_reference(D), atol=EXACT, rtol=0)
    assert A.toarray()[4, 4] == 1.0                            # the sink keeps everything it has
    T.check_stochastic(A, kind="column")


def _self_loop_graph() -> nx.Graph:
    G = nx.path_graph(4)
    G.add_edge(2, 2)
    return G


def _bad_labels_graph() -> nx.Graph:
    return nx.relabel_nodes(nx.path_graph(4), {3: 7})


@pytest.mark.parametrize("defect", [_self_loop_graph, _bad_labels_graph])
@pytest.mark.parametrize("name", ["metropolis_hastings", "max_degree", "uniform_neighbour", "push_sum_weights",
                                  "with_failed_links"])
def test_a_bad_graph_is_reported_under_the_name_of_the_function_called(name, defect):
    """The message starts with the public function the user called, not a helper's name."""
    G = defect()
    if name == "push_sum_weights":
        G = G.to_directed()
    call = (lambda g: T.with_failed_links(g, [])) if name == "with_failed_links" else getattr(T, name)
    with pytest.raises(TopologyError, match=rf"^{name}: "):
        call(G)


def test_check_stochastic_checks_both_sums_by_default():
    W = T.uniform_neighbour(T.star(5))                        # rows sum to 1, the hub's column does not
    T.check_stochastic(W, kind="row")
    with pytest.raises(NotStochasticError, match="column"):
        T.check_stochastic(W)


def test_check_stochastic_accepts_stored_zeros():
    """A stored 0 (a dropped link keeps its slot) is not a negative entry."""
    W = sp.csr_array((np.array([0.5, 0.0, 0.5, 0.5, 0.5, 1.0]),
                      (np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 2, 0, 2, 1]))), shape=(3, 3))
    assert W.nnz == 6 and W.data.min() == 0.0
    T.check_stochastic(W, kind="row")


def test_check_stochastic_with_zero_tolerance_accepts_an_exact_matrix_only():
    exact = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]])   # dyadic: sums are exact
    T.check_stochastic(exact, atol=0.0)
    off = exact.copy()
    off[0, 0] += 2.0 ** -40
    off[0, 1] -= 2.0 ** -41
    T.check_stochastic(off)                                   # 2^-41 ~ 4.5e-13 < default atol 1e-10
    with pytest.raises(NotStochasticError):
        T.check_stochastic(off, atol=0.0)


def test_with_failed_links_by_default_moves_the_failed_weight_to_the_diagonals():
    G = _shuffled_graph()
    want = _mh_reference(G)
    for u, v in [(1, 3), (3, 4)]:
        w = want[u, v]
        want[u, v] = want[v, u] = 0.0
        want[u, u] += w
        want[v, v] += w
    got = T.with_failed_links(G, [(3, 1), (3, 4)])            # reweight defaults to False
    np.testing.assert_allclose(got.toarray(), want, atol=EXACT, rtol=0)


def test_with_failed_links_names_the_pair_that_is_not_an_edge():
    G = nx.complete_graph(6)
    # (-1, 8) and (0, 6) are out of range; -1 * 6 + 8 = 2 is the key of the real edge (0, 2), which an
    # unchecked range would silently remove
    with pytest.raises(TopologyError, match=r"\(-1, 8\) is not an edge"):
        T.with_failed_links(G, [(-1, 8)])
    with pytest.raises(TopologyError, match=r"\(0, 6\) is not an edge"):
        T.with_failed_links(G, [(0, 6)])
    with pytest.raises(TopologyError, match=r"\(2, 9\) is not an edge"):
        T.with_failed_links(G, [(0, 1), (2, 9)])
