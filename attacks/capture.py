"""From captured messages to what an attack takes: a gradient in the model's parameter layout.

A FedAvg client that takes ONE local SGD step (lr, no momentum or weight decay) uploads
w_new = w_old - lr * g, so a curious server recovers g = (w_old - w_new) / lr exactly. With several local
steps the same formula gives the average of the step gradients at different points (and different dropout
masks): attacking it as if it were one gradient is the usual approximation and degrades with more steps.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsim.state import ParamSpec


def update_to_gradient(model: nn.Module, before: torch.Tensor, after: torch.Tensor, lr: float) -> list[torch.Tensor]:
    """(before - after) / lr as a list of tensors in ``model.parameters()`` order."""
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    spec = ParamSpec.of(model)
    if before.numel() != spec.size or after.numel() != spec.size:
        raise ValueError(f"the model has {spec.size} parameters, the update has {before.numel()} / {after.numel()}")
    views = spec.unflatten(((before - after) / lr).detach())
    return [views[name] for name in spec.names]
