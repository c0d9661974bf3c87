"""Many gradient inversions at once: one optimisation over a batch of independent victims.

Each victim v has its own captured gradient g*_v, labels, dummy input x_v (a batch of b images) and, for the
DIA, its own relaxed masks. The per-victim losses are the ones of ``attacks.inversion.invert`` (same cosine,
TV, mask regularizer, signed Adam, plateau schedule, early stop, best-loss x), and they are independent, so
one backward pass of their sum gives every victim its own gradient. Adam, the plateau schedule and the stop
rules are kept per victim (vectors, not one optimizer), so victim v's trajectory is the one ``invert`` takes
alone with the same seed; finished victims leave the batch.

Two ways to get grad_theta CE for every victim:

* ``"gram"`` (models whose parameters all sit in ``nn.Linear`` layers, e.g. the DIA MLP): all victims run in
  one forward pass; with a_j the input and delta_j the output gradient of a layer for sample j of victim v,
  the victim's weight gradient is sum_j delta_j a_j^T, and the cosine needs only
  <sum_j delta_j a_j^T, T> = sum_j delta_j^T T a_j  and  ||sum_j delta_j a_j^T||^2 = sum((D D^T) * (A A^T)),
  so per-victim gradients are never materialised (cost: about one forward matmul per layer).
* ``"vmap"`` (any model without cross-sample operations): ``torch.func`` per-victim gradients, vmapped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from attacks.inversion import InversionConfig, _clamp_, _n_classes, _prepare_box
from attacks.models import activation_shapes, dropout_sites, set_masks

ATTACKS = ("ig", "dia", "informed")


@dataclass
class BatchedResult:
    """Per victim: best x [V, *shape], best masks (list per site of [V, ...]) or None, loss, iterations; total time."""

    x: torch.Tensor
    masks: list[torch.Tensor] | None
    loss: torch.Tensor
    iterations: torch.Tensor
    seconds: float


def gram_compatible(model: nn.Module) -> bool:
    """True if every parameter belongs to an nn.Linear layer (the closed-form "gram" path applies)."""
    linear = {id(p) for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)}
    return all(id(p) in linear for p in model.parameters())


def initial_state(model, shape, attack, seeds, like):
    """x [V, *shape] ~ N(0, 1) and (DIA) masks ~ Bernoulli(1 - p), victim v from its own seed (as ``invert``)."""
    sites = dropout_sites(model)
    act = activation_shapes(model, shape, like) if attack == "dia" else []
    xs, masks = [], [[] for _ in sites]
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        xs.append(torch.randn(shape, generator=g))
        for l, (site, a) in enumerate(zip(sites, act)):
            masks[l].append((torch.rand(a, generator=g) >= site.p).to(torch.float32))
    x = torch.stack(xs).to(like)
    return x, ([torch.stack(m).to(like) for m in masks] if attack == "dia" else None)


def _linear_terms(a: torch.Tensor, d: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """<sum_j d_j a_j^T, T> and ||sum_j d_j a_j^T||^2 for a [rows, in], d [rows, out], T [out, in]
    (or all three with a leading victim dimension)."""
    dot = ((d @ T) * a).sum((-2, -1))
    rows, n_in, n_out = a.shape[-2], a.shape[-1], d.shape[-1]
    if rows * (n_in + n_out) < n_in * n_out:                 # Gram matrices are cheaper than the gradient
        sq = ((d @ d.mT) * (a @ a.mT)).sum((-2, -1)).clamp_min(0)
    else:
        sq = (d.mT @ a).pow(2).sum((-2, -1))
    return dot, sq


class _LinearTaps:
    """Forward hooks on every nn.Linear that record (input, output) per module, in registration order.

    ``probes`` (one per module, or None) are added to the outputs, so the gradient of the loss with respect
    to a probe is that layer's output gradient. A layer run twice in one forward pass is refused: its weight
    gradient would be a sum over both calls, which the closed form here does not handle.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if len({id(m.weight) for m in self.layers}) != len(self.layers):
            raise ValueError("two nn.Linear layers share one weight (tied weights); the batched attack's closed form "
                             "treats them as separate gradients: use attacks.inversion.invert")
        self.record: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.probes: list[torch.Tensor] | None = None
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i):
        def hook(module, args, out):
            if self.record is None:
                return None
            if i in self.record:
                raise ValueError(f"nn.Linear layer {i} ({module}) runs more than once per forward pass; the batched "
                                 "attack needs every Linear layer used at most once (use attacks.inversion.invert)")
            if self.probes is not None:
                out = out + self.probes[i]
            self.record[i] = (args[0], out)
            return out
        return hook

    def close(self):
        for h in self._handles:
            h.remove()


class _Match:
    """Per-victim cosine distance to the captured gradients: the parts both backends share."""

    def __init__(self, model: nn.Module, targets: list[torch.Tensor]):
        self.model = model
        self.taps = _LinearTaps(model)
        self.order = {id(p): i for i, p in enumerate(model.parameters())}
        self.w_index = [self.order[id(m.weight)] for m in self.taps.layers]
        self.targets = targets                                  # per parameter: [V, *param shape]
        self.t_norm = torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in targets))

    def select(self, idx: torch.Tensor):
        """The same matcher for the victims ``idx`` only."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.targets = [t[idx] for t in self.targets]
        out.t_norm = self.t_norm[idx]
        return out

    def close(self):
        """Remove the hooks from the model."""
        self.taps.close()


class _GramMatch(_Match):
    """Per-victim cosine distance for Linear-only models, without materialising per-victim gradients."""

    def __init__(self, model: nn.Module, targets: list[torch.Tensor]):
        super().__init__(model, targets)
        self.b_index = [self.order[id(m.bias)] if m.bias is not None else None for m in self.taps.layers]

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        V, b = x.shape[:2]
        self.taps.record = {}
        try:
            logits = self.model(x.reshape(V * b, *x.shape[2:]))
            record = self.taps.record
        finally:
            self.taps.record = None
        used = sorted(record)                                   # unused layers have zero gradient: no terms
        ce = F.cross_entropy(logits, labels.reshape(-1), reduction="none").reshape(V, b).mean(1).sum()
        deltas = torch.autograd.grad(ce, [record[i][1] for i in used], create_graph=True)
        dot = x.new_zeros(V)
        sq = x.new_zeros(V)
        for i, d in zip(used, deltas):
            a = record[i][0]
            a = a.reshape(V, -1, a.shape[-1])                    # [V, b * tokens, in]
            d = d.reshape(V, -1, d.shape[-1])                    # [V, b * tokens, out]
            dd, ss = _linear_terms(a, d, self.targets[self.w_index[i]])
            dot, sq = dot + dd, sq + ss
            if self.b_index[i] is not None:
                gb = d.sum(1)
                dot = dot + (gb * self.targets[self.b_index[i]]).sum(1)
                sq = sq + gb.pow(2).sum(1)
        return 1 - dot / (torch.sqrt(sq) * self.t_norm + 1e-12)


class _VmapMatch(_Match):
    """Per-victim cosine distance for any model without cross-sample operations (torch.func, vmapped).

    Inside each victim's function, nn.Linear weights use the closed form of ``_GramMatch`` (output gradients
    from zero "probes" added to each Linear output, inputs returned as aux); only the other parameters
    (embeddings, norms, convolutions, biases) get materialised per-victim gradients.
    """

    def __init__(self, model: nn.Module, targets: list[torch.Tensor]):
        fused = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) and
                 type(m).forward is nn.LayerNorm.forward]
        if fused:
            raise ValueError(f"nn.LayerNorm ({', '.join(fused)}) gives wrong second derivatives under vmap in this "
                             "torch version; use attacks.vision.LayerNorm (same parameters) or attacks.inversion.invert")
        super().__init__(model, targets)
        self.sites = dropout_sites(model)
        weights = set(self.w_index)
        named = list(model.named_parameters())
        self.fixed = {n: p.detach() for i, (n, p) in enumerate(named) if i in weights}
        self.free_index = [i for i in range(len(named)) if i not in weights]
        self.free = {named[i][0]: named[i][1].detach() for i in self.free_index}
        self.buffers = dict(model.named_buffers())
        self._shapes: dict = {}

    def distance(self, x, labels, masks, targets, t_norm, shapes):
        used = sorted(shapes)

        def ce(probes, free):
            for site, m in zip(self.sites, masks):
                site.mask = m
            full = [None] * len(self.taps.layers)
            for i, p in zip(used, probes):
                full[i] = p
            self.taps.record, self.taps.probes = {}, full
            try:
                out = functional_call(self.model, ({**self.fixed, **free}, self.buffers), (x,))
                return F.cross_entropy(out, labels), [self.taps.record[i][0] for i in used]
            finally:
                self.taps.record, self.taps.probes = None, None
                for site in self.sites:
                    site.mask = None

        probes = [x.new_zeros(shapes[i]) for i in used]
        (deltas, g_free), inputs = grad(ce, argnums=(0, 1), has_aux=True)(probes, self.free)
        names = list(self.free)
        dot = sum((g_free[n] * targets[i]).sum() for n, i in zip(names, self.free_index))
        sq = sum(g_free[n].pow(2).sum() for n in names)
        for i, a, d in zip(used, inputs, deltas):
            dd, ss = _linear_terms(a.reshape(-1, a.shape[-1]), d.reshape(-1, d.shape[-1]), targets[self.w_index[i]])
            dot, sq = dot + dd, sq + ss
        return 1 - dot / (torch.sqrt(sq) * t_norm + 1e-12)

    def __call__(self, x, labels, masks):
        key = tuple(x.shape[1:])
        if key not in self._shapes:
            self._shapes[key] = self._linear_output_shapes(x[0], masks)
        shapes = self._shapes[key]
        fn = lambda x, y, t, tn, *m: self.distance(x, y, list(m), t, tn, shapes)    # noqa: E731
        return vmap(fn, in_dims=(0, 0, 0, 0) + (0,) * len(masks))(x, labels, self.targets, self.t_norm, *masks)

    def _linear_output_shapes(self, x, masks) -> dict[int, torch.Size]:
        """Output shape of each Linear layer the forward pass uses (by registration index)."""
        self.taps.record = {}
        try:
            with torch.no_grad():
                for site, m in zip(self.sites, masks):
                    site.mask = m[0]
                self.model(x)
            return {i: out.shape for i, (_, out) in self.taps.record.items()}
        finally:
            self.taps.record = None
            for site in self.sites:
                site.mask = None


def _tv(x: torch.Tensor) -> torch.Tensor:
    """total_variation per victim: x [V, b, C, H, W] -> [V]."""
    h = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    v = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    return h + v


class _Adam:
    """torch.optim.Adam's update (same operation order) with a per-victim learning rate; state [V, ...]."""

    def __init__(self, tensors: list[torch.Tensor], lr: torch.Tensor, betas=(0.9, 0.999), eps=1e-8):
        self.m = [torch.zeros_like(t) for t in tensors]
        self.v = [torch.zeros_like(t) for t in tensors]
        self.lr, self.betas, self.eps, self.t = lr, betas, eps, 0

    def select(self, idx):
        self.m = [m[idx] for m in self.m]
        self.v = [v[idx] for v in self.v]
        self.lr = self.lr[idx]

    @torch.no_grad()
    def step(self, tensors: list[torch.Tensor], grads: list[torch.Tensor], running: torch.Tensor):
        """One Adam step; rows where ``running`` is False (finished victims) do not move."""
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2_sqrt = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for p, g, m, v in zip(tensors, grads, self.m, self.v):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = (self.lr / bc1 * running).reshape(-1, *([1] * (p.ndim - 1))).to(p.dtype)
            p.sub_(step * (m / (v.sqrt() / bc2_sqrt).add_(self.eps)))


class _Plateau:
    """ReduceLROnPlateau(mode min, factor, patience, threshold 1e-4 rel) per victim."""

    def __init__(self, n: int, factor: float, patience: int, device):
        self.best = torch.full((n,), math.inf, dtype=torch.float64, device=device)
        self.bad = torch.zeros(n, dtype=torch.int64, device=device)
        self.factor, self.patience = factor, patience

    def select(self, idx):
        self.best, self.bad = self.best[idx], self.bad[idx]

    def step(self, loss: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        better = loss < self.best * (1 - 1e-4)
        self.best = torch.where(better, loss, self.best)
        self.bad = torch.where(better, 0, self.bad + 1)
        cut = self.bad > self.patience
        new = torch.where(cut & (lr - lr * self.factor > 1e-8), lr * self.factor, lr)
        self.bad = torch.where(cut, 0, self.bad)
        return new


def _check_inputs(model, targets, labels, shape, box, attack, true_masks, V, like):
    """Named errors for inputs the attack cannot use."""
    params = list(model.parameters())
    if labels.ndim != 2 or labels.shape[1] != shape[0]:
        raise ValueError(f"labels must be [victims, {shape[0]}], got {tuple(labels.shape)}")
    if len(targets) != len(params) or any(t.shape != (V, *p.shape) for t, p in zip(targets, params)):
        raise ValueError("targets must hold, per model parameter, a [victims, *parameter shape] tensor")
    for t in targets:
        if not bool(torch.isfinite(t).all()):
            raise ValueError("the captured gradient (targets) contains NaN or inf entries")
    norms = sum(t.flatten(1).double().pow(2).sum(1) for t in targets)
    if bool((norms == 0).any()):
        raise ValueError(f"the captured gradient of victim(s) {torch.nonzero(norms == 0).flatten().tolist()} is all "
                         "zeros: the cosine loss is undefined")
    _prepare_box(box, shape, like)
    try:
        n_classes = _n_classes(model, shape, like)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"the model cannot take an input batch of shape {tuple(shape)}: {e}") from None
    if bool((labels < 0).any()) or bool((labels >= n_classes).any()):
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got values {labels.unique().tolist()}")
    sites = dropout_sites(model)
    if attack == "informed" and true_masks is not None:
        act = activation_shapes(model, shape, like)
        if len(true_masks) != len(sites) or any(tuple(m.shape) != (V, *a) for m, a in zip(true_masks, act)):
            raise ValueError(f"true_masks must hold one [victims, *activation shape] tensor per dropout site "
                             f"({len(sites)} sites: {[(V, *a) for a in act]}), got "
                             f"{[tuple(m.shape) for m in true_masks]}")


def batched_invert(model: nn.Module, targets: list[torch.Tensor], labels: torch.Tensor, shape: tuple[int, ...],
                   box: tuple, attack: str = "ig", true_masks: list[torch.Tensor] | None = None,
                   config: InversionConfig = InversionConfig(), seeds=None, backend: str = "auto",
                   progress=None, check_every: int | None = None) -> BatchedResult:
    """Reconstruct V victims at once.

    targets: per parameter (``model.parameters()`` order) a [V, *param shape] tensor of captured gradients;
    labels: [V, b]; shape: one victim's input batch (b, C, H, W); box: (lo, hi) scalars or [C, 1, 1] tensors;
    true_masks (informed): per dropout site a [V, b, ...] tensor; seeds: per victim (default 0..V-1), victim v
    starts where ``invert(..., seed=seeds[v])`` starts. When every dropout rate is 0, "dia" and "informed"
    are IG (as in the official code). backend: "gram", "vmap" or "auto" (gram when every parameter is in an
    nn.Linear layer). Finished victims are frozen at once and leave the batch every ``check_every``
    iterations (default 1 on CPU, 25 on CUDA, where checking costs a device sync); results do not depend on it.
    ``progress(iteration, n_active)`` is called every iteration if given.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; use one of {', '.join(ATTACKS)}")
    sites = dropout_sites(model)
    if all(s.p == 0 for s in sites):
        attack = "ig"                                           # no dropout: nothing to invert but x
    if attack == "informed" and true_masks is None:
        raise ValueError("the informed attack needs true_masks")
    if getattr(config, "restarts", 1) != 1:
        raise ValueError("batched_invert runs one trial per victim; pass restarts as extra victims (more seeds)")
    if backend == "auto":
        backend = "gram" if gram_compatible(model) else "vmap"
    if backend == "gram" and not gram_compatible(model):
        raise ValueError("the gram backend needs a model whose parameters are all in nn.Linear layers")
    if backend not in ("gram", "vmap"):
        raise ValueError(f"unknown backend {backend!r}; use auto, gram or vmap")
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters: there is no gradient to invert")
    like = params[0].detach()
    V = labels.shape[0]
    if V == 0:
        raise ValueError("no victims: labels has 0 rows")
    if labels.is_floating_point():
        raise ValueError(f"labels must be class indices (an integer tensor), got {labels.dtype}")
    was_training, grad_flags = model.training, [p.requires_grad for p in params]
    set_masks(model, None)                                      # masks left over by a caller would be used
    try:
        _check_inputs(model, targets, labels, shape, box, attack, true_masks, V, like)
    finally:
        model.train(was_training)
    seeds = list(range(V)) if seeds is None else list(seeds)
    if len(seeds) != V:
        raise ValueError(f"{len(seeds)} seeds for {V} victims")
    device = like.device
    check_every = check_every or (1 if device.type == "cpu" else 25)

    start = time.perf_counter()
    box = _prepare_box(box, shape, like)
    ps = [s.p for s in sites]
    x, masks = initial_state(model, shape, attack, seeds, like)
    fixed = [m.detach().to(like) for m in true_masks] if attack == "informed" else None
    match = None
    try:
        match = (_GramMatch if backend == "gram" else _VmapMatch)(model, [t.detach().to(like) for t in targets])
        return _optimise(model, match, params, sites, ps, x, masks, fixed, labels.to(device, torch.long), box,
                         attack, backend, config, progress, check_every, start)
    finally:
        if match is not None:
            match.close()
        set_masks(model, None)
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _optimise(model, match, params, sites, ps, x, masks, fixed, labels_a, box, attack, backend, config, progress,
              check_every, start) -> BatchedResult:
    """The optimisation loop of ``batched_invert`` (which restores the model's state afterwards)."""
    V, device = x.shape[0], x.device
    model.train(attack != "ig")
    for p in params:
        p.requires_grad_(backend == "gram")                     # vmap differentiates a detached copy

    variables = [x] + (masks or [])
    adam = _Adam(variables, torch.full((V,), config.lr, dtype=torch.float64, device=device))
    plateau = _Plateau(V, 0.1, config.plateau_patience, device)
    active = torch.arange(V, device=device)                     # original ids of the rows still in the batch
    running = torch.ones(V, dtype=torch.bool, device=device)    # rows not yet finished
    best_loss = torch.full((V,), math.inf, dtype=torch.float64, device=device)
    best_x = x.detach().clone()
    best_masks = [m.detach().clone() for m in masks] if masks is not None else None
    since = torch.zeros(V, dtype=torch.int64, device=device)
    iters = torch.zeros(V, dtype=torch.int64, device=device)
    out_loss, out_x, out_iter = best_loss.clone(), best_x.clone(), iters.clone()
    out_masks = [m.clone() for m in best_masks] if best_masks is not None else None
    expand = lambda t, ref: t.reshape(-1, *([1] * (ref.ndim - 1)))  # noqa: E731

    for it in range(1, config.max_iterations + 1):
        leaves = [v.detach().requires_grad_(True) for v in variables]
        xv, mv = leaves[0], leaves[1:]
        cur_masks = mv if attack == "dia" else (fixed or [])
        if backend == "gram":
            for site, m in zip(sites, cur_masks):
                site.mask = m.reshape(-1, *m.shape[2:])
            loss = match(xv, labels_a)
        else:
            loss = match(xv, labels_a, list(cur_masks))
        loss = loss + config.tv * _tv(xv)
        if attack == "dia":
            loss = loss + config.mask_reg * sum(((1 - m.flatten(1).mean(1)) - p).abs() for m, p in zip(mv, ps))
        grads = list(torch.autograd.grad(loss.sum(), leaves))
        if config.signed:
            grads[0] = grads[0].sign()
        adam.step(variables, grads, running)
        with torch.no_grad():
            _clamp_(variables[0], box)
            for m in variables[1:]:
                m.clamp_(0, 1)
        value = loss.detach().double()
        adam.lr = plateau.step(value, adam.lr)
        improved = (value < best_loss) & running
        best_loss = torch.where(improved, value, best_loss)
        since = torch.where(improved, 0, since + running.long())
        iters = torch.where(running, it, iters)
        with torch.no_grad():
            best_x = torch.where(expand(improved, x), variables[0], best_x)
            if best_masks is not None:
                best_masks = [torch.where(expand(improved, m), m, bm) for m, bm in zip(variables[1:], best_masks)]
        finished = (best_loss < config.tol) | (since >= config.patience)
        running = running & ~finished if it < config.max_iterations else torch.zeros_like(running)
        if it % check_every == 0 or it == config.max_iterations:
            done = ~running
            if bool(done.any()):
                ids = active[done]
                out_loss[ids], out_x[ids], out_iter[ids] = best_loss[done], best_x[done], iters[done]
                if best_masks is not None:
                    for om, bm in zip(out_masks, best_masks):
                        om[ids] = bm[done]
                keep = running
                if not bool(keep.any()):
                    if progress is not None:
                        progress(it, 0)
                    break
                active, best_loss, best_x, since, iters = (t[keep] for t in (active, best_loss, best_x, since, iters))
                running = running[keep]
                variables = [v[keep] for v in variables]
                best_masks = [bm[keep] for bm in best_masks] if best_masks is not None else None
                adam.select(keep)
                plateau.select(keep)
                labels_a = labels_a[keep]
                fixed = [m[keep] for m in fixed] if fixed is not None else None
                match = match.select(keep)
        if progress is not None:
            progress(it, int(running.sum()) if check_every == 1 else len(active))
    return BatchedResult(out_x, out_masks, out_loss, out_iter.cpu(), time.perf_counter() - start)
