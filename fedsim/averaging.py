"""Gossip averaging rules: what a node makes of its own model and the models that arrived.

Rules (``Averaging.rule``):

* ``plain``: weighted averaging with the mixing matrix, ``(w_own own + sum_j w_j r_j) / (w_own + sum_j w_j)``
  (in a synchronous round the weights of the round's W sum to 1, lost messages' weight on ``w_own``);
* ``beta``: the authors' buffer rule ``beta * own + (1 - beta) * mean_j r_j`` (beta = 0: the received mean);
* ``variance_corrected``: the ``beta`` mix, then every corrected tensor l is rescaled around its mean to a target
  variance (Tian et al. 2024; read from the authors' DFL2 / DFL_torch code, ../shared/specs/gossip.md)::

      target_l = mean_j Var(r_j,l)                                  (target = "others", the default)
               = beta Var(own_l) + (1 - beta) mean_j Var(r_j,l)      (target = "follow_beta")
      out_l    = (mix_l - mean(mix_l)) * sqrt((target_l + eps) / (Var(mix_l) + eps)) + mean(mix_l)

  Var is over the entries of one tensor of one model (population variance, or unbiased). ``tensors``:
  ``weights`` rescales the weight tensors only (ndim >= 2, as DFL2's ``blobs[0]``), ``all_but_bn_stats`` every
  parameter tensor (as DFL_torch: the population holds parameters only, so BatchNorm running statistics are
  never part of it). Tensors with one element are left alone; so is a tensor whose mixed variance is 0 with
  ``eps = 0`` (DFL2 would produce NaN there). A node that received nothing keeps its model.

Every rule has a per-node form (``average_node``: one node, its received models; the reference in tests and
what a node calls when it runs as a process of its own) and a batched form over the stacked population
(``average_inbox``) that needs only running sums of what arrived (``Inbox``): the weighted sum of the received
models, the sum of weights, their number and the sum of their per-tensor variances, so an asynchronous inbox
stores no copies of the models.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from fedsim.state import ParamSpec

RULES = ("plain", "beta", "variance_corrected")
TARGETS = ("others", "follow_beta")
TENSORS = ("weights", "all_but_bn_stats")


@dataclass(frozen=True)
class Averaging:
    """The averaging rule of a gossip node and the options of the variance correction."""

    rule: str = "plain"
    beta: float = 0.5
    target: str = "others"
    tensors: str = "weights"
    eps: float = 0.0
    unbiased: bool = False

    def __post_init__(self):
        for name, value, known in (("rule", self.rule, RULES), ("target", self.target, TARGETS),
                                   ("tensors", self.tensors, TENSORS)):
            if value not in known:
                raise ValueError(f"unknown averaging {name} {value!r}; known: {', '.join(known)}")
        if not 0 <= self.beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {self.beta}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")

    @property
    def corrects(self) -> bool:
        return self.rule == "variance_corrected"


def corrected_slices(spec: ParamSpec, tensors: str) -> list[slice]:
    """Column slices of the flat layout holding the tensors the correction rescales."""
    if tensors not in TENSORS:
        raise ValueError(f"unknown averaging tensors {tensors!r}; known: {', '.join(TENSORS)}")
    out, offset = [], 0
    for shape, size in zip(spec.shapes, spec.sizes):
        if size > 1 and (tensors == "all_but_bn_stats" or len(shape) >= 2):
            out.append(slice(offset, offset + size))
        offset += size
    return out


def tensor_variances(x: torch.Tensor, slices: list[slice], unbiased: bool = False) -> torch.Tensor:
    """Variance over the entries of each tensor, per row: ``x`` [..., P] -> [..., len(slices)]."""
    if not slices:
        return x.new_zeros((*x.shape[:-1], 0))
    correction = 1 if unbiased else 0
    return torch.stack([torch.var(x[..., s], dim=-1, correction=correction) for s in slices], dim=-1)


def _rescale(mix: torch.Tensor, target: torch.Tensor, slices: list[slice], avg: Averaging) -> torch.Tensor:
    """Rescale every slice of ``mix`` [..., P] around its mean to ``target`` [..., L] (in place; returns mix)."""
    correction = 1 if avg.unbiased else 0
    for l, s in enumerate(slices):
        part = mix[..., s]
        var, mean = torch.var_mean(part, dim=-1, correction=correction, keepdim=True)
        num, den = target[..., l:l + 1] + avg.eps, var + avg.eps
        factor = torch.where(den > 0, torch.sqrt(num / den.clamp_min(torch.finfo(den.dtype).tiny)),
                             torch.ones_like(den))
        part.sub_(mean).mul_(factor).add_(mean)
    return mix


def average_node(own: torch.Tensor, received: torch.Tensor, avg: Averaging, spec: ParamSpec,
                 own_weight: float | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """One node's new model from its own ``own`` [P] and the ``received`` [k, P] models (the reference form).

    ``plain`` needs ``own_weight`` and one weight per received model (``weights`` [k]).
    """
    if len(received) == 0:
        return own.clone()
    if avg.rule == "plain":
        if own_weight is None or weights is None:
            raise ValueError("plain averaging needs own_weight and the received models' weights")
        w = weights.to(own.dtype)
        return (own_weight * own + (w[:, None] * received).sum(0)) / (own_weight + w.sum())
    mix = avg.beta * own + (1 - avg.beta) * received.mean(0)
    if not avg.corrects:
        return mix
    slices = corrected_slices(spec, avg.tensors)
    others = tensor_variances(received, slices, avg.unbiased).mean(0)
    if avg.target == "follow_beta":
        others = avg.beta * tensor_variances(own, slices, avg.unbiased) + (1 - avg.beta) * others
    return _rescale(mix, others, slices, avg)


@dataclass(frozen=True)
class Inbox:
    """Running sums of what every node received since it last averaged (stacked over nodes).

    ``total`` [N, P]: sum of w_j r_j (w_j = 1 for the ``beta`` rules); ``weight`` [N]: sum of w_j;
    ``count`` [N]: number of models; ``variance`` [N, L]: sum of the received models' per-tensor variances
    (L corrected tensors; 0 columns unless the rule corrects).
    """

    total: torch.Tensor
    weight: torch.Tensor
    count: torch.Tensor
    variance: torch.Tensor

    @staticmethod
    def empty(n: int, p: int, n_tensors: int, dtype: torch.dtype, device) -> "Inbox":
        return Inbox(torch.zeros(n, p, dtype=dtype, device=device), torch.zeros(n, dtype=dtype, device=device),
                     torch.zeros(n, dtype=torch.int64, device=device),
                     torch.zeros(n, n_tensors, dtype=dtype, device=device))

    @staticmethod
    def received(n: int, receivers: torch.Tensor, rows: torch.Tensor, payload: torch.Tensor, weights: torch.Tensor,
                 variances: torch.Tensor) -> "Inbox":
        """What ``n`` nodes got from messages e carrying ``payload[rows[e]]`` to ``receivers[e]`` with weight
        ``weights[e]``; ``variances`` [m, L]: the payload rows' per-tensor variances. One sparse matmul per sum,
        no per-edge copies of the payload."""
        A = receive_matrix(receivers, rows, weights.to(payload.dtype), n, len(payload))
        weight = torch.zeros(n, dtype=payload.dtype, device=payload.device).index_add_(0, receivers,
                                                                                        weights.to(payload.dtype))
        count = torch.zeros(n, dtype=torch.int64, device=payload.device).index_add_(0, receivers,
                                                                                     torch.ones_like(receivers))
        if variances.shape[1]:
            ones = receive_matrix(receivers, rows, torch.ones(len(rows), dtype=payload.dtype, device=payload.device),
                                  n, len(payload))
            variance = torch.sparse.mm(ones, variances)
        else:
            variance = variances.new_zeros(n, 0)
        return Inbox(torch.sparse.mm(A, payload), weight, count, variance)

    def __add__(self, other: "Inbox") -> "Inbox":
        return Inbox(self.total + other.total, self.weight + other.weight, self.count + other.count,
                     self.variance + other.variance)

    def cleared(self, nodes: torch.Tensor) -> "Inbox":
        """The inbox with the rows of ``nodes`` (a bool mask [N]) emptied."""
        keep = ~nodes
        return Inbox(self.total * keep[:, None], self.weight * keep, self.count * keep, self.variance * keep[:, None])


def receive_matrix(receivers: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The sparse [n, m] matrix with ``values[e]`` at (receivers[e], rows[e]) (duplicates summed), as CSR."""
    A = torch.sparse_coo_tensor(torch.stack([receivers, rows]), values, (n, m), check_invariants=False).coalesce()
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return A.to_sparse_csr()


def average_inbox(own: torch.Tensor, inbox: Inbox, avg: Averaging, slices: list[slice],
                  own_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Every node's new model from its own row and its inbox (batched ``average_node``; rows with an empty
    inbox keep their model). ``own_weight`` [N]: the ``plain`` rule's weight on the node's own model."""
    got = inbox.count > 0
    if avg.rule == "plain":
        if own_weight is None:
            raise ValueError("plain averaging needs the nodes' own weights")
        w_own = own_weight.to(own.dtype)
        mixed = (w_own[:, None] * own + inbox.total) / (w_own + inbox.weight)[:, None]
    else:
        mean = inbox.total / inbox.weight.clamp_min(torch.finfo(own.dtype).tiny)[:, None]
        mixed = torch.lerp(mean, own, avg.beta) if avg.beta else mean   # beta own + (1 - beta) mean
        if avg.corrects and slices:
            target = inbox.variance / inbox.count.clamp_min(1).to(own.dtype)[:, None]
            if avg.target == "follow_beta":
                target = avg.beta * tensor_variances(own, slices, avg.unbiased) + (1 - avg.beta) * target
            mixed = _rescale(mixed, target, slices, avg)
    return torch.where(got[:, None], mixed, own)
