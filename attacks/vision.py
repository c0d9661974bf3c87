"""The leakage lab's image classifiers by the attack CLI's names; the models themselves live in fedsim's one
registry (``fedsim.models``: ``fedsim/models/vision.py``, ``fedsim/models/masked.py``).

``build_attack_model(name, ...)``: "mlp" -> the DIA paper's ``DropoutMLP`` ("dropout_mlp"), "vit" -> ``SmallViT``,
"lenet" -> DLG's ``LeNetZhu`` ("lenet_zhu"), "resnet" -> ``SmallResNet`` ("resnet8").
"""

from __future__ import annotations

from torch import nn

from fedsim.models import build_model
from fedsim.models.vision import (Attention, FeedForward, LayerNorm, LeNetZhu, PatchFlatten, PreNorm,  # noqa: F401
                                  SmallResNet, SmallViT, Transformer)

__all__ = ["SmallViT", "LeNetZhu", "SmallResNet", "PatchFlatten", "build_attack_model", "ATTACK_MODELS"]

# the attack CLI's model names -> fedsim.models names
ATTACK_NAMES = {"mlp": "dropout_mlp", "vit": "vit", "lenet": "lenet_zhu", "resnet": "resnet8"}
ATTACK_MODELS = tuple(ATTACK_NAMES)


def build_attack_model(name: str, in_shape: tuple[int, ...], n_classes: int = 10, p: float = 0.25,
                       **options) -> nn.Module:
    """Build an attack-lab model by its attack-CLI name (``ATTACK_MODELS``) through ``fedsim.models.build_model``.

    ``p`` is the dropout probability of every site; further keyword ``options`` go to the model's constructor
    (e.g. ``patch_size``, ``depth``, ``dlg_init``).
    """
    if name not in ATTACK_NAMES:
        raise ValueError(f"unknown attack model {name!r}; known: {', '.join(ATTACK_MODELS)}")
    try:
        return build_model(ATTACK_NAMES[name], in_shape, n_classes, p=p, **options)
    except ValueError as e:   # messages in the attack CLI's names
        raise ValueError(str(e).replace(ATTACK_NAMES[name], name, 1)) from None
