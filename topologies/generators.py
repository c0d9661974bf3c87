"""Graph generators for gossip: plain functions ``(n, ..., seed) -> networkx.Graph``.

Every generator returns a graph with nodes 0..n-1, no self-loops, validated as connected
(strongly connected for the directed ones); random ones are deterministic in ``seed``.
``GENERATORS`` and ``build`` map the CLI names to these functions.
"""

from __future__ import annotations

import inspect
import math

import networkx as nx

from topologies.edgelist import from_edge_list
from topologies.errors import InvalidTopologyParameterError
from topologies.validation import (
    _validate,
    check_int,
    check_probability,
    check_seed,
    validate,
)

__all__ = [
    "ring",
    "torus",
    "complete",
    "star",
    "random_regular",
    "erdos_renyi",
    "watts_strogatz",
    "barabasi_albert",
    "exponential",
    "from_edge_list",
    "directed_ring",
    "directed_exponential",
    "validate",
    "GENERATORS",
    "build",
]


def ring(n: int) -> nx.Graph:
    """Cycle on n >= 3 nodes: i is linked to i - 1 and i + 1 (mod n)."""
    n = check_int("n", n, 3, "ring")
    return _validate(nx.cycle_graph(n), where=f"ring(n={n})")


def torus(n: int, rows: int | None = None) -> nx.Graph:
    """2-D periodic grid with n = rows * cols nodes, both sides >= 3; node r*cols + c is cell (r, c).

    Without ``rows`` the most square factorisation is used. The cell is kept as node attribute 'pos'.
    """
    where = f"torus(n={n}, rows={rows})"
    n = check_int("n", n, 9, where)
    if rows is None:
        rows = _squarest_factor(n)
        if rows is None:
            lower = next(m for m in range(n - 1, 8, -1) if _squarest_factor(m) is not None)
            upper = next(m for m in range(n + 1, 2 * n + 9) if _squarest_factor(m) is not None)
            raise InvalidTopologyParameterError(
                f"{where}: n must be rows*cols with rows, cols >= 3, and n={n} has no such "
                f"factorisation; try n={lower} or n={upper}"
            )
    rows = check_int("rows", rows, 3, where)
    if n % rows or n // rows < 3:
        raise InvalidTopologyParameterError(
            f"{where}: rows must divide n with n/rows >= 3, got n={n}, rows={rows}"
        )
    cols = n // rows
    G = nx.grid_2d_graph(rows, cols, periodic=True)
    G = nx.convert_node_labels_to_integers(G, ordering="sorted", label_attribute="pos")
    return _validate(G, where=where)


def _squarest_factor(n: int) -> int | None:
    """Largest divisor r of n with 3 <= r <= sqrt(n) and n / r >= 3, or None."""
    for r in range(math.isqrt(n), 2, -1):
        if n % r == 0 and n // r >= 3:
            return r
    return None


def complete(n: int) -> nx.Graph:
    """Complete graph on n >= 2 nodes."""
    n = check_int("n", n, 2, "complete")
    return _validate(nx.complete_graph(n), where=f"complete(n={n})")


def star(n: int) -> nx.Graph:
    """Star on n >= 2 nodes with node 0 as the hub (the federated-learning server)."""
    n = check_int("n", n, 2, "star")
    return _validate(nx.star_graph(n - 1), where=f"star(n={n})")


def random_regular(n: int, k: int, seed: int) -> nx.Graph:
    """Uniformly random k-regular graph on n nodes (needs 1 <= k < n and n*k even)."""
    where = f"random_regular(n={n}, k={k}, seed={seed})"
    n = check_int("n", n, 2, where)
    k = check_int("k", k, 1, where)
    seed = check_seed(seed, where)
    if k >= n:
        raise InvalidTopologyParameterError(f"{where}: needs k < n, got n={n}, k={k}")
    if (n * k) % 2:
        raise InvalidTopologyParameterError(f"{where}: n*k must be even, got n={n}, k={k}")
    G = nx.random_regular_graph(k, n, seed=seed)
    return _validate(
        G, where=where, hint="k >= 3 gives a connected graph with high probability; try another seed"
    )


def erdos_renyi(n: int, p: float, seed: int) -> nx.Graph:
    """G(n, p) random graph; raises ``DisconnectedGraphError`` if the draw is disconnected."""
    where = f"erdos_renyi(n={n}, p={p}, seed={seed})"
    n = check_int("n", n, 2, where)
    p = check_probability("p", p, where)
    seed = check_seed(seed, where)
    G = nx.fast_gnp_random_graph(n, p, seed=seed)
    threshold = math.log(n) / n
    larger = min(1.0, max(2 * threshold, 1.5 * p))   # above both the threshold and the p that was just drawn
    return _validate(
        G,
        where=where,
        hint=(
            f"use a larger p or another seed: G(n, p) is connected with high probability well above the "
            f"ln(n)/n = {threshold:.4g} threshold (e.g. p = {larger:.4g})"
        ),
    )


def watts_strogatz(n: int, k: int, p: float, seed: int) -> nx.Graph:
    """Connected small-world graph: ring lattice with k (even) neighbours, each edge rewired with prob. p."""
    where = f"watts_strogatz(n={n}, k={k}, p={p}, seed={seed})"
    n = check_int("n", n, 3, where)
    k = check_int("k", k, 2, where)
    p = check_probability("p", p, where)
    seed = check_seed(seed, where)
    if k % 2:
        raise InvalidTopologyParameterError(f"{where}: k must be even (k/2 neighbours per side), got k={k}")
    if k >= n:
        raise InvalidTopologyParameterError(f"{where}: needs k < n, got n={n}, k={k}")
    try:
        G = nx.connected_watts_strogatz_graph(n, k, p, tries=100, seed=seed)
    except nx.NetworkXError as err:
        raise InvalidTopologyParameterError(f"{where}: {err}; try a smaller p or a larger k") from None
    return _validate(G, where=where)


def barabasi_albert(n: int, m: int, seed: int) -> nx.Graph:
    """Preferential-attachment graph: each new node links to m existing ones (1 <= m < n)."""
    where = f"barabasi_albert(n={n}, m={m}, seed={seed})"
    n = check_int("n", n, 2, where)
    m = check_int("m", m, 1, where)
    seed = check_seed(seed, where)
    if m >= n:
        raise InvalidTopologyParameterError(f"{where}: needs m < n, got n={n}, m={m}")
    return _validate(nx.barabasi_albert_graph(n, m, seed=seed), where=where)


def _power_offsets(n: int) -> list[int]:
    """Offsets 2^j with 2^j < n."""
    return [1 << j for j in range((n - 1).bit_length())]


def exponential(n: int) -> nx.Graph:
    """Exponential graph: node i is linked to i +- 2^j (mod n) for every 2^j < n (n >= 2)."""
    n = check_int("n", n, 2, "exponential")
    return _validate(nx.circulant_graph(n, _power_offsets(n)), where=f"exponential(n={n})")


def directed_ring(n: int) -> nx.DiGraph:
    """Directed cycle on n >= 2 nodes: i -> i + 1 (mod n)."""
    n = check_int("n", n, 2, "directed_ring")
    return _validate(nx.cycle_graph(n, create_using=nx.DiGraph), where=f"directed_ring(n={n})")


def directed_exponential(n: int) -> nx.DiGraph:
    """Directed exponential graph: i -> i + 2^j (mod n) for every 2^j < n (n >= 2)."""
    n = check_int("n", n, 2, "directed_exponential")
    D = nx.DiGraph()
    D.add_nodes_from(range(n))
    D.add_edges_from((i, (i + off) % n) for i in range(n) for off in _power_offsets(n))
    return _validate(D, where=f"directed_exponential(n={n})")


GENERATORS = {
    "ring": ring,
    "torus": torus,
    "complete": complete,
    "star": star,
    "regular": random_regular,
    "erdos_renyi": erdos_renyi,
    "watts_strogatz": watts_strogatz,
    "barabasi_albert": barabasi_albert,
    "exponential": exponential,
    "edge_list": from_edge_list,
}


def build(name: str, n: int | None, seed: int = 0, **params) -> nx.Graph:
    """Call ``GENERATORS[name]`` with n, seed and params, passing only what it accepts.

    ``seed`` is ignored by deterministic generators. For ``edge_list`` n may be None; if given,
    it must match the file's node count. Unknown names and unknown or missing parameters raise
    ``InvalidTopologyParameterError`` naming them.
    """
    if name not in GENERATORS:
        raise InvalidTopologyParameterError(
            f"unknown topology {name!r}; known topologies: {', '.join(sorted(GENERATORS))}"
        )
    fn = GENERATORS[name]
    sig = inspect.signature(fn).parameters
    accepted = [p for p in sig if p not in ("n", "seed")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none besides n and seed"
        raise InvalidTopologyParameterError(
            f"topology {name!r} got unknown parameter(s) {', '.join(unknown)}; it accepts: {allowed}"
        )
    missing = [
        p for p in accepted if sig[p].default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise InvalidTopologyParameterError(
            f"topology {name!r} needs parameter(s) {', '.join(missing)}"
        )
    kwargs = dict(params)
    if "seed" in sig:
        kwargs["seed"] = seed
    if "n" in sig:
        kwargs["n"] = n
        return fn(**kwargs)
    G = fn(**kwargs)
    if n is not None and G.number_of_nodes() != n:
        raise InvalidTopologyParameterError(
            f"topology {name!r} has {G.number_of_nodes()} nodes but n={n} was requested"
        )
    return G
