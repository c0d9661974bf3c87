"""Generators: node count, no self-loops, connectivity, determinism in the seed, degrees."""

import networkx as nx
import pytest

import topologies as T

# name -> (builder taking a seed, n, random?)
CASES = {
    "ring": (lambda s: T.ring(25), 25, False),
    "torus": (lambda s: T.torus(24), 24, False),
    "complete": (lambda s: T.complete(9), 9, False),
    "star": (lambda s: T.star(11), 11, False),
    "exponential": (lambda s: T.exponential(21), 21, False),
    "regular": (lambda s: T.random_regular(50, 4, seed=s), 50, True),
    "erdos_renyi": (lambda s: T.erdos_renyi(50, 0.2, seed=s), 50, True),
    "watts_strogatz": (lambda s: T.watts_strogatz(50, 4, 0.3, seed=s), 50, True),
    "barabasi_albert": (lambda s: T.barabasi_albert(50, 2, seed=s), 50, True),
}


def edge_set(G):
    return {tuple(sorted(e)) for e in G.edges()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generator_basic_properties(name):
    make, n, _ = CASES[name]
    G = make(0)
    assert isinstance(G, nx.Graph) and not G.is_directed()
    assert G.number_of_nodes() == n
    assert sorted(G.nodes) == list(range(n))
    assert nx.number_of_selfloops(G) == 0
    assert nx.is_connected(G)


@pytest.mark.parametrize("name", sorted(CASES))
def test_generator_deterministic_and_seed_sensitive(name):
    make, _, random = CASES[name]
    assert edge_set(make(7)) == edge_set(make(7))
    if random:
        assert edge_set(make(7)) != edge_set(make(8))


def test_random_regular_degrees():
    G = T.random_regular(40, 6, seed=5)
    assert {d for _, d in G.degree()} == {6}


def test_exponential_degrees():
    # n = 16: offsets +-1, +-2, +-4, +8 (== -8) -> 7 distinct neighbours.
    assert {d for _, d in T.exponential(16).degree()} == {7}
    # n = 10: offsets +-1, +-2, +-4, +-8 -> {1, 2, 4, 6, 8, 9} = 6 neighbours.
    assert {d for _, d in T.exponential(10).degree()} == {6}
    assert set(T.exponential(16).neighbors(0)) == {1, 2, 4, 8, 12, 14, 15}


def test_ring_star_complete_shapes():
    assert {d for _, d in T.ring(9).degree()} == {2}
    S = T.star(8)
    assert S.degree[0] == 7 and all(S.degree[i] == 1 for i in range(1, 8))
    assert T.complete(6).number_of_edges() == 15


def test_torus_factorisation():
    G = T.torus(36)  # 6 x 6
    assert {d for _, d in G.degree()} == {4}
    assert G.nodes[7]["pos"] == (1, 1)
    assert G.has_edge(0, 5) and G.has_edge(0, 30)  # wrap-around in both directions
    G = T.torus(12)  # 3 x 4
    assert max(r for r, _ in nx.get_node_attributes(G, "pos").values()) == 2
    G = T.torus(20)  # most square: 4 x 5
    assert max(c for _, c in nx.get_node_attributes(G, "pos").values()) == 4
    G = T.torus(20, rows=5)  # explicit: 5 x 4
    assert max(c for _, c in nx.get_node_attributes(G, "pos").values()) == 3
    G = T.torus(45, rows=3)
    assert max(c for _, c in nx.get_node_attributes(G, "pos").values()) == 14


def test_torus_without_factorisation_raises():
    with pytest.raises(T.InvalidTopologyParameterError, match="no such factorisation"):
        T.torus(14)
    with pytest.raises(T.InvalidTopologyParameterError, match="rows"):
        T.torus(20, rows=3)


def test_directed_generators():
    D = T.directed_ring(6)
    assert D.is_directed() and nx.is_strongly_connected(D)
    assert {d for _, d in D.out_degree()} == {1}
    D = T.directed_exponential(16)
    assert nx.is_strongly_connected(D)
    assert set(D.successors(3)) == {4, 5, 7, 11}
    assert {d for _, d in D.out_degree()} == {4}


def test_build_dispatches_and_filters_parameters():
    assert edge_set(T.build("regular", 20, seed=3, k=4)) == edge_set(T.random_regular(20, 4, seed=3))
    assert edge_set(T.build("ring", 10, seed=99)) == edge_set(T.ring(10))  # seed ignored
    assert T.build("torus", 20, rows=4).number_of_nodes() == 20
    assert set(T.GENERATORS) == {
        "ring", "torus", "complete", "star", "regular", "erdos_renyi",
        "watts_strogatz", "barabasi_albert", "exponential", "edge_list",
    }


def test_build_edge_list(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("0 1\n1 2\n2 0\n")
    assert T.build("edge_list", None, path=path).number_of_nodes() == 3
    assert T.build("edge_list", 3, path=path).number_of_nodes() == 3
    with pytest.raises(T.InvalidTopologyParameterError, match="n=4"):
        T.build("edge_list", 4, path=path)


def test_build_errors_name_the_problem():
    with pytest.raises(T.InvalidTopologyParameterError) as err:
        T.build("nope", 10)
    msg = str(err.value)
    assert "'nope'" in msg and all(name in msg for name in T.GENERATORS)
    with pytest.raises(T.InvalidTopologyParameterError, match="needs parameter.* k"):
        T.build("regular", 10)
    with pytest.raises(T.InvalidTopologyParameterError, match="unknown parameter.* q"):
        T.build("erdos_renyi", 10, p=0.5, q=0.1)
