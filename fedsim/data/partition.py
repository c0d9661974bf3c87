"""Partitioners: split sample indices among simulated clients.

Every partitioner returns ``list[np.ndarray]`` of int64 index arrays, one per client (client i
gets samples ``parts[i]``), each sorted ascending. ``iid``, ``dirichlet`` and ``sorted_blocks``
are disjoint and cover every sample exactly once; ``sampled`` draws overlapping subsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ._checks import check_int, check_labels, check_seed

__all__ = [
    "PARTITIONERS",
    "ClientIndex",
    "PartitionError",
    "dirichlet",
    "iid",
    "label_histogram",
    "partition",
    "sampled",
    "sorted_blocks",
]


class PartitionError(ValueError):
    """The samples cannot be split as asked: too many clients for them, or too few samples per client."""


def iid(n_samples: int, n_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(n_samples)`` and split it into ``n_clients`` parts whose sizes differ by <= 1."""
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    n_clients = _check_n_clients(n_clients, n_samples)
    perm = np.random.default_rng(check_seed(seed)).permutation(n_samples)
    return [np.sort(part).astype(np.int64, copy=False) for part in np.array_split(perm, n_clients)]


def dirichlet(
    labels: Any,
    n_clients: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    *,
    balance: bool = True,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skew split: for each class, shares over clients ~ Dir(alpha) (Hsu et al. 2019, FedLab).

    Small ``alpha`` -> each client sees few classes; large ``alpha`` -> close to iid. As in FedLab's
    ``hetero_dir_partition`` (and NIID-Bench), with ``balance`` a class's share is not given to
    clients already holding ``>= n_samples / n_clients`` samples, so no client ends with
    ``n_samples / n_clients + largest class size`` or more. The draw is repeated (up to
    ``max_tries`` times, then ValueError) until every client has ``>= min_size`` samples.
    """
    labels = check_labels(labels)
    n_samples = labels.shape[0]
    n_clients = check_int(n_clients, "n_clients", minimum=1)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha must be a positive number, got {alpha!r}")
    alpha = float(alpha)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be positive and finite, got {alpha!r}")
    min_size = check_int(min_size, "min_size", minimum=0)
    max_tries = check_int(max_tries, "max_tries", minimum=1)
    if n_clients * min_size > n_samples:
        raise PartitionError(
            f"cannot give n_clients={n_clients} clients min_size={min_size} samples each from "
            f"{n_samples} samples"
        )
    rng = np.random.default_rng(check_seed(seed))
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    concentration = np.full(n_clients, alpha)
    capacity = n_samples / n_clients
    for _ in range(max_tries):
        owner = np.empty(n_samples, dtype=np.int64)
        sizes = np.zeros(n_clients, dtype=np.int64)
        for members in by_class:
            members = rng.permutation(members)
            shares = np.nan_to_num(rng.dirichlet(concentration))
            if balance:
                is_open = sizes < capacity  # never empty: some client is below the mean
                open_shares = shares * is_open
                shares = open_shares if open_shares.sum() > 0 else is_open.astype(np.float64)
            if not shares.sum() > 0:  # every share underflowed to 0: give the class to one client
                shares = np.zeros(n_clients)
                shares[rng.integers(n_clients)] = 1.0
            cuts = (np.cumsum(shares / shares.sum()) * members.size).astype(np.int64)[:-1]
            client = np.searchsorted(cuts, np.arange(members.size), side="right")
            owner[members] = client
            sizes += np.bincount(client, minlength=n_clients)
        if sizes.min() >= min_size:
            return _parts_from_owner(owner, n_clients)
    raise PartitionError(
        f"dirichlet: no draw gave every client >= min_size={min_size} samples in "
        f"max_tries={max_tries} tries (alpha={alpha}, n_clients={n_clients}, "
        f"n_samples={n_samples}); raise alpha, lower min_size or use fewer clients"
    )


def sorted_blocks(keys: Any, n_clients: int) -> list[np.ndarray]:
    """Stable-sort samples by ``keys`` (e.g. labels or a feature) and cut into contiguous near-equal blocks.

    The classic "non-iid by sorting" split: client i gets the i-th block of the sorted order.
    """
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"keys must be 1-D, got shape {keys.shape}")
    if keys.size == 0:
        raise ValueError("keys is empty")
    if keys.dtype.kind not in "biufUSmM":
        raise TypeError(f"keys must be numbers or strings, got dtype {keys.dtype}")
    n_clients = _check_n_clients(n_clients, keys.shape[0])
    order = np.argsort(keys, kind="stable")
    return [np.sort(block).astype(np.int64, copy=False) for block in np.array_split(order, n_clients)]


def sampled(n_samples: int, n_clients: int, per_client: int, seed: int) -> list[np.ndarray]:
    """Each client independently draws ``per_client`` distinct indices from ``range(n_samples)``.

    Clients OVERLAP (a sample can belong to many clients, or to none); use this when simulating
    more clients than there are samples, e.g. 10,000 clients on 1,437 digits.
    """
    n_samples = check_int(n_samples, "n_samples", minimum=1)
    n_clients = check_int(n_clients, "n_clients", minimum=1)
    per_client = check_int(per_client, "per_client", minimum=1)
    if per_client > n_samples:
        raise PartitionError(
            f"per_client={per_client} exceeds n_samples={n_samples}; a client draws distinct samples"
        )
    rng = np.random.default_rng(check_seed(seed))
    return [
        np.sort(rng.choice(n_samples, size=per_client, replace=False)).astype(np.int64, copy=False)
        for _ in range(n_clients)
    ]


@dataclass(frozen=True, eq=False)
class ClientIndex:
    """Parts packed into a padded matrix: ``index[i, :counts[i]]`` are client i's samples.

    ``index`` is int64 ``[n_clients, max_len]`` padded with 0; ``counts`` is int64 ``[n_clients]``.
    """

    index: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        index = np.asarray(self.index)
        counts = np.asarray(self.counts)
        if index.ndim != 2:
            raise ValueError(f"index must be 2-D [n_clients, max_len], got shape {index.shape}")
        if counts.shape != (index.shape[0],):
            raise ValueError(
                f"counts must have shape ({index.shape[0]},) to match index, got {counts.shape}"
            )
        for name, arr in (("index", index), ("counts", counts)):
            if arr.dtype.kind not in "iu":
                raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
        index = index.astype(np.int64, copy=False)
        counts = counts.astype(np.int64, copy=False)
        if counts.size and (counts.min() < 0 or counts.max() > index.shape[1]):
            raise ValueError(
                f"counts must lie in [0, {index.shape[1]}], got range "
                f"[{int(counts.min())}, {int(counts.max())}]"
            )
        if index.size and index.min() < 0:
            raise ValueError(f"index has negative entries (min {int(index.min())})")
        n_bad_pad = int(np.count_nonzero(index[~_mask(counts, index.shape[1])]))
        if n_bad_pad:
            raise ValueError(f"index has {n_bad_pad} non-zero padding entries beyond counts")
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "counts", counts)

    @classmethod
    def from_parts(cls, parts: Sequence[Any]) -> ClientIndex:
        """Pack a list of 1-D index arrays (one per client) into a padded matrix."""
        arrays = [_check_part(p, i) for i, p in enumerate(parts)]
        if not arrays:
            raise ValueError("parts is empty; need at least one client")
        counts = np.array([a.shape[0] for a in arrays], dtype=np.int64)
        index = np.zeros((len(arrays), int(counts.max())), dtype=np.int64)
        index[_mask(counts, index.shape[1])] = np.concatenate(arrays)
        return cls(index, counts)

    @property
    def n_clients(self) -> int:
        """Number of clients (rows)."""
        return int(self.index.shape[0])

    def mask(self) -> np.ndarray:
        """Boolean ``[n_clients, max_len]``: True where ``index`` holds a real sample."""
        return _mask(self.counts, self.index.shape[1])

    def to_parts(self) -> list[np.ndarray]:
        """Unpack back to one int64 index array per client."""
        return [row[:c].copy() for row, c in zip(self.index, self.counts)]


def label_histogram(labels: Any, parts: Sequence[Any] | ClientIndex, n_classes: int) -> np.ndarray:
    """Count each client's labels: int64 ``[n_clients, n_classes]``."""
    labels = check_labels(labels)
    n_classes = check_int(n_classes, "n_classes", minimum=1)
    if labels.max() >= n_classes:
        raise ValueError(f"labels has value {int(labels.max())}, outside [0, {n_classes})")
    if isinstance(parts, ClientIndex):
        parts = parts.to_parts()
    arrays = [_check_part(p, i) for i, p in enumerate(parts)]
    if not arrays:
        raise ValueError("parts is empty; need at least one client")
    flat = np.concatenate(arrays)
    if flat.size and flat.max() >= labels.shape[0]:
        raise IndexError(f"parts index sample {int(flat.max())} but there are {labels.shape[0]} labels")
    client = np.repeat(np.arange(len(arrays)), [a.shape[0] for a in arrays])
    counts = np.bincount(client * n_classes + labels[flat], minlength=len(arrays) * n_classes)
    return counts.reshape(len(arrays), n_classes).astype(np.int64, copy=False)


# name -> (function, required params, optional params) for partition().
PARTITIONERS = {
    "iid": ((), ()),
    "dirichlet": (("alpha",), ("min_size", "balance", "max_tries")),
    "sorted": ((), ()),
    "sampled": (("per_client",), ()),
}


def partition(name: str, labels: Any, n_clients: int, seed: int, **params: Any) -> list[np.ndarray]:
    """Dispatch by name: ``iid``, ``dirichlet`` (alpha, min_size, balance, max_tries),
    ``sorted`` (blocks sorted by label; ignores seed) or ``sampled`` (per_client)."""
    if name not in PARTITIONERS:
        raise ValueError(f"unknown partition {name!r}; known partitions: {', '.join(PARTITIONERS)}")
    required, optional = PARTITIONERS[name]
    missing = [p for p in required if p not in params]
    if missing:
        raise TypeError(f"partition {name!r} needs parameter(s) {', '.join(missing)}")
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        accepted = ", ".join(required + optional) or "none"
        raise TypeError(
            f"partition {name!r} got unexpected parameter(s) {', '.join(unknown)}; accepts: {accepted}"
        )
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if name == "iid":
        return iid(labels.shape[0], n_clients, seed)
    if name == "dirichlet":
        return dirichlet(labels, n_clients, seed=seed, **params)
    if name == "sorted":
        return sorted_blocks(labels, n_clients)
    return sampled(labels.shape[0], n_clients, seed=seed, **params)


def _check_n_clients(n_clients: Any, n_samples: int) -> int:
    n_clients = check_int(n_clients, "n_clients", minimum=1)
    if n_clients > n_samples:
        raise PartitionError(
            f"n_clients={n_clients} exceeds n_samples={n_samples}; every client needs at least "
            f"one sample (use sampled() for overlapping draws)"
        )
    return n_clients


def _check_part(part: Any, i: int) -> np.ndarray:
    arr = np.asarray(part)
    if arr.ndim != 1:
        raise ValueError(f"part {i} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"part {i} must hold integer indices, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"part {i} has a negative index ({int(arr.min())})")
    return arr.astype(np.int64, copy=False)


def _mask(counts: np.ndarray, max_len: int) -> np.ndarray:
    return np.arange(max_len) < counts[:, None]


def _parts_from_owner(owner: np.ndarray, n_clients: int) -> list[np.ndarray]:
    """Group sample indices by owning client; a stable sort keeps each part ascending."""
    order = np.argsort(owner, kind="stable").astype(np.int64, copy=False)
    return np.split(order, np.cumsum(np.bincount(owner, minlength=n_clients))[:-1])
