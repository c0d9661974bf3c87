"""Small classifiers: an MLP and a LeNet-style CNN (PyTorch default initialisation)."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten -> (Linear -> ReLU) x len(hidden) -> Linear."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (32,), n_classes: int = 10):
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-5 style CNN for (C, H, W) inputs: conv5x5(6) -> pool -> conv5x5(16) -> pool -> 120 -> 84 -> classes.

    Convolutions are zero-padded so the same network works on 8x8 digits and 28x28 MNIST.
    """

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), n_classes: int = 10,
                 channels: tuple[int, int] = (6, 16), hidden: tuple[int, int] = (120, 84)):
        super().__init__()
        c, h, w = in_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = channels[1] * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden[0]), nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Linear(hidden[1], n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(name: str, in_shape: tuple[int, ...], n_classes: int, hidden: tuple[int, ...] | None = None) -> nn.Module:
    """Build a model by name ("mlp" or "lenet") for inputs of shape ``in_shape`` (without the batch dim)."""
    if name == "mlp":
        return MLP(math.prod(in_shape), tuple(hidden) if hidden is not None else (32,), n_classes)
    if name == "lenet":
        if len(in_shape) != 3:
            raise ValueError(f"lenet needs (C, H, W) inputs, got shape {tuple(in_shape)}")
        if min(in_shape[1:]) < 4:
            raise ValueError(f"lenet needs images of at least 4x4 pixels, got {tuple(in_shape)}")
        return LeNet(tuple(in_shape), n_classes)
    raise ValueError(f"unknown model {name!r}; known models: 'mlp', 'lenet'")
