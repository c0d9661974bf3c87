"""Asynchronous gossip's tick never writes into the state it was given; in-place inbox sums equal the plain ones."""

import dataclasses

import pytest
import torch

import topologies
from fedsim.algorithms import AsyncGossip
from fedsim.averaging import Averaging, Inbox, corrected_slices, tensor_variances
from fedsim.engine import simulate
from fedsim.messages import LinkDrop
from fedsim.state import ParamSpec


@pytest.mark.parametrize("faults", [{}, {"delay": 2, "churn": 0.1, "churn_ticks": (1, 3)}], ids=["plain", "faults"])
@pytest.mark.parametrize("interval", [(1, 1), (1, 3)])
def test_a_tick_leaves_every_earlier_state_as_it_was(make_fed, mlp, trainer, faults, interval):
    fed = make_fed(8, schedule=topologies.Static(topologies.metropolis_hastings(topologies.random_regular(8, 3,
                                                                                                         seed=0))))
    alg = AsyncGossip(trainer(mlp, steps=1, momentum=0.9), averaging=Averaging("variance_corrected"),
                      interval=interval, same_init=False, **faults)
    kept = []

    def keep(t, state, history):   # every state handed out, and a copy of its values at that time
        kept.append((state, {f.name: getattr(state, f.name).clone() for f in dataclasses.fields(state)}))

    first = alg.init(fed)
    snapshot = {f.name: getattr(first, f.name).clone() for f in dataclasses.fields(first)}
    res = simulate(alg, fed, 10, state=first, taps=[LinkDrop(0.2, seed=3)], eval_every=0, on_round=keep)
    assert sum(r["averaged"] for r in res.history) > 8
    for state, values in [(first, snapshot), *kept]:
        for name, value in values.items():
            assert torch.equal(getattr(state, name), value), name
    again = simulate(alg, fed, 10, state=first, taps=[LinkDrop(0.2, seed=3)], eval_every=0)
    assert torch.equal(again.state.x, res.state.x)                      # the initial state is reusable


@pytest.mark.parametrize("in_place", [False, True])
def test_inbox_plus_equals_adding_a_fresh_inbox(in_place):
    spec = ParamSpec(("w", "b"), ((3, 4), (3,)))
    slices = corrected_slices(spec, "all_but_bn_stats")
    g = torch.Generator().manual_seed(0)
    payload = torch.randn(4, spec.size, generator=g)
    variances = tensor_variances(payload, slices)
    receivers, rows = torch.tensor([2, 0, 2, 5, 2]), torch.tensor([1, 3, 0, 1, 1])   # node 2 gets row 1 twice
    weights = torch.rand(5, generator=g)
    old = Inbox.received(6, torch.tensor([0, 1]), torch.tensor([2, 2]), payload, torch.ones(2), variances)
    want = old + Inbox.received(6, receivers, rows, payload, weights, variances)
    base = Inbox(*(t.clone() for t in (old.total, old.weight, old.count, old.variance)))
    got = base.plus(receivers, rows, payload, weights, variances, in_place=in_place)
    for name in ("total", "weight", "count", "variance"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-6, rtol=0)
        assert (getattr(got, name) is getattr(base, name)) == in_place
    if not in_place:
        assert torch.equal(base.total, old.total)                     # the old sums are left alone
    picked = got.rows(torch.tensor([2, 5]))
    assert picked.count.tolist() == [3, 1] and torch.equal(picked.total, got.total[[2, 5]])
    got.clear_(torch.tensor([2]))
    assert got.count.tolist() == [2, 1, 0, 0, 0, 1] and got.total[2].abs().sum() == 0


@pytest.mark.parametrize("faults", [{}, {"delay": 2, "churn": 0.1, "churn_ticks": (1, 3)}], ids=["plain", "faults"])
@pytest.mark.parametrize("interval", [(1, 1), (1, 3)])
def test_in_place_ticks_give_the_same_run_bit_for_bit(make_fed, mlp, trainer, faults, interval):
    fed = make_fed(8, schedule=topologies.Static(topologies.metropolis_hastings(topologies.random_regular(8, 3,
                                                                                                         seed=0))))
    alg = AsyncGossip(trainer(mlp, steps=1, momentum=0.9), averaging=Averaging("variance_corrected"),
                      interval=interval, same_init=False, **faults)
    want = simulate(alg, fed, 10, taps=[LinkDrop(0.2, seed=3)], eval_every=5)
    got = simulate(dataclasses.replace(alg, in_place=True), fed, 10, taps=[LinkDrop(0.2, seed=3)], eval_every=5)
    assert got.history == want.history
    for f in dataclasses.fields(want.state):
        assert torch.equal(getattr(got.state, f.name), getattr(want.state, f.name)), f.name
    first = alg.init(fed)
    dataclasses.replace(alg, in_place=True).round(first, 0, fed, lambda m: m)
    assert (first.next_train > 0).all()                                   # the given state was consumed
