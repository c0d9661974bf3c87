"""One model registry: the simulation models and the leakage lab's, built by name through fedsim.models."""

import pytest
import torch

from attacks.vision import ATTACK_NAMES, build_attack_model
from fedsim import config, models


def test_every_name_builds_a_model_that_classifies_its_input():
    shapes = {"mlp": (1, 8, 8), "lenet": (1, 28, 28), "lenet_caffe": (1, 28, 28), "dropout_mlp": (1, 28, 28),
              "vit": (3, 32, 32), "lenet_zhu": (3, 32, 32), "resnet8": (3, 32, 32)}
    assert set(shapes) == set(models.MODELS)
    for name, shape in shapes.items():
        net = models.build_model(name, shape, 7).eval()
        assert net(torch.zeros(2, *shape)).shape == (2, 7), name


def test_attack_names_map_onto_the_registry():
    assert set(ATTACK_NAMES.values()) == set(models.LAB_MODELS)
    for attack_name, name in ATTACK_NAMES.items():
        shape = (1, 28, 28) if name == "dropout_mlp" else (3, 32, 32)
        a = build_attack_model(attack_name, shape, p=0.3)
        b = models.build_model(name, shape, 10, p=0.3)
        assert type(a) is type(b)
        assert [t.shape for t in a.parameters()] == [t.shape for t in b.parameters()]
        assert [s.p for s in models.dropout_sites(a)] == [0.3] * len(models.dropout_sites(a))


def test_a_run_config_names_only_the_simulation_models():
    assert config.MODEL_NAMES == models.SIMULATION_MODELS
    assert not set(models.SIMULATION_MODELS) & set(models.LAB_MODELS)


@pytest.mark.parametrize("name, shape, message", [
    ("lenet_zhu", (3, 2, 2), "at least 4x4"), ("vit", (3, 30, 30), "divisible by the patch size"),
    ("lenet", (64,), r"needs \(C, H, W\)"), ("nope", (1, 8, 8), "unknown model 'nope'")])
def test_bad_requests_name_the_problem(name, shape, message):
    with pytest.raises(ValueError, match=message):
        models.build_model(name, shape, 10)


def test_attack_errors_use_the_attack_names():
    with pytest.raises(ValueError, match="^lenet needs images of at least 4x4"):
        build_attack_model("lenet", (3, 2, 2))
