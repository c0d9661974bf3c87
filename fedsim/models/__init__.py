"""Every model fedsim builds, in one registry (``build_model``, ``MODELS``; ``fedsim/models/registry.py``)."""

from fedsim.models.masked import DropoutMLP, MaskedDropout, activation_shapes, dropout_sites, set_masks
from fedsim.models.registry import LAB_MODELS, MODELS, SIMULATION_MODELS, build_model
from fedsim.models.small import MLP, LeNet, LeNetCaffe
from fedsim.models.vision import LeNetZhu, SmallResNet, SmallViT

__all__ = ["MLP", "MODELS", "SIMULATION_MODELS", "LAB_MODELS", "LeNet", "LeNetCaffe", "LeNetZhu", "SmallViT",
           "SmallResNet", "DropoutMLP", "MaskedDropout", "activation_shapes", "dropout_sites", "set_masks",
           "build_model"]
