"""MNIST test set from the shared folder, the IDX parser's errors, and the download fallback."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import DataNotFoundError, MalformedDataError, load, load_mnist_test
from fedsim.data import datasets as datasets_module

IMAGES = "t10k-images-idx3-ubyte"
LABELS = "t10k-labels-idx1-ubyte"


@pytest.fixture(scope="module")
def mnist(shared_data):
    return load_mnist_test(shared_data, download=False)


def test_mnist_shape_and_range(mnist):
    assert mnist.x.shape == (10000, 1, 28, 28)
    assert mnist.x.dtype == np.float32 and mnist.y.dtype == np.int64
    assert mnist.x.min() == 0.0 and mnist.x.max() == 1.0
    assert mnist.n_classes == 10


def test_mnist_labels_and_counts(mnist):
    assert mnist.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(mnist.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_mean_pixel(mnist):
    assert abs(float(mnist.x.mean(dtype=np.float64)) - 0.1325) < 1e-3


def test_mnist_via_env_and_load(shared_data, monkeypatch, mnist):
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(shared_data))
    ds = load("mnist", download=False)
    assert np.array_equal(ds.y, mnist.y)


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def _write_mnist(folder: Path, n_images: int = 3, n_labels: int = 3, gz: bool = True) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    images, labels = folder / (IMAGES + ext), folder / (LABELS + ext)
    pixels = (np.arange(n_images * 784) % 256).astype(np.uint8)
    _write_idx(images, 0x803, (n_images, 28, 28), pixels.tobytes())
    _write_idx(labels, 0x801, (n_labels,), (np.arange(n_labels) % 10).astype(np.uint8).tobytes())
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_small_idx_files_round_trip(tmp_path, gz):
    _write_mnist(tmp_path / "mnist", gz=gz)
    ds = load_mnist_test(tmp_path, download=False)
    assert ds.x.shape == (3, 1, 28, 28) and ds.y.tolist() == [0, 1, 2]
    expected = (np.arange(3 * 784) % 256).reshape(3, 1, 28, 28) / 255.0
    np.testing.assert_allclose(ds.x, expected.astype(np.float32), rtol=0, atol=1e-7)


def test_bad_magic_names_file(tmp_path):
    images, _ = _write_mnist(tmp_path / "mnist")
    _write_idx(images, 0x801, (3,), bytes(3))
    with pytest.raises(MalformedDataError) as info:
        load_mnist_test(tmp_path, download=False)
    assert str(images) in str(info.value)
    assert "expected magic 0x00000803, got 0x00000801" in str(info.value)


def test_truncated_payload_names_file(tmp_path):
    images, _ = _write_mnist(tmp_path / "mnist")
    _write_idx(images, 0x803, (3, 28, 28), bytes(2 * 784 + 5))
    with pytest.raises(MalformedDataError, match=re.escape(str(images)) + ".*truncated"):
        load_mnist_test(tmp_path, download=False)


def test_trailing_bytes_name_file(tmp_path):
    _, labels = _write_mnist(tmp_path / "mnist")
    _write_idx(labels, 0x801, (3,), bytes(7))
    with pytest.raises(MalformedDataError, match=re.escape(str(labels)) + ".*4 unexpected trailing bytes"):
        load_mnist_test(tmp_path, download=False)


def test_labels_out_of_range_name_file(tmp_path):
    _, labels = _write_mnist(tmp_path / "mnist")
    _write_idx(labels, 0x801, (3,), bytes([1, 12, 0]))
    with pytest.raises(MalformedDataError, match=re.escape(str(labels)) + ".*0..9, found 12"):
        load_mnist_test(tmp_path, download=False)


def test_truncated_header_names_file(tmp_path):
    _, labels = _write_mnist(tmp_path / "mnist", gz=False)
    labels.write_bytes(struct.pack(">I", 0x801) + b"\x00\x00")
    with pytest.raises(MalformedDataError, match=re.escape(str(labels)) + ".*truncated header"):
        load_mnist_test(tmp_path, download=False)


def test_count_mismatch_names_both_files(tmp_path):
    images, labels = _write_mnist(tmp_path / "mnist", n_images=3, n_labels=4)
    with pytest.raises(MalformedDataError) as info:
        load_mnist_test(tmp_path, download=False)
    message = str(info.value)
    assert str(images) in message and str(labels) in message
    assert "3 images" in message and "4 labels" in message


def test_corrupt_gzip_names_file(tmp_path):
    images, _ = _write_mnist(tmp_path / "mnist")
    images.write_bytes(b"<html>not found</html>")
    with pytest.raises(MalformedDataError, match=re.escape(str(images)) + ".*gzip"):
        load_mnist_test(tmp_path, download=False)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_mnist_test(tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "mnist" / (IMAGES + ".gz")) in message
    assert "FEDSIM_DATA_DIR" in message and "download=False" in message


def test_missing_files_download_fails_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets_module, "MNIST_MIRROR", "http://127.0.0.1:9/mnist/")
    with pytest.raises(DataNotFoundError) as info:
        load_mnist_test(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mnist" / (IMAGES + ".gz")) in message
    assert "http://127.0.0.1:9/mnist/" + IMAGES + ".gz" in message


def test_missing_files_are_downloaded_from_mirror(tmp_path, monkeypatch, shared_data, mnist, require_data):
    # A file:// "mirror" stands in for the network; the files land in <data_dir>/mnist/.
    require_data(f"mnist/{IMAGES}.gz", f"mnist/{LABELS}.gz")        # the mirror serves the .gz files
    monkeypatch.setattr(datasets_module, "MNIST_MIRROR", (shared_data / "mnist").as_uri() + "/")
    ds = load_mnist_test(tmp_path)
    assert (tmp_path / "mnist" / (IMAGES + ".gz")).is_file()
    assert (tmp_path / "mnist" / (LABELS + ".gz")).is_file()
    assert np.array_equal(ds.y, mnist.y)


def test_a_download_with_other_content_is_rejected_and_removed(tmp_path, monkeypatch):
    """The mirror serves valid gzip'd IDX files of the wrong content: the checksum refuses them."""
    import gzip

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    images = (0x803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (2, 28, 28)) + bytes(2 * 784)
    labels = (0x801).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes([3, 4])
    (mirror / (IMAGES + ".gz")).write_bytes(gzip.compress(images))
    (mirror / (LABELS + ".gz")).write_bytes(gzip.compress(labels))
    monkeypatch.setattr(datasets_module, "MNIST_MIRROR", mirror.as_uri() + "/")
    with pytest.raises(MalformedDataError, match="does not hold the MNIST test set.*removed"):
        load_mnist_test(tmp_path / "data")
    assert not (tmp_path / "data" / "mnist" / (IMAGES + ".gz")).exists()
