"""SparseW, FedAvg and Gossip on the cases mutation testing found untested (docs/testing.md).

Each test compares against an independent reference: a dense matrix built edge by edge, a hand-computed
value, or the per-client training loop (``LocalSGD.train_loop``). Tolerances: float64 mixing agrees with the
dense reference to ~1e-15 (we allow 1e-12); float32 training in the batched and the per-client paths
agrees to ~1e-7 (we allow 1e-5, as in test_core_references.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fedsim
import topologies
from fedsim.algorithms import FedAvg, Gossip, consensus_distance
from fedsim.engine import simulate
from fedsim.messages import Capture, LinkDrop, Messages
from fedsim.mixing import SparseW
from fedsim.training import LocalSGD

ATOL = 1e-5      # float32 training, batched vs per-client loop
EXACT = 1e-12    # float64 mixing vs a dense reference


def _dense(W) -> torch.Tensor:
    return torch.as_tensor(W.toarray(), dtype=torch.float64)


def _reference_mix(W: torch.Tensor, senders, receivers, own, payload, src, delivered, directed=False):
    """out_i = W~_ii own_i + sum over delivered edges (j -> i) of W_ij payload[src_e]; W~: a lost message's
    weight goes to the receiver's diagonal (undirected) or to the sender's (directed, push-sum)."""
    diag = torch.diagonal(W).clone()
    for e in range(len(senders)):
        if not bool(delivered[e]):
            diag[int(senders[e]) if directed else int(receivers[e])] += W[receivers[e], senders[e]]
    out = diag.reshape(-1, *([1] * (own.ndim - 1))) * own.double()
    for e in range(len(senders)):
        if bool(delivered[e]):
            out[receivers[e]] += W[receivers[e], senders[e]] * payload[src[e]].double()
    return out


@pytest.fixture
def star():
    """Uniform-neighbour weights on a star (row-stochastic, far from symmetric) as float64 SparseW + dense."""
    W = topologies.uniform_neighbour(topologies.star(6))
    return SparseW.from_scipy(W, dtype=torch.float64), _dense(W)


# -- SparseW ---------------------------------------------------------------------------------------------

def test_matmul_and_mix_of_a_vector_equal_the_dense_reference(star):
    sw, D = star
    senders, receivers = sw.edges()
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sw.matmul(x), D @ x, atol=EXACT, rtol=0)
    payload = 2 * x + 1                                      # what a tap sent instead of x
    delivered = torch.arange(len(senders)) % 3 != 0
    want = _reference_mix(D, senders, receivers, x, payload, senders, delivered)
    got = sw.mix(x, payload, senders, delivered)
    assert got.shape == (6,)
    torch.testing.assert_close(got, want, atol=EXACT, rtol=0)


def test_mix_when_the_last_node_is_cut_off_and_a_tap_changed_the_payload():
    """A round of link failures can isolate the last node: it neither sends nor receives, so the last payload
    row is never referenced and the last receiver has no entries."""
    W = topologies.with_failed_links(topologies.ring(5), [(3, 4), (4, 0)])
    sw = SparseW.from_scipy(W, dtype=torch.float64)
    senders, receivers = sw.edges()
    assert 4 not in senders.tolist() and 4 not in receivers.tolist()
    own = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    payload = own + 0.5
    everyone = torch.ones(len(senders), dtype=torch.bool)
    want = _reference_mix(_dense(W), senders, receivers, own, payload, senders, everyone)
    torch.testing.assert_close(sw.mix(own, payload, senders, everyone), want, atol=EXACT, rtol=0)
    torch.testing.assert_close(want[4], own[4], atol=0, rtol=0)


def test_mix_takes_a_payload_in_another_dtype(star):
    """A tap may send in single precision (compression); the result stays in the receivers' dtype."""
    sw, D = star
    senders, receivers = sw.edges()
    own = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    payload = own.float()
    everyone = torch.ones(len(senders), dtype=torch.bool)
    got = sw.mix(own, payload, senders, everyone)
    assert got.dtype == torch.float64
    want = _reference_mix(D, senders, receivers, own, payload, senders, everyone)
    torch.testing.assert_close(got, want, atol=EXACT, rtol=0)
    assert float((got - D @ own).abs().max()) > 1e-9        # the float32 rounding did reach the result


@pytest.mark.parametrize("directed", [False, True])
def test_with_delivered_returns_a_complete_matrix_and_drops_compose(directed):
    """Dropping edge sets a then b (in two calls) equals dropping a | b at once; the result keeps its edges."""
    if directed:
        W = topologies.push_sum_weights(topologies.directed_exponential(6))
    else:
        W = topologies.uniform_neighbour(topologies.star(6))
    sw = SparseW.from_scipy(W, directed=directed, dtype=torch.float64)
    senders, receivers = sw.edges()
    m = len(senders)
    a, b = torch.arange(m) % 3 == 0, torch.arange(m) % 4 == 1
    once = sw.with_delivered(a)
    twice = once.with_delivered(~b)
    assert twice.directed == directed
    for got, want in zip(twice.edges(), (senders, receivers)):
        assert torch.equal(got, want)
    x = torch.eye(6, dtype=torch.float64)
    ref = _reference_mix(_dense(W), senders, receivers, x, x, senders, a & ~b, directed=directed)  # = W~ itself
    torch.testing.assert_close(twice.matmul(x), ref, atol=EXACT, rtol=0)
    torch.testing.assert_close(twice.matmul(x), sw.with_delivered(a & ~b).matmul(x), atol=EXACT, rtol=0)


_FRESH = """
import torch, topologies
from fedsim.mixing import SparseW
sw = SparseW.from_scipy(topologies.metropolis_hastings(topologies.ring(5)))
x = torch.ones(5, 2)
senders, _ = sw.edges()
everyone = torch.ones(len(senders), dtype=torch.bool)
print(float(sw.matmul(x).sum()) if "{first}" == "matmul" else float(sw.mix(x, x + 1, senders, everyone).sum()))
"""


@pytest.mark.parametrize("first", ["matmul", "mix"])
def test_a_fresh_process_mixes_without_printing_torchs_sparse_beta_warning(first):
    """torch warns once per process that sparse CSR is in beta; SparseW silences it (``matmul`` and ``mix`` build
    CSR tensors at two places, and whichever runs first in a process meets the warning)."""
    env = {**os.environ, "PYTHONPATH": str(Path(fedsim.__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", _FRESH.format(first=first)], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    # ring MH weights: 1/3 on self and on each neighbour; mix gets payload 2 from both neighbours: 1/3 + 4/3
    assert float(out.stdout) == pytest.approx(10.0 if first == "matmul" else 10 * 5 / 3, abs=1e-5)
    sw = SparseW.from_scipy(topologies.metropolis_hastings(topologies.ring(5)))     # and this process agrees
    x, everyone = torch.ones(5, 2), torch.ones(len(sw.off), dtype=torch.bool)
    here = sw.matmul(x) if first == "matmul" else sw.mix(x, x + 1, sw.edges()[0], everyone)
    assert float(out.stdout) == pytest.approx(float(here.sum()), abs=1e-5)
    assert "Sparse CSR tensor support is in beta" not in out.stderr, out.stderr


# -- FedAvg ----------------------------------------------------------------------------------------------

def _only_from(client: int):
    """Tap: every uplink except ``client``'s is lost."""
    def tap(msgs: Messages) -> Messages:
        return msgs.drop(msgs.edge_senders != client) if msgs.kind == "uplink" else msgs
    return tap


def test_fedavg_unweighted_is_the_plain_mean_of_the_local_models(make_fed, mlp, trainer):
    fed = make_fed(8, partition="dirichlet", alpha=0.3)     # very unequal counts: the weightings differ
    tr = trainer(mlp, lr=0.3, steps=3)
    alg = FedAvg(tr, clients_per_round=8, weighted=False)
    got = simulate(alg, fed, 1, eval_every=0).state.params
    local = tr.train_loop(alg.init(fed).params.expand(8, -1), torch.arange(8), 0, fed.data,
                          fed.streams).params.double()
    torch.testing.assert_close(got.double(), local.mean(0), atol=ATOL, rtol=0)
    counts = fed.data.counts.double()
    assert float((local.mean(0) - (counts[:, None] * local).sum(0) / counts.sum()).abs().max()) > 100 * ATOL


def test_fedavg_with_a_single_uplink_takes_that_model_and_reports_the_round(small_fed, mlp, trainer):
    tr = trainer(mlp)
    alg = FedAvg(tr, clients_per_round=8)
    res = simulate(alg, small_fed, 1, taps=[_only_from(5)], eval_every=0)
    trained = tr.train_loop(alg.init(small_fed).params.expand(8, -1), torch.arange(8), 0, small_fed.data,
                            small_fed.streams)
    torch.testing.assert_close(res.state.params, trained.params[5], atol=ATOL, rtol=0)
    row = res.history[0]
    assert row["participants"] == 1
    assert row["train_loss"] == pytest.approx(float(trained.losses.mean()), abs=ATOL)   # all 8 trained


def test_fedavg_round_where_no_downlink_arrives(small_fed, mlp, trainer):
    alg = FedAvg(trainer(mlp), clients_per_round=4)
    res = simulate(alg, small_fed, 1, taps=[LinkDrop(1.0, kinds=("downlink",))], eval_every=0)
    assert torch.equal(res.state.params, alg.init(small_fed).params)
    assert res.history[0]["participants"] == 0
    assert math.isnan(res.history[0]["train_loss"])


def test_fedavg_keeps_the_momentum_of_clients_whose_uplink_was_lost(small_fed, mlp, trainer):
    tr = trainer(mlp, momentum=0.9)
    alg = FedAvg(tr, clients_per_round=8, keep_momentum=True)
    res = simulate(alg, small_fed, 1, taps=[LinkDrop(1.0, kinds=("uplink",))], eval_every=0)
    trained = tr.train_loop(alg.init(small_fed).params.expand(8, -1), torch.arange(8), 0, small_fed.data,
                            small_fed.streams)
    assert torch.equal(res.state.params, alg.init(small_fed).params)
    assert float(trained.momentum.abs().max()) > 1e-3
    torch.testing.assert_close(res.state.momentum, trained.momentum, atol=ATOL, rtol=0)


def test_fedavg_messages_carry_their_round(small_fed, mlp, trainer):
    spy = Capture(kinds=("downlink", "uplink"))
    simulate(FedAvg(trainer(mlp), clients_per_round=3), small_fed, 2, taps=[spy], eval_every=0)
    seen = sorted((r.kind, r.round) for r in spy.records)
    assert seen == [("downlink", 0)] * 3 + [("downlink", 1)] * 3 + [("uplink", 0)] * 3 + [("uplink", 1)] * 3


def _float64(fed):
    data = dataclasses.replace(fed.data, x=fed.data.x.double())
    return dataclasses.replace(fed, data=data, test_x=fed.test_x.double(), dtype=torch.float64)


def test_fedavg_runs_in_the_federations_dtype(small_fed, mlp, trainer):
    fed = _float64(small_fed)
    tr = trainer(mlp, momentum=0.9)
    alg = FedAvg(tr, clients_per_round=8, keep_momentum=True)
    s0 = alg.init(fed)
    assert s0.params.dtype == s0.momentum.dtype == torch.float64
    state = simulate(alg, fed, 1, eval_every=0).state
    assert state.params.dtype == state.momentum.dtype == torch.float64
    trained = tr.train_loop(s0.params.expand(8, -1), torch.arange(8), 0, fed.data, fed.streams)
    w = fed.data.counts.double()
    torch.testing.assert_close(state.params, (w[:, None] * trained.params).sum(0) / w.sum(), atol=1e-12, rtol=0)


# -- Gossip ----------------------------------------------------------------------------------------------

def test_consensus_distance_hand_computed():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])  # mean (1, 1); squared distances 2, 2, 4
    assert consensus_distance(z) == pytest.approx(8 / 3, abs=1e-6)


def test_gossip_evaluates_evenly_spaced_nodes_from_first_to_last(make_fed, mlp, trainer):
    fed = make_fed(8, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(8))))
    alg = Gossip(trainer(mlp), same_init=False, eval_nodes=3)
    state = alg.init(fed)
    rows = alg.models(state)
    assert torch.equal(rows["nodes"], state.x[[0, 4, 7]])  # linspace(0, 7, 3) = 0, 3.5, 7; 3.5 rounds to even
    torch.testing.assert_close(rows["average"], state.x.mean(0, keepdim=True), atol=0, rtol=0)


def _active_nodes(x_before: torch.Tensor, spy: Capture, t: int) -> list[int]:
    """The nodes whose gossip message (sent after local training) differs from their model before the round."""
    sent = {r.sender: r.payload for r in spy.records if r.round == t}
    return sorted(i for i, row in sent.items() if not torch.equal(row, x_before[i]))


@pytest.mark.parametrize("fraction, k", [(0.5, 4), (0.1, 1)])
def test_gossip_trains_a_fresh_sample_of_nodes_every_round(make_fed, mlp, trainer, fraction, k):
    fed = make_fed(8, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(8))))
    tr = trainer(mlp)
    alg = Gossip(tr, active_fraction=fraction)
    state, sets = alg.init(fed), []
    for t in range(4):
        spy = Capture(kinds=("gossip",))
        res = simulate(alg, fed, t + 1, state=state, start_round=t, taps=[spy], eval_every=0)
        active = _active_nodes(state.x, spy, t)
        assert len(active) == k
        assert res.history[0]["participants"] == k
        ref = tr.train_loop(state.x[active], torch.tensor(active), t, fed.data, fed.streams)
        assert res.history[0]["train_loss"] == pytest.approx(float(ref.losses.mean()), abs=ATOL)
        sets.append(active)
        state = res.state
    assert len({tuple(s) for s in sets}) > 1                 # drawn per round, not once


def test_gossip_on_a_time_varying_schedule_uses_each_rounds_matrix(make_fed, mlp):
    sched = topologies.RandomMatching(topologies.complete(6), seed=0)
    fed = make_fed(6, schedule=sched)
    alg = Gossip(LocalSGD(mlp, lr=0.1, steps=0), same_init=False)   # plain gossip averaging
    x = alg.init(fed).x.double()
    Ws = [_dense(sched.at(t)) for t in range(3)]
    assert float((Ws[0] - Ws[1]).abs().max()) > 0.4
    got = simulate(alg, fed, 3, eval_every=0).state.x
    torch.testing.assert_close(got.double(), Ws[2] @ Ws[1] @ Ws[0] @ x, atol=1e-6, rtol=0)


def test_gossip_runs_in_the_federations_dtype(make_fed, mlp):
    W = topologies.uniform_neighbour(topologies.star(6))
    fed = _float64(make_fed(6, schedule=topologies.Static(W)))
    alg = Gossip(LocalSGD(mlp, lr=0.1, steps=0), same_init=False)
    s0 = alg.init(fed)
    assert s0.x.dtype == s0.w.dtype == torch.float64
    state = simulate(alg, fed, 2, eval_every=0).state
    assert state.x.dtype == torch.float64
    torch.testing.assert_close(state.x, _dense(W) @ _dense(W) @ s0.x, atol=EXACT, rtol=0)
