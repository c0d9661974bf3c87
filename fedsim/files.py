"""Atomic file writes: a file is either the old one or the complete new one, never half-written.

Every result fedsim writes (histories, configs, checkpoints, figures) goes through ``atomic_write_bytes``:
a temporary file in the same folder, then ``os.replace``. The file gets the usual permissions (0666 less
the umask), not the 0600 of a bare temporary file.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (creating its folder) via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:   # (an interrupt right after os.replace finds tmp already renamed: nothing to remove)
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode())


def save_figure_atomically(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Render a matplotlib figure in memory (format from the suffix) and write it atomically."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def listing(folder: str | Path) -> str:
    """The files of a results folder (comma-separated), and those of its first run folder as ``<run>/: ...``
    (a subfolder holding a ``history.json``)."""
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    runs = [p for p in sorted(folder.iterdir()) if p.is_dir() and (p / "history.json").is_file()]
    if runs:
        names.append("<run>/: " + ", ".join(sorted(q.name for q in runs[0].iterdir() if q.is_file())))
    return ", ".join(names)
