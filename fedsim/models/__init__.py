"""Small torch models used by the simulations."""

from fedsim.models.small import MLP, LeNet, build_model

__all__ = ["MLP", "LeNet", "build_model"]
