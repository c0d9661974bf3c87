"""Gradient inversion: Inverting Gradients (IG), and the Dropout Inversion Attack (DIA) with masks as unknowns.

The attacker sees only what crossed the wire: the captured gradient, the public model (architecture and
current weights) and public hyper-parameters (dropout rates, input shape, pixel box). Ground truth is never
an input here; ``attacks.metrics`` compares afterwards.

Loss (Geiping et al. 2020; Scheliga et al. 2023):
    1 - cos(grad_theta CE(f(x; m), y), g*)   (one cosine over all parameters)
    + tv * TV(x) + sum_l mask_reg * |(1 - mean(m_l)) - p_l|     (the last term for DIA only)
Adam over x (its gradient replaced by its sign) and the masks (raw gradients); x clamped to the box and masks
to [0, 1] after each step; ReduceLROnPlateau; stop at loss < tol or after ``patience`` iterations without
improvement; keep the lowest-loss x.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.models import dropout_sites, set_masks


@dataclass(frozen=True)
class InversionConfig:
    """Hyper-parameters of the official code (defaults)."""

    lr: float = 0.1
    tv: float = 1e-5
    mask_reg: float = 1e-4
    max_iterations: int = 20_000
    patience: int = 4_000
    plateau_patience: int = 800
    tol: float = 1e-5
    signed: bool = True


@dataclass
class InversionResult:
    x: torch.Tensor
    masks: list[torch.Tensor] | None
    loss: float
    iterations: int
    seconds: float


def cosine_distance(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine similarity of two gradients, each a list of tensors, concatenated over all parameters."""
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    g_norm = torch.sqrt(sum((g * g).sum() for g in grads))
    t_norm = torch.sqrt(sum((t * t).sum() for t in target))
    return 1 - dot / (g_norm * t_norm + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute horizontal plus vertical difference of an image batch [B, C, H, W]."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


def mask_regularizer(masks: list[torch.Tensor], ps: list[float]) -> torch.Tensor:
    """sum_l |(1 - mean(m_l)) - p_l|: keeps the dropped fraction of each relaxed mask near its rate."""
    return sum(((1 - m.mean()) - p).abs() for m, p in zip(masks, ps))


def signed_adam_step(opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """Replace x's gradient by its sign, then take the optimizer step (masks keep their raw gradients)."""
    x.grad.sign_()
    opt.step()


def invert(model: nn.Module, target: list[torch.Tensor], labels: torch.Tensor, shape: tuple[int, ...],
           box: tuple[float, float], attack: str = "ig", true_masks: list[torch.Tensor] | None = None,
           config: InversionConfig = InversionConfig(), seed: int = 0) -> InversionResult:
    """Reconstruct a batch of inputs of ``shape`` from the captured gradient ``target``.

    attack: "ig" (ignore dropout: eval-mode forward), "dia" (masks as unknowns), "informed" (the true masks).
    """
    if attack not in ("ig", "dia", "informed"):
        raise ValueError(f"unknown attack {attack!r}; use 'ig', 'dia' or 'informed'")
    if attack == "informed" and true_masks is None:
        raise ValueError("the informed attack needs true_masks")
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters()]
    x = torch.randn(shape, generator=g).to(params[0]).requires_grad_(True)
    sites = dropout_sites(model)
    ps = [s.p for s in sites]
    masks = None
    variables = [x]
    if attack == "dia":
        masks = []
        with torch.no_grad():
            set_masks(model, None)
            model.eval()
            probe, acts = x.detach(), []
            hooks = [s.register_forward_hook(lambda m, i, o: acts.append(o.shape)) for s in sites]
            model(probe)
            for h in hooks:
                h.remove()
        for p_l, act_shape in zip(ps, acts):
            masks.append((torch.rand(act_shape, generator=g) >= p_l).to(params[0]).requires_grad_(True))
        variables += masks
    opt = torch.optim.Adam(variables, lr=config.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=config.plateau_patience)
    best_loss, best_x, best_masks, since_best, it = float("inf"), x.detach().clone(), None, 0, 0
    for it in range(1, config.max_iterations + 1):
        opt.zero_grad()
        if attack == "ig":
            set_masks(model, None)
            model.eval()
        else:
            set_masks(model, masks if attack == "dia" else true_masks)
            model.train()
        loss_ce = F.cross_entropy(model(x), labels)
        grads = torch.autograd.grad(loss_ce, params, create_graph=True)
        loss = cosine_distance(list(grads), target) + config.tv * total_variation(x)
        if attack == "dia":
            loss = loss + config.mask_reg * mask_regularizer(masks, ps)
        loss.backward()
        if config.signed:
            signed_adam_step(opt, x)
        else:
            opt.step()
        with torch.no_grad():
            x.clamp_(*box)
            if masks is not None:
                for m in masks:
                    m.clamp_(0, 1)
        value = float(loss.detach())
        sched.step(value)
        if value < best_loss:
            best_loss, best_x, since_best = value, x.detach().clone(), 0
            best_masks = [m.detach().clone() for m in masks] if masks is not None else None
        else:
            since_best += 1
        if best_loss < config.tol or since_best >= config.patience:
            break
    set_masks(model, None)
    return InversionResult(best_x, best_masks, best_loss, it, time.perf_counter() - start)
