"""Asynchronous gossip (ticks, clocks, inboxes, delays, churn) against a per-node event loop and the sync round."""

import dataclasses

import pytest
import torch

import topologies
from fedsim.algorithms import AsyncGossip, Gossip
from fedsim.averaging import Averaging, average_node
from fedsim.engine import simulate
from fedsim.messages import LinkDrop, Messages
from fedsim.state import ParamSpec

ATOL = 1e-5   # float32 training, batched vs per-node torch.optim (as in test_engine.py)

RULES = [Averaging("beta", beta=0.5), Averaging("plain"),
         Averaging("variance_corrected", beta=0.3, target="follow_beta", tensors="all_but_bn_stats", eps=1e-4)]


@pytest.fixture
def regular_fed(make_fed):
    return make_fed(8, schedule=topologies.Static(topologies.metropolis_hastings(topologies.random_regular(8, 3,
                                                                                                           seed=0))))


@pytest.mark.parametrize("avg", RULES, ids=lambda a: a.rule)
def test_every_clock_at_one_tick_is_the_synchronous_round(regular_fed, mlp, trainer, avg):
    tr = trainer(mlp, steps=1, momentum=0.9)
    sync = simulate(Gossip(tr, same_init=False, averaging=avg), regular_fed, 4, eval_every=0)
    tick = simulate(AsyncGossip(tr, averaging=avg, interval=(1, 1), same_init=False), regular_fed, 4, eval_every=0)
    # sync: one sparse product per round (W, or beta on the diagonal next to (1 - beta) / count); async: running
    # inbox sums, then (w_own x_i + total) / (w_own + weight) or the lerp of the mean: the same numbers summed in
    # another order (float32 rounding, ~1e-7 per round)
    torch.testing.assert_close(tick.state.x, sync.state.x, atol=1e-6, rtol=0)
    torch.testing.assert_close(tick.state.momentum, sync.state.momentum, atol=1e-5, rtol=0)
    assert [r["averaged"] for r in tick.history] == [8] * 4 and [r["participants"] for r in tick.history] == [8] * 4


def reference(alg: AsyncGossip, fed, ticks: int, loss: LinkDrop | None = None):
    """The asynchronous protocol one node and one message at a time (Python lists for inboxes and flights)."""
    n, spec = fed.data.n_clients, ParamSpec.of(alg.trainer.model)
    state = alg.init(fed)
    x = [state.x[i].clone() for i in range(n)]
    buf = [None if state.momentum is None else state.momentum[i].clone() for i in range(n)]
    next_train, offline_until = [0] * n, [0] * n
    inbox = [[] for _ in range(n)]
    flight = []
    for t in range(ticks):
        W = fed.schedule.at(t).toarray()
        for i in range(n):
            if alg.churn and offline_until[i] <= t:
                u = float(fed.streams.uniform("churn", torch.tensor([i]), t, dtype=torch.float64)[0])
                if u < alg.churn:
                    lo, hi = alg.churn_ticks
                    offline_until[i] = t + lo + int(fed.streams.randint("churn_ticks", torch.tensor([i]), t,
                                                                        hi - lo + 1)[0])
        online = [offline_until[i] <= t for i in range(n)]
        for arrival, j, model, w in [f for f in flight if f[0] == t]:
            if online[j]:
                inbox[j].append((model, w))
        flight = [f for f in flight if f[0] != t]
        for i in range(n):
            if not (online[i] and next_train[i] <= t):
                continue
            out = alg.trainer.train_loop(x[i][None], torch.tensor([i]), t, fed.data, fed.streams,
                                         momentum=None if buf[i] is None else buf[i][None])
            x[i] = out.params[0]
            if buf[i] is not None:
                buf[i] = out.momentum[0]
            lo, hi = alg.interval
            next_train[i] = t + lo + int(fed.streams.randint("clock", torch.tensor([i]), t, hi - lo + 1)[0])
            for j in range(n):
                if j == i or W[j, i] == 0:
                    continue
                if loss is not None:
                    one = Messages.make(t, "gossip", [i], x[i][None], [0], [j])
                    if not bool(loss(one).delivered[0]):
                        continue
                w = float(W[j, i]) if alg.averaging.rule == "plain" else 1.0
                if alg.delay:
                    flight.append((t + alg.delay, j, x[i].clone(), w))
                elif online[j]:
                    inbox[j].append((x[i].clone(), w))
        for i in range(n):
            degree = int((W[i] != 0).sum()) - 1
            if online[i] and inbox[i] and len(inbox[i]) >= degree:
                models = torch.stack([m for m, _ in inbox[i]])
                weights = torch.tensor([w for _, w in inbox[i]])
                x[i] = average_node(x[i], models, alg.averaging, spec, own_weight=float(W[i, i]), weights=weights)
                inbox[i] = []
    return torch.stack(x)


@pytest.mark.parametrize("avg", RULES, ids=lambda a: a.rule)
@pytest.mark.parametrize("faults", [{}, {"delay": 2}, {"churn": 0.15, "churn_ticks": (2, 4)},
                                    {"delay": 1, "churn": 0.1, "churn_ticks": (1, 3)}],
                         ids=["clocks", "delay", "churn", "delay+churn"])
def test_batched_ticks_equal_the_per_node_event_loop(regular_fed, mlp, trainer, avg, faults):
    alg = AsyncGossip(trainer(mlp, steps=1, momentum=0.9), averaging=avg, interval=(1, 3), same_init=False, **faults)
    loss = LinkDrop(0.2, seed=5)
    want = reference(alg, regular_fed, 12, loss)
    res = simulate(alg, regular_fed, 12, taps=[loss], eval_every=0)
    assert sum(r["averaged"] for r in res.history) > 8                     # averaging happened
    if "churn" in faults:
        assert max(r["offline"] for r in res.history) > 0
    torch.testing.assert_close(res.state.x, want, atol=ATOL, rtol=0)
    slow = simulate(dataclasses.replace(alg, vectorized=False), regular_fed, 12, taps=[loss], eval_every=0)
    torch.testing.assert_close(slow.state.x, want, atol=ATOL, rtol=0)


def test_time_varying_graph_sends_along_each_ticks_edges(make_fed, mlp, trainer):
    """Link failures every tick: a node sends to, and waits for, its neighbours in that tick's graph."""
    fed = make_fed(8, schedule=topologies.LinkFailures(topologies.random_regular(8, 4, seed=1), q=0.3, seed=2))
    alg = AsyncGossip(trainer(mlp, steps=1), averaging=Averaging("beta", beta=0.5), interval=(1, 2), same_init=False)
    res = simulate(alg, fed, 10, eval_every=0)
    torch.testing.assert_close(res.state.x, reference(alg, fed, 10), atol=ATOL, rtol=0)
    assert sum(r["averaged"] for r in res.history) > 8


def test_resume_mid_flight_is_bit_for_bit(regular_fed, mlp, trainer):
    alg = AsyncGossip(trainer(mlp, steps=1, momentum=0.9), averaging=Averaging("variance_corrected"),
                      interval=(1, 4), delay=3, churn=0.1, churn_ticks=(2, 5), same_init=False)
    taps = [LinkDrop(0.1, seed=1)]
    full = simulate(alg, regular_fed, 14, taps=taps, eval_every=7)
    first = simulate(alg, regular_fed, 7, taps=taps, eval_every=7)
    assert len(first.state.flight_payload) > 0                            # messages in flight at the break
    rest = simulate(alg, regular_fed, 14, state=first.state, start_round=7, history=first.history, taps=taps,
                    eval_every=7)
    nan_as_none = lambda h: [{k: None if v != v else v for k, v in row.items()} for row in h]  # noqa: E731
    assert nan_as_none(rest.history) == nan_as_none(full.history)         # (ticks with no training: NaN loss)
    for f in dataclasses.fields(full.state):
        a, b = getattr(rest.state, f.name), getattr(full.state, f.name)
        assert (a is None and b is None) or torch.equal(a, b), f.name


def test_clocks_draw_intervals_in_range_and_offline_nodes_stay_put(regular_fed, mlp, trainer):
    alg = AsyncGossip(trainer(mlp, steps=1), interval=(8, 12), churn=0.05, churn_ticks=(3, 6))
    res = simulate(alg, regular_fed, 40, eval_every=0)
    trained = [r["participants"] for r in res.history]
    assert trained[0] == 8 and sum(trained[1:8]) == 0                     # everyone at tick 0, nobody until 8
    assert 8 * 3 <= sum(trained) <= 8 * 5                                   # 40 ticks at 8-12 ticks a training
    assert 0 < max(r["offline"] for r in res.history) < 8


def test_async_mode_refuses_directed_graphs(make_fed, mlp, trainer):
    fed = make_fed(5, schedule=topologies.PushSum(topologies.directed_ring(5)))
    with pytest.raises(ValueError, match="undirected"):
        AsyncGossip(trainer(mlp)).init(fed)


# -- delays in synchronous rounds ------------------------------------------------------------------------

def test_push_sum_with_delays_and_losses_converges_to_the_true_average(make_fed, mlp, trainer):
    """Directed ring, every message 2 rounds in flight, 20 % lost: push-sum keeps the mass (nodes + in flight)
    and every node's estimate x / w reaches the initial average."""
    sched = topologies.PushSum(topologies.directed_ring(6))
    fed = make_fed(6, schedule=sched)
    alg = Gossip(trainer(mlp, steps=0), same_init=False, delay=2)
    x0 = alg.init(fed).x.double()
    A = torch.as_tensor(sched.at(0).toarray())
    off = A - torch.diag(torch.diag(A))
    state = alg.init(fed)
    for t in range(0, 600, 100):
        state = simulate(alg, fed, t + 100, state=state, start_round=t, taps=[LinkDrop(0.2, seed=1)],
                         eval_every=0).state
        # mass in flight: the delivered shares A_ij p_j of the payloads still travelling
        s_e, r_e = alg._mixing(fed, 0).edges()
        flying = 0
        for slot in range(2):
            ok = state.flight_delivered[slot]
            flying = flying + (off[r_e, s_e][ok, None] * state.flight_payload[slot].double()[s_e[ok]]).sum(0)
        total = torch.cat([state.x.double(), state.w.double()[:, None]], 1).sum(0) + flying
        torch.testing.assert_close(total[:-1], x0.sum(0), atol=1e-4, rtol=0)      # float32 values, 600 rounds
        assert abs(float(total[-1]) - 6) < 1e-4
    torch.testing.assert_close(state.models.double(), x0.mean(0).expand(6, -1), atol=1e-4, rtol=0)


def test_plain_gossip_with_a_delay_equals_a_dense_reference(make_fed, mlp, trainer):
    """Undirected, delay 1: x(t+1) = W~_own x(t) + sum_j W_ij p_j(t-1) over the messages that arrive now."""
    W = topologies.uniform_neighbour(topologies.star(5))                   # not symmetric
    fed = make_fed(5, schedule=topologies.Static(W))
    tr = trainer(mlp)
    alg = Gossip(tr, same_init=False, delay=1)
    D = torch.as_tensor(W.toarray())
    diag, off = torch.diag(D), D - torch.diag(torch.diag(D))
    x = alg.init(fed).x.double()
    previous = None
    for t in range(4):
        sent = tr.train_loop(x.float(), torch.arange(5), t, fed.data, fed.streams).params.double()
        if previous is None:
            x = sent                                                         # nothing arrives in round 0
        else:
            x = diag[:, None] * sent + off @ previous
        previous = sent
    got = simulate(alg, fed, 4, eval_every=0).state.x.double()
    torch.testing.assert_close(got, x, atol=ATOL, rtol=0)
    slow = simulate(dataclasses.replace(alg, vectorized=False), fed, 4, eval_every=0).state.x.double()
    torch.testing.assert_close(slow, x, atol=ATOL, rtol=0)
