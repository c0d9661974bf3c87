"""Averaging rules, inbox sums and asynchronous gossip on the cases mutation testing found untested (docs/testing.md).

Each test compares against an independent reference: a hand-computed value, a dense matrix, a float64 per-node
loop over the documented formula (``average_node`` on the models a node received), or a float64 computation of a
variance. Tolerances: float64 averaging agrees with its reference to ~1e-15 (we allow 1e-12); float32 results are
compared with float64 references within 1e-6 (one rounding of values of order 1), except where a test is about
accuracy and states its own bound. The asynchronous-gossip tests mostly run ``steps = 0`` (no local training), so
a tick is pure gossip and its result can be computed node by node in float64.
"""

from __future__ import annotations

import dataclasses
import math

import networkx as nx
import pytest
import torch

import topologies
from fedsim.algorithms import AsyncGossip, Gossip
from fedsim.algorithms.async_gossip import AsyncGossipState
from fedsim.averaging import (
    Averaging,
    Inbox,
    average_inbox,
    average_node,
    average_received,
    corrected_slices,
    tensor_variances,
)
from fedsim.engine import simulate
from fedsim.messages import LinkDrop, Messages
from fedsim.models import build_model
from fedsim.state import ParamSpec

EXACT = 1e-12    # float64 against a float64 reference
F32 = 1e-6       # float32 against a float64 reference (values of order 1)

# a weight matrix [2, 2] (4 entries), a bias [2] and a one-element tensor [1], as in test_averaging.py
SPEC = ParamSpec(("w", "b", "s"), ((2, 2), (2,), (1,)))


# -- corrected_slices, option checks ---------------------------------------------------------------------

def test_corrected_slices_follow_the_flat_layout_and_skip_one_element_tensors():
    spec = ParamSpec(("a", "w1", "b1", "s", "w2"), ((3,), (2, 2), (5,), (1,), (2, 3)))
    # offsets by hand: a 0-3, w1 3-7, b1 7-12, s 12-13, w2 13-19
    assert corrected_slices(spec, "weights") == [slice(3, 7), slice(13, 19)]
    assert corrected_slices(spec, "all_but_bn_stats") == [slice(0, 3), slice(3, 7), slice(7, 12), slice(13, 19)]
    with pytest.raises(ValueError, match="unknown averaging tensors 'biases'"):
        corrected_slices(spec, "biases")


def test_missing_weights_are_refused_with_a_value_error():
    own, rec = torch.zeros(SPEC.size, dtype=torch.float64), torch.ones(2, SPEC.size, dtype=torch.float64)
    for kwargs in ({"own_weight": 0.5}, {"weights": torch.ones(2)}, {}):
        with pytest.raises(ValueError, match="plain averaging needs own_weight"):
            average_node(own, rec, Averaging("plain"), SPEC, **kwargs)
    inbox = Inbox.received(2, torch.tensor([0]), torch.tensor([0]), rec, torch.ones(1), torch.zeros(2, 0))
    with pytest.raises(ValueError, match="plain averaging needs the nodes' own weights"):
        average_inbox(own.expand(2, -1), inbox, Averaging("plain"), [])


# -- dtypes: a float32 population with float64 weights stays float32 ----------------------------------

def test_float32_models_with_float64_weights_stay_float32():
    g = torch.Generator().manual_seed(0)
    own = torch.randn(4, SPEC.size, generator=g)
    payload = torch.randn(3, SPEC.size, generator=g)
    receivers, rows = torch.tensor([0, 0, 1, 3, 3]), torch.tensor([0, 2, 1, 1, 2])
    weights = torch.rand(5, generator=g, dtype=torch.float64)
    own_weight = torch.rand(4, generator=g, dtype=torch.float64) + 0.1
    # one node: (w_own own + sum_j w_j r_j) / (w_own + sum_j w_j) in float64
    mine = receivers == 0
    want = (own_weight[0] * own[0].double() + (weights[mine, None] * payload[rows[mine]].double()).sum(0)) / (
        own_weight[0] + weights[mine].sum())
    got = average_node(own[0], payload[rows[mine]], Averaging("plain"), SPEC, own_weight=float(own_weight[0]),
                       weights=weights[mine])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=F32, rtol=0)
    # the running sums and the batched rule, against a dense float64 loop over the messages
    inbox = Inbox.received(4, receivers, rows, payload, weights, torch.zeros(3, 0))
    total = torch.zeros(4, SPEC.size, dtype=torch.float64)
    weight = torch.zeros(4, dtype=torch.float64)
    for e in range(len(receivers)):
        total[receivers[e]] += weights[e] * payload[rows[e]].double()
        weight[receivers[e]] += weights[e]
    assert inbox.total.dtype == inbox.weight.dtype == torch.float32
    torch.testing.assert_close(inbox.total.double(), total, atol=F32, rtol=0)
    torch.testing.assert_close(inbox.weight.double(), weight, atol=F32, rtol=0)
    mixed = average_inbox(own, inbox, Averaging("plain"), [], own_weight=own_weight)
    want = (own_weight[:, None] * own.double() + total) / (own_weight + weight)[:, None]
    want[2] = own[2].double()                                          # node 2 received nothing
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed.double(), want, atol=F32, rtol=0)


# -- Inbox: empty deliveries, shapes, default copies, cleared rows ----------------------------------------

@pytest.mark.parametrize("n_tensors", [0, 2])
def test_an_empty_delivery_is_an_empty_inbox(n_tensors):
    n, p = 5, SPEC.size
    payload = torch.randn(3, p, dtype=torch.float64)
    variances = torch.rand(3, n_tensors, dtype=torch.float64)
    none = torch.zeros(0, dtype=torch.int64)
    got = Inbox.received(n, none, none, payload, torch.zeros(0, dtype=torch.float64), variances)
    empty = Inbox.empty(n, p, n_tensors, torch.float64, "cpu")
    for name, shape, dtype in (("total", (n, p), torch.float64), ("weight", (n,), torch.float64),
                               ("count", (n,), torch.int64), ("variance", (n, n_tensors), torch.float64)):
        for inbox in (got, empty):
            value = getattr(inbox, name)
            assert value.shape == shape and value.dtype == dtype, name
            assert not value.any(), name


def test_variance_sums_keep_one_column_per_corrected_tensor():
    """``variance`` [N, L]: zero columns when the rule does not correct, L columns summed per receiver."""
    n = 4
    payload = torch.randn(3, SPEC.size, dtype=torch.float64)
    receivers, rows = torch.tensor([1, 1, 3]), torch.tensor([0, 2, 2])
    got = Inbox.received(n, receivers, rows, payload, torch.ones(3, dtype=torch.float64),
                         torch.zeros(3, 0, dtype=torch.float64))
    assert got.variance.shape == (n, 0)
    v = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]], dtype=torch.float64)
    got = Inbox.received(n, receivers, rows, payload, torch.ones(3, dtype=torch.float64), v)
    want = torch.tensor([[0.0, 0.0], [101.0, 202.0], [0.0, 0.0], [100.0, 200.0]], dtype=torch.float64)
    torch.testing.assert_close(got.variance, want, atol=EXACT, rtol=0)


def test_plus_without_in_place_leaves_the_old_sums_alone():
    payload = torch.randn(3, SPEC.size, dtype=torch.float64)
    v = torch.zeros(3, 0, dtype=torch.float64)
    old = Inbox.received(4, torch.tensor([0, 2]), torch.tensor([1, 1]), payload, torch.ones(2, dtype=torch.float64), v)
    before = [t.clone() for t in (old.total, old.weight, old.count, old.variance)]
    new = old.plus(torch.tensor([0, 3]), torch.tensor([2, 0]), payload, torch.ones(2, dtype=torch.float64), v)
    for kept, value in zip(before, (old.total, old.weight, old.count, old.variance)):
        assert torch.equal(kept, value)
    assert new.count.tolist() == [2, 0, 1, 1]
    torch.testing.assert_close(new.total[0], payload[1] + payload[2], atol=EXACT, rtol=0)


def test_cleared_empties_every_sum_of_the_masked_rows_only():
    total = torch.arange(12, dtype=torch.float64).reshape(3, 4) + 1
    weight = torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64)
    count = torch.tensor([1, 2, 3])
    variance = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    left = Inbox(total, weight, count, variance).cleared(torch.tensor([False, True, False]))
    keep = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(left.total, total * keep[:, None], atol=0, rtol=0)
    torch.testing.assert_close(left.weight, torch.tensor([0.5, 0.0, 2.5], dtype=torch.float64), atol=0, rtol=0)
    assert left.count.tolist() == [1, 0, 3]
    torch.testing.assert_close(left.variance, variance * keep[:, None], atol=0, rtol=0)


# -- tensor_variances: shapes and float32 accuracy -------------------------------------------------------

def test_tensor_variances_without_slices_keep_the_leading_dims():
    """``x`` [..., P] -> [..., 0] when nothing is corrected (a model without weight tensors)."""
    assert tensor_variances(torch.ones(7), []).shape == (0,)
    assert tensor_variances(torch.ones(2, 3, 7), []).shape == (2, 3, 0)
    # and with slices, per row of any leading shape
    x = torch.randn(2, 3, 7, dtype=torch.float64)
    got = tensor_variances(x, [slice(0, 4), slice(4, 7)])
    want = torch.stack([x[..., :4].var(-1, correction=0), x[..., 4:].var(-1, correction=0)], -1)
    torch.testing.assert_close(got, want, atol=EXACT, rtol=0)


@pytest.mark.parametrize("k", [1_000_000, 999_983, 2 * 499_979])   # round, prime, twice a prime
def test_float32_variance_of_a_million_entries_stays_accurate(k):
    """The docstring's claim: a plain float32 norm over 400,000 entries drifts by ~1e-5; the norm of per-block
    norms stays near 1e-7 whatever k's divisors (blocks of isqrt(k), the last one shorter; measured here: 1e-7 to
    3e-7 blocked, 2e-5 unblocked for 10^6 entries). Bound: 2e-6."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, k, generator=g) * 0.05
    got = tensor_variances(x, [slice(0, k)])[:, 0].double()
    want = x.double().var(-1, correction=0)
    assert float(((got - want) / want).abs().max()) < 2e-6


def test_float32_variance_of_a_small_tensor_dominated_by_its_mean():
    """Entries 0.01 +- 1e-4: the sum of squares minus k mean^2 would cancel 4 digits of float32 (relative error
    ~1e-3); the two-pass sum over the deviations is within 1e-5 of the float64 variance."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 1000, generator=g) * 1e-4 + 0.01
    got = tensor_variances(x, [slice(0, 1000)])[:, 0].double()
    want = x.double().var(-1, correction=0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)


# -- the rescale of a constant mix ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_constant_mix_is_left_alone_even_when_the_target_variance_is_large(dtype):
    """mix = 1 on the weight tensor while the received ones have variance 9: the mixed variance is 0 and eps = 0,
    so the tensor stays as it is (module docstring) instead of 0 * sqrt(9 / 0)."""
    own = torch.ones(SPEC.size, dtype=dtype)
    d = torch.tensor([3.0, -3.0, 3.0, -3.0, 0.0, 0.0, 0.0], dtype=dtype)
    received = torch.stack([own + d, own - d])
    avg = Averaging("variance_corrected", beta=0.5)
    got = average_node(own, received, avg, SPEC)
    torch.testing.assert_close(got, own, atol=0, rtol=0)
    # the batched form: node 0 receives both
    both = average_received(own.expand(3, -1).clone(), torch.tensor([0, 0]), torch.tensor([0, 1]), received, avg,
                            corrected_slices(SPEC, "weights"))
    torch.testing.assert_close(both[0], own, atol=0, rtol=0)


# -- the beta rule ignores the slices it is handed --------------------------------------------------------

def test_the_beta_rule_never_rescales_even_when_given_slices():
    g = torch.Generator().manual_seed(6)
    n = 5
    own = torch.randn(n, SPEC.size, generator=g, dtype=torch.float64)
    payload = torch.randn(n, SPEC.size, generator=g, dtype=torch.float64) * 3 + 1
    receivers, rows = torch.tensor([0, 0, 1, 3, 3, 3]), torch.tensor([1, 2, 0, 0, 1, 4])
    avg, slices = Averaging("beta", beta=0.3), corrected_slices(SPEC, "all_but_bn_stats")
    variances = tensor_variances(payload, slices)
    inbox = Inbox.received(n, receivers, rows, payload, torch.ones(len(rows), dtype=torch.float64), variances)
    got_inbox = average_inbox(own, inbox, avg, slices)
    got_received = average_received(own, receivers, rows, payload, avg, slices)
    for i in range(n):
        r = payload[rows[receivers == i]]
        want = 0.3 * own[i] + 0.7 * r.mean(0) if len(r) else own[i]
        torch.testing.assert_close(got_inbox[i], want, atol=EXACT, rtol=0)
        torch.testing.assert_close(got_received[i], want, atol=EXACT, rtol=0)


# -- batched forms over several row chunks, and fewer payload rows than nodes -----------------------------

WIDE = ParamSpec(("w", "b"), ((1024, 512), (1,)))   # 2^19 + 1 entries: one row per cache-sized chunk


@pytest.mark.parametrize("avg", [Averaging("plain"), Averaging("variance_corrected", beta=0.4)], ids=lambda a: a.rule)
def test_batched_averaging_over_many_row_chunks_equals_the_per_node_rule(avg):
    g = torch.Generator().manual_seed(7)
    n = 3
    own = torch.randn(n, WIDE.size, generator=g, dtype=torch.float64)
    payload = torch.randn(2, WIDE.size, generator=g, dtype=torch.float64) * 2 + 0.5
    receivers, rows = torch.tensor([0, 1, 1, 2]), torch.tensor([1, 0, 1, 0])
    weights = torch.tensor([0.2, 0.3, 0.1, 0.4], dtype=torch.float64)
    own_weight = torch.tensor([0.8, 0.6, 0.6], dtype=torch.float64)
    slices = corrected_slices(WIDE, avg.tensors) if avg.corrects else []
    w = weights if avg.rule == "plain" else torch.ones_like(weights)
    inbox = Inbox.received(n, receivers, rows, payload, w, tensor_variances(payload, slices))
    got = average_inbox(own, inbox, avg, slices, own_weight=own_weight)
    for i in range(n):
        mine = receivers == i
        want = average_node(own[i], payload[rows[mine]], avg, WIDE, own_weight=float(own_weight[i]),
                            weights=weights[mine])
        torch.testing.assert_close(got[i], want, atol=EXACT, rtol=0)
    if avg.corrects:
        torch.testing.assert_close(average_received(own, receivers, rows, payload, avg, slices), got, atol=EXACT,
                                   rtol=0)


def test_one_delivery_from_fewer_payload_rows_than_nodes():
    """Six nodes, three payload rows (three senders): ``A`` is 6 x 3, its product 6 x P."""
    g = torch.Generator().manual_seed(8)
    own = torch.randn(6, SPEC.size, generator=g, dtype=torch.float64)
    payload = torch.randn(3, SPEC.size, generator=g, dtype=torch.float64)
    receivers, rows = torch.tensor([0, 1, 1, 4, 5, 5, 5]), torch.tensor([2, 0, 1, 2, 0, 1, 2])
    for avg in (Averaging("beta", beta=0.25), Averaging("beta", beta=0.0), Averaging("variance_corrected")):
        got = average_received(own, receivers, rows, payload, avg, corrected_slices(SPEC, avg.tensors))
        assert got.shape == own.shape
        for i in range(6):
            want = average_node(own[i], payload[rows[receivers == i]], avg, SPEC)
            torch.testing.assert_close(got[i], want, atol=EXACT, rtol=0)


# -- asynchronous gossip: options and state --------------------------------------------------------------

def _flight_state(rows: int, arrival: int, src: list[int], dst: int, weight: int) -> AsyncGossipState:
    z = torch.zeros(2, 3)
    ints = lambda k: torch.zeros(k, dtype=torch.int64)
    return AsyncGossipState(z, None, ints(2), ints(2), z, torch.zeros(2), ints(2), torch.zeros(2, 0),
                            torch.zeros(rows, 3), ints(arrival), torch.tensor(src, dtype=torch.int64), ints(dst),
                            torch.zeros(weight))


def test_messages_in_flight_are_checked():
    _flight_state(2, 2, [0, 1, 1], 3, 3)                                          # consistent
    for bad in [(2, 1, [0, 1, 1], 3, 3), (2, 2, [0, 1, 1], 2, 3), (2, 2, [0, 1, 1], 3, 2)]:
        with pytest.raises(ValueError, match="differ in number"):
            _flight_state(*bad)
    for src in ([0, 2, 1], [0, 3, 1], [-1, 0, 1]):                                # row 2 is one past the end
        with pytest.raises(ValueError, match="payload row that does not exist"):
            _flight_state(2, 2, src, 3, 3)


def test_async_options_are_checked(mlp, trainer):
    tr = trainer(mlp)
    for kwargs, what in [({"interval": (0, 3)}, "interval"), ({"interval": (4, 3)}, "interval"),
                         ({"delay": -1}, "delay >= 0"), ({"churn": 1.0}, "churn < 1"), ({"churn": -0.1}, "churn"),
                         ({"churn_ticks": (0, 5)}, "churn_ticks"), ({"churn_ticks": (6, 5)}, "churn_ticks")]:
        with pytest.raises(ValueError, match=what):
            AsyncGossip(tr, **kwargs)
    AsyncGossip(tr, interval=(3, 3), churn=0.99, churn_ticks=(3, 3))                  # the bounds are allowed


def _small_mlp(hidden=(4,)):
    return build_model("mlp", (1, 8, 8), 10, hidden)


def test_initial_state_shapes_and_dtypes_follow_the_federation(make_fed, trainer):
    sched = topologies.Static(topologies.metropolis_hastings(topologies.ring(5)))
    fed = dataclasses.replace(make_fed(5, schedule=sched), dtype=torch.float64)
    model = _small_mlp()
    spec = ParamSpec.of(model)
    for avg, L in [(Averaging("beta"), 0), (Averaging("plain"), 0),
                   (Averaging("variance_corrected"), len(corrected_slices(spec, "weights")))]:
        state = AsyncGossip(trainer(model, momentum=0.9), averaging=avg).init(fed)
        p = spec.size
        for name, shape, dtype in [("x", (5, p), torch.float64), ("momentum", (5, p), torch.float64),
                                   ("inbox_total", (5, p), torch.float64), ("inbox_weight", (5,), torch.float64),
                                   ("inbox_count", (5,), torch.int64), ("inbox_variance", (5, L), torch.float64),
                                   ("flight_payload", (0, p), torch.float64), ("flight_weight", (0,), torch.float64),
                                   ("next_train", (5,), torch.int64), ("offline_until", (5,), torch.int64),
                                   ("flight_arrival", (0,), torch.int64), ("flight_src", (0,), torch.int64),
                                   ("flight_dst", (0,), torch.int64)]:
            value = getattr(state, name)
            assert value.shape == shape and value.dtype == dtype, (avg.rule, name)
        assert torch.equal(state.x, state.x[:1].expand(5, -1))                  # same_init: one shared model


def test_init_scheme_and_same_init_reach_the_initial_models(make_fed, trainer):
    fed = make_fed(4, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(4))))
    model = _small_mlp()
    spec = ParamSpec.of(model)
    x = AsyncGossip(trainer(model), init_scheme="xavier").init(fed).x
    offset = 0
    for shape, size in zip(spec.shapes, spec.sizes):
        if len(shape) == 1:
            assert not x[:, offset:offset + size].any()                            # xavier: zero biases
        offset += size
    assert x.abs().sum() > 0 and torch.equal(x, x[:1].expand(4, -1))
    # the same models as synchronous gossip draws for the same options
    for same in (True, False):
        for scheme in ("default", "xavier"):
            a = AsyncGossip(trainer(model), same_init=same, init_scheme=scheme).init(fed).x
            s = Gossip(trainer(model), same_init=same, init_scheme=scheme).init(fed).x
            assert torch.equal(a, s), (same, scheme)
    assert not torch.equal(a[0], a[1])                                              # same_init=False: own draws


def test_corrected_tensors_follow_the_options_and_the_model_on_one_federation(make_fed, trainer):
    """The corrected slices are derived once per (option, model): another ``tensors`` option, or another model, on
    the same federation gets its own."""
    fed = make_fed(4, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(4))))
    small, deep = _small_mlp((4,)), _small_mlp((4, 4))
    for model, tensors in [(small, "weights"), (small, "all_but_bn_stats"), (deep, "all_but_bn_stats"),
                           (deep, "weights"), (small, "weights")]:
        avg = Averaging("variance_corrected", tensors=tensors)
        state = AsyncGossip(trainer(model), averaging=avg).init(fed)
        assert state.inbox_variance.shape[1] == len(corrected_slices(ParamSpec.of(model), tensors)), (model, tensors)


# -- asynchronous gossip: ticks against per-node references ----------------------------------------------

def _per_node(x: torch.Tensor, senders_of, avg: Averaging, spec: ParamSpec, W=None) -> torch.Tensor:
    """x_i <- average_node(x_i, [x_j for j in senders_of(i)]) (float64), nodes without senders unchanged."""
    out = x.double().clone()
    for i in range(len(x)):
        js = senders_of(i)
        if js:
            w = None if W is None else torch.tensor([float(W[i, j]) for j in js], dtype=torch.float64)
            out[i] = average_node(x[i].double(), x[js].double(), avg, spec,
                                  own_weight=None if W is None else float(W[i, i]), weights=w)
    return out


def test_an_isolated_node_neither_averages_nor_breaks_the_tick(make_fed, trainer):
    """Ring of 5 with the links 3-4 and 4-0 failed: node 4 has no neighbour (the last row of W is e_4), the others
    form the path 0-1-2-3. Node 4 never averages (nothing arrives) and is not counted as averaging."""
    W = topologies.with_failed_links(topologies.ring(5), [(3, 4), (4, 0)])
    fed = make_fed(5, schedule=topologies.Static(W, allow_disconnected=True))
    model = _small_mlp()
    alg = AsyncGossip(trainer(model, steps=0), averaging=Averaging("beta", beta=0.5), interval=(1, 1), same_init=False)
    res = simulate(alg, fed, 2, eval_every=0)
    assert [r["averaged"] for r in res.history] == [4, 4]
    Wd = W.toarray()
    neighbours = lambda i: [j for j in range(5) if j != i and Wd[i, j] != 0]
    x = alg.init(fed).x
    for _ in range(2):
        x = _per_node(x, neighbours, alg.averaging, ParamSpec.of(model)).float()
    torch.testing.assert_close(res.state.x.double(), x.double(), atol=F32, rtol=0)
    assert torch.equal(res.state.x[4], alg.init(fed).x[4])


def test_plain_rule_weights_keep_the_federations_precision(make_fed, trainer):
    """float64 federation, plain rule on a dense 3-node W with weights 0.1 / 0.2 / 0.3 (not exact in float32): one
    tick of everyone sending is x <- W x, to float64 rounding (float32 weights would be off by ~1e-9)."""
    W = torch.tensor([[0.6, 0.1, 0.3], [0.1, 0.7, 0.2], [0.3, 0.2, 0.5]], dtype=torch.float64)
    fed = dataclasses.replace(make_fed(3, schedule=topologies.Static(W.numpy())), dtype=torch.float64)
    alg = AsyncGossip(trainer(_small_mlp(), steps=0), averaging=Averaging("plain"), interval=(1, 1), same_init=False)
    x0 = alg.init(fed).x
    res = simulate(alg, fed, 1, eval_every=0)
    torch.testing.assert_close(res.state.x, W @ x0, atol=EXACT, rtol=0)
    assert float((W @ x0 - x0).abs().max()) > 1e-3                                 # the tick did mix


class _CompleteThenRing:
    """K4 at tick 0 (degree 3), a ring of 4 afterwards (degree 2): an inbox short of its degree at tick 0 is full
    at tick 1 without any new message."""

    n, directed = 4, False

    def __init__(self):
        self.first = topologies.metropolis_hastings(nx.complete_graph(4))
        self.rest = topologies.metropolis_hastings(topologies.ring(4))

    def at(self, t):
        return self.first if t == 0 else self.rest


def _drop_from_next(msgs: Messages) -> Messages:
    """Tap: node i never hears from node i + 1 (mod 4)."""
    return msgs.drop(msgs.edge_senders.to(msgs.dst.device) == (msgs.dst + 1) % 4)


@pytest.mark.parametrize("delay", [0, 1])
def test_inboxes_filled_earlier_average_and_empty_when_the_degree_drops(make_fed, trainer, delay):
    """Tick 0: everyone sends on K4, the tap drops one message per receiver (2 of 3 arrive, at tick 0 or, with
    delay 1, at tick 1); nobody averages at tick 0. Tick 1: nobody sends (interval 2), the degree is 2, so every
    node averages the two models in its inbox (float64, unbiased variances: a per-node reference) and every inbox
    is empty again; the state after tick 0 is left as it was."""
    fed = dataclasses.replace(make_fed(4, schedule=_CompleteThenRing()), dtype=torch.float64)
    model = _small_mlp()
    avg = Averaging("variance_corrected", beta=0.3, tensors="all_but_bn_stats", unbiased=True)
    alg = AsyncGossip(trainer(model, steps=0), averaging=avg, interval=(2, 2), delay=delay, same_init=False)
    s0 = alg.init(fed)
    s1, m1 = alg.round(s0, 0, fed, _drop_from_next)
    assert m1["averaged"] == 0
    kept = {f.name: getattr(s1, f.name).clone() for f in dataclasses.fields(s1) if getattr(s1, f.name) is not None}
    s2, m2 = alg.round(s1, 1, fed, _drop_from_next)
    assert m2["participants"] == 0 and m2["averaged"] == 4
    want = _per_node(s0.x, lambda i: [(i + 2) % 4, (i + 3) % 4], avg, ParamSpec.of(model))
    torch.testing.assert_close(s2.x, want, atol=EXACT, rtol=0)
    for name in ("inbox_total", "inbox_weight", "inbox_count", "inbox_variance"):
        assert not getattr(s2, name).any(), name
    assert len(s2.flight_payload) == 0 and len(s2.flight_src) == 0
    for name, value in kept.items():
        assert torch.equal(getattr(s1, name), value), name


def test_in_place_ticks_sum_into_the_given_inbox_tensors(make_fed, trainer):
    """``in_place``: the round changes the given state's tensors and returns them (no copies of the inbox sums),
    with the same numbers as the copying ticks."""
    fed = make_fed(6, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(6))))
    avg = Averaging("variance_corrected", beta=0.5)
    tap = LinkDrop(0.3, seed=4)
    copying = AsyncGossip(trainer(_small_mlp(), steps=1), averaging=avg, interval=(1, 2), same_init=False)
    in_place = dataclasses.replace(copying, in_place=True)
    a, b = copying.init(fed), in_place.init(fed)
    inbox = (b.inbox_total, b.inbox_weight, b.inbox_count, b.inbox_variance)
    for t in range(5):
        a, _ = copying.round(a, t, fed, tap)
        b, _ = in_place.round(b, t, fed, tap)
        assert all(new is old for new, old in zip((b.inbox_total, b.inbox_weight, b.inbox_count, b.inbox_variance),
                                                  inbox)), t
        for f in dataclasses.fields(a):
            old, new = getattr(a, f.name), getattr(b, f.name)
            assert (old is None and new is None) or torch.equal(old, new), (t, f.name)


def test_in_place_ticks_where_every_node_averages(make_fed, trainer):
    """Every clock at 1, no loss: every node trains, receives and averages in every tick; the in-place inbox
    tensors are emptied where they are."""
    fed = make_fed(5, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(5))))
    alg = AsyncGossip(trainer(_small_mlp(), steps=1), averaging=Averaging("beta"), interval=(1, 1), same_init=False,
                      in_place=True)
    state = alg.init(fed)
    inbox = (state.inbox_total, state.inbox_weight, state.inbox_count, state.inbox_variance)
    for t in range(3):
        state, metrics = alg.round(state, t, fed, lambda m: m)
        assert metrics["averaged"] == 5
        for new, old in zip((state.inbox_total, state.inbox_weight, state.inbox_count, state.inbox_variance), inbox):
            assert new is old and not new.any()


def test_train_loss_is_the_mean_of_the_trainers_losses(make_fed, trainer):
    fed = make_fed(5, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(5))))
    tr = trainer(_small_mlp(), steps=2)
    alg = AsyncGossip(tr, interval=(3, 3), same_init=False)
    res = simulate(alg, fed, 2, eval_every=0)
    want = tr.train_loop(alg.init(fed).x, torch.arange(5), 0, fed.data, fed.streams).losses.double().mean()
    assert res.history[0]["train_loss"] == pytest.approx(float(want), abs=1e-5)
    assert math.isnan(res.history[1]["train_loss"])                               # nobody trained at tick 1


@pytest.mark.parametrize("avg", [Averaging("plain"), Averaging("variance_corrected")], ids=lambda a: a.rule)
@pytest.mark.parametrize("delay", [0, 2])
def test_a_tap_that_returns_a_float64_payload(make_fed, trainer, avg, delay):
    """A perturbing tap may hand back its payload in float64 (and W is float64 in scipy): the inboxes, the
    messages in flight and the models stay in the federation's float32, with the same numbers as without the tap
    (the float32 values survive the round trip)."""
    fed = make_fed(5, schedule=topologies.Static(topologies.metropolis_hastings(topologies.ring(5))))
    alg = AsyncGossip(trainer(_small_mlp(), steps=1), averaging=avg, interval=(1, 2), delay=delay, same_init=False)
    plain = simulate(alg, fed, 3, eval_every=0).state
    wide = simulate(alg, fed, 3, taps=[lambda m: m.with_payload(m.payload.double())], eval_every=0).state
    assert len(wide.flight_weight) > 0 if delay else len(wide.flight_weight) == 0
    for f in dataclasses.fields(wide):
        value = getattr(wide, f.name)
        if value is not None and value.is_floating_point():
            assert value.dtype == torch.float32, f.name
    torch.testing.assert_close(wide.x, plain.x, atol=F32, rtol=0)
