"""SparseW (fedsim/mixing.py) and synchronous Gossip (fedsim/algorithms/gossip.py) on the cases mutation testing
found untested (docs/testing.md).

Each test compares against an independent reference: a dense float64 matrix read edge by edge, a hand-computed
value, autograd of the dense product, or a float64 per-node formula. Tolerances: float64 mixing agrees with the
dense reference to ~1e-15 (we allow 1e-12); float32 results are compared with float64 references within 1e-6
(one rounding of values of order 1); float32 runs with and without a lossless float64 round trip within 1e-6.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import topologies
from fedsim.algorithms import Gossip
from fedsim.algorithms.gossip import evaluation_rows, neighbourhood_step, population_diagnostics
from fedsim.averaging import Averaging
from fedsim.engine import simulate
from fedsim.mixing import SparseW, combine
from fedsim.models import build_model
from fedsim.state import ParamSpec

EXACT = 1e-12    # float64 against a float64 reference
F32 = 1e-6       # float32 against a float64 reference (values of order 1)


def _dense(W) -> torch.Tensor:
    return torch.as_tensor(W.toarray(), dtype=torch.float64)


def _small_mlp():
    return build_model("mlp", (1, 8, 8), 10, (4,))


def _reference_mix(D, senders, receivers, own, payload, src, delivered, kept, directed):
    """out_i = d_i own_i + sum over delivered edges e = (j -> i) of D_ij payload[src_e], where d_i is D_ii plus the
    weights of the edges *not kept* that belong to i: the receiver's on an undirected graph, the sender's under
    push-sum (the sender keeps the share it lost)."""
    diag = torch.diagonal(D).clone()
    for e in range(len(senders)):
        if not bool(kept[e]):
            owner = int(senders[e]) if directed else int(receivers[e])
            diag[owner] += D[receivers[e], senders[e]]
    out = diag[:, None] * own.double()
    for e in range(len(senders)):
        if bool(delivered[e]):
            out[receivers[e]] += D[receivers[e], senders[e]] * payload[src[e]].double()
    return out


# -- SparseW -------------------------------------------------------------------------------------------------

def test_combine_casts_what_arrived_to_the_nodes_dtype():
    """``combine``: ``own_weight own + sum_j w_j r_j`` in own's dtype, a float64 message cast to float32 first."""
    g = torch.Generator().manual_seed(0)
    own = torch.randn(5, generator=g)
    received = torch.randn(3, 5, generator=g, dtype=torch.float64)
    weights = torch.tensor([0.25, 0.125, 0.125])
    got = combine(torch.tensor(0.5), own, weights, received)
    assert got.dtype == torch.float32
    want = 0.5 * own.double() + (weights.double()[:, None] * received.float().double()).sum(0)
    torch.testing.assert_close(got.double(), want, atol=F32, rtol=0)


def test_a_non_square_matrix_is_refused_with_its_shape():
    """``from_scipy`` names the shape it got."""
    with pytest.raises(ValueError, match=r"must be square, got shape \(2, 3\)"):
        SparseW.from_scipy(sp.coo_array(np.ones((2, 3)) / 3))


def test_inbox_without_masks_is_the_row_of_the_matrix():
    """``inbox(i)`` with its defaults (everything delivered): W_ii, and the senders j != i of row i with W_ij."""
    W = topologies.uniform_neighbour(topologies.star(5))       # row-stochastic, not symmetric
    sw, D = SparseW.from_scipy(W, dtype=torch.float64), _dense(W)
    for i in range(5):
        own_weight, senders, weights = sw.inbox(i)
        assert float(own_weight) == pytest.approx(float(D[i, i]), abs=EXACT)
        want = [j for j in range(5) if j != i and D[i, j] != 0]
        assert sorted(senders.tolist()) == want
        torch.testing.assert_close(weights, D[i, senders], atol=EXACT, rtol=0)


@pytest.mark.parametrize("directed", [False, True], ids=["undirected", "push-sum"])
def test_the_kept_mask_decides_the_fallback_in_every_mix_path(directed):
    """With ``kept`` != ``delivered`` (a delay: what arrives was sent earlier, the fallback follows this round's
    losses) ``mix`` (a matrix, a vector, the payload being ``own`` itself), ``mix_loop`` and ``inbox`` put the
    weights of the edges not kept on their owner's diagonal and add the delivered edges' payloads."""
    if directed:
        W = topologies.push_sum_weights(topologies.directed_ring(5))
    else:
        W = topologies.uniform_neighbour(topologies.star(5))
    sw, D = SparseW.from_scipy(W, directed=directed, dtype=torch.float64), _dense(W)
    senders, receivers = sw.edges()
    m = len(senders)
    g = torch.Generator().manual_seed(3)
    own = torch.randn(5, 3, generator=g, dtype=torch.float64)
    payload = torch.randn(5, 3, generator=g, dtype=torch.float64)
    delivered = torch.arange(m) % 3 != 0
    kept = torch.arange(m) % 2 == 0
    assert bool((delivered != kept).any())
    want = _reference_mix(D, senders, receivers, own, payload, senders, delivered, kept, directed)
    torch.testing.assert_close(sw.mix(own, payload, senders, delivered, kept), want, atol=EXACT, rtol=0)
    torch.testing.assert_close(sw.mix_loop(own, payload, senders, delivered, kept), want, atol=EXACT, rtol=0)
    vector = _reference_mix(D, senders, receivers, own[:, :1], payload[:, :1], senders, delivered, kept, directed)
    got = sw.mix(own[:, 0], payload[:, 0], senders, delivered, kept)
    assert got.shape == (5,)
    torch.testing.assert_close(got, vector[:, 0], atol=EXACT, rtol=0)
    itself = _reference_mix(D, senders, receivers, own, own, senders, delivered, kept, directed)
    torch.testing.assert_close(sw.mix(own, own, senders, delivered, kept), itself, atol=EXACT, rtol=0)
    torch.testing.assert_close(sw.mix_loop(own, own, senders, delivered, kept), itself, atol=EXACT, rtol=0)
    ones = _reference_mix(D, senders, receivers, torch.ones(5, 1), torch.zeros(5, 1), senders, delivered, kept,
                          directed)                                    # = the fallen-back diagonal
    for i in range(5):
        own_weight, _, _ = sw.inbox(i, delivered, kept)
        assert float(own_weight) == pytest.approx(float(ones[i, 0]), abs=EXACT)


def test_mix_with_several_edges_carrying_one_payload_row():
    """A tap may point several edges at one payload row (``src`` not one row per sender): node 0 of a star
    receives five messages made of two payload rows, every one counted with its edge's weight."""
    W = topologies.uniform_neighbour(topologies.star(6))
    sw, D = SparseW.from_scipy(W, dtype=torch.float64), _dense(W)
    senders, receivers = sw.edges()
    g = torch.Generator().manual_seed(4)
    own = torch.randn(6, 3, generator=g, dtype=torch.float64)
    payload = torch.randn(2, 3, generator=g, dtype=torch.float64)
    src = torch.arange(len(senders)) % 2
    assert int((receivers == 0).sum()) == 5
    delivered = torch.arange(len(senders)) != 3
    want = _reference_mix(D, senders, receivers, own, payload, src, delivered, delivered, False)
    torch.testing.assert_close(sw.mix(own, payload, src, delivered), want, atol=EXACT, rtol=0)


def test_matmul_is_differentiable_in_the_population_and_in_the_weights():
    """``matmul`` under autograd (an attack optimising through a gossip step): the gradients of
    ``sum(G * (W @ x))`` are ``W^T G`` for x and ``G_i . x_j`` for every stored W_ij, as for the dense product."""
    W = topologies.uniform_neighbour(topologies.star(5))
    sw, D = SparseW.from_scipy(W, dtype=torch.float64), _dense(W)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    G = torch.randn(5, 3, generator=g, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (sw.matmul(xg) * G).sum().backward()
    torch.testing.assert_close(xg.grad, D.T @ G, atol=EXACT, rtol=0)
    vals = sw.vals.clone().requires_grad_(True)
    (dataclasses.replace(sw, vals=vals).matmul(x) * G).sum().backward()
    want = (G[sw.rows] * x[sw.cols]).sum(1)
    torch.testing.assert_close(vals.grad, want, atol=EXACT, rtol=0)


# -- Gossip helpers ------------------------------------------------------------------------------------------

def test_plain_neighbourhood_step_is_the_weighted_combine():
    """A plain gossip node: ``own_weight own + sum_j w_j r_j`` (the weights already sum to 1)."""
    spec = ParamSpec.of(_small_mlp())
    g = torch.Generator().manual_seed(6)
    own = torch.randn(spec.size, generator=g, dtype=torch.float64)
    received = torch.randn(2, spec.size, generator=g, dtype=torch.float64)
    weights = torch.tensor([0.25, 0.375], dtype=torch.float64)
    got = neighbourhood_step(own, received, Averaging("plain"), spec, torch.tensor(0.375, dtype=torch.float64),
                             weights)
    torch.testing.assert_close(got, 0.375 * own + 0.25 * received[0] + 0.375 * received[1], atol=EXACT, rtol=0)


def test_evaluation_rows_zero_means_every_node_and_one_means_one():
    """``eval_nodes`` 0: every node; 1: one node (the first); the average row is the mean of all."""
    z = torch.arange(12.0).reshape(6, 2)
    every = evaluation_rows(z, 0)
    assert torch.equal(every["nodes"], z)
    assert torch.equal(every["average"], torch.tensor([[5.0, 6.0]]))
    assert torch.equal(evaluation_rows(z, 1)["nodes"], z[:1])


def test_population_diagnostics_divide_by_the_init_schemes_variance():
    """``xavier_fan_in``: every weight tensor's population variance (mean over nodes) over 1 / fan_in."""
    model = build_model("mlp", (1, 2, 2), 3, (2,))             # weights [2, 4] and [3, 2]
    spec = ParamSpec.of(model)
    z = torch.randn(3, spec.size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = population_diagnostics(z, model, "xavier_fan_in")
    w1, w2 = z[:, 0:8].numpy(), z[:, 10:16].numpy()           # offsets: w1 0-8, b1 8-10, w2 10-16, b2 16-19
    r1 = float(np.mean([row.var() for row in w1])) / (1 / 4)
    r2 = float(np.mean([row.var() for row in w2])) / (1 / 2)
    assert got["weight_var_ratio.net.1.weight"] == pytest.approx(r1, rel=1e-12)
    assert got["weight_var_ratio.net.3.weight"] == pytest.approx(r2, rel=1e-12)
    assert got["weight_var_ratio"] == pytest.approx((r1 + r2) / 2, rel=1e-12)


# -- Gossip: option and schedule checks ----------------------------------------------------------------------

class _Alternating:
    """A user schedule cycling through two matrices (the same objects every period)."""

    directed = False

    def __init__(self, n):
        self.n = n
        self.mats = [sp.csr_array(topologies.metropolis_hastings(topologies.ring(n))),
                     sp.csr_array(topologies.metropolis_hastings(topologies.complete(n)))]

    def at(self, t):
        return self.mats[t % 2]


def test_gossip_errors_name_the_algorithm_and_the_problem(make_fed, trainer):
    """A negative delay, a federation without a schedule, a delay on a time-varying schedule (one that repeats
    its first matrix in round 2 included) are refused, each saying what is wrong."""
    tr = trainer(_small_mlp())
    with pytest.raises(ValueError, match=r"delay must be >= 0 rounds, got -1"):
        Gossip(tr, delay=-1)
    with pytest.raises(ValueError, match=r"^gossip needs a topology"):
        Gossip(tr).init(make_fed(4))
    sched = _Alternating(4)
    assert sched.at(0) is sched.at(2) and sched.at(0) is not sched.at(1)
    with pytest.raises(ValueError, match="delay in synchronous gossip needs a static topology"):
        Gossip(tr, delay=1).init(make_fed(4, schedule=sched))
    Gossip(tr).init(make_fed(4, schedule=sched))                 # without a delay it is fine


@pytest.mark.parametrize("tap", ["other rows", "extra rows"])
def test_with_a_delay_taps_may_not_give_edges_payloads_of_their_own(make_fed, trainer, tap):
    """With a delay a tap may change the payload's values only: pointing edges at other rows, or adding rows,
    is refused."""
    fed = make_fed(5, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(5))))
    alg = Gossip(trainer(_small_mlp(), steps=0), same_init=False, delay=1)
    if tap == "other rows":
        change = lambda m: dataclasses.replace(m, src=m.src.flip(0))
    else:
        change = lambda m: dataclasses.replace(m, payload=torch.cat([m.payload, m.payload[:1]]))
    with pytest.raises(ValueError, match="with a delay, taps may change payload values but not give edges"):
        simulate(alg, fed, 1, taps=[change], eval_every=0)


@pytest.mark.parametrize("rule, delay", [("beta", 0), ("plain", 1), ("variance_corrected", 1)])
def test_a_tap_that_returns_a_float64_payload(make_fed, trainer, rule, delay):
    """A perturbing tap may hand back its payload in float64: the models and the messages in flight stay in the
    federation's float32, with the same numbers as without the tap (the float32 values survive the round trip)."""
    fed = make_fed(5, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(5))))
    alg = Gossip(trainer(_small_mlp(), steps=1), averaging=Averaging(rule), delay=delay, same_init=False)
    plain = simulate(alg, fed, 3, eval_every=0).state
    wide = simulate(alg, fed, 3, taps=[lambda m: m.with_payload(m.payload.double())], eval_every=0).state
    assert (wide.flight_payload is not None) == bool(delay)
    for f in dataclasses.fields(wide):
        value = getattr(wide, f.name)
        if value is not None and value.is_floating_point():
            assert value.dtype == torch.float32, f.name
    torch.testing.assert_close(wide.x, plain.x, atol=F32, rtol=0)
