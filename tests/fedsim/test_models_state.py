import math

import pytest
import torch

from fedsim.models import build_model
from fedsim.rng import Streams
from fedsim.state import ParamSpec, init_population


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_lenet_and_mlp_shapes(shape):
    x = torch.zeros(5, *shape)
    for name in ("mlp", "lenet"):
        assert build_model(name, shape, 10).forward(x).shape == (5, 10)


def test_bad_model_requests_are_named():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("lenet", (1, 2, 2), 10)


def test_param_spec_round_trip_matches_parameters_to_vector():
    model = build_model("lenet", (1, 8, 8), 10)
    spec = ParamSpec.of(model)
    flat = torch.nn.utils.parameters_to_vector(model.parameters())
    assert spec.size == flat.numel()
    views = spec.unflatten(flat)
    for name, p in model.named_parameters():
        assert torch.equal(views[name], p.detach())
    assert torch.equal(spec.flatten(views), flat)
    batch = torch.stack([flat, 2 * flat])
    assert torch.equal(spec.flatten(spec.unflatten(batch), lead=1), batch)


def test_init_population_follows_pytorch_default_bounds():
    model = build_model("mlp", (1, 8, 8), 10, (32,))
    x = init_population(model, torch.arange(200), Streams(0), shared=False)
    views = ParamSpec.of(model).unflatten(x)
    for name, fan_in in [("net.1.weight", 64), ("net.1.bias", 64), ("net.3.weight", 32), ("net.3.bias", 32)]:
        v = views[name]
        bound = 1 / math.sqrt(fan_in)
        assert v.abs().max() <= bound
        # U(-b, b) has variance b^2 / 3
        assert abs(float(v.var()) - bound**2 / 3) < 0.05 * bound**2 / 3


def test_shared_init_identical_rows_independent_rows_differ():
    model = build_model("mlp", (1, 8, 8), 10)
    shared = init_population(model, torch.arange(4), Streams(0), shared=True)
    own = init_population(model, torch.arange(4), Streams(0), shared=False)
    assert all(torch.equal(shared[0], shared[i]) for i in range(4))
    assert not torch.equal(own[0], own[1])
    # a client's own initialisation does not depend on who else is initialised
    assert torch.equal(init_population(model, torch.tensor([2]), Streams(0), shared=False)[0], own[2])
