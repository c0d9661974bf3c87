"""Shared fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.data import Dataset, load_digits


@pytest.fixture(scope="session")
def shared_data(require_data) -> Path:
    """The data folder (FEDSIM_DATA_DIR, else the user cache; tests/conftest.py) holding the MNIST test set."""
    return require_data("mnist")


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_digits()


@pytest.fixture(scope="session")
def digit_labels(digits: Dataset) -> np.ndarray:
    return digits.y
