"""Momentum buffers are algorithm state: kept across rounds by gossip nodes, reset per round by FedAvg clients
unless configured otherwise, never a silent no-op. The reference keeps one live torch.optim.SGD per node."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import topologies
from fedsim.algorithms import FedAvg, Gossip
from fedsim.engine import simulate

ATOL = 1e-5   # float32, batched vs per-node torch.optim arithmetic (~1e-7 observed)


def _sgd_step(model, opt, fed, client: int, t: int, steps: int, batch_size: int) -> torch.Tensor:
    """``steps`` steps of the node's own long-lived optimizer on its round-t mini-batches."""
    idx = fed.data.batch_indices(fed.streams, torch.tensor([client]), t, steps, batch_size)[0]
    for s in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(fed.data.x[idx[s]]), fed.data.y[idx[s]]).backward()
        opt.step()
    return parameters_to_vector(model.parameters()).detach()


@pytest.mark.parametrize("vectorized", [True, False])
def test_gossip_momentum_lives_as_long_as_the_node(make_fed, mlp, trainer, vectorized):
    W = topologies.metropolis_hastings(topologies.ring(4))
    fed = make_fed(4, schedule=topologies.Static(W))
    tr = trainer(mlp, steps=1, momentum=0.9)
    alg = Gossip(tr, same_init=False, vectorized=vectorized)
    x = alg.init(fed).x.double()
    models = [copy.deepcopy(mlp) for _ in range(4)]
    opts = [torch.optim.SGD(m.parameters(), lr=tr.lr, momentum=0.9) for m in models]
    D = torch.as_tensor(W.toarray())
    for t in range(4):
        trained = []
        for i in range(4):
            vector_to_parameters(x[i].float(), models[i].parameters())   # same Parameters: optimizer state stays
            trained.append(_sgd_step(models[i], opts[i], fed, i, t, 1, tr.batch_size).double())
        x = D @ torch.stack(trained)
    res = simulate(alg, fed, 4, eval_every=0)
    torch.testing.assert_close(res.state.x.double(), x, atol=ATOL, rtol=0)
    plain = simulate(Gossip(trainer(mlp, steps=1), same_init=False), fed, 4, eval_every=0).state.x
    assert (plain - res.state.x).abs().max() > 1e-3                              # momentum did something
    assert res.state.momentum is not None and res.state.momentum.abs().max() > 0


def test_momentum_that_would_do_nothing_is_refused(mlp, trainer):
    with pytest.raises(ValueError, match="no effect"):
        FedAvg(trainer(mlp, steps=1, momentum=0.9), clients_per_round=2)
    with pytest.raises(ValueError, match="no effect"):
        Gossip(trainer(mlp, steps=1, momentum=0.9), keep_momentum=False)
    with pytest.raises(ValueError, match="without local steps"):
        Gossip(trainer(mlp, steps=0, momentum=0.9))
    FedAvg(trainer(mlp, steps=1, momentum=0.9), clients_per_round=2, keep_momentum=True)   # fine: it carries over


def test_fedavg_resets_momentum_every_round_by_default(small_fed, mlp, trainer):
    tr = trainer(mlp, steps=3, momentum=0.9)
    alg = FedAvg(tr, clients_per_round=8)
    params = alg.init(small_fed).params
    w = small_fed.data.counts.double()
    for t in range(2):
        local = []
        for i in range(8):
            model = copy.deepcopy(mlp)
            vector_to_parameters(params.clone(), model.parameters())   # (it stores views, and SGD steps in place)
            opt = torch.optim.SGD(model.parameters(), lr=tr.lr, momentum=0.9)   # a fresh optimizer every round
            local.append(_sgd_step(model, opt, small_fed, i, t, 3, tr.batch_size).double())
        params = ((w[:, None] * torch.stack(local)).sum(0) / w.sum()).float()
    state = simulate(alg, small_fed, 2, eval_every=0).state
    assert state.momentum is None
    torch.testing.assert_close(state.params, params, atol=ATOL, rtol=0)


def test_fedavg_clients_can_keep_their_momentum_between_the_rounds_they_join(small_fed, mlp, trainer):
    tr = trainer(mlp, steps=1, momentum=0.9)
    alg = FedAvg(tr, clients_per_round=3, keep_momentum=True)
    models = [copy.deepcopy(mlp) for _ in range(8)]
    opts = [torch.optim.SGD(m.parameters(), lr=tr.lr, momentum=0.9) for m in models]
    params = alg.init(small_fed).params
    w = small_fed.data.counts.double()
    joined = set()
    for t in range(4):
        clients = torch.randperm(8, generator=small_fed.streams.generator("sample", round=t))[:3].sort().values
        joined |= set(clients.tolist())
        local = []
        for i in clients.tolist():
            vector_to_parameters(params.clone(), models[i].parameters())
            local.append(_sgd_step(models[i], opts[i], small_fed, i, t, 1, tr.batch_size).double())
        params = ((w[clients, None] * torch.stack(local)).sum(0) / w[clients].sum()).float()
    state = simulate(alg, small_fed, 4, eval_every=0).state
    torch.testing.assert_close(state.params, params, atol=ATOL, rtol=0)
    for i in range(8):
        if i in joined:
            want = torch.cat([opts[i].state[p]["momentum_buffer"].flatten() for p in models[i].parameters()])
            torch.testing.assert_close(state.momentum[i], want, atol=ATOL, rtol=0)
        else:
            assert not state.momentum[i].any()


def test_resume_with_momentum_gives_the_uninterrupted_run(small_fed, mlp, trainer):
    alg = Gossip(trainer(mlp, steps=1, momentum=0.9), active_fraction=0.5)
    full = simulate(alg, small_fed, 4, eval_every=0)
    first = simulate(alg, small_fed, 2, eval_every=0)
    rest = simulate(alg, small_fed, 4, state=first.state, start_round=2, history=first.history, eval_every=0)
    assert torch.equal(rest.state.x, full.state.x) and torch.equal(rest.state.momentum, full.state.momentum)
    restarted = simulate(alg, small_fed, 4, state=type(first.state)(first.state.x, first.state.w,
                                                                   torch.zeros_like(first.state.momentum)),
                         start_round=2, eval_every=0)
    assert not torch.equal(restarted.state.x, full.state.x)                     # the buffers are real state
