"""Small classifiers: an MLP, a LeNet-5 style CNN and Caffe's MNIST LeNet (the model of Tian et al.'s DFL2 code).

The modules carry PyTorch's default initialisation; the simulations draw their own initial parameters
(``fedsim.state.init_population``, with ``init`` in "default" | "xavier" | "xavier_fan_in").
"""

from __future__ import annotations


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


class LeNetCaffe(nn.Module):
    """Caffe's MNIST LeNet ("20-50-500-10"), the model of the authors' DFL2 code (Tian et al., 2024).

    conv 5x5, 20 filters (stride 1, no padding) -> max-pool 2x2/2 -> conv 5x5, 50 filters -> max-pool 2x2/2
    -> flatten -> Linear 500 -> ReLU -> Linear ``n_classes``. There is no non-linearity after the
    convolutions (as in Caffe's ``lenet_train_test.prototxt``). Pooling rounds up (``ceil_mode=True``), as
    Caffe's pooling layer does; on 28x28 MNIST rounding up and down coincide (24 -> 12, 8 -> 4).

    On (1, 28, 28) inputs with 10 classes: 50*4*4 = 800 features; parameters
    conv1 20*1*25 + 20 = 520, conv2 50*20*25 + 50 = 25,050, fc1 800*500 + 500 = 400,500,
    fc2 500*10 + 10 = 5,010: 431,080 in all. Inputs need at least 15x15 pixels.

    Caffe's "xavier" filler (the DFL2 initialisation) is ``init="xavier_fan_in"`` of ``init_population``;
    the later PyTorch code (DFL_torch) uses ``init="xavier"`` (Glorot). Biases start at zero in both.
    """

    MIN_SIDE = 15

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), n_classes: int = 10,
                 channels: tuple[int, int] = (20, 50), hidden: int = 500):
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"lenet_caffe needs (C, H, W) inputs, got shape {tuple(in_shape)}")
        c, h, w = in_shape
        if min(h, w) < self.MIN_SIDE:
            raise ValueError(f"lenet_caffe needs images of at least {self.MIN_SIDE}x{self.MIN_SIDE} pixels "
                             f"(two unpadded 5x5 convolutions and two 2x2 poolings), got {tuple(in_shape)}")
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 5), nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(channels[0], channels[1], 5), nn.MaxPool2d(2, 2, ceil_mode=True),
        )
        flat = channels[1] * _caffe_side(h) * _caffe_side(w)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _caffe_side(n: int) -> int:
    """Side length after conv5 -> pool2 (rounding up) -> conv5 -> pool2 (rounding up)."""
    for _ in range(2):
        n = -(-(n - 4) // 2)
    return n
