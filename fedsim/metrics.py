"""Population metrics: pure functions of the stacked node parameters ``x`` ``[N, P]`` and the model's layout.

Used to watch the "vanishing variance" of decentralized averaging (Tian et al., 2024): the variance of
each weight tensor over its entries, per node, relative to its Xavier value (``fedsim.state.xavier_variance``).
Nothing here loops over nodes: each weight tensor is one column slice of ``x``, reduced for all rows at once.
"""

from __future__ import annotations

import torch

from fedsim.averaging import tensor_variances
from fedsim.state import ParamSpec


def weight_tensors(spec: ParamSpec) -> dict[str, slice]:
    """The column slice of every weight tensor (``ndim >= 2``: Linear and Conv weights) in the flat layout."""
    out, offset = {}, 0
    for name, shape, k in zip(spec.names, spec.shapes, spec.sizes):
        if len(shape) >= 2:
            out[name] = slice(offset, offset + k)
        offset += k
    return out


def weight_variance(x: torch.Tensor, spec: ParamSpec, unbiased: bool = False) -> dict[str, torch.Tensor]:
    """Per weight tensor, the variance over its entries of every node: ``{name: Tensor[N]}``.

    Population variance (divide by the number of entries) by default; ``unbiased=True`` divides by one
    less. The result has ``x``'s dtype and device.
    """
    if x.ndim != 2 or x.shape[1] != spec.size:
        raise ValueError(f"need a population [N, {spec.size}], got shape {tuple(x.shape)}")
    tensors = weight_tensors(spec)
    var = tensor_variances(x, list(tensors.values()), unbiased)   # two passes per chunk, not torch.var's Welford
    return {name: var[:, i] for i, name in enumerate(tensors)}


def weight_var_ratio(x: torch.Tensor, spec: ParamSpec, reference: dict[str, float],
                     unbiased: bool = False) -> dict[str, float]:
    """Weight variance relative to ``reference`` (e.g. ``xavier_variance(model, init)``).

    Per layer in ``reference`` (in parameter order): the mean over nodes of the tensor's variance divided by
    the reference variance, as ``"weight_var_ratio.<name>"``; ``"weight_var_ratio"`` is the unweighted mean
    of those layer ratios. 1 means Xavier's variance; averaging k uncorrelated models divides it by k.
    ``reference`` may name a subset of the weight tensors; names that are not weight tensors are refused.
    """
    tensors = weight_tensors(spec)
    unknown = [n for n in reference if n not in tensors]
    if unknown or not reference:
        raise ValueError(f"reference must name weight tensors of the model ({', '.join(tensors)}); "
                         f"got {', '.join(unknown) if unknown else 'none'}")
    bad = {n: v for n, v in reference.items() if not v > 0}
    if bad:
        raise ValueError(f"reference variances must be positive, got {bad}")
    var = weight_variance(x, spec, unbiased)
    layers = {f"weight_var_ratio.{n}": float(var[n].mean()) / float(reference[n]) for n in tensors if n in reference}
    return {"weight_var_ratio": sum(layers.values()) / len(layers), **layers}


def node_accuracy_summary(acc: torch.Tensor, name: str = "nodes") -> dict[str, float]:
    """Mean, min and max of per-model test accuracies: ``{name_acc, name_acc_min, name_acc_max}``.

    The keys follow ``fedsim.engine.evaluate_models`` (``nodes_acc`` is the mean over the evaluated
    nodes). With a single model only ``name_acc`` is returned, as the engine records today.
    """
    acc = torch.as_tensor(acc).reshape(-1)
    if not acc.is_floating_point():
        acc = acc.double()
    if acc.numel() == 0:
        raise ValueError("no accuracies to summarise")
    out = {f"{name}_acc": float(acc.mean())}
    if acc.numel() > 1:
        out[f"{name}_acc_min"] = float(acc.min())
        out[f"{name}_acc_max"] = float(acc.max())
    return out


def held_out_metrics(model, models: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy (mean, and min/max over several rows) and mean loss on ``(x, y)`` of each named group of parameter
    rows of ``model``: ``{name_acc, name_acc_min, name_acc_max, name_loss}``. What the algorithms' ``evaluate``
    reports on evaluation rounds."""
    from fedsim.training import evaluate

    out: dict[str, float] = {}
    for name, rows in models.items():
        acc, loss = evaluate(model, rows, x, y)
        out.update(node_accuracy_summary(acc, name))
        out[f"{name}_loss"] = float(loss.mean())
    return out
