"""Gradients recovered from captured gossip messages (curious neighbour, link eavesdropper), against the
gradient computed directly at the victim's state in the simulation; and an end-to-end IG reconstruction.

Tolerances: the recovered gradient is (x - p) / lr, a difference of two model-sized vectors. In float64 it
matches autograd to ~1e-15 relative (we allow 1e-10); in float32 the rounding of x and p (~1e-8 absolute)
divided by lr gives ~1e-6 relative error on this model (we allow 1e-4).
"""

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import topologies
from attacks.capture import (captured_payloads, gossip_gradient, gossip_mixed, lost_links, push_sum_weights)
from attacks.inversion import InversionConfig, invert
from attacks.labels import idlg_label
from attacks.metrics import ssim
from attacks.models import DropoutMLP
from attacks.victims import MNIST_MEAN, MNIST_STD, load_victims, normalize_mnist
from fedsim import data as fdata
from fedsim.algorithms import Gossip
from fedsim.engine import Federation, simulate
from fedsim.messages import Capture, Messages
from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.training import ClientData, LocalSGD

LR, BATCH, T = 0.1, 4, 2          # the attacked round is T (payloads of rounds T - 1 and T are used)
VICTIM = 0
# Victim 0's neighbours are 1, 2, 3. Node 2 hears 0, 1 and 3 (it can rebuild x_0); node 1 hears 0, 2, 4
# but not 3 (it cannot).
GRAPH = nx.Graph([(0, 1), (0, 2), (0, 3), (1, 2), (2, 3), (3, 4), (4, 1)])
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return fdata.load_digits()


def digits_fed(ds, schedule, dtype=torch.float64):
    n = schedule.n
    x = ds.x[:20 * n].astype(np.float64 if dtype == torch.float64 else np.float32)
    data = ClientData.from_parts(x, ds.y[:20 * n], [np.arange(20 * i, 20 * i + 20) for i in range(n)])
    return Federation(data, torch.as_tensor(x[:20]), torch.as_tensor(ds.y[:20]), Streams(0), schedule, dtype=dtype)


def gossip(steps=1):
    return Gossip(LocalSGD(build_model("mlp", (1, 8, 8), 10, (32,)), lr=LR, steps=steps, batch_size=BATCH))


def flat(grads):
    return torch.cat([g.flatten() for g in grads]).double()


def true_gradient(alg, fed, node, t, model_row):
    """Autograd gradient of node's round-t mini-batch loss at ``model_row`` (an independent nn.Module)."""
    idx = fed.data.batch_indices(fed.streams, torch.tensor([node]), t, 1, BATCH)[0, 0]
    model = build_model("mlp", (1, 8, 8), 10, (32,)).to(model_row.dtype)
    torch.nn.utils.vector_to_parameters(model_row.clone(), model.parameters())
    return flat(torch.autograd.grad(F.cross_entropy(model(fed.data.x[idx]), fed.data.y[idx]), list(model.parameters())))


def rel_err(a, b):
    return float((flat(a) - b).norm() / b.norm()) if isinstance(a, list) else float((a - b).norm() / b.norm())


class DropEdge:
    """A tap that drops the message sender -> receiver of one round (injected link failure)."""

    def __init__(self, round, sender, receiver):
        self.round, self.sender, self.receiver = round, sender, receiver

    def __call__(self, msgs: Messages) -> Messages:
        if msgs.round != self.round or msgs.kind != "gossip":
            return msgs
        return msgs.drop((msgs.edge_senders == self.sender) & (msgs.dst == self.receiver))


def neighbour_taps(j):
    """What a curious node j holds: the messages it receives plus its own payloads."""
    return [Capture(receivers=[j]), Capture(senders=[j])]


def eavesdropper_tap(G, i):
    return Capture(links=[(i, k) for k in G[i]] + [(k, i) for k in G[i]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("observer", ["eavesdropper", "neighbour 2"])
def test_exact_recovery_of_a_later_round_gradient(digits, observer, dtype):
    W = topologies.metropolis_hastings(GRAPH)
    fed, alg = digits_fed(digits, topologies.Static(W), dtype), gossip()
    taps = [eavesdropper_tap(GRAPH, VICTIM)] if observer == "eavesdropper" else neighbour_taps(2)
    simulate(alg, fed, T + 1, taps=taps, eval_every=0)
    records = [r for tap in taps for r in tap.records]
    z, grads = gossip_gradient(alg.trainer.model, W, VICTIM, captured_payloads(records, T - 1),
                               captured_payloads(records, T)[VICTIM], LR)
    state = simulate(alg, fed, T, eval_every=0).state          # the victim's model when round T began
    model_atol = 1e-6 if dtype == torch.float32 else 1e-14      # z is rebuilt from payloads in float64
    assert float((z - state.x[VICTIM]).abs().max()) < model_atol
    want = true_gradient(alg, fed, VICTIM, T, state.x[VICTIM])
    assert rel_err(grads, want) < TOL[dtype]


def test_any_receiver_recovers_the_first_gradient_from_the_common_init(digits):
    W = topologies.metropolis_hastings(GRAPH)
    fed, alg = digits_fed(digits, topologies.Static(W)), gossip()
    spy = Capture(receivers=[1], senders=[VICTIM], rounds=[0])
    simulate(alg, fed, 1, taps=[spy], eval_every=0)
    x0 = alg.init(fed).x[VICTIM]                                # public: every node starts here
    z, grads = gossip_gradient(alg.trainer.model, None, VICTIM, x0, spy.records[0].payload, LR)
    assert rel_err(grads, true_gradient(alg, fed, VICTIM, 0, x0)) < TOL[torch.float64]


def test_a_neighbour_missing_a_payload_cannot_recover_and_its_consensus_guess_is_biased(digits):
    W = topologies.metropolis_hastings(GRAPH)
    fed, alg = digits_fed(digits, topologies.Static(W)), gossip()
    n1, eav = neighbour_taps(1), eavesdropper_tap(GRAPH, VICTIM)
    simulate(alg, fed, T + 1, taps=[*n1, eav], eval_every=0)
    prev = captured_payloads([r for tap in n1 for r in tap.records], T - 1)
    sent = captured_payloads(n1[0].records, T)[VICTIM]
    with pytest.raises(ValueError, match=r"missing \[3\]"):
        gossip_gradient(alg.trainer.model, W, VICTIM, prev, sent, LR)
    _, guess = gossip_gradient(alg.trainer.model, W, VICTIM, prev, sent, LR, fill_missing=True)
    # the algebra: u_hat = u + W_03 (p_0 - p_3) / lr, with p_3 of round T - 1 seen only by the eavesdropper
    full = captured_payloads(eav.records, T - 1)
    state = simulate(alg, fed, T, eval_every=0).state
    u = true_gradient(alg, fed, VICTIM, T, state.x[VICTIM])
    predicted = u + W[VICTIM, 3] * (full[VICTIM] - full[3]).double() / LR
    assert rel_err(guess, predicted) < 1e-10
    assert rel_err(guess, u) > 0.05                             # far from the victim's gradient


def test_eavesdropper_sees_drops_a_neighbour_does_not(digits):
    W = topologies.metropolis_hastings(GRAPH)
    fed, alg = digits_fed(digits, topologies.Static(W)), gossip()
    eav, n2 = eavesdropper_tap(GRAPH, VICTIM), neighbour_taps(2)
    taps = [DropEdge(T - 1, 3, VICTIM), eav, *n2]               # capture after the drop: sees delivered flags
    simulate(alg, fed, T + 1, taps=taps, eval_every=0)
    lost = lost_links(eav.records, T - 1)
    assert lost == {(3, VICTIM)}
    state = simulate(alg, fed, T, taps=[DropEdge(T - 1, 3, VICTIM)], eval_every=0).state
    want = true_gradient(alg, fed, VICTIM, T, state.x[VICTIM])
    _, grads = gossip_gradient(alg.trainer.model, W, VICTIM, captured_payloads(eav.records, T - 1),
                               captured_payloads(eav.records, T)[VICTIM], LR, lost=lost)
    assert rel_err(grads, want) < TOL[torch.float64]
    n2_records = [r for tap in n2 for r in tap.records]
    assert lost_links(n2_records, T - 1) == set()               # node 2 cannot tell the 3 -> 0 message was lost
    _, wrong = gossip_gradient(alg.trainer.model, W, VICTIM, captured_payloads(n2_records, T - 1),
                               captured_payloads(n2_records, T)[VICTIM], LR)
    assert rel_err(wrong, want) > 0.05


def test_push_sum_recovery_with_weights_and_drops(digits):
    from fedsim.messages import LinkDrop

    D = topologies.directed_exponential(5)                    # 0 hears 1, 3, 4; sends to 1, 2, 4
    sched = topologies.PushSum(D)
    fed, alg = digits_fed(digits, sched), gossip()
    everything = Capture()                                      # drops anywhere change the push-sum weights
    taps = [LinkDrop(0.3, seed=4), everything]
    simulate(alg, fed, T + 1, taps=taps, eval_every=0)
    lost = {s: lost_links(everything.records, s) for s in range(T + 1)}
    assert any(lost[s] for s in range(T))                       # the setting exercises drops
    w = push_sum_weights(sched, T, lost)
    state = simulate(alg, fed, T, taps=[LinkDrop(0.3, seed=4)], eval_every=0).state
    assert np.allclose(w, state.w.numpy(), atol=1e-12)
    sent = captured_payloads(everything.records, T)[VICTIM]
    assert float(sent[-1]) == pytest.approx(float(w[VICTIM]), abs=1e-12)   # the weight travels with the values
    z, grads = gossip_gradient(alg.trainer.model, sched.at(T - 1), VICTIM, captured_payloads(everything.records, T - 1),
                               sent, LR, lost=lost[T - 1], directed=True)
    assert float((z - state.models[VICTIM]).abs().max()) < 1e-12
    assert rel_err(grads, true_gradient(alg, fed, VICTIM, T, state.models[VICTIM])) < TOL[torch.float64]


def test_gossip_mixed_rejects_a_message_that_does_not_exist():
    W = topologies.metropolis_hastings(GRAPH)
    with pytest.raises(ValueError, match="not a message"):
        gossip_mixed(W, 0, {}, lost=[(4, 0)])


@pytest.mark.needs_data("mnist-victims")
def test_eavesdropper_reconstructs_a_gossip_victims_image(data_root):
    """Ring of 4 nodes, one MNIST image each; an eavesdropper on all of node 0's links inverts round 1."""
    images, labels = load_victims("mnist", data_root)
    x = normalize_mnist(images[:4])
    G = topologies.ring(4)
    W = topologies.metropolis_hastings(G)
    data = ClientData.from_parts(x, labels[:4], [np.array([i]) for i in range(4)])
    fed = Federation(data, torch.tensor(x), torch.tensor(labels[:4]), Streams(0), topologies.Static(W))
    torch.manual_seed(0)
    model = DropoutMLP(p=0.0)
    alg = Gossip(LocalSGD(model, lr=LR, steps=1, batch_size=1))
    eav = eavesdropper_tap(G, VICTIM)
    simulate(alg, fed, 2, taps=[eav], eval_every=0)
    z, grads = gossip_gradient(model, W, VICTIM, captured_payloads(eav.records, 0),
                               captured_payloads(eav.records, 1)[VICTIM], LR)
    label = idlg_label(grads[-1])
    assert label == labels[VICTIM]
    torch.nn.utils.vector_to_parameters(z, model.parameters())   # the model the victim trained at
    box = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)
    res = invert(model, grads, torch.tensor([label]), (1, 1, 28, 28), box, "ig",
                 config=InversionConfig(max_iterations=150))   # SSIM ~0.99 by 100
    back = lambda v: (v * MNIST_STD + MNIST_MEAN).clamp(0, 1)   # noqa: E731
    truth = back(torch.tensor(x[VICTIM:VICTIM + 1]))
    noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(0))
    score, baseline = float(ssim(back(res.x), truth)), float(ssim(noise, truth))
    assert baseline < 0.1                                       # a random image scores ~0
    assert score > 0.9
