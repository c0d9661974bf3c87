"""Issue 10: clean and decentralized FedPG reach the optimum on NSL-KDD with default settings, for every k.

Paper split, 20 clients, seed 0, both scalers (the clients' own z-scoring, and the federated global scaler's
``global_blocks``). The optimum of each is the top-k eigenspace of its pooled matrix, computed here with numpy;
"rounds" = the first round whose largest principal angle to it is below 1e-3 rad. The yardstick is the plain
federated power method started from the same point (``FederatedPower(momentum="none")``, measured in the same
test). Rounds measured on this data are in benchmarks/RESULTS.md ("Federated PCA convergence (issue 10)").
"""

import numpy as np
import pytest
import torch

import topologies
from fedsim.engine import simulate
from fedsim.fedpca.decentralized import DecentralizedFedPG
from fedsim.fedpca.fedpg import FedPG, PCAFederation
from fedsim.fedpca.power import FederatedPower
from fedsim.fedpca.problem import PCAClients
from fedsim.rng import Streams

pytestmark = pytest.mark.needs_data("nsl-kdd")
TOL = 1e-3
KS = (5, 10, 15, 17, 20, 25, 30)


@pytest.fixture(scope="module")
def scalers(nsl_data):
    return {"own": nsl_data.clients, "global": PCAClients.from_blocks(nsl_data.global_blocks)}


def reference(clients: PCAClients, k: int) -> torch.Tensor:
    S = clients.C.numpy().sum(0) / clients.n.numpy().sum()
    vecs = np.linalg.eigh(S)[1]
    return torch.tensor(vecs[:, ::-1][:, :k].copy())


def rounds_to(alg, fed, max_rounds: int, key: str = "angle_to_reference", chunk: int = 50, every: int = 1):
    """The first evaluated round with ``key`` < TOL (None: not within ``max_rounds``), running in chunks."""
    state, t = None, 0
    while t < max_rounds:
        stop = min(t + chunk, max_rounds)
        res = simulate(alg, fed, stop, state=state, start_round=t, eval_every=every)
        for row in res.history:
            if row.get(key, np.inf) < TOL:
                return row["round"]
        state, t = res.state, stop
    return None


def check_fedpg_against_power(clients, k):
    fed = PCAFederation(clients, Streams(0), reference=reference(clients, k))
    fedpg = rounds_to(FedPG(k, client_fraction=1.0), fed, 300)
    power = rounds_to(FederatedPower(k, momentum="none"), fed, 3000)
    assert power is not None
    assert fedpg is not None and fedpg <= power, (k, fedpg, power)
    if power < 200:
        assert fedpg <= 200
    return fedpg, power


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("scaler", ["own", "global"])
def test_clean_fedpg_defaults_converge_for_every_k(scalers, scaler, k):
    """No more rounds than the plain power method, and <= 200 wherever that needs < 200 (measured: 1.25-11x fewer
    rounds; benchmarks/RESULTS.md)."""
    fedpg, power = check_fedpg_against_power(scalers[scaler], k)
    assert fedpg < power


# Decentralized FedPG (default: gradient tracking + accelerated power steps, Chebyshev gossip) on 20 nodes.
# Measured rounds to 1e-3 rad at every node (one round = one exchange per edge); the ring's spectral gap is
# 0.033 (16-21 exchanges a power step), the 4-regular graph's 0.23 (7). Over 500 only on the ring at k = 10 with
# the global scaler, where lambda_11 / lambda_10 = 0.987 (the smallest eigengap of all): 609 rounds.
DECENTRALIZED_LIMIT = {("global", "ring", 10): 800}


@pytest.mark.parametrize("graph", ["ring", "4-regular"])
@pytest.mark.parametrize("scaler", ["own", "global"])
def test_decentralized_fedpg_defaults_converge_for_every_k(scalers, scaler, graph):
    clients = scalers[scaler]
    G = topologies.ring(20) if graph == "ring" else topologies.random_regular(20, 4, seed=0)
    sched = topologies.Static(topologies.metropolis_hastings(G))
    got = {}
    for k in KS:
        fed = PCAFederation(clients, Streams(0), reference=reference(clients, k), schedule=sched)
        alg = DecentralizedFedPG(k)
        K = alg.tracking.gossip_steps_for(fed)
        limit = DECENTRALIZED_LIMIT.get((scaler, "ring" if graph == "ring" else graph, k), 500)
        got[k] = rounds_to(alg, fed, limit, key="max_node_angle_to_reference", chunk=10 * K, every=K)
        assert got[k] is not None and got[k] <= limit, (scaler, graph, k, got)
    print(scaler, graph, got)


@pytest.mark.parametrize("scaler", ["own", "global"])
def test_ten_percent_participation_converges(scalers, scaler):
    """10 % participation (2 of 20 clients a round), stale contributions for the others: about 1 / q = 10 times
    the rounds of the *plain* power method with full participation (the heavy ball needs fresh products, so
    the accelerated full-participation rounds are not the yardstick: docs/fedpca.md). Checked at k = 17 and
    k = 5 (clear gaps); all k are measured in benchmarks/RESULTS.md."""
    clients = scalers[scaler]
    for k in (17, 5):
        fed = PCAFederation(clients, Streams(0), reference=reference(clients, k))
        power = rounds_to(FederatedPower(k, momentum="none"), fed, 3000)
        part = rounds_to(FedPG(k, client_fraction=0.1), fed, 15 * power, chunk=200)
        assert part is not None and part <= 15 * power, (scaler, k, part, power)
