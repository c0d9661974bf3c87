"""The engine's core logic against independent, hand-written references.

Each test here is built so that a one-line defect in the core gives a large error next to its tolerance:
a non-symmetric W (transposed mixing shows up), unequal sample counts and a client subset (wrong aggregation
weights show up), an irregular directed graph with local training (a push-sum weight left out shows up).
The references are dense matrices and per-node Python loops written in the test, not the engine's code paths.
"""

import networkx as nx
import pytest
import torch

import topologies
from fedsim.algorithms import FedAvg, Gossip
from fedsim.engine import simulate
from fedsim.messages import SERVER, Capture
from fedsim.mixing import SparseW

# float32 training in two code paths that reduce in different orders: ~1e-7 apart after a few rounds;
# every defect these tests target moves the result by > 1e-3 (each test checks that margin on its own data).
ATOL = 1e-5


def _dense(W) -> torch.Tensor:
    return torch.as_tensor(W.toarray(), dtype=torch.float64)


@pytest.fixture
def star_uniform():
    """Uniform-neighbour weights on a star: row-stochastic and far from symmetric (hub row 1/8, leaf rows 1/2)."""
    W = topologies.uniform_neighbour(topologies.star(8))
    D = _dense(W)
    assert (D - D.T).abs().max() > 0.3
    return W


@pytest.mark.parametrize("graph", ["star", "path"])
def test_sparse_mixing_of_a_non_symmetric_matrix_equals_the_dense_product(graph):
    G = topologies.star(9) if graph == "star" else nx.path_graph(7)
    W = topologies.uniform_neighbour(G)
    n = W.shape[0]
    x = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sw = SparseW.from_scipy(W, dtype=torch.float64)
    want = _dense(W) @ x
    assert (want - _dense(W).T @ x).abs().max() > 1e-2     # W x and W^T x differ on this input
    torch.testing.assert_close(sw.matmul(x), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(sw.matmul_loop(x), want, atol=1e-12, rtol=0)
    everyone = torch.ones(len(sw.off), dtype=torch.bool)
    torch.testing.assert_close(sw.mix(x, x.clone(), sw.edges()[0], everyone), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("vectorized", [True, False])
def test_gossip_with_training_on_a_non_symmetric_matrix_equals_a_dense_reference(make_fed, mlp, trainer,
                                                                                   star_uniform, vectorized):
    """Three D-PSGD rounds on the star: each node trains (per-client loop), then x <- W x with the dense W."""
    fed = make_fed(8, schedule=topologies.Static(star_uniform))
    tr = trainer(mlp)
    alg = Gossip(tr, same_init=False, vectorized=vectorized)
    x = alg.init(fed).x.double()
    W = _dense(star_uniform)
    for t in range(3):
        trained = tr.train_loop(x.float(), torch.arange(8), t, fed.data, fed.streams).params.double()
        x = W @ trained
    got = simulate(alg, fed, 3, eval_every=0).state.x.double()
    wrong = W.T @ trained
    assert (wrong - x).abs().max() > 1e-3
    torch.testing.assert_close(got, x, atol=ATOL, rtol=0)


def test_fedavg_aggregates_exactly_the_sampled_clients_by_their_counts(make_fed, mlp, trainer):
    """Dirichlet counts (very unequal) and 3 of 8 clients per round; reference: a hand-written weighted mean."""
    fed = make_fed(8, partition="dirichlet", alpha=0.3)
    counts = fed.data.counts.double()
    assert counts.max() > 2 * counts.min()
    tr = trainer(mlp, lr=0.3, steps=3)
    alg = FedAvg(tr, clients_per_round=3)
    spy = Capture(receivers=[SERVER])
    res = simulate(alg, fed, 2, taps=[spy], eval_every=0)

    params = alg.init(fed).params
    for t in range(2):
        want_clients = torch.randperm(8, generator=fed.streams.generator("sample", round=t))[:3].sort().values
        got_clients = sorted(r.sender for r in spy.records if r.round == t)
        assert got_clients == want_clients.tolist()
        local = tr.train_loop(params.expand(3, -1), want_clients, t, fed.data, fed.streams).params.double()
        w = counts[want_clients]
        weighted = (w[:, None] * local).sum(0) / w.sum()
        uniform = local.mean(0)
        first_k = (counts[:3, None] * local).sum(0) / counts[:3].sum()
        assert (weighted - uniform).abs().max() > 100 * ATOL        # the data can tell the weightings apart
        assert (weighted - first_k).abs().max() > 100 * ATOL
        params = weighted.float()
    torch.testing.assert_close(res.state.params.double(), params.double(), atol=ATOL, rtol=0)


def _irregular_digraph() -> nx.DiGraph:
    """Strongly connected, out-degrees 1..3: push-sum weights drift away from 1 at different speeds."""
    D = nx.DiGraph([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (0, 3), (0, 4), (2, 0), (4, 1), (4, 2)])
    outdeg = sorted(d for _, d in D.out_degree())
    assert outdeg[0] == 1 and outdeg[-1] == 3
    return D


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_push_sum_with_local_training_equals_a_per_node_loop(make_fed, mlp, trainer, momentum):
    """Stochastic gradient push, one node at a time: train z_i = x_i / w_i, move x_i by w_i dz_i, then mix (x, w)."""
    sched = topologies.PushSum(_irregular_digraph())
    fed = make_fed(6, schedule=sched)
    tr = trainer(mlp, momentum=momentum)
    alg = Gossip(tr, same_init=False)
    A = _dense(sched.at(0))
    x = alg.init(fed).x.double()
    w = torch.ones(6, dtype=torch.float64)
    buffers = torch.zeros_like(x)
    for t in range(4):
        for i in range(6):
            z = (x[i] / w[i]).float()[None]
            out = tr.train_loop(z, torch.tensor([i]), t, fed.data, fed.streams,
                                momentum=buffers[i:i + 1].float() if momentum else None)
            x[i] = x[i] + w[i] * (out.params[0].double() - z[0].double())
            if momentum:
                buffers[i] = out.momentum[0].double()
        x, w = A @ x, A @ w
    assert (w - 1).abs().max() > 0.1                         # the weights matter in this setting
    for vectorized in (True, False):
        state = simulate(Gossip(tr, same_init=False, vectorized=vectorized), fed, 4, eval_every=0).state
        torch.testing.assert_close(state.w.double(), w, atol=1e-6, rtol=0)
        torch.testing.assert_close(state.x.double(), x, atol=ATOL, rtol=0)
