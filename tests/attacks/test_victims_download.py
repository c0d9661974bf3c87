"""The victim sets are fetched from their official source when missing: the DIA repository's torch dumps of the
normalised images, converted back to the uint8 images (checked against the sets in the data folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import victims as V
from fedsim.data import DataNotFoundError
from fedsim.data.paths import MalformedDataError

OFFLINE = "http://127.0.0.1:9/"   # the discard port: refused at once


def _dump(folder, name, images, labels):
    """What the DIA repository holds: torch.save({'inputs': normalised float32 NCHW, 'targets': int64})."""
    x = V.normalize_mnist(images) if name == "mnist" else V.normalize_cifar10(images)
    torch.save({"inputs": torch.tensor(x), "targets": torch.tensor(labels)}, folder / V.DUMPS[name])


@pytest.mark.needs_data("mnist-victims", "cifar10-victims")
@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_missing_set_is_downloaded_and_converted_to_the_same_images(tmp_path, monkeypatch, data_root, name):
    source = tmp_path / "source"
    source.mkdir()
    want_images, want_labels = V.load_victims(name, data_root, download_missing=False)
    _dump(source, name, want_images, want_labels)
    monkeypatch.setattr(V, "VICTIMS_SOURCE", source.as_uri() + "/")
    data = tmp_path / "data"
    images, labels = V.load_victims(name, data)
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.array_equal(images, want_images) and np.array_equal(labels, want_labels)
    folder, fname = V.FILES[name]
    assert sorted(p.name for p in (data / folder).iterdir()) == [fname]          # no dump or temp file left
    (source / V.DUMPS[name]).unlink()                                            # the second load reads the file
    assert np.array_equal(V.load_victims(name, data)[0], want_images)


@pytest.mark.needs_data("mnist-victims")
def test_a_dump_with_other_content_is_refused_and_nothing_is_kept(tmp_path, monkeypatch, data_root):
    source = tmp_path / "source"
    source.mkdir()
    images, labels = V.load_victims("mnist", data_root, download_missing=False)
    _dump(source, "mnist", images, np.roll(labels, 1))                           # one label off each
    monkeypatch.setattr(V, "VICTIMS_SOURCE", source.as_uri() + "/")
    with pytest.raises(MalformedDataError, match="does not hold the mnist victim set"):
        V.load_victims("mnist", tmp_path / "data")
    assert not (tmp_path / "data" / "mnist").exists()
    (source / V.DUMPS["mnist"]).write_bytes(b"not a torch file")
    with pytest.raises(MalformedDataError, match="not a victim-set dump"):
        V.load_victims("mnist", tmp_path / "data")
    assert not (tmp_path / "data" / "mnist").exists()


def test_offline_or_without_download_the_error_names_the_file_and_the_source(tmp_path, monkeypatch):
    monkeypatch.setattr(V, "VICTIMS_SOURCE", OFFLINE)
    with pytest.raises(DataNotFoundError) as info:
        V.load_victims("cifar10", tmp_path / "data")
    msg = str(info.value)
    assert str(tmp_path / "data" / "cifar10-sample" / "dia_cifar10_128.npz") in msg
    assert f"download failed: {OFFLINE}CIFAR10_128.tdump" in msg
    assert not (tmp_path / "data").exists()
    with pytest.raises(DataNotFoundError) as info:
        V.load_victims("mnist", tmp_path / "data", download_missing=False)
    assert "download" not in str(info.value) and "dia_mnist_128.npz" in str(info.value)
