"""data_dir resolution and the download helper (offline: file:// URLs and a closed port)."""

from __future__ import annotations

import hashlib
import re
import time

import pytest

from fedsim.data import DataNotFoundError, MalformedDataError, data_dir, download, verify_sha256


def test_data_dir_override_beats_env_beats_default(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("FEDSIM_DATA_DIR", raising=False)
    assert data_dir() == tmp_path / "home" / ".cache" / "fedsim"

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "fedsim"

    monkeypatch.setenv("FEDSIM_DATA_DIR", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"

    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_dir(str(tmp_path / "explicit")) == tmp_path / "explicit"


def test_data_dir_ignores_empty_env_and_relative_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FEDSIM_DATA_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert data_dir() == tmp_path / ".cache" / "fedsim"


def test_data_dir_rejects_non_path():
    with pytest.raises(TypeError, match="42"):
        data_dir(42)


def test_download_unreachable_raises_quickly(tmp_path):
    dest = tmp_path / "sub" / "x.bin"
    url = "http://127.0.0.1:9/x"
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        download(url, dest, timeout=5)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and str(dest) in message and "FEDSIM_DATA_DIR" in message
    assert "offline?" in message
    assert not dest.exists()
    assert not dest.parent.exists()  # no temp file, and not the folder it created, left behind


def test_download_file_url_with_checksum(tmp_path):
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 100
    src.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "out" / "copy.bin"
    assert download(src.as_uri(), dest, sha256=digest.upper()) == dest
    assert dest.read_bytes() == payload
    verify_sha256(dest, digest)


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello")
    dest = tmp_path / "out" / "copy.bin"
    with pytest.raises(MalformedDataError, match="sha256"):
        download(src.as_uri(), dest, sha256="0" * 64)
    assert not dest.parent.exists()  # nor the folder the failed download created


def test_download_missing_file_url(tmp_path):
    with pytest.raises(DataNotFoundError, match="nope.bin"):
        download((tmp_path / "nope.bin").as_uri(), tmp_path / "dest.bin")


def test_download_unwritable_destination(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataNotFoundError, match="cannot write"):
        download("http://127.0.0.1:9/x", blocker / "x.bin")


def test_download_rejects_bad_checksum_string(tmp_path):
    with pytest.raises(ValueError, match="64 hex digits"):
        download("http://127.0.0.1:9/x", tmp_path / "x", sha256="abc")


def test_verify_sha256_names_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    with pytest.raises(MalformedDataError, match=re.escape(str(path))):
        verify_sha256(path, hashlib.sha256(b"abd").hexdigest())
