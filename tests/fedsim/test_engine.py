"""The batched engine against the per-client reference loop, determinism, resume and taps."""

import pytest
import torch

import topologies
from fedsim.algorithms import FedAvg, Gossip
from fedsim.engine import simulate
from fedsim.messages import SERVER, Capture, LinkDrop
from fedsim.models import build_model

# Batched (vmap/bmm, chunked) and per-client (nn.Module + torch.optim.SGD) float32 arithmetic sum in
# different orders; after 3 rounds of 2 SGD steps the parameters agree to about 1e-7. We allow 1e-5.
ATOL = 1e-5


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_gossip_batched_equals_per_client_loop(small_fed, mlp, momentum, trainer):
    tr = trainer(mlp, momentum=momentum, weight_decay=1e-3)
    fast = simulate(Gossip(tr, same_init=False), small_fed, 3, eval_every=100)
    slow = simulate(Gossip(tr, same_init=False, vectorized=False), small_fed, 3, eval_every=100)
    assert (fast.state.x - Gossip(tr, same_init=False).init(small_fed).x).abs().max() > 1e-3  # it trained
    torch.testing.assert_close(fast.state.x, slow.state.x, atol=ATOL, rtol=0)


def test_fedavg_batched_equals_per_client_loop_with_sampling(small_fed, mlp, trainer):
    tr = trainer(mlp)
    fast = simulate(FedAvg(tr, clients_per_round=3), small_fed, 3, eval_every=100)
    slow = simulate(FedAvg(tr, clients_per_round=3, vectorized=False), small_fed, 3, eval_every=100)
    torch.testing.assert_close(fast.state.params, slow.state.params, atol=ATOL, rtol=0)
    assert [r["participants"] for r in fast.history] == [3, 3, 3]


def test_lenet_batched_equals_per_client_loop(digits_split, trainer, make_fed):
    sched = topologies.Static(topologies.metropolis_hastings(topologies.ring(4)))
    fed = make_fed(4, schedule=sched)
    tr = trainer(build_model("lenet", (1, 8, 8), 10), lr=0.05)
    fast = simulate(Gossip(tr, same_init=False), fed, 3, eval_every=100)
    slow = simulate(Gossip(tr, same_init=False, vectorized=False), fed, 3, eval_every=100)
    torch.testing.assert_close(fast.state.x, slow.state.x, atol=ATOL, rtol=0)


def test_chunking_does_not_change_results(small_fed, mlp, trainer):
    a = simulate(Gossip(trainer(mlp, chunk=3)), small_fed, 2, eval_every=100).state.x
    b = simulate(Gossip(trainer(mlp, chunk=1024)), small_fed, 2, eval_every=100).state.x
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_fedavg_round_is_weighted_mean_of_local_models(small_fed, mlp, trainer):
    """One FedAvg round by hand: every client trains from the global model; weights = sample counts."""
    tr = trainer(mlp)
    alg = FedAvg(tr, clients_per_round=8)
    state0 = alg.init(small_fed)
    clients = torch.arange(8)
    local = tr.train_loop(state0.params.expand(8, -1), clients, 0, small_fed.data, small_fed.streams).params
    w = small_fed.data.counts.double()
    want = (local.double() * w[:, None]).sum(0) / w.sum()
    got = simulate(alg, small_fed, 1, eval_every=100).state.params
    torch.testing.assert_close(got.double(), want, atol=ATOL, rtol=0)


def test_same_seed_same_history_different_seed_different(digits_split, mlp, trainer, make_fed):
    sched = topologies.Static(topologies.metropolis_hastings(topologies.random_regular(8, 3, seed=0)))
    runs = [simulate(Gossip(trainer(mlp), active_fraction=0.5), make_fed(8, seed=s, schedule=sched),
                     4, taps=[LinkDrop(0.2, seed=s)]) for s in (0, 0, 1)]
    assert runs[0].history == runs[1].history
    assert torch.equal(runs[0].state.x, runs[1].state.x)
    assert runs[0].history != runs[2].history


def test_resume_gives_same_history_as_uninterrupted(small_fed, mlp, trainer):
    alg = Gossip(trainer(mlp), active_fraction=0.5)
    full = simulate(alg, small_fed, 5, taps=[LinkDrop(0.3, seed=1)])
    first = simulate(alg, small_fed, 2, taps=[LinkDrop(0.3, seed=1)], eval_every=1)
    rest = simulate(alg, small_fed, 5, state=first.state, start_round=2, history=first.history,
                    taps=[LinkDrop(0.3, seed=1)])
    assert rest.history == full.history
    assert torch.equal(rest.state.x, full.state.x)


def test_plain_gossip_preserves_mean_and_reaches_consensus(small_fed, mlp, trainer):
    alg = Gossip(trainer(mlp, steps=0), same_init=False)
    x0 = alg.init(small_fed).x.double()
    res = simulate(alg, small_fed, 200, eval_every=1)
    x = res.state.x.double()
    assert torch.allclose(x.mean(0), x0.mean(0), atol=1e-6)
    assert res.history[-1]["consensus"] < 1e-6 * res.history[0]["consensus"]


def test_push_sum_on_directed_graph_converges_to_the_average(small_fed, mlp, trainer):
    sched = topologies.PushSum(topologies.directed_exponential(8))
    fed = small_fed.__class__(**{**small_fed.__dict__, "schedule": sched})
    alg = Gossip(trainer(mlp, steps=0), same_init=False)
    x0 = alg.init(fed).x.double()
    res = simulate(alg, fed, 60, eval_every=1000, taps=[LinkDrop(0.2, seed=3)])
    # push-sum keeps sum(x) and sum(w) (mass conserved even with drops); z = x / w -> average
    assert torch.allclose(res.state.x.double().sum(0), x0.sum(0), atol=1e-4)
    assert abs(float(res.state.w.double().sum()) - 8) < 1e-5
    assert torch.allclose(res.state.models.double(), x0.mean(0).expand(8, -1), atol=1e-4)


def test_byte_counter_counts_every_message(small_fed, mlp, trainer):
    P = sum(p.numel() for p in mlp.parameters())
    res = simulate(Gossip(trainer(mlp)), small_fed, 2, eval_every=100)
    assert res.history[0]["bytes_sent"] == 16 * P * 4   # ring of 8: 16 directed messages of P float32
    res = simulate(FedAvg(trainer(mlp), clients_per_round=3), small_fed, 1, eval_every=100)
    assert res.history[0]["bytes_sent"] == (3 + 3) * P * 4  # 3 downlink + 3 uplink


def test_link_drop_all_messages_means_no_mixing(small_fed, mlp, trainer):
    alg = Gossip(trainer(mlp, steps=0), same_init=False)
    x0 = alg.init(small_fed).x
    res = simulate(alg, small_fed, 3, taps=[LinkDrop(1.0)], eval_every=100)
    assert torch.equal(res.state.x, x0)
    assert res.history[0]["bytes_delivered"] == 0 and res.history[0]["bytes_sent"] > 0


def test_fedavg_drops_clients_whose_uplink_is_lost(small_fed, mlp, trainer):
    res = simulate(FedAvg(trainer(mlp), clients_per_round=8), small_fed, 5, taps=[LinkDrop(0.5, seed=2)],
                   eval_every=100)
    parts = [r["participants"] for r in res.history]
    assert all(0 <= p <= 8 for p in parts) and min(parts) < 8


def test_capture_sees_exactly_the_uploaded_local_models(small_fed, mlp, trainer):
    tr = trainer(mlp)
    cap = Capture(receivers=[SERVER], rounds=[0])
    alg = FedAvg(tr, clients_per_round=4)
    simulate(alg, small_fed, 2, taps=[cap], eval_every=100)
    assert len(cap.records) == 4 and all(r.round == 0 and r.receiver == SERVER for r in cap.records)
    clients = torch.tensor([r.sender for r in cap.records])
    g0 = alg.init(small_fed).params
    local = tr.train_loop(g0.expand(len(clients), -1), clients, 0, small_fed.data, small_fed.streams).params
    torch.testing.assert_close(torch.stack([r.payload for r in cap.records]), local, atol=ATOL, rtol=0)


def test_capture_gossip_neighbour_and_eavesdropper(small_fed, mlp, trainer):
    neighbour = Capture(receivers=[3], rounds=[1])
    link = Capture(links=[(0, 1)])
    simulate(Gossip(trainer(mlp)), small_fed, 2, taps=[neighbour, link], eval_every=100)
    assert sorted(r.sender for r in neighbour.records) == [2, 4]   # ring neighbours of node 3
    assert [(r.sender, r.receiver, r.round) for r in link.records] == [(0, 1, 0), (0, 1, 1)]


def test_gossip_on_disconnected_graph_is_rejected():
    with pytest.raises(topologies.DisconnectedGraphError, match="2 connected components"):
        import networkx as nx
        topologies.validate(nx.union(nx.cycle_graph(3), nx.cycle_graph(range(3, 6))))
