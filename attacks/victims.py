"""The victim image sets of the Dropout Inversion Attack experiments: 128 MNIST and 128 CIFAR-10 images.

Their official source is the DIA authors' repository (github.com/dAI-SY-Group/DropoutInversionAttack, ``data/``):
torch.save dumps of normalised tensors. On first use a missing set is downloaded from there (the pinned commit
``VICTIMS_SOURCE``), de-normalised to the uint8 images it was made from (lossless: the residual is ~1e-5 of a grey
level) and kept as ``<data dir>/mnist/dia_mnist_128.npz`` or ``<data dir>/cifar10-sample/dia_cifar10_128.npz``
(``images`` uint8 [128, H, W(, 3)], ``labels`` int64 [128]); the content is checked against its sha256.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from fedsim.data.paths import DataNotFoundError, MalformedDataError, data_dir, download, short_reason
from fedsim.files import atomic_write_bytes

MNIST_MEAN, MNIST_STD = 0.13066373765468597, 0.30810782313346863
# per-channel RGB constants of the official code's src/constants.yaml
CIFAR10_MEAN = (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
CIFAR10_STD = (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)
FILES = {"mnist": ("mnist", "dia_mnist_128.npz"), "cifar10": ("cifar10-sample", "dia_cifar10_128.npz")}
VICTIMS_SOURCE = ("https://raw.githubusercontent.com/dAI-SY-Group/DropoutInversionAttack/"
                  "aa5c00c121afa60e9deef24f603026838ff68f4f/data/")
"""Where missing victim sets are downloaded from (the DIA repository at a pinned commit; tests point it elsewhere)."""
DUMPS = {"mnist": "MNIST_128.tdump", "cifar10": "CIFAR10_128.tdump"}
CONTENT_SHA256 = {   # of images.tobytes() + labels.tobytes() (uint8 images, int64 labels)
    "mnist": "b3f311eea2c086a873566878dbeab003b2d3c96066f2674217f90c6eb2a1cf45",
    "cifar10": "76a7415e635086165755c957f56c591ec29bdacaf294b05aaa097c7d234fc76c",
}


def load_victims(name: str = "mnist", directory: str | Path | None = None,
                 download_missing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, H, W(, C)], labels int64 [n]) of a 128-image victim set; a missing set is downloaded
    from its official source into the data folder first (unless ``download_missing`` is False)."""
    if name not in FILES:
        raise ValueError(f"unknown victim set {name!r}; known: {', '.join(FILES)}")
    folder, fname = FILES[name]
    path = data_dir(directory) / folder / fname
    if not path.is_file():
        if not download_missing:
            raise DataNotFoundError(f"victim set {name!r} not found: no {path}", holding=f"{folder}/{fname}")
        fetch_victims(name, path)
    with np.load(path) as f:
        if "images" not in f or "labels" not in f:
            raise MalformedDataError(f"{path}: expected arrays 'images' and 'labels', found {sorted(f.files)}")
        images, labels = f["images"], f["labels"].astype(np.int64)
    if len(images) != len(labels):
        raise MalformedDataError(f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def fetch_victims(name: str, path: Path) -> Path:
    """Download victim set ``name``'s dump from ``VICTIMS_SOURCE``, convert it to uint8 images and write ``path``
    (atomically; nothing is left behind when the download or the check fails)."""
    import torch

    folder, fname = FILES[name]
    url = VICTIMS_SOURCE + DUMPS[name]
    dump = path.with_name(f".{DUMPS[name]}")
    new_folder = not path.parent.exists()
    try:
        download(url, dump)
    except DataNotFoundError as exc:
        raise DataNotFoundError(f"victim set {name!r} not found: no {path}; download failed: {url} "
                                f"({short_reason(exc)})", holding=f"{folder}/{fname}") from exc
    kept = False
    try:
        try:
            d = torch.load(dump, map_location="cpu", weights_only=True)
            x, labels = d["inputs"].double().numpy(), d["targets"].numpy().astype(np.int64)
        except Exception as exc:   # any unreadable dump: a pickle error, a missing key, not a tensor
            raise MalformedDataError(f"{url}: not a victim-set dump ({type(exc).__name__}: {exc})") from None
        mean, std = (MNIST_MEAN, MNIST_STD) if name == "mnist" else (CIFAR10_MEAN, CIFAR10_STD)
        shape = (1, -1, 1, 1)
        images = np.rint((x * np.asarray(std).reshape(shape) + np.asarray(mean).reshape(shape)) * 255)
        images = np.clip(images, 0, 255).astype(np.uint8)
        images = images[:, 0] if name == "mnist" else np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
        if digest != CONTENT_SHA256[name]:
            raise MalformedDataError(f"{url}: the downloaded dump does not hold the {name} victim set (content sha256 "
                                     f"{digest[:16]}..., expected {CONTENT_SHA256[name][:16]}...); nothing was kept")
        buffer = io.BytesIO()
        np.savez(buffer, images=images, labels=labels)
        kept = bool(atomic_write_bytes(path, buffer.getvalue()))
        return path
    finally:
        dump.unlink(missing_ok=True)
        if new_folder and not kept and not any(path.parent.iterdir()):
            path.parent.rmdir()


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
