"""Errors: clear messages for disconnected graphs, bad parameters, bad edge lists, non-stochastic W."""

import networkx as nx
import numpy as np
import pytest

import topologies as T


def write(tmp_path, text, name="edges.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_error_hierarchy():
    for cls in (T.DisconnectedGraphError, T.NotStochasticError, T.InvalidTopologyParameterError):
        assert issubclass(cls, T.TopologyError) and issubclass(cls, ValueError)


def test_disconnected_edge_list_reports_component_count(tmp_path):
    path = write(tmp_path, "0 1\n1 2\n2 0\n3 4\n")
    with pytest.raises(T.DisconnectedGraphError) as err:
        T.from_edge_list(path)
    msg = str(err.value)
    assert "2 connected components" in msg and "sizes 3, 2" in msg and str(path) in msg
    assert err.value.n_components == 2 and err.value.sizes == (3, 2)


def test_validate_disconnected_three_components():
    G = nx.disjoint_union_all([nx.path_graph(5), nx.path_graph(3), nx.path_graph(2)])
    with pytest.raises(T.DisconnectedGraphError, match=r"3 connected components \(sizes 5, 3, 2\)"):
        T.validate(G)


def test_validate_directed_needs_strong_connectivity():
    with pytest.raises(T.DisconnectedGraphError, match="not strongly connected"):
        T.validate(nx.DiGraph([(0, 1), (1, 2)]))


def test_validate_rejects_bad_graphs():
    with pytest.raises(T.InvalidTopologyParameterError, match="at least 2"):
        T.validate(nx.empty_graph(1))
    with pytest.raises(T.InvalidTopologyParameterError, match="graph has 1 self-loop, e.g. at node 2"):
        T.validate(nx.Graph([(0, 1), (1, 2), (2, 2)]))
    with pytest.raises(T.TopologyError, match="0..1"):
        T.validate(nx.Graph([("a", "b")]))


def test_erdos_renyi_disconnected_suggests_larger_p():
    with pytest.raises(T.DisconnectedGraphError) as err:
        T.erdos_renyi(50, 0.01, seed=0)
    msg = str(err.value)
    assert "connected components" in msg and "larger p" in msg and "ln(n)/n" in msg
    # above the threshold but unlucky: the suggestion is larger than the p just drawn, and another seed is named
    with pytest.raises(T.DisconnectedGraphError) as err:
        T.erdos_renyi(20, 0.3, seed=0)
    suggested = float(str(err.value).rsplit("p = ", 1)[1].rstrip(")"))
    assert suggested > 0.3 and "another seed" in str(err.value)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: T.ring(2), "n >= 3"),
        (lambda: T.complete(1), "n >= 2"),
        (lambda: T.star(1), "n >= 2"),
        (lambda: T.exponential(1), "n >= 2"),
        (lambda: T.torus(8), "n >= 9"),
        (lambda: T.random_regular(5, 3, seed=0), r"n\*k must be even, got n=5, k=3"),
        (lambda: T.random_regular(6, 6, seed=0), "k < n"),
        (lambda: T.erdos_renyi(10, 1.5, seed=0), r"p must be in \[0, 1\]"),
        (lambda: T.erdos_renyi(10, -0.1, seed=0), r"p must be in \[0, 1\]"),
        (lambda: T.watts_strogatz(10, 3, 0.1, seed=0), "k must be even"),
        (lambda: T.watts_strogatz(10, 10, 0.1, seed=0), "k < n"),
        (lambda: T.watts_strogatz(10, 4, 2.0, seed=0), r"p must be in \[0, 1\]"),
        (lambda: T.barabasi_albert(5, 5, seed=0), "m < n"),
        (lambda: T.ring(5.0), "integer"),
        (lambda: T.random_regular(10, 4, seed=None), "seed"),
    ],
)
def test_invalid_parameters(call, match):
    with pytest.raises(T.InvalidTopologyParameterError, match=match):
        call()


def test_edge_list_parsing(tmp_path):
    text = "# a comment line\n10, 2\n2 9 0.5   # trailing comment\n\n9\t10\n"
    G = T.from_edge_list(write(tmp_path, text))
    assert sorted(G.nodes) == [0, 1, 2]
    assert [G.nodes[i]["label"] for i in range(3)] == [2, 9, 10]  # numeric sort, not "10" < "2"
    assert G.edges[0, 1]["weight"] == 0.5
    assert G.number_of_edges() == 3


def test_edge_list_string_labels(tmp_path):
    G = T.from_edge_list(write(tmp_path, "bob alice\nalice carol\n"))
    assert [G.nodes[i]["label"] for i in range(3)] == ["alice", "bob", "carol"]


def test_edge_list_self_loops(tmp_path):
    path = write(tmp_path, "0 1\n4 4\n1 4\n4 4\n0 0\n")
    with pytest.raises(T.InvalidTopologyParameterError, match="graph has 3 self-loops, e.g. at node 4"):
        T.from_edge_list(path)
    path = write(tmp_path, "0 1\n1 2\n4 4\n2 4\n4 4\n", name="two.txt")
    with pytest.raises(T.InvalidTopologyParameterError, match="graph has 2 self-loops, e.g. at node 4"):
        T.from_edge_list(path)


@pytest.mark.parametrize(
    "bad_line, match",
    [("1 2 3 4", "expected 'u v'"), ("7", "expected 'u v'"), ("1 2 heavy", "not a number"),
     ("1 2 -1", "non-negative")],
)
def test_edge_list_malformed_line_names_file_and_line(tmp_path, bad_line, match):
    path = write(tmp_path, f"# header\n0 1\n{bad_line}\n1 2\n")
    with pytest.raises(T.InvalidTopologyParameterError) as err:
        T.from_edge_list(path)
    assert f"{path}, line 3" in str(err.value)
    assert err.match(match)


def test_check_stochastic_errors():
    W = np.array([[0.5, 0.5, 0.0], [0.2, 0.5, 0.3], [0.3, 0.0, 0.9]])  # row 2 sums to 1.2
    with pytest.raises(T.NotStochasticError, match=r"row 2 sums to 1.2"):
        T.check_stochastic(W, kind="row")
    W = np.array([[0.5, 0.5], [0.5, 0.5]]) + np.array([[0.0, 0.0], [0.2, -0.2]])  # rows OK, columns not
    T.check_stochastic(W, kind="row")
    with pytest.raises(T.NotStochasticError, match="column 0 sums to 1.2"):
        T.check_stochastic(W, kind="column")
    with pytest.raises(T.NotStochasticError, match="column"):
        T.check_stochastic(W, kind="doubly")
    with pytest.raises(T.NotStochasticError, match=r"negative entries.*W\[0, 1\] = -0.5"):
        T.check_stochastic(np.array([[1.5, -0.5], [0.5, 0.5]]), kind="row")
    with pytest.raises(T.NotStochasticError, match="square"):
        T.check_stochastic(np.ones((2, 3)) / 3, kind="row")
    assert T.check_stochastic(np.eye(3) + 1e-11, kind="doubly", atol=1e-10) is None


def test_mixing_rejects_directed_and_bad_labels():
    with pytest.raises(T.TopologyError, match="push_sum_weights"):
        T.metropolis_hastings(T.directed_ring(4))
    with pytest.raises(T.TopologyError, match="convert_node_labels_to_integers"):
        T.metropolis_hastings(nx.Graph([(1, 2)]))
