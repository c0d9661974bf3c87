"""Gossip topologies: networkx graph generators, sparse mixing matrices, spectral gap,
time-varying schedules and drawings.

Generators are plain functions ``(n, ..., seed) -> networkx.Graph`` with nodes 0..n-1; mixing
functions return ``scipy.sparse.csr_array`` W with ``x_new = W @ x``.
"""

from topologies.drawing import DRAW_MAX, draw, drawing_figure
from topologies.errors import (
    DisconnectedGraphError,
    InvalidTopologyParameterError,
    NotStochasticError,
    TopologyError,
)
from topologies.generators import (
    GENERATORS,
    barabasi_albert,
    build,
    complete,
    directed_exponential,
    directed_ring,
    erdos_renyi,
    exponential,
    from_edge_list,
    random_regular,
    ring,
    star,
    torus,
    validate,
    watts_strogatz,
)
from topologies.mixing import (
    check_stochastic,
    max_degree,
    metropolis_hastings,
    push_sum_weights,
    uniform_neighbour,
    with_failed_links,
)
from topologies.schedules import LinkFailures, PushSum, RandomMatching, Schedule, Static
from topologies.spectral import describe, second_eigenvalue, spectral_gap

from topologies import drawing, errors, generators, mixing, schedules  # their __all__ lists

__all__ = [*errors.__all__, *generators.__all__, *mixing.__all__, "second_eigenvalue", "spectral_gap", "describe",
           *schedules.__all__, *drawing.__all__]
