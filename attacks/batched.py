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

from attacks.inversion import InversionConfig
from attacks.models import dropout_sites

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


def _activation_shapes(model: nn.Module, shape: tuple[int, ...], like: torch.Tensor) -> list[tuple[int, ...]]:
    """The activation shape at each dropout site for an input batch of ``shape``."""
    sites, shapes = dropout_sites(model), []
    hooks = [s.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for s in sites]
    was = model.training
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros(shape, dtype=like.dtype, device=like.device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return shapes


def initial_state(model, shape, attack, seeds, like):
    """x [V, *shape] ~ N(0, 1) and (DIA) masks ~ Bernoulli(1 - p), victim v from its own seed (as ``invert``)."""
    sites = dropout_sites(model)
    act = _activation_shapes(model, shape, like) if attack == "dia" else []
    xs, masks = [], [[] for _ in sites]
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        xs.append(torch.randn(shape, generator=g))
        for l, (site, a) in enumerate(zip(sites, act)):
            masks[l].append((torch.rand(a, generator=g) >= site.p).to(torch.float32))
    x = torch.stack(xs).to(like)
    return x, ([torch.stack(m).to(like) for m in masks] if attack == "dia" else None)


class _GramMatch:
    """Per-victim cosine distance for Linear-only models, without materialising per-victim gradients."""

    def __init__(self, model: nn.Module, targets: list[torch.Tensor]):
        self.model = model
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        order = {id(p): i for i, p in enumerate(model.parameters())}
        self.w_index = [order[id(m.weight)] for m in self.layers]
        self.b_index = [order[id(m.bias)] if m.bias is not None else None for m in self.layers]
        self.targets = targets                                  # per parameter: [V, *param shape]
        self.t_norm = torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in targets))

    def select(self, idx: torch.Tensor) -> "_GramMatch":
        out = object.__new__(_GramMatch)
        out.__dict__.update(self.__dict__)
        out.targets = [t[idx] for t in self.targets]
        out.t_norm = self.t_norm[idx]
        return out

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        V, b = x.shape[:2]
        inputs, outputs = [], []

        def hook(module, args, out):
            inputs.append(args[0])
            outputs.append(out)

        hooks = [m.register_forward_hook(hook) for m in self.layers]
        try:
            logits = self.model(x.reshape(V * b, *x.shape[2:]))
        finally:
            for h in hooks:
                h.remove()
        ce = F.cross_entropy(logits, labels.reshape(-1), reduction="none").reshape(V, b).mean(1).sum()
        deltas = torch.autograd.grad(ce, outputs, create_graph=True)
        dot = x.new_zeros(V)
        sq = x.new_zeros(V)
        for layer, a, d, wi, bi in zip(self.layers, inputs, deltas, self.w_index, self.b_index):
            a = a.reshape(V, -1, a.shape[-1])                    # [V, b * tokens, in]
            d = d.reshape(V, -1, d.shape[-1])                    # [V, b * tokens, out]
            T = self.targets[wi]                                 # [V, out, in]
            dot = dot + (torch.bmm(d, T) * a).sum((1, 2))
            rows, (n_out, n_in) = a.shape[1], T.shape[1:]
            if rows * (n_in + n_out) < n_in * n_out:             # Gram matrices are cheaper than the gradient
                sq = sq + (torch.bmm(d, d.mT) * torch.bmm(a, a.mT)).sum((1, 2))
            else:
                sq = sq + torch.bmm(d.mT, a).pow(2).sum((1, 2))
            if bi is not None:
                gb = d.sum(1)
                dot = dot + (gb * self.targets[bi]).sum(1)
                sq = sq + gb.pow(2).sum(1)
        return 1 - dot / (torch.sqrt(sq) * self.t_norm + 1e-12)


class _VmapMatch:
    """Per-victim cosine distance for any model without cross-sample operations (torch.func, vmapped).

    Inside each victim's function, nn.Linear weights use the closed form of ``_GramMatch`` (output gradients
    from zero "probes" added to each Linear output, inputs returned as aux); only the other parameters
    (embeddings, norms, convolutions, biases elsewhere) get materialised per-victim gradients.
    """

    def __init__(self, model: nn.Module, targets: list[torch.Tensor]):
        self.model = model
        self.sites = dropout_sites(model)
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        order = {id(p): i for i, p in enumerate(model.parameters())}
        self.w_index = [order[id(m.weight)] for m in self.layers]
        in_linear_weight = set(self.w_index)
        named = list(model.named_parameters())
        self.fixed = {n: p.detach() for i, (n, p) in enumerate(named) if i in in_linear_weight}
        self.free_names = [n for i, (n, _) in enumerate(named) if i not in in_linear_weight]
        self.free_index = [i for i in range(len(named)) if i not in in_linear_weight]
        self.free = {n: dict(named)[n].detach() for n in self.free_names}
        self.buffers = dict(model.named_buffers())
        self.targets = targets
        self.t_norm = torch.sqrt(sum(t.flatten(1).pow(2).sum(1) for t in targets))
        self._ctx: dict = {}
        self._shapes: dict = {}
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def close(self):
        """Remove the probe hooks from the model."""
        for h in self._handles:
            h.remove()

    def _hook(self, module, args, out):
        ctx = self._ctx
        if not ctx:
            return None
        ctx["inputs"].append(args[0])
        return out + ctx["probes"][len(ctx["inputs"]) - 1]

    def select(self, idx: torch.Tensor) -> "_VmapMatch":
        out = object.__new__(_VmapMatch)
        out.__dict__.update(self.__dict__)
        out.targets = [t[idx] for t in self.targets]
        out.t_norm = self.t_norm[idx]
        return out

    def distance(self, x, labels, masks, targets, t_norm, probe_shapes):
        def ce(probes, free):
            for site, m in zip(self.sites, masks):
                site.mask = m
            self._ctx.update(inputs=[], probes=probes)
            try:
                out = functional_call(self.model, ({**self.fixed, **free}, self.buffers), (x,))
                return F.cross_entropy(out, labels), list(self._ctx["inputs"])
            finally:
                self._ctx.clear()
                for site in self.sites:
                    site.mask = None

        probes = [x.new_zeros(s) for s in probe_shapes]
        (deltas, g_free), inputs = grad(ce, argnums=(0, 1), has_aux=True)(probes, self.free)
        dot = sum((g_free[n] * targets[i]).sum() for n, i in zip(self.free_names, self.free_index))
        sq = sum(g_free[n].pow(2).sum() for n in self.free_names)
        for a, d, wi in zip(inputs, deltas, self.w_index):
            a, d, T = a.reshape(-1, a.shape[-1]), d.reshape(-1, d.shape[-1]), targets[wi]
            dot = dot + ((d @ T) * a).sum()
            if a.shape[0] * (a.shape[1] + d.shape[1]) < a.shape[1] * d.shape[1]:
                sq = sq + ((d @ d.T) * (a @ a.T)).sum()
            else:
                sq = sq + (d.T @ a).pow(2).sum()
        return 1 - dot / (torch.sqrt(sq) * t_norm + 1e-12)

    def __call__(self, x, labels, masks):
        key = tuple(x.shape[1:])
        if key not in self._shapes:
            self._shapes[key] = self._linear_output_shapes(x[0], masks)
        shapes = self._shapes[key]
        fn = lambda x, y, t, tn, *m: self.distance(x, y, list(m), t, tn, shapes)    # noqa: E731
        return vmap(fn, in_dims=(0, 0, 0, 0) + (0,) * len(masks))(x, labels, self.targets, self.t_norm, *masks)

    def _linear_output_shapes(self, x, masks):
        shapes = []
        hooks = [m.register_forward_hook(lambda mod, a, o: shapes.append(o.shape)) for m in self.layers]
        try:
            with torch.no_grad():
                for site, m in zip(self.sites, masks):
                    site.mask = m[0]
                self.model(x)
        finally:
            for h in hooks:
                h.remove()
            for site in self.sites:
                site.mask = None
        return shapes


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
    def step(self, tensors: list[torch.Tensor], grads: list[torch.Tensor]):
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2_sqrt = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for p, g, m, v in zip(tensors, grads, self.m, self.v):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            step = (self.lr / bc1).reshape(-1, *([1] * (p.ndim - 1))).to(p.dtype)
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


def batched_invert(model: nn.Module, targets: list[torch.Tensor], labels: torch.Tensor, shape: tuple[int, ...],
                   box: tuple[float, float], attack: str = "ig", true_masks: list[torch.Tensor] | None = None,
                   config: InversionConfig = InversionConfig(), seeds=None, backend: str = "auto",
                   progress=None) -> BatchedResult:
    """Reconstruct V victims at once.

    targets: per parameter (``model.parameters()`` order) a [V, *param shape] tensor of captured gradients;
    labels: [V, b]; shape: one victim's input batch (b, C, H, W); true_masks (informed): per site [V, b, ...];
    seeds: per victim (default 0..V-1), victim v starts where ``invert(..., seed=seeds[v])`` starts.
    backend: "gram", "vmap" or "auto" (gram when every parameter is in an nn.Linear layer).
    ``progress(iteration, n_active)`` is called every iteration if given.
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; use one of {', '.join(ATTACKS)}")
    if attack == "informed" and true_masks is None:
        raise ValueError("the informed attack needs true_masks")
    if getattr(config, "restarts", 1) != 1:
        raise ValueError("batched_invert runs one trial per victim; pass restarts as extra victims (more seeds)")
    params = list(model.parameters())
    V = labels.shape[0]
    if labels.ndim != 2 or labels.shape[1] != shape[0]:
        raise ValueError(f"labels must be [victims, {shape[0]}], got {tuple(labels.shape)}")
    if len(targets) != len(params) or any(t.shape != (V, *p.shape) for t, p in zip(targets, params)):
        raise ValueError("targets must hold, per model parameter, a [victims, *parameter shape] tensor")
    if backend == "auto":
        backend = "gram" if gram_compatible(model) else "vmap"
    if backend == "gram" and not gram_compatible(model):
        raise ValueError("the gram backend needs a model whose parameters are all in nn.Linear layers")
    if backend not in ("gram", "vmap"):
        raise ValueError(f"unknown backend {backend!r}; use auto, gram or vmap")
    seeds = list(range(V)) if seeds is None else list(seeds)
    if len(seeds) != V:
        raise ValueError(f"{len(seeds)} seeds for {V} victims")

    start = time.perf_counter()
    like = params[0].detach()
    sites = dropout_sites(model)
    ps = [s.p for s in sites]
    x, masks = initial_state(model, shape, attack, seeds, like)
    use_masks = masks if attack == "dia" else (true_masks if attack == "informed" else None)
    match = (_GramMatch if backend == "gram" else _VmapMatch)(model, [t.detach().to(like) for t in targets])
    was_training = model.training
    model.train(attack != "ig")
    for p in params:
        p.requires_grad_(backend == "gram")                     # vmap differentiates a detached copy

    variables = [x] + (masks or [])
    lr = torch.full((V,), config.lr, dtype=torch.float64, device=like.device)
    adam = _Adam(variables, lr)
    plateau = _Plateau(V, 0.1, config.plateau_patience, like.device)
    active = torch.arange(V, device=like.device)
    labels_a, fixed_a = labels.to(like.device), use_masks if attack == "informed" else None
    best_loss = torch.full((V,), math.inf, dtype=torch.float64, device=like.device)
    best_x = x.detach().clone()
    best_masks = [m.detach().clone() for m in masks] if masks is not None else None
    since = torch.zeros(V, dtype=torch.int64, device=like.device)
    iterations = torch.zeros(V, dtype=torch.int64)
    # full-size result buffers, indexed by original victim id
    out_loss, out_x = best_loss.clone(), best_x.clone()
    out_masks = [m.clone() for m in best_masks] if best_masks is not None else None

    try:
        for it in range(1, config.max_iterations + 1):
            leaves = [v.detach().requires_grad_(True) for v in variables]
            xv, mv = leaves[0], leaves[1:]
            cur_masks = mv if attack == "dia" else (fixed_a or [])
            if backend == "gram":
                if cur_masks:
                    for site, m in zip(sites, cur_masks):
                        site.mask = m.reshape(-1, *m.shape[2:])
                loss = match(xv, labels_a)
            else:
                loss = match(xv, labels_a, list(cur_masks))
            loss = loss + config.tv * _tv(xv)
            if attack == "dia":
                loss = loss + config.mask_reg * sum(((1 - m.flatten(1).mean(1)) - p).abs() for m, p in zip(mv, ps))
            grads = torch.autograd.grad(loss.sum(), leaves)
            grads = list(grads)
            if config.signed:
                grads[0] = grads[0].sign()
            adam.step(variables, grads)
            with torch.no_grad():
                variables[0].clamp_(*box)
                for m in variables[1:]:
                    m.clamp_(0, 1)
            value = loss.detach().double()
            adam.lr = plateau.step(value, adam.lr)
            improved = value < best_loss
            best_loss = torch.where(improved, value, best_loss)
            since = torch.where(improved, 0, since + 1)
            with torch.no_grad():
                sel = improved.reshape(-1, *([1] * (x.ndim - 1)))
                best_x = torch.where(sel, variables[0], best_x)
                if best_masks is not None:
                    best_masks = [torch.where(improved.reshape(-1, *([1] * (m.ndim - 1))), m, bm)
                                  for m, bm in zip(variables[1:], best_masks)]
            iterations[active.cpu()] = it
            done = (best_loss < config.tol) | (since >= config.patience)
            if it == config.max_iterations:
                done = torch.ones_like(done)
            if bool(done.any()):
                ids = active[done]
                out_loss[ids], out_x[ids] = best_loss[done], best_x[done]
                if best_masks is not None:
                    for om, bm in zip(out_masks, best_masks):
                        om[ids] = bm[done]
                keep = ~done
                if not bool(keep.any()):
                    break
                active, best_loss, best_x, since = active[keep], best_loss[keep], best_x[keep], since[keep]
                variables = [v[keep] for v in variables]
                best_masks = [bm[keep] for bm in best_masks] if best_masks is not None else None
                adam.select(keep)
                plateau.select(keep)
                labels_a = labels_a[keep]
                fixed_a = [m[keep] for m in fixed_a] if fixed_a is not None else None
                match = match.select(keep)
            if progress is not None:
                progress(it, len(active))
    finally:
        if hasattr(match, "close"):
            match.close()
        for site in sites:
            site.mask = None
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return BatchedResult(out_x, out_masks, out_loss, iterations, time.perf_counter() - start)
