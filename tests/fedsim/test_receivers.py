"""Receivers use what arrived: a tap that changes payloads changes the next state exactly as predicted.

For every algorithm a tap scales (part of) the payload of one kind of message; the prediction is computed
by hand from the payloads a ``Capture`` saw before the tap (or from the equivalent untapped run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import topologies
from fedsim.algorithms import FedAvg, Gossip
from fedsim.engine import simulate
from fedsim.fedpca.decentralized import DecentralizedFedPG
from fedsim.fedpca.fedpg import FedPG, PCAFederation
from fedsim.fedpca.problem import PCAClients
from fedsim.messages import SERVER, Capture, LinkDrop, Messages
from fedsim.mixing import SparseW
from fedsim.rng import Streams

ATOL = 1e-5   # float32 training, per-client loop vs batched (see test_core_references.py)


@dataclass
class Scale:
    """Multiplies the payload of ``kind`` messages (columns ``cols``, default all) by ``factor`` in ``rounds``."""

    factor: float
    kind: str
    cols: slice = dataclasses.field(default_factory=lambda: slice(None))
    rounds: tuple[int, ...] | None = None

    def __call__(self, msgs: Messages) -> Messages:
        if msgs.kind != self.kind or (self.rounds is not None and msgs.round not in self.rounds):
            return msgs
        payload = msgs.payload.clone()
        payload[:, self.cols] *= self.factor
        return msgs.with_payload(payload)


def _dense(W) -> torch.Tensor:
    return torch.as_tensor(W.toarray(), dtype=torch.float64)


# -- FedAvg ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vectorized", [True, False])
def test_fedavg_server_averages_the_uplink_that_arrived(small_fed, mlp, trainer, vectorized):
    tr = trainer(mlp)
    alg = FedAvg(tr, clients_per_round=8, vectorized=vectorized)
    got = simulate(alg, small_fed, 1, taps=[Scale(2.0, "uplink")], eval_every=0).state.params
    local = tr.train_loop(alg.init(small_fed).params.expand(8, -1), torch.arange(8), 0, small_fed.data,
                          small_fed.streams).params.double()
    w = small_fed.data.counts.double()
    torch.testing.assert_close(got.double(), 2 * (w[:, None] * local).sum(0) / w.sum(), atol=2 * ATOL, rtol=0)


def test_fedavg_clients_start_from_the_downlink_that_arrived(small_fed, mlp, trainer):
    tr = trainer(mlp)
    alg = FedAvg(tr, clients_per_round=8)
    got = simulate(alg, small_fed, 1, taps=[Scale(2.0, "downlink")], eval_every=0).state.params
    start = 2 * alg.init(small_fed).params
    local = tr.train_loop(start.expand(8, -1), torch.arange(8), 0, small_fed.data, small_fed.streams).params.double()
    w = small_fed.data.counts.double()
    torch.testing.assert_close(got.double(), (w[:, None] * local).sum(0) / w.sum(), atol=ATOL, rtol=0)


# -- Gossip ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vectorized", [True, False])
def test_gossip_mixes_the_payloads_that_arrived(make_fed, mlp, trainer, vectorized):
    W = topologies.uniform_neighbour(topologies.star(6))
    fed = make_fed(6, schedule=topologies.Static(W))
    tr = trainer(mlp)
    alg = Gossip(tr, same_init=False, vectorized=vectorized)
    x0 = alg.init(fed).x
    trained = tr.train_loop(x0, torch.arange(6), 0, fed.data, fed.streams).params.double()
    D = _dense(W)
    diag = torch.diag(torch.diag(D))
    want = diag @ trained + 2 * (D - diag) @ trained
    got = simulate(alg, fed, 1, taps=[Scale(2.0, "gossip")], eval_every=0).state.x.double()
    assert (want - D @ trained).abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=2 * ATOL, rtol=0)


def test_push_sum_mixes_values_and_weights_that_arrived(make_fed, mlp, trainer):
    sched = topologies.PushSum(topologies.directed_exponential(5))
    fed = make_fed(5, schedule=sched)
    alg = Gossip(trainer(mlp, steps=0), same_init=False)
    x0 = alg.init(fed).x.double()
    A = _dense(sched.at(0))
    off = A - torch.diag(torch.diag(A))
    state = simulate(alg, fed, 1, taps=[Scale(2.0, "gossip")], eval_every=0).state
    torch.testing.assert_close(state.x.double(), torch.diag(A)[:, None] * x0 + 2 * off @ x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(state.w.double(), torch.diag(A) + 2 * off.sum(1), atol=1e-6, rtol=0)


@dataclass
class PerEdgeNoise:
    """Gives every gossip edge a payload of its own: the sender's row plus c_e (edge e's constant)."""

    def __call__(self, msgs: Messages) -> Messages:
        rows = msgs.payload[msgs.src]
        noise = torch.arange(len(msgs.src), dtype=rows.dtype)[:, None] * 0.01
        return dataclasses.replace(msgs, senders=msgs.edge_senders, payload=rows + noise,
                                   src=torch.arange(len(msgs.src)))


@pytest.mark.parametrize("directed", [False, True])
def test_mixing_uses_per_edge_payloads_and_drops(directed):
    """``SparseW.mix`` (two sparse matmuls) and ``mix_loop`` against a dense per-edge reference."""
    if directed:
        sw = SparseW.from_scipy(topologies.push_sum_weights(topologies.directed_exponential(7)), directed=True,
                                dtype=torch.float64)
    else:
        sw = SparseW.from_scipy(topologies.uniform_neighbour(topologies.star(7)), dtype=torch.float64)
    senders, receivers = sw.edges()
    g = torch.Generator().manual_seed(0)
    own = torch.randn(7, 4, dtype=torch.float64, generator=g)
    msgs = PerEdgeNoise()(Messages.make(0, "gossip", torch.arange(7), own, senders, receivers))
    msgs = LinkDrop(0.3, seed=1)(msgs)
    assert 0 < int(msgs.delivered.sum()) < len(senders)
    D = sw.with_delivered(msgs.delivered).to_csr().to_dense()    # W~: lost weight back on the diagonal
    want = torch.diag(D)[:, None] * own
    for e in range(len(senders)):
        if msgs.delivered[e]:
            want[receivers[e]] += D[receivers[e], senders[e]] * msgs.payload[msgs.src[e]]
    torch.testing.assert_close(sw.mix(own, msgs.payload, msgs.src, msgs.delivered), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(sw.mix_loop(own, msgs.payload, msgs.src, msgs.delivered), want, atol=1e-12, rtol=0)


def test_a_tap_that_changes_the_edges_is_refused(small_fed, mlp, trainer):
    def reroute(msgs):
        return dataclasses.replace(msgs, dst=msgs.dst.flip(0))

    with pytest.raises(ValueError, match="changed the edges"):
        simulate(Gossip(trainer(mlp)), small_fed, 1, taps=[reroute], eval_every=0)


# -- LinkDrop --------------------------------------------------------------------------------------------

def test_link_drop_fate_depends_only_on_sender_receiver_and_round():
    drop = LinkDrop(0.5, seed=3)
    payload = torch.zeros(6, 2)
    a = drop(Messages.make(4, "gossip", torch.arange(6), payload, [0, 1, 2, 3, 4], [1, 2, 3, 4, 5]))
    b = drop(Messages.make(4, "gossip", torch.arange(6), payload, [5, 3, 0, 2], [0, 4, 1, 3]))
    fate_a = dict(zip(zip([0, 1, 2, 3, 4], [1, 2, 3, 4, 5]), a.delivered.tolist()))
    fate_b = dict(zip(zip([5, 3, 0, 2], [0, 4, 1, 3]), b.delivered.tolist()))
    for edge in fate_a.keys() & fate_b.keys():
        assert fate_a[edge] == fate_b[edge]
    many = Messages.make(0, "gossip", torch.arange(200), torch.zeros(200, 1), torch.arange(200).repeat(20),
                         torch.arange(20).repeat_interleave(200))
    rate = 1 - float(LinkDrop(0.3, seed=0)(many).delivered.float().mean())
    assert abs(rate - 0.3) < 0.03                                             # 4,000 draws: 3 sigma ~ 0.022
    other_round = LinkDrop(0.3, seed=0)(dataclasses.replace(many, round=1))
    assert not torch.equal(other_round.delivered, LinkDrop(0.3, seed=0)(many).delivered)


# -- federated PCA ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pca_clients():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((8, 2)))[0]
    blocks = [rng.standard_normal((50 + 10 * i, 2)) * [3.0, 2.0] @ basis.T + 0.3 * rng.standard_normal((50 + 10 * i, 8))
              for i in range(5)]
    return PCAClients.from_blocks(blocks)


def _polar(M: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(M, full_matrices=False)
    return u @ vh


def _uploads(records, round: int, d: int, k: int):
    rec = sorted((r for r in records if r.round == round and r.kind == "uplink"), key=lambda r: r.sender)
    ids = torch.tensor([r.sender for r in rec])
    payload = torch.stack([r.payload for r in rec])
    return ids, payload[:, :d * k].reshape(-1, d, k), payload[:, d * k:].reshape(-1, d, k)


def test_fedpg_server_uses_the_uploads_that_arrived(pca_clients):
    fed = PCAFederation(pca_clients, Streams(0))
    d, k = pca_clients.d, 2
    spy = Capture(receivers=[SERVER])
    alg = FedPG(k, eta=0.05, rho=1.0, local_steps=5, client_fraction=0.6)
    Z = simulate(alg, fed, 2, taps=[spy, Scale(2.0, "uplink", cols=slice(d * k, None))], eval_every=0).state.Z
    ids, U, Y = _uploads(spy.records, 1, d, k)
    w = pca_clients.n[ids] / pca_clients.n[ids].sum()
    want = _polar((w[:, None, None] * (U + 2 * Y / alg.rho)).sum(0))
    assert float(Y.abs().max()) > 1e-3                                        # the duals are not zero yet
    torch.testing.assert_close(Z, want, atol=1e-10, rtol=0)

    paper = FedPG(k, eta=0.05, rho=1.0, local_steps=5, client_fraction=0.6, variant="paper")
    spy = Capture(receivers=[SERVER])
    Z = simulate(paper, fed, 2, taps=[spy, Scale(2.0, "uplink")], eval_every=0).state.Z
    ids, U, _ = _uploads(spy.records, 1, d, k)
    w = pca_clients.n[ids] / pca_clients.n[ids].sum()
    torch.testing.assert_close(Z, 2 * (w[:, None, None] * U).sum(0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", ["clean", "paper"])
def test_fedpg_clients_use_the_z_that_arrived(pca_clients, variant):
    """A downlink tap doubling Z in round 1 gives what an untapped round from a state with Z doubled gives."""
    fed = PCAFederation(pca_clients, Streams(0))
    alg = FedPG(2, eta=0.05, rho=1.0, local_steps=5, client_fraction=1.0, variant=variant)
    state = simulate(alg, fed, 1, eval_every=0).state
    tapped = simulate(alg, fed, 2, state=state, start_round=1, taps=[Scale(2.0, "downlink")], eval_every=0).state
    doubled = dataclasses.replace(state, Z=2 * state.Z)
    want = simulate(alg, fed, 2, state=doubled, start_round=1, eval_every=0).state
    for name in ("U", "Y", "Z_local"):
        torch.testing.assert_close(getattr(tapped, name), getattr(want, name), atol=1e-12, rtol=0)
    assert float((tapped.Y - simulate(alg, fed, 2, state=state, start_round=1, eval_every=0).state.Y).abs().max()) > 1e-3


def test_decentralized_fedpg_combines_the_neighbour_iterates_that_arrived(pca_clients):
    G = topologies.ring(5)
    fed = PCAFederation(pca_clients, Streams(0), schedule=topologies.Static(topologies.metropolis_hastings(G)))
    alg = DecentralizedFedPG(2, eta=0.05, rho=1.0, local_steps=5)
    spy = Capture(kinds=("gossip",))
    state = simulate(alg, fed, 1, taps=[spy, Scale(2.0, "gossip")], eval_every=0).state
    U = torch.stack([next(r.payload for r in spy.records if r.sender == i) for i in range(5)]).reshape(5, -1, 2)
    A = torch.as_tensor(topologies.metropolis_hastings(G).toarray() > 0, dtype=torch.float64)
    A.fill_diagonal_(0)
    total = 2 * torch.einsum("ij,jdk->idk", A, U)
    torch.testing.assert_close(state.U, U, atol=0, rtol=0)
    torch.testing.assert_close(state.received, total, atol=1e-12, rtol=0)
    torch.testing.assert_close(state.Y, alg.rho * (2 * U - total), atol=1e-12, rtol=0)   # Y_0 = 0, degree 2
