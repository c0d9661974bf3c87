"""The authors' LeNet (Caffe's MNIST LeNet) and explicit Xavier initialisation of every model.

Statistical tolerances (fixed seeds, so the tests are deterministic; the bounds say how far off a correct
implementation could plausibly be): a weight drawn uniformly has excess kurtosis -1.2, so the population
variance of n entries has relative standard deviation sqrt((2 - 1.2) / n) = sqrt(0.8 / n); averaged over 9
independent nodes sqrt(0.8 / (9 n)). Tolerances are at least 4 of those standard deviations.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fedsim.metrics import weight_var_ratio
from fedsim.models import LeNetCaffe, build_model
from fedsim.rng import Streams
from fedsim.state import INIT_SCHEMES, ParamSpec, init_population, xavier_variance

MNIST = (1, 28, 28)
# Caffe's MNIST LeNet on 28x28: name -> shape; 800 = 50 * 4 * 4 features after the second pooling
CAFFE_SHAPES = {
    "features.0.weight": (20, 1, 5, 5), "features.0.bias": (20,),
    "features.2.weight": (50, 20, 5, 5), "features.2.bias": (50,),
    "classifier.1.weight": (500, 800), "classifier.1.bias": (500,),
    "classifier.3.weight": (10, 500), "classifier.3.bias": (10,),
}
# (fan_in, fan_out) by hand: conv: in_channels*25, out_channels*25; linear: in, out
CAFFE_FANS = {"features.0.weight": (25, 500), "features.2.weight": (500, 1250),
              "classifier.1.weight": (800, 500), "classifier.3.weight": (500, 10)}


def test_lenet_caffe_layers_and_parameter_count():
    model = build_model("lenet_caffe", MNIST, 10)
    assert isinstance(model, LeNetCaffe)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == CAFFE_SHAPES
    assert sum(p.numel() for p in model.parameters()) == 520 + 25_050 + 400_500 + 5_010 == 431_080
    kinds = [type(m).__name__ for m in model.modules() if not list(m.children())]
    assert kinds == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert model(torch.zeros(5, *MNIST)).shape == (5, 10)


def test_lenet_caffe_forward_matches_the_caffe_network_written_out():
    """No ReLU after the convolutions: a ReLU there would change the output for these signed inputs."""
    torch.manual_seed(0)
    model = build_model("lenet_caffe", MNIST, 10).double()
    p = dict(model.named_parameters())
    x = torch.randn(4, *MNIST, dtype=torch.float64)
    h = F.max_pool2d(F.conv2d(x, p["features.0.weight"], p["features.0.bias"]), 2, 2)
    h = F.max_pool2d(F.conv2d(h, p["features.2.weight"], p["features.2.bias"]), 2, 2)
    h = F.relu(F.linear(h.flatten(1), p["classifier.1.weight"], p["classifier.1.bias"]))
    ref = F.linear(h, p["classifier.3.weight"], p["classifier.3.bias"])
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 15, 15), (1, 16, 16), (3, 32, 32), (1, 29, 31)])
def test_lenet_caffe_other_sizes_pool_like_caffe(shape):
    # Caffe's pooling output side: ceil((n - 2) / 2) + 1; convolution: n - 4
    def side(n):
        for _ in range(2):
            n = math.ceil((n - 4 - 2) / 2) + 1
        return n

    model = build_model("lenet_caffe", shape, 7)
    assert model.classifier[1].in_features == 50 * side(shape[1]) * side(shape[2])
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_lenet_caffe_refuses_small_or_flat_inputs():
    with pytest.raises(ValueError, match="at least 15x15"):
        build_model("lenet_caffe", (1, 14, 28), 10)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model("lenet_caffe", (28, 28), 10)
    with pytest.raises(ValueError, match="'lenet_caffe'"):
        build_model("resnet", MNIST, 10)


def _old_default_init(model, clients, streams, shared, dtype):
    """A copy of init_population before init schemes existed (PyTorch default, +-1/sqrt(fan_in))."""
    spec = ParamSpec.of(model)
    clients = torch.as_tensor(clients, dtype=torch.int64)
    keys = torch.zeros_like(clients) if shared else clients
    fan_in = {}
    for mod_name, mod in model.named_modules():
        weight = getattr(mod, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
            for p_name, _ in mod.named_parameters(recurse=False):
                fan_in[f"{mod_name}.{p_name}"] = math.prod(weight.shape[1:])
    parts = []
    for name, shape, k in zip(spec.names, spec.shapes, spec.sizes):
        bound = 1.0 / math.sqrt(fan_in[name])
        u = streams.uniform(f"init/{name}", keys, None, (k,), dtype=torch.float64)
        parts.append(((2 * u - 1) * bound).to(dtype))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("lenet", (1, 8, 8)), ("lenet_caffe", MNIST)])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_default_init_is_unchanged_bit_for_bit(name, shape, shared, dtype):
    model = build_model(name, shape, 10)
    clients = torch.tensor([0, 3, 7])
    new = init_population(model, clients, Streams(5), shared=shared, dtype=dtype)
    assert torch.equal(new, init_population(model, clients, Streams(5), shared=shared, dtype=dtype, init="default"))
    assert torch.equal(new, _old_default_init(model, clients, Streams(5), shared, dtype))


@pytest.mark.parametrize("name,shape", [("mlp", (1, 8, 8)), ("lenet", (1, 8, 8)), ("lenet_caffe", MNIST)])
@pytest.mark.parametrize("init", ["xavier", "xavier_fan_in"])
def test_xavier_bounds_use_torch_fans_and_biases_are_zero(name, shape, init):
    model = build_model(name, shape, 10)
    x = init_population(model, torch.arange(3), Streams(1), shared=False, dtype=torch.float64, init=init)
    views = ParamSpec.of(model).unflatten(x)
    ref = xavier_variance(model, init)
    params = dict(model.named_parameters())
    assert set(ref) == {n for n, p in params.items() if p.ndim >= 2}
    for pname, p in params.items():
        if p.ndim < 2:
            assert torch.count_nonzero(views[pname]) == 0, pname
            continue
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(p)
        var = 2 / (fan_in + fan_out) if init == "xavier" else 1 / fan_in
        assert ref[pname] == pytest.approx(var, rel=1e-15)
        bound = math.sqrt(3 * var)  # U(-b, b) has variance b^2 / 3
        v = views[pname].abs()
        assert float(v.max()) <= bound
        if p.numel() >= 100:  # 3 * 100 draws: the largest |w| exceeds 0.95 b unless p < 0.95^300 ~ 2e-7
            assert float(v.max()) > 0.95 * bound, pname


def test_xavier_variance_of_the_caffe_lenet_by_hand():
    model = build_model("lenet_caffe", MNIST, 10)
    glorot = {n: 2 / (a + b) for n, (a, b) in CAFFE_FANS.items()}
    assert xavier_variance(model, "xavier") == pytest.approx(glorot, rel=1e-15)
    assert xavier_variance(model, "default") == pytest.approx(glorot, rel=1e-15)
    assert xavier_variance(model, "xavier_fan_in") == pytest.approx(
        {n: 1 / a for n, (a, _) in CAFFE_FANS.items()}, rel=1e-15)
    assert list(xavier_variance(model, "xavier")) == list(CAFFE_FANS)


@pytest.mark.parametrize("init", ["xavier", "xavier_fan_in"])
def test_nine_xavier_nodes_then_one_plain_mix_leave_0_281_of_the_variance(init):
    """The vanishing-variance anchor: 0.5 * own + 0.5 * mean(8 others) of independent Xavier models keeps
    1/4 + 1/(4*8) = 0.28125 of Xavier's variance."""
    model = build_model("lenet_caffe", MNIST, 10)
    spec = ParamSpec.of(model)
    ref = xavier_variance(model, init)
    x = init_population(model, torch.arange(9), Streams(2024), shared=False, dtype=torch.float64, init=init)
    assert not torch.equal(x[0], x[1])

    def tol(name, scale):  # 4 standard deviations of the layer's ratio (module docstring), at least scale
        return max(scale, 4 * math.sqrt(0.8 / (9 * spec.sizes[spec.names.index(name)])))

    ratios = weight_var_ratio(x, spec, ref)
    for name in ref:  # conv1 (500 weights): 4 sd = 0.053; the others are within 0.03 (>= 7 sd)
        assert abs(ratios[f"weight_var_ratio.{name}"] - 1) < tol(name, 0.03), (name, ratios)
    assert abs(ratios["weight_var_ratio"] - 1) < 0.03

    mixed = 0.5 * x + 0.5 * (x.sum(0, keepdim=True) - x) / 8
    ratios = weight_var_ratio(mixed, spec, ref)
    # mixed entries: excess kurtosis ~ -0.95, so relative sd sqrt(1.05 / n) per node; nodes are correlated
    # (worst case: no averaging over the 9), so conv1's ratio has sd <= 0.281 * sqrt(1.05 / 500) = 0.013.
    assert abs(ratios["weight_var_ratio"] - 0.28125) < 0.02
    for name in ref:
        n = spec.sizes[spec.names.index(name)]
        assert abs(ratios[f"weight_var_ratio.{name}"] - 0.28125) < max(0.02, 4 * 0.28125 * math.sqrt(1.05 / n)), name


def test_a_nodes_initial_model_depends_only_on_seed_id_and_scheme():
    model = build_model("lenet_caffe", MNIST, 10)
    own = init_population(model, torch.arange(5), Streams(3), shared=False, init="xavier")
    shared = init_population(model, torch.arange(5), Streams(3), shared=True, init="xavier")
    assert all(torch.equal(shared[i], own[0]) for i in range(5))
    assert torch.equal(init_population(model, torch.tensor([4, 2]), Streams(3), shared=False, init="xavier"),
                       own[[4, 2]])
    assert not torch.equal(init_population(model, torch.arange(5), Streams(4), shared=False, init="xavier"), own)
    # the schemes scale the same draws (the init/<param> streams): weight / bound is 2u - 1 in all three
    spec = ParamSpec.of(model)
    draws = {}
    for init in INIT_SCHEMES:
        views = spec.unflatten(init_population(model, torch.arange(2), Streams(3), shared=False,
                                               dtype=torch.float64, init=init))
        for name, (fan_in, fan_out) in CAFFE_FANS.items():
            bound = {"default": 1 / math.sqrt(fan_in), "xavier": math.sqrt(6 / (fan_in + fan_out)),
                     "xavier_fan_in": math.sqrt(3 / fan_in)}[init]
            draws.setdefault(name, []).append(views[name] / bound)
    for a, b, c in draws.values():
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(a, c, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("shared", [False, True])
def test_drawing_in_chunks_of_clients_gives_the_same_models(monkeypatch, shared):
    """init_population draws a chunk of clients at a time (bounded temporaries); each value is a pure function of
    (seed, client, parameter, entry), so any chunk size gives the same population."""
    from fedsim import state

    model = build_model("lenet_caffe", MNIST, 10)
    clients = torch.tensor([9, 0, 4, 7, 2, 5, 1])
    whole = init_population(model, clients, Streams(2), shared=shared, init="xavier")
    monkeypatch.setattr(state, "_INIT_CHUNK", 1000)     # fc1 (400,000 entries) one client per chunk, conv1 two
    chunked = init_population(model, clients, Streams(2), shared=shared, init="xavier")
    assert torch.equal(chunked, whole)                  # elementwise draws: no reduction, same bits
    one_by_one = torch.cat([init_population(model, clients[i:i + 1], Streams(2), shared=shared, init="xavier")
                            for i in range(len(clients))])
    assert torch.equal(chunked, one_by_one)


def test_unknown_init_is_refused():
    model = build_model("mlp", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="unknown init 'he'.*'xavier_fan_in'"):
        init_population(model, torch.arange(2), Streams(0), init="he")
    with pytest.raises(ValueError, match="unknown init 'he'"):
        xavier_variance(model, "he")
