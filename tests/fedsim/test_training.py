import pytest
import torch
import torch.nn.functional as F

from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.state import ParamSpec, init_population
from fedsim.training import LocalSGD, mlp_grad_and_loss, mlp_layers


@pytest.mark.parametrize("hidden", [(), (32,), (16, 8)])
def test_fused_mlp_gradient_matches_autograd_per_client(hidden):
    model = build_model("mlp", (1, 8, 8), 10, hidden).double()
    spec = ParamSpec.of(model)
    flat = init_population(model, torch.arange(5), Streams(0), shared=False, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 7, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (5, 7), generator=g)
    grad, loss = mlp_grad_and_loss(spec, mlp_layers(model), flat, x, y)
    for i in range(5):
        p = flat[i].clone().requires_grad_(True)
        ref_loss = F.cross_entropy(torch.func.functional_call(model, spec.unflatten(p), (x[i],)), y[i])
        (ref_grad,) = torch.autograd.grad(ref_loss, p)
        torch.testing.assert_close(grad[i], ref_grad, atol=1e-12, rtol=0)
        torch.testing.assert_close(loss[i], ref_loss.detach(), atol=1e-12, rtol=0)


def test_lenet_is_not_taken_for_an_mlp():
    assert mlp_layers(build_model("lenet", (1, 8, 8), 10)) is None
    assert mlp_layers(build_model("mlp", (1, 8, 8), 10)) is not None


def test_fused_and_vmap_paths_train_identically(small_fed, mlp):
    params = init_population(mlp, torch.arange(8), Streams(1), shared=False)
    kw = dict(lr=0.1, steps=3, batch_size=16, momentum=0.5)
    a, la, _ = LocalSGD(mlp, fused_mlp=True, **kw).train(params, torch.arange(8), 0, small_fed.data, small_fed.streams)
    b, lb, _ = LocalSGD(mlp, fused_mlp=False, **kw).train(params, torch.arange(8), 0, small_fed.data, small_fed.streams)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(la, lb, atol=1e-6, rtol=0)
    assert (a - params).abs().max() > 1e-3


def test_batches_come_from_each_clients_own_data(small_fed):
    idx = small_fed.data.batch_indices(small_fed.streams, torch.arange(8), 3, 2, 50)
    for c in range(8):
        own = set(small_fed.data.index[c, : small_fed.data.counts[c]].tolist())
        assert set(idx[c].flatten().tolist()) <= own


def test_batched_training_of_a_dropout_model_names_the_problem(small_fed):
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.Linear(16, 10)).train()
    params = init_population(model, torch.arange(2), Streams(1), shared=False)
    with pytest.raises(ValueError, match="vectorized=False"):
        LocalSGD(model, lr=0.1).train(params, torch.arange(2), 0, small_fed.data, small_fed.streams)
    out = LocalSGD(model, lr=0.1).train_loop(params, torch.arange(2), 0, small_fed.data, small_fed.streams).params
    assert torch.isfinite(out).all()


def test_dropout_in_the_per_client_loop_comes_from_the_seeded_streams(small_fed):
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.Linear(16, 10)).train()
    params = init_population(model, torch.arange(3), Streams(1), shared=False)
    trainer = LocalSGD(model, lr=0.1, steps=2)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = trainer.train_loop(params, torch.arange(3), 0, small_fed.data, small_fed.streams).params
    assert torch.equal(torch.random.get_rng_state(), before)            # the caller's RNG is left alone
    torch.manual_seed(999)                                              # ... and does not matter
    b = trainer.train_loop(params, torch.arange(3), 0, small_fed.data, small_fed.streams).params
    assert torch.equal(a, b)
    c = trainer.train_loop(params, torch.arange(3), 1, small_fed.data, small_fed.streams).params
    one = trainer.train_loop(params[1:2], torch.tensor([1]), 0, small_fed.data, small_fed.streams).params
    assert not torch.equal(a, c)                                        # another round, other masks
    assert torch.equal(one[0], a[1])                                    # a client's draws do not depend on the others
