"""Argument checks shared by the data modules (private)."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """Return ``value`` as an int, rejecting bools, floats and values below ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_seed(seed: Any) -> int:
    """Return ``seed`` as a non-negative int (the only accepted source of randomness)."""
    return check_int(seed, "seed", minimum=0)


def check_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a non-empty 1-D int64 array of non-negative class ids."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    n_negative = int(np.count_nonzero(arr < 0))
    if n_negative:
        raise ValueError(f"{name} has {n_negative} negative values (min {int(arr.min())})")
    return arr
