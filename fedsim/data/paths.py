"""Where data files live, and how missing ones are fetched.

Resolution order for the data folder: an explicit override, then the ``FEDSIM_DATA_DIR``
environment variable, then ``$XDG_CACHE_HOME/fedsim`` (or ``~/.cache/fedsim``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "ENV_VAR",
    "DataNotFoundError",
    "MalformedDataError",
    "data_dir",
    "download",
    "sha256_file",
    "verify_sha256",
]

ENV_VAR = "FEDSIM_DATA_DIR"

_CHUNK = 1 << 20


class DataNotFoundError(FileNotFoundError):
    """A data file is missing locally and could not be downloaded."""


class MalformedDataError(ValueError):
    """A data file exists but its content is not what its format promises."""


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Return the data folder: ``override``, else ``$FEDSIM_DATA_DIR``, else the user cache.

    The folder is not created; loaders create sub-folders only when they download.
    """
    if override is not None:
        if not isinstance(override, (str, os.PathLike)):
            raise TypeError(f"data_dir override must be a path or None, got {override!r}")
        return Path(override).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "fedsim"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], sha256: str) -> None:
    """Raise MalformedDataError if the file's sha256 differs from ``sha256`` (hex, any case)."""
    expected = _normalise_sha256(sha256)
    actual = sha256_file(path)
    if actual != expected:
        raise MalformedDataError(f"{path}: sha256 is {actual}, expected {expected}")


def download(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    *,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file + os.replace) and return ``dest``.

    Creates ``dest``'s parent folder. Any network error (or an unwritable folder) raises
    DataNotFoundError; a checksum mismatch raises MalformedDataError and leaves ``dest`` untouched.
    """
    dest = Path(dest)
    expected = _normalise_sha256(sha256) if sha256 is not None else None
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    hint = f"place the file at {dest} or set {ENV_VAR}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise DataNotFoundError(
            f"could not download {dest.name} from {url}: cannot write to {dest.parent} ({exc}); {hint}"
        ) from exc
    tmp = Path(tmp_name)
    # URLError covers HTTP errors and refused/unresolvable hosts; OSError covers timeouts and
    # resets mid-transfer; ValueError covers malformed URLs. Write errors are not caught here.
    network_errors = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)

    def offline(exc: BaseException) -> DataNotFoundError:
        reason = getattr(exc, "reason", None) or exc
        return DataNotFoundError(
            f"could not download {dest.name} from {url} (offline?): {reason}; {hint}"
        )

    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except network_errors as exc:
                raise offline(exc) from exc
            with response:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except network_errors as exc:
                        raise offline(exc) from exc
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
        if expected is not None and digest.hexdigest() != expected:
            raise MalformedDataError(
                f"downloaded {dest.name} from {url} but its sha256 is {digest.hexdigest()}, "
                f"expected {expected}; {hint}"
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _normalise_sha256(sha256: str) -> str:
    if not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a hex string, got {sha256!r}")
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value
