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
stores no copies of the models. A synchronous round, where everything arrives at once, uses ``average_received``:
the ``beta`` mix as one sparse product, as cheap as a plain W mix.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from fedsim import memory
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


_CHUNK = 1 << 20
"""Elements per row chunk of the population passes on CPU (4 MiB of float32): the passes over one chunk (mix,
mean, deviations, norm, rescale) run while it is in cache, and each pass is one call over many rows."""


_DEVICE_CHUNK = 1 << 26
"""Elements per row chunk on an accelerator (256 MiB of float32): large enough to keep it busy, small enough for
the scratch deviations of a large population."""


def _rows_per_chunk(x: torch.Tensor) -> int:
    """Rows of ``x`` [m, P] processed at once: a cache-sized chunk on CPU, a large one elsewhere."""
    return max(1, (_CHUNK if x.device.type == "cpu" else _DEVICE_CHUNK) // max(1, x.shape[-1]))


def _root_sum_of_squares(rows: torch.Tensor) -> torch.Tensor:
    """Root of the sum of squares over the last dim of ``rows`` [m, k]. A float32 norm over 400,000 entries drifts
    by ~1e-5 (long runs in each vector lane); from 2^14 entries on, it is the norm of the norms of blocks of
    isqrt(k) entries (the last block takes the remainder), which stays near 1e-7 at the same speed."""
    k = rows.shape[-1]
    if k < 1 << 14:
        return torch.linalg.vector_norm(rows, dim=-1)
    size = math.isqrt(k)
    whole = k // size * size
    parts = torch.linalg.vector_norm(rows[..., :whole].unflatten(-1, (k // size, size)), dim=-1)
    if whole < k:
        parts = torch.cat([parts, torch.linalg.vector_norm(rows[..., whole:], dim=-1, keepdim=True)], -1)
    return torch.linalg.vector_norm(parts, dim=-1)


def _squared_deviations(rows: torch.Tensor, slices: list[slice], scratch: torch.Tensor | None) -> tuple[
        torch.Tensor, list[torch.Tensor], list[bool]]:
    """Per row of ``rows`` [m, P] and slice l: the sum of squared deviations from the slice's mean ([m, L]), the
    means ([m, 1] each) and whether the slice now holds its deviations.

    On CPU, where a slice's mean is small next to its spread in every row (``k mean^2 <= sum x^2 / 4``, as in
    weight tensors), the sum is ``sum x^2 - k mean^2`` from two reads (relative error within 4/3 of the sum of
    squares' rounding) and ``rows`` is left alone. Otherwise (and on accelerators) it is the two-pass sum over
    the deviations: without ``scratch`` the slice of ``rows`` is left holding them (in place); with it, they go
    to ``scratch`` [>= m, >= largest slice]."""
    squares = rows.new_empty(len(rows), len(slices))
    means, centred = [], []
    fast = rows.device.type == "cpu"
    for l, s in enumerate(slices):
        part = rows[:, s]
        mean = part.mean(-1, keepdim=True)
        if fast:
            total = _root_sum_of_squares(part).square_()
            mean_part = mean[:, 0].square().mul_(part.shape[1])
            if bool((mean_part <= 0.25 * total).all()):
                squares[:, l] = total.sub_(mean_part)
                means.append(mean)
                centred.append(False)
                continue
        if scratch is None:
            deviations = part.sub_(mean)
        else:
            deviations = torch.sub(part, mean, out=scratch[:len(part), :part.shape[1]])
        squares[:, l] = _root_sum_of_squares(deviations).square_()
        means.append(mean)
        centred.append(scratch is None)
    return squares, means, centred


def _divisors(slices: list[slice], unbiased: bool, like: torch.Tensor) -> torch.Tensor:
    """Entries (less one if unbiased) of every slice: what a sum of squared deviations is divided by."""
    correction = 1 if unbiased else 0
    return torch.tensor([s.stop - s.start - correction for s in slices], dtype=like.dtype, device=like.device)


def tensor_variances(x: torch.Tensor, slices: list[slice], unbiased: bool = False) -> torch.Tensor:
    """Variance over the entries of each tensor, per row: ``x`` [..., P] -> [..., len(slices)].

    Two passes per tensor (the mean, then the sum of squared deviations), a cache-sized chunk of rows at a time:
    about as accurate as ``torch.var`` and far faster on CPU, where ``torch.var`` runs Welford's update per entry.
    """
    if not slices:
        return x.new_zeros((*x.shape[:-1], 0))
    rows = x.reshape(-1, x.shape[-1])
    out = x.new_empty(len(rows), len(slices))
    step = _rows_per_chunk(rows)
    scratch = x.new_empty(min(step, len(rows)), max(s.stop - s.start for s in slices))
    for lo in range(0, len(rows), step):
        out[lo:lo + step] = _squared_deviations(rows[lo:lo + step], slices, scratch)[0]
    return out.div_(_divisors(slices, unbiased, out)).reshape(*x.shape[:-1], len(slices))


def _rescale(mix: torch.Tensor, target: torch.Tensor, slices: list[slice], avg: Averaging) -> torch.Tensor:
    """Rescale every slice of ``mix`` [..., P] around its mean to ``target`` [..., L] (in place; returns mix).

    ``mix`` must be contiguous. Per slice: the mean and squared deviations (``_squared_deviations``), then
    ``x * factor + mean (1 - factor)``, or ``deviation * factor + mean`` where the slice was centred in place
    (``mul_``, ``add_``: with one per-row operand each such pass is vectorised, where ``addcmul`` with two per-row
    operands runs about 5x slower on CPU)."""
    rows, goal = mix.view(-1, mix.shape[-1]), target.reshape(-1, target.shape[-1])
    squares, means, centred = _squared_deviations(rows, slices, None)
    var = squares.div_(_divisors(slices, avg.unbiased, squares))
    num, den = (goal + avg.eps, var.add_(avg.eps)) if avg.eps else (goal, var)
    factor = torch.where(den > 0, torch.sqrt(num / den.clamp_min(torch.finfo(den.dtype).tiny)), 1.0)
    for l, s in enumerate(slices):
        f = factor[:, l:l + 1]
        rows[:, s].mul_(f).add_(means[l] if centred[l] else means[l] * (1 - f))
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
        ``weights[e]``; ``variances`` [m, L]: the payload rows' per-tensor variances. One sparse matmul per sum
        (a CSR matrix with a row per node, its entries in (receiver, row) order), no per-edge copies of the
        payload."""
        return Inbox._sums(n, receivers, rows, payload, weights, variances, None, False)

    def plus(self, receivers: torch.Tensor, rows: torch.Tensor, payload: torch.Tensor, weights: torch.Tensor,
             variances: torch.Tensor, in_place: bool = False) -> "Inbox":
        """``self + Inbox.received(len(self.count), ...)``, each sum in one pass (the sparse matmul adds
        ``A @ payload`` to the old sums), into fresh tensors or, with ``in_place``, into this inbox's own (the
        caller's to change)."""
        if not len(receivers):
            return self
        return Inbox._sums(len(self.count), receivers, rows, payload, weights, variances, self, in_place)

    @staticmethod
    def _sums(n, receivers, rows, payload, weights, variances, old, in_place) -> "Inbox":
        dtype, dev = payload.dtype, payload.device
        w = weights.to(dtype)
        got = torch.bincount(receivers, minlength=n) if len(receivers) else torch.zeros(n, dtype=torch.int64,
                                                                                         device=dev)
        if old is None:
            weight, count = torch.zeros(n, dtype=dtype, device=dev).index_add_(0, receivers, w), got
        elif in_place:
            weight, count = old.weight.index_add_(0, receivers, w), old.count.add_(got)
        else:
            weight, count = old.weight.index_add(0, receivers, w), old.count + got
        if not len(receivers):
            return Inbox(payload.new_zeros(n, payload.shape[1]), weight, count,
                         variances.new_zeros(n, variances.shape[1]))
        crow, order = _by_receiver(got, receivers, rows, len(payload))
        cols = rows[order]
        total = _spmm(crow, cols, w[order], payload, None if old is None else old.total, in_place)
        if variances.shape[1]:
            ones = torch.ones(len(cols), dtype=variances.dtype, device=dev)
            variance = _spmm(crow, cols, ones, variances, None if old is None else old.variance, in_place)
        else:
            variance = variances.new_zeros(n, 0) if old is None else old.variance
        return Inbox(total, weight, count, variance)

    def rows(self, nodes: torch.Tensor) -> "Inbox":
        """The inboxes of ``nodes`` (indices), as a smaller Inbox (copies of those rows; ``index_select`` gathers
        rows about 3x faster than ``total[nodes]`` on CPU)."""
        return Inbox(*(t.index_select(0, nodes) for t in (self.total, self.weight, self.count, self.variance)))

    def clear_(self, nodes: torch.Tensor) -> "Inbox":
        """Empty the rows of ``nodes`` (indices) in place (the tensors must be the caller's own). Returns self."""
        self.total.index_fill_(0, nodes, 0)
        self.weight.index_fill_(0, nodes, 0)
        self.count.index_fill_(0, nodes, 0)
        self.variance.index_fill_(0, nodes, 0)
        return self

    def __add__(self, other: "Inbox") -> "Inbox":
        return Inbox(self.total + other.total, self.weight + other.weight, self.count + other.count,
                     self.variance + other.variance)

    def cleared(self, nodes: torch.Tensor) -> "Inbox":
        """The inbox with the rows of ``nodes`` (a bool mask [N]) emptied."""
        keep = ~nodes
        return Inbox(self.total * keep[:, None], self.weight * keep, self.count * keep, self.variance * keep[:, None])


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A fresh tensor of ``like``'s dtype and device (on CPU backed by huge pages: no page fault per 4 KiB)."""
    if like.device.type == "cpu":
        return memory.empty(shape, dtype=like.dtype)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _by_receiver(count: torch.Tensor, receivers: torch.Tensor, rows: torch.Tensor, m: int) -> tuple[
        torch.Tensor, torch.Tensor]:
    """CSR layout of messages e (``rows[e]`` of ``m`` payload rows to ``receivers[e]``; ``count`` [n] per
    receiver): the row pointers and the order of the messages, by receiver, then payload row."""
    order = torch.argsort(receivers * m + rows, stable=True)
    crow = torch.zeros(len(count) + 1, dtype=torch.int64, device=count.device)
    torch.cumsum(count, 0, out=crow[1:])
    return crow, order


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, m: int) -> torch.Tensor:
    """The sparse CSR matrix of ``len(crow) - 1`` rows and ``m`` columns."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, (len(crow) - 1, m))


def _spmm(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, dense: torch.Tensor,
          add_to: torch.Tensor | None = None, in_place: bool = False) -> torch.Tensor:
    """``A @ dense`` (or ``add_to + A @ dense``, into ``add_to`` itself with ``in_place``) for the CSR matrix A
    (``crow``, ``cols``, ``values``) of ``len(crow) - 1`` rows; rows of A without entries give zero rows."""
    n = len(crow) - 1
    A = _csr(crow, cols, values, len(dense))
    if dense.device.type != "cpu":
        product = torch.sparse.mm(A, dense)
        if add_to is None:
            return product
        return add_to.add_(product) if in_place else add_to + product
    if add_to is not None and in_place:
        return torch.addmm(add_to, A, dense, out=add_to)
    out = _empty((n, dense.shape[1]), dense)
    if add_to is None:   # beta = 0: the contents of out are never read
        return torch.addmm(out, A, dense, beta=0, out=out)
    return torch.addmm(add_to, A, dense, out=out)


def average_inbox(own: torch.Tensor, inbox: Inbox, avg: Averaging, slices: list[slice],
                  own_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Every node's new model from its own row and its inbox (batched ``average_node``; rows with an empty
    inbox keep their model). ``own_weight`` [N]: the ``plain`` rule's weight on the node's own model.

    One fresh [N, P] tensor; every pass (mix, mean, deviations, rescale) runs over a cache-sized chunk of rows."""
    got = inbox.count > 0
    dtype = own.dtype
    if avg.rule == "plain":
        if own_weight is None:
            raise ValueError("plain averaging needs the nodes' own weights")
        w_own = own_weight.to(dtype)
        denom = (w_own + inbox.weight)[:, None]
        w_own = w_own[:, None]
    else:
        scale = inbox.weight.clamp_min(torch.finfo(dtype).tiny)[:, None]
        correct = avg.corrects and bool(slices)
        if correct:
            target = inbox.variance / inbox.count.clamp_min(1).to(dtype)[:, None]
    out = _empty(tuple(own.shape), own)
    step = _rows_per_chunk(own)
    for lo in range(0, len(own), step):
        sl = slice(lo, lo + step)
        mixed = out[sl]
        if avg.rule == "plain":   # (w_own own + total) / (w_own + weight)
            torch.mul(w_own[sl], own[sl], out=mixed).add_(inbox.total[sl]).div_(denom[sl])
            continue
        torch.div(inbox.total[sl], scale[sl], out=mixed)   # the received mean
        if avg.beta:
            mixed.lerp_(own[sl], avg.beta)                  # beta own + (1 - beta) mean
        if correct:
            goal = target[sl]
            if avg.target == "follow_beta":
                goal = avg.beta * tensor_variances(own[sl], slices, avg.unbiased) + (1 - avg.beta) * goal
            _rescale(mixed, goal, slices, avg)
    return _keep_idle(out, own, got)


def _keep_idle(out: torch.Tensor, own: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """``out`` with the rows of the nodes that received nothing (``~got``) set back to ``own``'s."""
    if own.device.type != "cpu":
        return torch.where(got[:, None], out, own)
    idle = (~got).nonzero().flatten()
    if len(idle):
        out.index_copy_(0, idle, own.index_select(0, idle))
    return out


def _product(A: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``A @ dense`` for a sparse CSR ``A``, into a fresh tensor (on CPU one without a page fault per 4 KiB)."""
    if dense.device.type != "cpu":
        return torch.sparse.mm(A, dense)
    out = _empty((A.shape[0], dense.shape[1]), dense)
    return torch.addmm(out, A, dense, beta=0, out=out)


def average_received(own: torch.Tensor, receivers: torch.Tensor, rows: torch.Tensor, payload: torch.Tensor,
                     avg: Averaging, slices: list[slice]) -> torch.Tensor:
    """Every node's new model by the ``beta`` / ``variance_corrected`` rule from its own row and one delivery
    (message e carries ``payload[rows[e]]`` to node ``receivers[e]``), the synchronous round's form: what
    ``average_inbox`` makes of ``Inbox.received(...)``, summed in another order (tested against ``average_node``).

    The mix is one sparse product, ``beta own + A payload`` with ``A[i, row] = (1 - beta) / count_i``, as cheap
    as a plain W mix; the correction's target is ``A variances / (1 - beta)``; the rescale runs over cache-sized
    chunks of rows. Nodes that received nothing keep their model."""
    if avg.rule == "plain":
        raise ValueError("plain averaging mixes with the round's W (SparseW.mix), not by average_received")
    n, dtype = len(own), own.dtype
    count = torch.bincount(receivers, minlength=n)
    if not len(receivers):
        return own.clone()
    share = (1 - avg.beta) / count.clamp_min(1).to(dtype)
    correct = avg.corrects and bool(slices)
    diagonal = payload is own and bool(avg.beta)   # own's rows are payload rows: beta on the diagonal, one product
    if correct or not diagonal:
        crow, order = _by_receiver(count, receivers, rows, len(payload))
        A = _csr(crow, rows[order], share[receivers[order]], len(payload))
    if diagonal:
        nodes = torch.arange(n, device=receivers.device)
        to, of = torch.cat([receivers, nodes]), torch.cat([rows, nodes])
        crow_own, order_own = _by_receiver(count + 1, to, of, n)
        values = torch.cat([share[receivers], torch.full((n,), avg.beta, dtype=dtype, device=share.device)])
        out = _product(_csr(crow_own, of[order_own], values[order_own], n), payload)
    else:
        out = _product(A, payload)
        if avg.beta:
            out.add_(own, alpha=avg.beta)
    if correct:
        variances = tensor_variances(payload, slices, avg.unbiased)
        goal = torch.sparse.mm(A, variances).div_(1 - avg.beta)
        if avg.target == "follow_beta":   # own's variances: the payload's own rows when it is own
            mine = variances if payload is own else tensor_variances(own, slices, avg.unbiased)
            goal = avg.beta * mine + (1 - avg.beta) * goal
        step = _rows_per_chunk(own)
        for lo in range(0, n, step):
            _rescale(out[lo:lo + step], goal[lo:lo + step], slices, avg)
    return _keep_idle(out, own, count > 0)
