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
    """A data file is missing locally and could not be downloaded.

    ``holding`` (when set) is the path, relative to the data folder, that a data folder must hold
    (e.g. ``"mnist/"``); the message then ends with how to point fedsim at one, naming ``option``
    (the library's ``data_dir`` argument; the CLI names its ``--data-dir`` flag).
    """

    def __init__(self, message: str, *, holding: str | None = None):
        super().__init__(message)
        self.message = message
        self.holding = holding

    def describe(self, option: str = "data_dir") -> str:
        """The message, with the hint on where data is looked up naming ``option``."""
        if self.holding is None:
            return self.message
        return f"{self.message}; point {option} or {ENV_VAR} at a folder holding {self.holding}"

    def __str__(self) -> str:
        return self.describe()

    def __reduce__(self):
        return _rebuild_not_found, (self.message, self.holding)


def _rebuild_not_found(message: str, holding: str | None) -> DataNotFoundError:
    return DataNotFoundError(message, holding=holding)


def short_reason(exc: BaseException) -> str:
    """A short reason for a failed download: the ``reason`` set by ``download``, else the message."""
    return str(getattr(exc, "reason", None) or exc)


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

    Creates ``dest``'s parent folders; a download that fails removes the ones it created, so a
    failed lookup leaves no empty data folder behind. Any network error (or an unwritable folder)
    raises DataNotFoundError; a checksum mismatch raises MalformedDataError and leaves ``dest``
    untouched. Both carry ``reason``, a short form of what went wrong.
    """
    dest = Path(dest)
    expected = _normalise_sha256(sha256) if sha256 is not None else None
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    hint = f"place the file at {dest} or set {ENV_VAR}"
    created: list[Path] = []  # folders this call made: removed again unless the download succeeds

    def failed(error: Exception, reason: str) -> Exception:
        error.reason = reason  # short form, for callers that build their own message
        return error

    try:
        _make_folders(dest.parent, created)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        _remove_folders(created)
        raise failed(DataNotFoundError(
            f"could not download {dest.name} from {url}: cannot write to {dest.parent} ({exc}); {hint}"
        ), f"cannot write to {dest.parent}: {exc.strerror or exc}") from exc
    tmp = Path(tmp_name)
    # URLError covers HTTP errors and refused/unresolvable hosts; OSError covers timeouts and
    # resets mid-transfer; ValueError covers malformed URLs. Write errors are not caught here.
    network_errors = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)

    def offline(exc: BaseException) -> DataNotFoundError:
        reason = getattr(exc, "reason", None) or exc
        short = getattr(reason, "strerror", None) or str(reason)
        return failed(DataNotFoundError(
            f"could not download {dest.name} from {url} (offline?): {reason}; {hint}"
        ), short)

    digest = hashlib.sha256()
    done = False
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
            raise failed(MalformedDataError(
                f"downloaded {dest.name} from {url} but its sha256 is {digest.hexdigest()}, "
                f"expected {expected}; {hint}"
            ), "sha256 mismatch")
        os.replace(tmp, dest)
        done = True
    finally:
        if tmp.exists():
            tmp.unlink()
        if not done:
            _remove_folders(created)
    return dest


def _make_folders(folder: Path, created: list[Path]) -> None:
    """``mkdir -p folder``, appending each folder it creates (outermost first) to ``created``."""
    missing = []
    for f in (folder, *folder.parents):
        if f.exists():
            break
        missing.append(f)
    for f in reversed(missing):
        try:
            f.mkdir()
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to remove
        created.append(f)


def _remove_folders(created: list[Path]) -> None:
    """Remove the folders a failed download created, innermost first, if they are still empty."""
    for f in reversed(created):
        try:
            f.rmdir()
        except OSError:
            return


def _normalise_sha256(sha256: str) -> str:
    if not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a hex string, got {sha256!r}")
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value
