"""Datasets as plain numpy arrays, and loaders for scikit-learn digits and the MNIST test set."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_seed
from .paths import DataNotFoundError, MalformedDataError, download, short_reason
from .paths import data_dir as _resolve_data_dir

__all__ = [
    "DATASETS",
    "MNIST_MIRROR",
    "Dataset",
    "load",
    "load_digits",
    "load_mnist_test",
    "train_test_split",
]

# torchvision's mirror of LeCun's files; read at call time so tests can point it elsewhere.
MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_MNIST_IMAGES = "t10k-images-idx3-ubyte"
_MNIST_LABELS = "t10k-labels-idx1-ubyte"
# sha256 of the decompressed IDX bytes (the canonical test set; independent of how the .gz was compressed)
_MNIST_CONTENT_SHA256 = {
    _MNIST_IMAGES: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    _MNIST_LABELS: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_IDX_UBYTE_3D = 0x00000803
_IDX_UBYTE_1D = 0x00000801

DATASETS = ("digits", "mnist")


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Samples ``x`` (float32, first axis = sample) with int64 labels ``y`` in ``[0, n_classes)``.

    Arrays are converted to float32 / int64 when needed but otherwise not copied.
    """

    x: np.ndarray
    y: np.ndarray
    name: str
    n_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if isinstance(self.n_classes, (bool, np.bool_)) or not isinstance(
            self.n_classes, (int, np.integer)
        ):
            raise TypeError(f"n_classes must be an integer, got {self.n_classes!r}")
        if self.n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {self.n_classes}")
        x = np.asarray(self.x)
        y = np.asarray(self.y)
        if x.dtype.kind not in "iuf":
            raise TypeError(f"x must be a numeric array, got dtype {x.dtype}")
        if y.dtype.kind not in "iu":
            raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
        if x.ndim < 1:
            raise ValueError(f"x must have a sample axis, got a scalar of shape {x.shape}")
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D, got shape {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
        x = x.astype(np.float32, copy=False)
        y = y.astype(np.int64, copy=False)
        n_nan = int(np.count_nonzero(np.isnan(x)))
        if n_nan:
            raise ValueError(f"x has {n_nan} NaN values")
        n_inf = int(np.count_nonzero(np.isinf(x)))
        if n_inf:
            raise ValueError(f"x has {n_inf} infinite values")
        bad = (y < 0) | (y >= self.n_classes)
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            example = int(y[np.argmax(bad)])
            raise ValueError(
                f"y has {n_bad} labels outside [0, {self.n_classes}) (e.g. {example})"
            )
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "n_classes", int(self.n_classes))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, x={tuple(self.x.shape)} "
            f"{self.x.dtype}, n_classes={self.n_classes})"
        )

    def subset(self, idx: Any) -> Dataset:
        """Return the samples at integer indices ``idx`` (1-D, non-negative) or a boolean mask."""
        idx = np.asarray(idx)
        n = len(self)
        if idx.ndim != 1:
            raise ValueError(f"idx must be 1-D, got shape {idx.shape}")
        if idx.dtype.kind == "b":
            if idx.shape[0] != n:
                raise ValueError(f"boolean idx has length {idx.shape[0]}, dataset has {n}")
        elif idx.dtype.kind in "iu" or idx.size == 0:
            idx = idx.astype(np.int64, copy=False)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
                raise IndexError(f"idx contains {bad}, outside [0, {n}) for {self.name!r}")
        else:
            raise TypeError(f"idx must be integer or boolean, got dtype {idx.dtype}")
        return Dataset(self.x[idx], self.y[idx], self.name, self.n_classes)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1797 samples, x in [0, 1] of shape (n, 1, 8, 8), 10 classes."""
    from sklearn.datasets import load_digits as _sk_load_digits  # slow import; keep it lazy

    bunch = _sk_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    return Dataset(x, np.asarray(bunch.target, dtype=np.int64), "digits", 10)


def load_mnist_test(
    data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> Dataset:
    """MNIST test set (10,000 images) from ``<data_dir>/mnist/t10k-*-idx*-ubyte[.gz]``.

    x is float32 in [0, 1] of shape (n, 1, 28, 28). Missing files are downloaded from
    ``MNIST_MIRROR`` into ``<data_dir>/mnist/`` unless ``download=False``.
    """
    folder = _resolve_data_dir(data_dir) / "mnist"
    images_path, labels_path = _find_or_fetch(folder, (_MNIST_IMAGES, _MNIST_LABELS), download)
    images = _read_idx(images_path, _IDX_UBYTE_3D)
    labels = _read_idx(labels_path, _IDX_UBYTE_1D)
    if images.shape[1:] != (28, 28):
        raise MalformedDataError(
            f"{images_path}: expected 28x28 images, got {images.shape[1]}x{images.shape[2]}"
        )
    if images.shape[0] != labels.shape[0]:
        raise MalformedDataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise MalformedDataError(
            f"{labels_path}: labels must be 0..9, found {int(labels.max())}"
        )
    x = (images.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return Dataset(x, labels.astype(np.int64), "mnist-test", 10)


def load(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> Dataset:
    """Load a dataset by name: ``"digits"`` or ``"mnist"`` (the MNIST test set)."""
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist_test(data_dir, download=download)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def train_test_split(
    ds: Dataset, test_fraction: float, seed: int, stratify: bool = True
) -> tuple[Dataset, Dataset]:
    """Split ``ds`` into (train, test) with ``ceil(test_fraction * n)`` test samples.

    With ``stratify`` every class contributes floor or ceil of ``test_fraction`` times its
    count (largest remainders get the ceil). Both parts keep the original sample order.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a Dataset, got {type(ds).__name__}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)):
        raise TypeError(f"test_fraction must be a float, got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    seed = check_seed(seed)
    n = len(ds)
    if n < 2:
        raise ValueError(f"cannot split {ds.name!r} with {n} sample(s); need at least 2")
    frac = float(test_fraction)
    eps = 1e-9  # guard against e.g. 0.1 * 30 = 3.0000000000000004
    n_test = min(max(math.ceil(frac * n - eps), 1), n - 1)
    rng = np.random.default_rng(seed)
    if not stratify:
        test_idx = rng.permutation(n)[:n_test]
    else:
        classes, y_inv, counts = np.unique(ds.y, return_inverse=True, return_counts=True)
        exact = frac * counts
        take = np.floor(exact + eps).astype(np.int64)
        extra = n_test - int(take.sum())
        if extra > 0:
            order = np.argsort(-(exact - take), kind="stable")
            take[order[:extra]] += 1
        order = np.argsort(y_inv, kind="stable")  # indices grouped by class
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        test_idx = np.concatenate(
            [rng.permutation(order[s : s + c])[:t] for s, c, t in zip(starts, counts, take)]
        )
    is_test = np.zeros(n, dtype=bool)
    is_test[test_idx] = True
    return ds.subset(np.flatnonzero(~is_test)), ds.subset(np.flatnonzero(is_test))


def _find_or_fetch(folder: Path, stems: tuple[str, ...], allow_download: bool) -> list[Path]:
    """``folder/<stem>.gz`` or ``folder/<stem>`` for each stem; missing ones are downloaded as ``.gz``.

    Raises DataNotFoundError naming the missing files, the folder and (if it failed) the download.
    """
    found: dict[str, Path] = {}
    for stem in stems:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[stem] = candidate
                break
    missing = [stem for stem in stems if stem not in found]
    if not missing:
        return [found[stem] for stem in stems]
    shown = " and ".join([str(folder / f"{missing[0]}.gz"), *(f"{stem}.gz" for stem in missing[1:])])

    def not_found(why: str) -> DataNotFoundError:
        return DataNotFoundError(
            f"MNIST test set not found: no {shown}; {why}", holding="mnist/"
        )

    if not allow_download:
        raise not_found("download=False")
    for stem in missing:
        url = MNIST_MIRROR.rstrip("/") + f"/{stem}.gz"
        try:
            found[stem] = download(url, folder / f"{stem}.gz")
        except DataNotFoundError as exc:
            raise not_found(f"download failed: {url} ({short_reason(exc)})") from exc
        _check_download(found[stem], url, _MNIST_CONTENT_SHA256[stem])
    return [found[stem] for stem in stems]


def _check_download(path: Path, url: str, content_sha256: str) -> None:
    """A downloaded .gz must hold the canonical content; otherwise it is removed and MalformedDataError raised."""
    try:
        with gzip.open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    except (OSError, EOFError, zlib.error):
        digest = "not a gzip file"
    if digest != content_sha256:
        path.unlink(missing_ok=True)
        raise MalformedDataError(f"{url}: the downloaded file does not hold the MNIST test set (content sha256 "
                                 f"{digest[:16]}..., expected {content_sha256[:16]}...); it was removed")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (gzip'd if it ends in .gz) of unsigned bytes with the given magic."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise MalformedDataError(f"{path}: not a valid gzip file ({exc})") from exc
    if len(raw) < 4:
        raise MalformedDataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise MalformedDataError(f"{path}: expected magic 0x{magic:08x}, got 0x{found:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MalformedDataError(
            f"{path}: truncated header ({len(raw)} bytes, need {header} for {ndim} dimensions)"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)
    payload = len(raw) - header
    if payload < expected:
        raise MalformedDataError(
            f"{path}: truncated payload: header promises {expected} bytes for shape {dims}, "
            f"found {payload}"
        )
    if payload > expected:
        raise MalformedDataError(
            f"{path}: {payload - expected} unexpected trailing bytes after the {expected} bytes "
            f"for shape {dims}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header).reshape(dims)
