"""Averaging rules: hand-computed cases, the vanishing-variance numbers, batched == per node, and in the engine."""

import itertools
import math

import pytest
import torch

import topologies
from fedsim.algorithms import Gossip
from fedsim.averaging import (Averaging, Inbox, average_inbox, average_node, average_received, corrected_slices,
                              tensor_variances)
from fedsim.engine import simulate
from fedsim.messages import LinkDrop
from fedsim.state import ParamSpec

# a weight matrix [2, 2] (4 entries), a bias [2] and a one-element tensor [1]
SPEC = ParamSpec(("w", "b", "s"), ((2, 2), (2,), (1,)))


def _pvar(values, unbiased=False):
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - (1 if unbiased else 0))


def _rescaled(mix, target, eps=0.0, unbiased=False):
    m, v = sum(mix) / len(mix), _pvar(mix, unbiased)
    f = math.sqrt((target + eps) / (v + eps))
    return [(a - m) * f + m for a in mix]


OWN = [1.0, 2.0, 3.0, 4.0, 0.5, -0.5, 7.0]
R1 = [2.0, 0.0, -2.0, 4.0, 1.0, 1.0, 1.0]
R2 = [0.0, 6.0, 1.0, -3.0, 0.0, 2.0, 3.0]


@pytest.mark.parametrize("target, tensors, eps, unbiased", list(itertools.product(
    ["others", "follow_beta"], ["weights", "all_but_bn_stats"], [0.0, 1e-4], [False, True])))
def test_hand_computed_two_tensor_case_for_every_option(target, tensors, eps, unbiased):
    beta = 0.3
    avg = Averaging("variance_corrected", beta=beta, target=target, tensors=tensors, eps=eps, unbiased=unbiased)
    mix = [beta * o + (1 - beta) * (a + b) / 2 for o, a, b in zip(OWN, R1, R2)]
    want = list(mix)
    parts = [slice(0, 4)] + ([slice(4, 6)] if tensors == "all_but_bn_stats" else [])   # never the 1-element one
    for s in parts:
        others = (_pvar(R1[s], unbiased) + _pvar(R2[s], unbiased)) / 2
        goal = others if target == "others" else beta * _pvar(OWN[s], unbiased) + (1 - beta) * others
        want[s] = _rescaled(mix[s], goal, eps, unbiased)
    got = average_node(torch.tensor(OWN, dtype=torch.float64), torch.tensor([R1, R2], dtype=torch.float64), avg, SPEC)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    assert got[6] == pytest.approx(mix[6])                              # the one-element tensor is left alone
    if tensors == "weights":
        torch.testing.assert_close(got[4:6], torch.tensor(mix[4:6], dtype=torch.float64), atol=1e-12, rtol=0)


def test_hand_computed_plain_and_beta_rules():
    own, rec = torch.tensor(OWN, dtype=torch.float64), torch.tensor([R1, R2], dtype=torch.float64)
    beta = average_node(own, rec, Averaging("beta", beta=0.5), SPEC)
    torch.testing.assert_close(beta, torch.tensor([0.5 * o + 0.25 * (a + b) for o, a, b in zip(OWN, R1, R2)],
                                                  dtype=torch.float64))
    zero = average_node(own, rec, Averaging("beta", beta=0.0), SPEC)
    torch.testing.assert_close(zero, torch.tensor([(a + b) / 2 for a, b in zip(R1, R2)], dtype=torch.float64))
    plain = average_node(own, rec, Averaging("plain"), SPEC, own_weight=0.5, weights=torch.tensor([0.3, 0.2]))
    torch.testing.assert_close(plain, torch.tensor([0.5 * o + 0.3 * a + 0.2 * b for o, a, b in zip(OWN, R1, R2)],
                                                   dtype=torch.float64))
    lonely = average_node(own, rec[:0], Averaging("variance_corrected"), SPEC)
    assert torch.equal(lonely, own)                                     # nothing arrived: the model stays


def test_a_zero_variance_mix_is_left_alone_without_eps():
    flat = torch.ones(7, dtype=torch.float64)
    got = average_node(flat, torch.stack([flat, 2 * flat]), Averaging("variance_corrected", beta=0.5), SPEC)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, 1.25 * flat)                        # 0.5 * 1 + 0.5 * mean(1, 2)


# -- the vanishing-variance numbers ----------------------------------------------------------------------

BIG = ParamSpec(("conv", "fc", "bias"), ((50, 20, 5, 5), (500, 800), (500,)))


def _xavier_like(n, seed=0):
    """n independent models whose weight tensors have variance 1 (zero-mean uniform), biases 0."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, BIG.size, generator=g, dtype=torch.float64) * 2 - 1) * math.sqrt(3.0)
    x[:, BIG.size - 500:] = 0
    return x


@pytest.mark.parametrize("rule, want", [("beta", 0.25 + 1 / 32), ("variance_corrected", 1.0)])
def test_one_mix_of_nine_independent_models(rule, want):
    """Each of 9 nodes mixes 0.5 * own + 0.5 * mean(other 8): 1/4 + 1/32 of the variance left; corrected ~1."""
    x = _xavier_like(9)
    avg = Averaging(rule, beta=0.5)
    for i in range(9):
        others = torch.cat([x[:i], x[i + 1:]])
        out = average_node(x[i], others, avg, BIG)
        ratios = tensor_variances(out, corrected_slices(BIG, "weights"))
        assert torch.allclose(ratios, torch.full_like(ratios, want), atol=0.02), (i, ratios)


# -- batched == per node ---------------------------------------------------------------------------------

OPTIONS = [Averaging("beta", beta=0.5), Averaging("beta", beta=0.3), Averaging("beta", beta=0.0), Averaging("plain")] + [
    Averaging("variance_corrected", beta=b, target=t, tensors=k, eps=e, unbiased=u)
    for b, t, k, e, u in itertools.product([0.3, 0.0], ["others", "follow_beta"], ["weights", "all_but_bn_stats"],
                                           [0.0, 1e-4], [False, True])]


@pytest.mark.parametrize("avg", OPTIONS, ids=lambda a: f"{a.rule}-{a.beta}-{a.target}-{a.tensors}-{a.eps}-{a.unbiased}")
def test_batched_inbox_equals_the_per_node_rule(avg):
    """Random deliveries (some nodes get nothing, some get a model twice) through running sums vs per node."""
    g = torch.Generator().manual_seed(1)
    n, m = 6, 5
    own = torch.randn(n, SPEC.size, generator=g, dtype=torch.float64)
    payload = torch.randn(m, SPEC.size, generator=g, dtype=torch.float64) * 2 + 1
    receivers = torch.tensor([0, 0, 1, 1, 1, 3, 3, 4, 0])
    rows = torch.tensor([1, 2, 0, 3, 4, 1, 1, 2, 4])                     # node 3 gets payload row 1 twice
    weights = torch.rand(len(rows), generator=g, dtype=torch.float64)
    own_weight = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    slices = corrected_slices(SPEC, avg.tensors) if avg.corrects else []
    variances = tensor_variances(payload, slices, avg.unbiased)
    w = weights if avg.rule == "plain" else torch.ones_like(weights)
    half = 5                                                             # two deliveries add up to one
    inbox = Inbox.received(n, receivers[:half], rows[:half], payload, w[:half], variances) + \
        Inbox.received(n, receivers[half:], rows[half:], payload, w[half:], variances)
    got = average_inbox(own, inbox, avg, slices, own_weight=own_weight)
    for i in range(n):
        mine = receivers == i
        want = average_node(own[i], payload[rows[mine]], avg, SPEC, own_weight=float(own_weight[i]),
                            weights=weights[mine])
        torch.testing.assert_close(got[i], want, atol=1e-12, rtol=0)
    assert torch.equal(got[2], own[2]) and torch.equal(got[5], own[5])   # nothing arrived


@pytest.mark.parametrize("payload_is_own", [True, False])
@pytest.mark.parametrize("avg", [a for a in OPTIONS if a.rule != "plain"],
                         ids=lambda a: f"{a.rule}-{a.beta}-{a.target}-{a.tensors}-{a.eps}-{a.unbiased}")
def test_one_delivery_as_one_product_equals_the_per_node_rule(avg, payload_is_own):
    """The synchronous form (``average_received``: beta on the diagonal when the payload rows are the nodes' own
    models, else ``beta own + A payload``) against the per-node rule; node 2 and 5 receive nothing."""
    g = torch.Generator().manual_seed(2)
    n = 6
    own = torch.randn(n, SPEC.size, generator=g, dtype=torch.float64)
    payload = own if payload_is_own else torch.randn(n, SPEC.size, generator=g, dtype=torch.float64) * 2 + 1
    receivers = torch.tensor([0, 0, 1, 1, 1, 3, 4, 0, 3])
    rows = torch.tensor([1, 2, 0, 3, 4, 1, 2, 4, 0])
    slices = corrected_slices(SPEC, avg.tensors) if avg.corrects else []
    got = average_received(own, receivers, rows, payload, avg, slices)
    for i in range(n):
        want = average_node(own[i], payload[rows[receivers == i]], avg, SPEC)
        torch.testing.assert_close(got[i], want, atol=1e-12, rtol=0)
    assert torch.equal(got[2], own[2]) and torch.equal(got[5], own[5])
    with pytest.raises(ValueError, match="plain"):
        average_received(own, receivers, rows, payload, Averaging("plain"), slices)


@pytest.mark.parametrize("mean", [0.0, 0.3, 30.0])
def test_float32_tensor_variances_match_float64_whatever_the_mean(mean):
    """Small means take the one-read sum-of-squares path, large ones the two-pass path: both within 1e-5 of a
    float64 reference; a constant tensor has variance 0 (no cancellation residue)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 3000, generator=g) * 0.05 + mean
    x[7, :2000] = 0.1                                                    # constant first tensor in one row
    slices = [slice(0, 2000), slice(2000, 3000)]
    got = tensor_variances(x, slices)
    want = torch.stack([x.double()[:, s].var(-1, correction=0) for s in slices], -1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-12)
    assert got[7, 0] < 1e-13


def test_cleared_rows_start_again():
    inbox = Inbox.received(3, torch.tensor([0, 1]), torch.tensor([0, 0]), torch.ones(1, 4), torch.ones(2),
                           torch.zeros(1, 0))
    left = inbox.cleared(torch.tensor([True, False, False]))
    assert left.count.tolist() == [0, 1, 0] and left.total[0].abs().sum() == 0 and left.total[1].sum() == 4


def test_bad_options_are_named():
    for kwargs, what in [({"rule": "median"}, "rule"), ({"beta": 1.0}, "beta"), ({"target": "self"}, "target"),
                         ({"tensors": "biases"}, "tensors"), ({"eps": -1.0}, "eps")]:
        with pytest.raises(ValueError, match=what):
            Averaging(**kwargs)


# -- in the engine ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("avg", [Averaging("beta"), Averaging("variance_corrected", target="follow_beta",
                                                                   tensors="all_but_bn_stats", eps=1e-4)])
def test_gossip_round_with_a_buffer_rule_batched_equals_per_node(make_fed, mlp, trainer, avg):
    sched = topologies.Static(topologies.metropolis_hastings(topologies.random_regular(8, 3, seed=0)))
    fed = make_fed(8, schedule=sched)
    fast = simulate(Gossip(trainer(mlp), same_init=False, averaging=avg), fed, 3,
                    taps=[LinkDrop(0.3, seed=2)], eval_every=0).state.x
    slow = simulate(Gossip(trainer(mlp), same_init=False, averaging=avg, vectorized=False), fed, 3,
                    taps=[LinkDrop(0.3, seed=2)], eval_every=0).state.x
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)     # float32 training in two paths (see test_engine)
    plain = simulate(Gossip(trainer(mlp), same_init=False), fed, 3, taps=[LinkDrop(0.3, seed=2)], eval_every=0)
    assert (plain.state.x - fast).abs().max() > 1e-3


def test_buffer_rules_on_a_directed_graph_are_refused(make_fed, mlp, trainer):
    fed = make_fed(5, schedule=topologies.PushSum(topologies.directed_ring(5)))
    with pytest.raises(ValueError, match="undirected"):
        simulate(Gossip(trainer(mlp), averaging=Averaging("variance_corrected")), fed, 1)
