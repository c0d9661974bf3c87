"""Properties that hold for any input, checked with hypothesis on generated graphs, drops, payloads and labels."""

import networkx as nx
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import topologies
from fedsim.data import partition
from fedsim.mixing import SparseW

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def connected_graphs(draw, max_nodes: int = 12):
    """A random connected undirected graph: a random spanning tree plus random extra edges."""
    n = draw(st.integers(2, max_nodes))
    parents = [draw(st.integers(0, i - 1)) for i in range(1, n)]
    G = nx.Graph([(i, p) for i, p in zip(range(1, n), parents)])
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n))
    G.add_edges_from((a, b) for a, b in extra if a != b)
    return G


@st.composite
def strongly_connected_digraphs(draw, max_nodes: int = 10):
    """A directed cycle through a random node order plus random extra arcs."""
    n = draw(st.integers(2, max_nodes))
    order = draw(st.permutations(list(range(n))))
    D = nx.DiGraph([(order[i], order[(i + 1) % n]) for i in range(n)])
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n))
    D.add_edges_from((a, b) for a, b in extra if a != b)
    return D


def _values(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _drops(m: int, seed: int, p: float) -> torch.Tensor:
    return torch.rand(m, generator=torch.Generator().manual_seed(seed)) >= p


@SETTINGS
@given(connected_graphs(), st.sampled_from(["metropolis", "max_degree"]), st.integers(0, 2**31 - 1))
def test_doubly_stochastic_mixing_preserves_the_mean(G, weights, seed):
    W = topologies.metropolis_hastings(G) if weights == "metropolis" else topologies.max_degree(G)
    x = _values(G.number_of_nodes(), seed)
    mixed = SparseW.from_scipy(W, dtype=torch.float64).matmul(x)
    torch.testing.assert_close(mixed.mean(0), x.mean(0), atol=1e-12, rtol=0)


@SETTINGS
@given(connected_graphs(), st.integers(0, 2**31 - 1), st.floats(0, 1))
def test_rows_stay_stochastic_after_any_drops(G, seed, p):
    sw = SparseW.from_scipy(topologies.uniform_neighbour(G), dtype=torch.float64)
    delivered = _drops(len(sw.off), seed, p)
    D = sw.with_delivered(delivered).to_csr().to_dense()
    torch.testing.assert_close(D.sum(1), torch.ones(len(D), dtype=torch.float64), atol=1e-12, rtol=0)
    assert bool((D >= 0).all())
    x = _values(len(D), seed)                        # a consensus is kept: constant vectors stay constant
    const = torch.ones_like(x) * x[0]
    torch.testing.assert_close(sw.mix(const, const, sw.edges()[0], delivered), const, atol=1e-12, rtol=0)


@SETTINGS
@given(strongly_connected_digraphs(), st.integers(0, 2**31 - 1), st.floats(0, 1))
def test_push_sum_keeps_the_mass_of_values_and_weights_after_any_drops(D, seed, p):
    sw = SparseW.from_scipy(topologies.push_sum_weights(D), directed=True, dtype=torch.float64)
    n = D.number_of_nodes()
    own = torch.cat([_values(n, seed), torch.rand(n, 1, dtype=torch.float64) + 0.5], 1)   # values | weight
    delivered = _drops(len(sw.off), seed, p)
    mixed = sw.mix(own, own.clone(), sw.edges()[0], delivered)          # the general (per-payload) path
    torch.testing.assert_close(mixed.sum(0), own.sum(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(mixed, sw.with_delivered(delivered).matmul(own), atol=1e-12, rtol=0)


@SETTINGS
@given(st.lists(st.integers(0, 4), min_size=1, max_size=300), st.integers(1, 12), st.integers(0, 2**31 - 1),
       st.sampled_from(["iid", "dirichlet", "sorted"]))
def test_partitions_cover_every_sample_exactly_once(labels, n_clients, seed, name):
    labels = np.asarray(labels)
    n_clients = min(n_clients, len(labels))
    params = {"alpha": 0.5, "min_size": 0} if name == "dirichlet" else {}
    parts = partition(name, labels, n_clients, seed=seed, **params)
    assert len(parts) == n_clients
    together = np.concatenate(parts)
    assert np.array_equal(np.sort(together), np.arange(len(labels)))


@SETTINGS
@given(st.integers(1, 200), st.integers(1, 30), st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_sampled_partition_gives_each_client_distinct_indices(n_samples, n_clients, per_client, seed):
    per_client = min(per_client, n_samples)
    parts = partition("sampled", np.zeros(n_samples, dtype=np.int64), n_clients, seed=seed, per_client=per_client)
    for part in parts:
        assert len(part) == per_client == len(np.unique(part))
        assert part.min() >= 0 and part.max() < n_samples
