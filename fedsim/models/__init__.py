"""Small torch models used by the simulations."""

from fedsim.models.small import MLP, MODELS, LeNet, LeNetCaffe, build_model

__all__ = ["MLP", "MODELS", "LeNet", "LeNetCaffe", "build_model"]
