"""One registry of every model fedsim builds by name: the simulation models and the leakage lab's.

``build_model(name, in_shape, n_classes, ...)``. The simulation models ("mlp", "lenet", "lenet_caffe") are the ones
a ``fedsim run`` config may name (``SIMULATION_MODELS``: per-client initialisation needs Linear/Conv layers only);
the leakage lab's ("dropout_mlp", "vit", "lenet_zhu", "resnet8") have ``MaskedDropout`` sites, whose masks the
Dropout Inversion Attack optimises. ``attacks.vision.build_attack_model`` maps the attack CLI's names onto these.
"""

from __future__ import annotations

import math

from torch import nn

from fedsim.models.masked import DropoutMLP
from fedsim.models.small import MLP, LeNet, LeNetCaffe
from fedsim.models.vision import LeNetZhu, SmallResNet, SmallViT, _pair

SIMULATION_MODELS = ("mlp", "lenet", "lenet_caffe")
LAB_MODELS = ("dropout_mlp", "vit", "lenet_zhu", "resnet8")
MODELS = SIMULATION_MODELS + LAB_MODELS


def build_model(name: str, in_shape: tuple[int, ...], n_classes: int, hidden: tuple[int, ...] | None = None,
                p: float = 0.25, **options) -> nn.Module:
    """Build a model by name (``MODELS``) for inputs of shape ``in_shape`` (without the batch dim).

    ``hidden`` sizes the MLP's hidden layers (the CNNs have fixed widths); ``p`` is the dropout probability of
    every site of the lab models; further keyword ``options`` go to a lab model's constructor (e.g.
    ``patch_size``, ``depth``, ``dlg_init``, ``width``).
    """
    in_shape = tuple(int(s) for s in in_shape)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(map(repr, MODELS))}")
    if not in_shape or min(in_shape) < 1:
        raise ValueError(f"invalid input shape {in_shape}")
    if name == "mlp":
        return MLP(math.prod(in_shape), tuple(hidden) if hidden is not None else (32,), n_classes)
    if name == "dropout_mlp":
        return DropoutMLP(in_features=math.prod(in_shape), n_classes=n_classes, p=p, **options)
    if len(in_shape) != 3:
        raise ValueError(f"{name} needs (C, H, W) inputs, got shape {in_shape}")
    c, h, w = in_shape
    if name == "lenet_caffe":
        return LeNetCaffe(in_shape, n_classes)
    if name == "vit":
        ph, pw = _pair(options.pop("patch_size", 4))
        if h % ph or w % pw:
            raise ValueError(f"vit needs an image size divisible by the patch size {ph}x{pw}, got {h}x{w}")
        return SmallViT(image_size=(h, w), patch_size=(ph, pw), n_classes=n_classes, channels=c, p=p, **options)
    if min(h, w) < 4:
        raise ValueError(f"{name} needs images of at least 4x4 pixels, got {in_shape}")
    if name == "lenet":
        return LeNet(in_shape, n_classes)
    if name == "lenet_zhu":
        return LeNetZhu(channels=c, image_size=(h, w), n_classes=n_classes, p=p, **options)
    return SmallResNet(channels=c, n_classes=n_classes, p=p, **options)

