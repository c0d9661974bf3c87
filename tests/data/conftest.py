"""Shared fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.data import Dataset, load_digits

# The real data lives beside the repo (../shared/data); CI lays it out the same way.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared read-only data folder, or skip if this checkout has none beside it."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA / 'mnist'} (expected beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="session")
def digit_labels(digits: Dataset) -> np.ndarray:
    return digits.y
