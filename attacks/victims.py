"""The victim image sets of the Dropout Inversion Attack experiments (see ../shared/data SOURCE.md files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.data.paths import DataNotFoundError, MalformedDataError, data_dir

MNIST_MEAN, MNIST_STD = 0.13066373765468597, 0.30810782313346863
# per-channel RGB constants of the official code's src/constants.yaml (see cifar10-sample/SOURCE.md)
CIFAR10_MEAN = (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
CIFAR10_STD = (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)
FILES = {"mnist": ("mnist", "dia_mnist_128.npz"), "cifar10": ("cifar10-sample", "dia_cifar10_128.npz")}


def load_victims(name: str = "mnist", directory: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, H, W(, C)], labels int64 [n]) of a 128-image victim set."""
    if name not in FILES:
        raise ValueError(f"unknown victim set {name!r}; known: {', '.join(FILES)}")
    folder, fname = FILES[name]
    path = data_dir(directory) / folder / fname
    if not path.is_file():
        raise DataNotFoundError(f"victim set {name!r} not found: no {path}", holding=f"{folder}/{fname}")
    with np.load(path) as f:
        if "images" not in f or "labels" not in f:
            raise MalformedDataError(f"{path}: expected arrays 'images' and 'labels', found {sorted(f.files)}")
        images, labels = f["images"], f["labels"].astype(np.int64)
    if len(images) != len(labels):
        raise MalformedDataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def normalize_mnist(images: np.ndarray) -> np.ndarray:
    """uint8 [n, 28, 28] -> float32 [n, 1, 28, 28] in the official code's normalised space."""
    return ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]


def normalize_cifar10(images: np.ndarray) -> np.ndarray:
    """uint8 [n, 32, 32, 3] (HWC, RGB) -> float32 [n, 3, 32, 32]: (images / 255 - mean) / std per channel, CHW."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images [n, H, W, 3], got shape {images.shape}")
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)
    std = np.asarray(CIFAR10_STD, dtype=np.float32)
    x = (images.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
