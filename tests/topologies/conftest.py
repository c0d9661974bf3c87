"""Shared graph cases for the topologies tests."""

import pytest

import topologies as T

# name -> zero-argument builder; small so the whole suite stays fast.
UNDIRECTED = {
    "ring": lambda: T.ring(20),
    "torus": lambda: T.torus(20),
    "complete": lambda: T.complete(7),
    "star": lambda: T.star(10),
    "regular": lambda: T.random_regular(30, 4, seed=1),
    "erdos_renyi": lambda: T.erdos_renyi(40, 0.25, seed=2),
    "watts_strogatz": lambda: T.watts_strogatz(30, 4, 0.2, seed=3),
    "barabasi_albert": lambda: T.barabasi_albert(30, 2, seed=4),
    "exponential": lambda: T.exponential(20),
}


@pytest.fixture(params=sorted(UNDIRECTED))
def undirected_graph(request):
    """Each undirected test graph in turn."""
    return UNDIRECTED[request.param]()
