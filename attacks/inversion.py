"""Gradient inversion: Inverting Gradients (IG), and the Dropout Inversion Attack (DIA) with masks as unknowns.

The attacker sees only what crossed the wire: the captured gradient, the public model (architecture and
current weights) and public hyper-parameters (dropout rates, input shape, pixel box). Ground truth is never
an input here; ``attacks.metrics`` compares afterwards.

Loss (Geiping et al. 2020; Scheliga et al. 2023):
    1 - cos(grad_theta CE(f(x; m), y), g*)   (one cosine over all parameters)
    + tv * TV(x) + sum_l mask_reg * |(1 - mean(m_l)) - p_l|     (the last term for DIA only)
Adam over x (its gradient replaced by its sign) and the masks (raw gradients); x clamped to the box and masks
to [0, 1] after each step; ReduceLROnPlateau; stop at loss < tol or after ``patience`` iterations without
improvement; keep the x produced by the step whose (pre-step) loss was the lowest, as the official code does.
``InversionConfig.restarts`` runs several independent trials and keeps the one with the lowest final loss (as
Geiping's inversefed does). When every dropout site has p = 0 (or there is none) the DIA falls back to IG.

DLG (Zhu et al. 2019), ``dlg``: squared L2 distance between the gradients, L-BFGS over x (and, in the original
form, over dummy label logits as well).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.models import activation_shapes, dropout_sites, set_masks


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
    restarts: int = 1            # independent trials; the lowest final loss wins (1 = a single trial)


@dataclass
class InversionResult:
    """What an attack returns.

    ``loss``: the lowest loss the attack saw, and ``x`` (``masks``) the point that goes with it. For ``invert``
    (IG / DIA) ``x`` is, as in the official code, the iterate PRODUCED by the Adam step whose pre-step loss was
    the lowest: ``loss`` was evaluated at the point before that step (then clamped, etc.), not at ``x`` itself.
    For ``dlg``, ``loss`` is exactly the gradient distance at ``x`` (only evaluated points are kept).

    ``iterations`` and ``seconds`` cover all the work done (summed over trials when there are restarts, so
    iterations / seconds stays a throughput); ``trial`` is the index of the winning trial, ``trial_losses`` and
    ``trial_iterations`` hold every trial's final (best) loss and iteration count, in trial order.
    ``diverged``: the optimiser produced a non-finite loss or input and was stopped (DLG's L-BFGS can).
    ``label_logits``: DLG with soft labels: the dummy label logits that go with ``x`` (argmax = inferred label).
    """

    x: torch.Tensor
    masks: list[torch.Tensor] | None
    loss: float
    iterations: int
    seconds: float
    trial: int = 0
    trial_losses: list[float] | None = None
    trial_iterations: list[int] | None = None
    diverged: bool = False
    label_logits: torch.Tensor | None = None


def cosine_distance(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine similarity of two gradients, each a list of tensors, concatenated over all parameters."""
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    g_norm = torch.sqrt(sum((g * g).sum() for g in grads))
    t_norm = torch.sqrt(sum((t * t).sum() for t in target))
    return 1 - dot / (g_norm * t_norm + 1e-12)


def gradient_distance(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """DLG's loss: sum over all parameters of the squared L2 distance ||g - g*||^2."""
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target))


def trial_seed(seed: int, trial: int) -> int:
    """The seed of restart ``trial`` of an attack seeded with ``seed``.

    Trial 0 uses ``seed`` itself, so one trial is exactly the attack without restarts. Later trials use a seed
    derived from (seed, trial) by numpy's SeedSequence (the first 32-bit word of its state), so the trials of
    seed 0 do not reuse the first trials of seeds 1, 2, ... as ``seed + trial`` would.
    """
    if trial == 0:
        return seed
    return int(np.random.SeedSequence(entropy=seed % 2**64, spawn_key=(trial,)).generate_state(1, np.uint32)[0])


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


Box = tuple  # (lo, hi): two floats, or two tensors broadcastable to the input shape (e.g. per channel [C, 1, 1])


def _prepare_box(box, shape: tuple[int, ...], like: torch.Tensor):
    """Check a box (lo < hi everywhere) and put tensor bounds on ``like``'s device and dtype.

    Scalar bounds stay Python floats (the clamp is then the plain scalar clamp); if either bound is a tensor
    (or array), both become tensors of ``like``'s dtype on its device, broadcastable to ``shape``.
    """
    try:
        lo, hi = box
    except (TypeError, ValueError):
        raise ValueError(f"box must be a pair (lo, hi), got {box!r}") from None
    if isinstance(lo, numbers.Real) and isinstance(hi, numbers.Real):
        lo, hi = float(lo), float(hi)
        if not lo < hi:
            raise ValueError(f"box needs lo < hi, got lo={lo}, hi={hi}")
        return lo, hi
    lo = torch.as_tensor(lo).detach().to(device=like.device, dtype=like.dtype)
    hi = torch.as_tensor(hi).detach().to(device=like.device, dtype=like.dtype)
    try:
        fits = torch.broadcast_shapes(lo.shape, hi.shape, tuple(shape)) == tuple(shape)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"box bounds of shapes {tuple(lo.shape)} and {tuple(hi.shape)} do not broadcast to the "
                         f"input shape {tuple(shape)}")
    if not bool((lo < hi).all()):
        raise ValueError(f"box needs lo < hi everywhere, got lo={lo.flatten().tolist()}, hi={hi.flatten().tolist()}")
    return lo, hi


def _clamp_(x: torch.Tensor, box) -> None:
    """Clamp x in place to a prepared box (scalar or tensor bounds)."""
    lo, hi = box
    if isinstance(lo, torch.Tensor):
        x.copy_(torch.maximum(torch.minimum(x, hi), lo))
    else:
        x.clamp_(lo, hi)


def _in_box(x: torch.Tensor, box) -> bool:
    lo, hi = box
    return bool((x >= lo).all()) and bool((x <= hi).all())


def _n_classes(model: nn.Module, shape: tuple[int, ...], like: torch.Tensor) -> int:
    """The model's number of classes: the size of dim 1 of its output on a probe input (eval mode, no masks).

    The model's mode and masks are put back as they were.
    """
    sites = dropout_sites(model)
    saved, was_training = [s.mask for s in sites], model.training
    try:
        for s in sites:
            s.mask = None
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(shape, dtype=like.dtype, device=like.device))
    finally:
        for s, m in zip(sites, saved):
            s.mask = m
        model.train(was_training)
    return int(out.shape[1]) if out.ndim >= 2 else int(out.shape[0])


def _prepare_target(target: list[torch.Tensor], params: list[torch.Tensor], like: torch.Tensor,
                    ) -> list[torch.Tensor]:
    """Check the captured gradient (one finite, not all-zero tensor per parameter, in parameter order) and put it
    on the parameters' device and dtype."""
    target = list(target)
    if len(target) != len(params):
        raise ValueError(f"target gradient has {len(target)} tensors, the model {len(params)} parameters")
    for i, (t, p) in enumerate(zip(target, params)):
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"target gradient tensor {i} has shape {tuple(t.shape)}, parameter {tuple(p.shape)}")
    target = [t.detach().to(device=like.device, dtype=like.dtype) for t in target]
    if not all(bool(torch.isfinite(t).all()) for t in target):
        raise ValueError("target gradient has non-finite entries (NaN or inf)")
    if all(not bool(t.any()) for t in target):
        raise ValueError("target gradient is all zero (nothing to match; its cosine is undefined)")
    return target


def _prepare_labels(labels, model: nn.Module, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Check labels (class indices in [0, n_classes), one per input; or class probabilities [batch, n_classes])
    and put them on the parameters' device (indices as int64, probabilities in the parameters' dtype)."""
    labels = torch.as_tensor(labels).detach()
    n_classes = _n_classes(model, shape, like)
    if labels.is_floating_point():
        if tuple(labels.shape) != (shape[0], n_classes):
            raise ValueError(f"soft labels must be [{shape[0]}, {n_classes}], got {tuple(labels.shape)}")
        return labels.to(device=like.device, dtype=like.dtype)
    if tuple(labels.shape) != (shape[0],):
        raise ValueError(f"labels must be [{shape[0]}] (one class index per input), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must be class indices in [0, {n_classes}), got {labels.tolist()}")
    return labels.to(device=like.device, dtype=torch.long)


def _prepare_masks(true_masks: list[torch.Tensor] | None, sites: list, like: torch.Tensor):
    """Check there is one mask per dropout site and put them on the parameters' device and dtype."""
    if true_masks is None:
        return None
    true_masks = list(true_masks)
    if len(true_masks) != len(sites):
        raise ValueError(f"true_masks has {len(true_masks)} masks, the model {len(sites)} dropout sites")
    return [m.detach().to(device=like.device, dtype=like.dtype) for m in true_masks]


def _parameters(model: nn.Module) -> list[torch.Tensor]:
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters (nothing to invert)")
    return params


def invert(model: nn.Module, target: list[torch.Tensor], labels: torch.Tensor, shape: tuple[int, ...],
           box: Box, attack: str = "ig", true_masks: list[torch.Tensor] | None = None,
           config: InversionConfig = InversionConfig(), seed: int = 0) -> InversionResult:
    """Reconstruct a batch of inputs of ``shape`` from the captured gradient ``target``.

    attack: "ig" (ignore dropout: eval-mode forward), "dia" (masks as unknowns), "informed" (the true masks).
    As in the official code, when every dropout site of the model has p = 0 (or it has none) the DIA runs
    exactly as IG (its masks would be free unknowns with nothing to pin them; ``masks`` is then None), and so
    does "informed" without ``true_masks``. "informed" without ``true_masks`` on a model with some p > 0 is an
    error.

    box: (lo, hi), floats or tensors broadcastable to ``shape`` (e.g. per-channel [C, 1, 1] bounds); x is clamped
    to it after every step. ``target`` (one tensor per parameter, in ``model.parameters()`` order), ``labels``
    (class indices [batch]), ``true_masks`` (one per dropout site) and tensor boxes are moved to the device (and
    float dtype) of the model's parameters; ``x`` is returned there. Bad input raises ValueError: a non-finite or
    all-zero target, target shapes that do not match the parameters, labels outside [0, n_classes) (n_classes
    from a probe forward), a box with lo >= hi anywhere, or a ``true_masks`` list whose length is not the number
    of dropout sites. The model's train/eval mode is restored and its dropout masks cleared afterwards.

    The returned ``x`` is the iterate produced by the Adam step whose pre-step loss was the lowest of the trial
    (as the official code keeps it); ``loss`` is that pre-step loss, i.e. the loss at the point the step started
    from, not a fresh evaluation at ``x``. The iteration and stopping rules: stop when that best loss < ``tol``
    or after ``patience`` iterations without improvement, or after ``max_iterations``.

    With ``config.restarts`` = R > 1, R independent trials run, trial r seeded with ``trial_seed(seed, r)``
    (trial 0 with ``seed``, so R = 1 is the single-trial attack); the trial with the lowest final loss is
    returned, ties going to the earliest. ``iterations`` and ``seconds`` are summed over the trials;
    ``trial``, ``trial_losses`` and ``trial_iterations`` say which trial won and how each one ended.
    """
    if attack not in ("ig", "dia", "informed"):
        raise ValueError(f"unknown attack {attack!r}; use 'ig', 'dia' or 'informed'")
    if config.restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {config.restarts}")
    params = _parameters(model)
    like = params[0].detach()
    sites = dropout_sites(model)
    no_dropout = all(s.p == 0 for s in sites)
    true_masks = _prepare_masks(true_masks, sites, like)
    if attack == "informed" and true_masks is None and not no_dropout:
        raise ValueError("the informed attack needs true_masks (the model has dropout with p > 0)")
    if no_dropout and (attack == "dia" or (attack == "informed" and true_masks is None)):
        attack = "ig"                              # nothing for the masks to explain: DIA is IG
    target = _prepare_target(target, params, like)
    box = _prepare_box(box, shape, like)
    was_training = model.training
    start = time.perf_counter()
    try:
        labels = _prepare_labels(labels, model, shape, like)
        trials = [_invert_trial(model, params, target, labels, shape, box, attack, true_masks, config,
                                trial_seed(seed, r))
                  for r in range(config.restarts)]
    finally:
        set_masks(model, None)
        model.train(was_training)
    losses = [t.loss for t in trials]
    win = min(range(len(trials)), key=lambda r: (math.isnan(losses[r]), losses[r]))   # NaN never wins
    best = trials[win]
    return InversionResult(best.x, best.masks, best.loss, sum(t.iterations for t in trials),
                           time.perf_counter() - start, trial=win, trial_losses=losses,
                           trial_iterations=[t.iterations for t in trials])


def _invert_trial(model: nn.Module, params: list[torch.Tensor], target: list[torch.Tensor], labels: torch.Tensor,
                  shape: tuple[int, ...], box, attack: str, true_masks: list[torch.Tensor] | None,
                  config: InversionConfig, seed: int) -> InversionResult:
    """One trial of ``invert`` (arguments already checked and on the parameters' device / dtype)."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(params[0]).requires_grad_(True)
    sites = dropout_sites(model)
    ps = [s.p for s in sites]
    masks = None
    variables = [x]
    if attack == "dia":
        masks = []
        for p_l, act_shape in zip(ps, activation_shapes(model, shape, params[0])):
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
        for v, gv in zip(variables, torch.autograd.grad(loss, variables)):   # not into the model's .grad
            v.grad = gv
        if config.signed:
            signed_adam_step(opt, x)
        else:
            opt.step()
        with torch.no_grad():
            _clamp_(x, box)
            if masks is not None:
                for m in masks:
                    m.clamp_(0, 1)
        value = float(loss.detach())               # the loss BEFORE this step ...
        sched.step(value)
        if value < best_loss:                      # ... kept with the x this step produced (official code)
            best_loss, best_x, since_best = value, x.detach().clone(), 0
            best_masks = [m.detach().clone() for m in masks] if masks is not None else None
        else:
            since_best += 1
        if best_loss < config.tol or since_best >= config.patience:
            break
    set_masks(model, None)
    return InversionResult(best_x, best_masks, best_loss, it, time.perf_counter() - start)


class _Diverged(Exception):
    """Raised inside DLG's closure when the loss is not finite (aborts the L-BFGS step)."""


def dlg(model: nn.Module, target: list[torch.Tensor], labels: torch.Tensor | None, shape: tuple[int, ...],
        box: Box | None = None, iterations: int = 300, lr: float = 1.0, history_size: int = 100,
        seed: int = 0, soft_labels: bool = False, max_iter: int = 20, dropout: str = "ignore",
        true_masks: list[torch.Tensor] | None = None) -> InversionResult:
    """Deep Leakage from Gradients (Zhu et al. 2019): minimise ||grad_theta CE(f(x), y) - g*||^2 with L-BFGS.

    x starts as N(0, 1) drawn from ``torch.Generator().manual_seed(seed)`` (in the dtype and device of the
    model's parameters). ``iterations`` outer steps ``LBFGS.step(closure)``, each of up to ``max_iter`` L-BFGS
    iterations (torch's default 20, as the original code); ``lr`` and ``history_size`` go to ``torch.optim.LBFGS``.
    ``target``, ``labels``, ``true_masks`` and tensor box bounds are moved to the parameters' device and dtype.

    soft_labels: as the original DLG, also optimise dummy label logits (drawn N(0, 1) after x from the same
    generator, shape [batch, classes]); the loss uses CE against softmax(logits) and ``labels`` is ignored (may be
    None). Otherwise ``labels`` (class indices, e.g. from ``attacks.labels.idlg_label``) are used as given.

    dropout: "ignore" (eval-mode forward, no masks: what a plain DLG attacker does), "informed" (train mode
    with the victim's ``true_masks``), or "as_set" (leave the model's mode and masks as the caller set them;
    beware that train-mode dropout without masks makes every evaluation random). The model's masks are cleared
    and its train/eval mode restored afterwards.

    box: if given, (lo, hi) as floats or tensors broadcastable to ``shape`` (e.g. per-channel [C, 1, 1]); x starts
    clamped to it and is clamped after every outer step (L-BFGS's inner iterations cannot be clamped, so only
    in-box points are kept). The lowest-loss x seen in any evaluation is returned, with that loss (``loss`` is
    exactly the gradient distance at the returned x, with the returned label logits).
    A non-finite loss or x (L-BFGS can diverge) stops the attack: the best x so far is kept, ``diverged`` is
    set and ``iterations`` counts the outer steps completed before it.

    Bad input raises ValueError (as ``invert``): a non-finite or all-zero target, labels outside [0, n_classes),
    a box with lo >= hi, a ``true_masks`` list whose length is not the number of dropout sites.
    """
    if dropout not in ("ignore", "informed", "as_set"):
        raise ValueError(f"unknown dropout handling {dropout!r}; use 'ignore', 'informed' or 'as_set'")
    if dropout == "informed" and true_masks is None:
        raise ValueError("dropout='informed' needs true_masks")
    if not soft_labels and labels is None:
        raise ValueError("labels are needed unless soft_labels=True")
    params = _parameters(model)
    like = params[0].detach()
    true_masks = _prepare_masks(true_masks if dropout == "informed" else None, dropout_sites(model), like)
    target = _prepare_target(target, params, like)
    if box is not None:
        box = _prepare_box(box, shape, like)
    if not soft_labels:
        labels = _prepare_labels(labels, model, shape, like)
    start = time.perf_counter()
    was_training = model.training
    try:
        if dropout == "ignore":
            set_masks(model, None)
            model.eval()
        elif dropout == "informed":
            set_masks(model, true_masks)
            model.train()
        return _dlg_run(model, params, target, labels, shape, box, iterations, lr, history_size, seed,
                        soft_labels, max_iter, start)
    finally:
        set_masks(model, None)
        model.train(was_training)


def _dlg_run(model, params, target, labels, shape, box, iterations, lr, history_size, seed, soft_labels, max_iter,
             start) -> InversionResult:
    """The L-BFGS loop of ``dlg`` (inputs checked, model mode and masks set by the caller)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(params[0])
    if box is not None:
        _clamp_(x, box)
    x.requires_grad_(True)
    variables = [x]
    logits = None
    if soft_labels:
        with torch.no_grad():
            n_classes = model(x.detach()).shape[-1]
        logits = torch.randn((shape[0], n_classes), generator=g).to(params[0]).requires_grad_(True)
        variables.append(logits)

    def distance(create_graph: bool) -> torch.Tensor:
        y = F.softmax(logits, dim=-1) if soft_labels else labels
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=create_graph)
        return gradient_distance(list(grads), target)

    best = {"loss": float("inf"), "x": x.detach().clone(),
            "logits": None if logits is None else logits.detach().clone()}

    def consider(value: float) -> None:
        in_box = box is None or _in_box(x.detach(), box)
        if value < best["loss"] and in_box:
            best.update(loss=value, x=x.detach().clone(), logits=None if logits is None else logits.detach().clone())

    def closure() -> torch.Tensor:
        loss = distance(create_graph=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _Diverged
        # the gradient w.r.t. the unknowns only (loss.backward() would also fill the model's .grad)
        for v, gv in zip(variables, torch.autograd.grad(loss, variables)):
            v.grad = gv
        consider(value)
        return loss

    opt = torch.optim.LBFGS(variables, lr=lr, max_iter=max_iter, history_size=history_size)
    steps, diverged = 0, False
    try:
        for _ in range(iterations):
            opt.step(closure)
            if not all(bool(torch.isfinite(v).all()) for v in variables):
                diverged = True
                break
            if box is not None:
                with torch.no_grad():
                    _clamp_(x, box)
            steps += 1
        if not diverged:                      # the point the last step ended on has not been evaluated yet
            value = float(distance(create_graph=False).detach())
            if math.isfinite(value):
                consider(value)
            else:
                diverged = True
    except _Diverged:
        diverged = True
    return InversionResult(best["x"], None, best["loss"], steps, time.perf_counter() - start,
                           trial_losses=[best["loss"]], trial_iterations=[steps], diverged=diverged,
                           label_logits=best["logits"])
