"""Dropout sites that can take explicit masks, and the Dropout Inversion Attack paper's MLP built from them.

Used by the leakage lab (attacks/), which inverts gradients with the masks as unknowns.

In normal use ``MaskedDropout`` is ordinary inverted dropout (``nn.Dropout``). Given a mask (values in [0, 1],
the activation's full shape including the batch dimension) it computes ``x * mask / (1 - p)`` instead, which is
what the Dropout Inversion Attack optimises over, and what a "well-informed" attacker replays.
"""

from __future__ import annotations

import torch
from torch import nn


class MaskedDropout(nn.Module):
    """Dropout that can record the mask it drew (``record=True``) or use a given one (``mask=...``)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.mask: torch.Tensor | None = None   # an explicit mask to use (set by the attack)
        self.record = False                     # keep the mask drawn in training mode in ``last_mask``
        self.last_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            if self.mask.shape != x.shape:
                raise ValueError(f"dropout mask has shape {tuple(self.mask.shape)}, activation {tuple(x.shape)}")
            return x * self.mask / (1 - self.p)
        if not self.training or self.p == 0:
            return x
        mask = (torch.rand_like(x) >= self.p).to(x.dtype)
        if self.record:
            self.last_mask = mask
        return x * mask / (1 - self.p)


def dropout_sites(model: nn.Module) -> list[MaskedDropout]:
    """The model's MaskedDropout modules, in forward order."""
    return [m for m in model.modules() if isinstance(m, MaskedDropout)]


def set_masks(model: nn.Module, masks: list[torch.Tensor] | None) -> None:
    """Use ``masks`` (one per site, in order) in every forward pass; ``None`` restores normal dropout."""
    sites = dropout_sites(model)
    if masks is not None and len(masks) != len(sites):
        raise ValueError(f"model has {len(sites)} dropout sites, got {len(masks)} masks")
    for i, site in enumerate(sites):
        site.mask = None if masks is None else masks[i]


def activation_shapes(model: nn.Module, shape: tuple[int, ...], like: torch.Tensor) -> list[tuple[int, ...]]:
    """The activation shape at each dropout site for an input batch of ``shape`` (one eval-mode probe forward on
    zeros of ``like``'s dtype and device; the model's mode and masks are put back)."""
    sites, shapes = dropout_sites(model), []
    saved, was = [s.mask for s in sites], model.training
    hooks = [s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for s in sites]
    try:
        set_masks(model, None)
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, dtype=like.dtype, device=like.device))
    finally:
        for h in hooks:
            h.remove()
        for s, mask in zip(sites, saved):
            s.mask = mask
        model.train(was)
    return shapes


class DropoutMLP(nn.Module):
    """The Dropout Inversion Attack paper's MLP: Flatten -> 3 x (Linear(512, no bias) -> GELU -> Dropout(p)) -> Linear."""

    def __init__(self, in_features: int = 784, n_classes: int = 10, width: int = 512, depth: int = 3, p: float = 0.25):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        size = in_features
        for _ in range(depth):
            layers += [nn.Linear(size, width, bias=False), nn.GELU(), MaskedDropout(p)]
            size = width
        layers.append(nn.Linear(size, n_classes, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
