"""Run folders and checksummed checkpoints.

A run folder holds one run: ``RUN_FILES`` (config, history, checkpoint, summary, plot). Nothing here
overwrites a run unasked: ``experiment.run`` refuses a folder that holds another run unless asked to
resume it or to overwrite it, and ``clear_run`` removes only fedsim's own files.

A checkpoint file is a small container::

    fedsim checkpoint\\n                                  magic line
    {"format": 1, "fedsim": "0.1.0", "torch": "2.13.0", "body_bytes": N, "sha256": "<hex>"}\\n
    <N bytes: torch.save of the payload dict>

``read_checkpoint`` checks the magic line, the header, the length and the SHA-256 of the body before it
unpickles anything, and then only with ``torch.load(..., weights_only=True)``. Every problem is a
``CheckpointError`` with one line that names the file and what is wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
from pathlib import Path

from fedsim.files import atomic_write_bytes

MAGIC = b"fedsim checkpoint\n"
FORMAT = 1
MAX_HEADER = 4096
RUN_FILES = ("config.toml", "history.json", "history.csv", "checkpoint.pt", "summary.txt", "accuracy.png",
             "diagnostics.png")
# settings that may change when a run is resumed: they do not change the model a round produces
RESUME_FREE = ("name", "rounds", "eval_every", "eval_nodes", "checkpoint_every", "threads", "device", "data.dir")


class RunFolderError(Exception):
    """A run folder cannot be used as asked (it holds another run, or a different config)."""


class CheckpointError(RunFolderError):
    """A checkpoint file is damaged, truncated, foreign or does not fit the run."""


def _version() -> str:
    from fedsim import __version__

    return __version__


# --------------------------------------------------------------------------- checkpoint container


def write_checkpoint(path: str | Path, payload: dict) -> None:
    """Atomically write ``payload`` (tensors, numbers, strings, lists, dicts) as a checksummed checkpoint."""
    import torch

    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    header = {"format": FORMAT, "fedsim": _version(), "torch": torch.__version__.split("+")[0],
              "body_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    atomic_write_bytes(path, MAGIC + json.dumps(header).encode() + b"\n" + body)


def read_checkpoint(path: str | Path) -> dict:
    """The verified payload of a checkpoint (tensors on the CPU); ``CheckpointError`` if anything is off."""
    import torch

    path = Path(path)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} {what}")

    try:
        raw = path.read_bytes()
    except OSError as e:
        raise bad(f"cannot be read ({e.strerror or type(e).__name__})") from None
    if not raw:
        raise bad("is empty (0 bytes)")
    if not raw.startswith(MAGIC):
        if MAGIC.startswith(raw):
            raise bad(f"is truncated ({len(raw)} bytes, inside the header)")
        if raw.startswith(b"PK\x03\x04"):
            raise bad("is a plain torch.save file, not a fedsim checkpoint (no checksum to verify)")
        raise bad("is not a fedsim checkpoint (unknown header)")
    end = raw.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise bad("is truncated or damaged (its header line does not end)")
    try:
        header = json.loads(raw[len(MAGIC):end])
        fmt, size, digest = header["format"], header["body_bytes"], header["sha256"]
        if not (isinstance(fmt, int) and isinstance(size, int) and isinstance(digest, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise bad("has a damaged header") from None
    if fmt != FORMAT:
        raise bad(f"has format {fmt} (written by fedsim {header.get('fedsim', '?')}); "
                  f"this fedsim ({_version()}) reads format {FORMAT}")
    body = raw[end + 1:]
    if len(body) != size:
        what = "is truncated" if len(body) < size else "has trailing bytes"
        raise bad(f"{what}: {len(body):,} body bytes, the header says {size:,}")
    if hashlib.sha256(body).hexdigest() != digest:
        raise bad("is damaged: the SHA-256 of its contents does not match its header")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is a bad file
        raise bad(f"holds data that cannot be loaded as plain tensors ({type(e).__name__})") from None
    if not isinstance(payload, dict):
        raise bad(f"holds a {type(payload).__name__}, not a checkpoint payload")
    return payload


# --------------------------------------------------------------------------- run folders


def run_files(folder: str | Path) -> list[str]:
    """The names of fedsim's run files present in ``folder`` (empty if it holds no run)."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).exists()]


def clear_run(folder: str | Path) -> None:
    """Remove fedsim's own run files (and leftovers of interrupted atomic writes); nothing else."""
    folder = Path(folder)
    for name in RUN_FILES:
        for p in [folder / name, *folder.glob(f".{name}.*")]:
            if p.is_file() or p.is_symlink():
                p.unlink()


def flat(values: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists become tuples)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def config_changes(old_toml: str, new_toml: str, free: tuple[str, ...] = RESUME_FREE) -> list[str]:
    """The dotted keys (other than ``free``) whose values differ, as ``"key: old -> new"``."""
    old, new = (_config_values(t) for t in (old_toml, new_toml))
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in free]
    missing = "(unset)"
    return [f"{k}: {_show(old.get(k, missing))} -> {_show(new.get(k, missing))}"
            for k in keys if old.get(k, missing) != new.get(k, missing)]


def folder_changes(folder: str | Path, config_toml: str, free: tuple[str, ...] = RESUME_FREE) -> list[str] | None:
    """``config_changes`` from the run in ``folder`` (its ``config.toml``) to ``config_toml``; None if unreadable."""
    from fedsim.config import tomllib

    try:
        return config_changes((Path(folder) / "config.toml").read_text(), config_toml, free)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _config_values(text: str) -> dict:
    from fedsim.config import ConfigError, from_dict, tomllib

    values = tomllib.loads(text)
    try:  # fill defaults, so that a key added to RunConfig later is not a difference
        values = from_dict(values).to_dict()
    except ConfigError:
        pass
    return flat(values)


def _show(v) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, tuple):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


# --------------------------------------------------------------------------- result folders of one-shot commands

RESULT_FILES = ("summary.txt", "results.json", "roc.png", "convergence.png", "reconstructions.png")
# arguments that do not change what a one-shot command (fedpca, attack) computes
SETTINGS_FREE = ("out", "threads", "no_progress", "overwrite", "data_dir")


def claim_results_folder(folder: str | Path, command: str, settings: dict, overwrite: bool) -> None:
    """Check that ``folder`` may receive ``command``'s results, before any work is done.

    A folder with no fedsim files, or with results of the same command and settings (the same results
    again), is fine. Anything else (another command's results, other settings, a ``fedsim run`` folder) is
    refused with a ``RunFolderError`` naming what differs, unless ``overwrite``: then fedsim's own files
    there are removed (nothing else is).
    """
    folder = Path(folder)
    present = [n for n in dict.fromkeys((*RUN_FILES, *RESULT_FILES)) if (folder / n).exists()]
    if not present:
        return
    if overwrite:
        clear_run(folder)
        for name in RESULT_FILES:
            if (folder / name).is_file():
                (folder / name).unlink()
        return
    try:
        old = json.loads((folder / "results.json").read_text())
        old_command, old_settings = old.get("command"), old.get("args", {})
    except (OSError, ValueError, AttributeError):
        old_command, old_settings = None, {}
    if old_command == command and not set(present) - set(RESULT_FILES):
        keys = [k for k in dict.fromkeys([*old_settings, *settings]) if k not in SETTINGS_FREE]
        changed = [f"{k}: {old_settings.get(k, '(unset)')} -> {settings.get(k, '(unset)')}" for k in keys
                   if old_settings.get(k, "(unset)") != settings.get(k, "(unset)")]
        if not changed:
            return
        what = f"{command} results with other settings ({'; '.join(changed)})"
    else:
        what = f"other results ({', '.join(present)})"
    raise RunFolderError(f"--out {folder} holds {what}; pass --overwrite to replace them, or choose another --out")


@contextlib.contextmanager
def folder_lock(folder: str | Path):
    """Hold an exclusive lock on ``folder`` while this process checks and writes it: a second process that asks
    for it meanwhile gets a ``RunFolderError`` at once (two runs into one folder would mix their files). The lock
    is ``flock`` on the folder itself (no lock file; released when the process dies). A folder this call had to
    create is removed again if it is still empty on exit (a refused run leaves nothing). ``folder`` naming a file
    (or lying under one) is a ``RunFolderError``; where there is no ``fcntl`` (Windows), or the folder cannot be
    made for another reason (the caller's checks will say why), nothing is locked."""
    try:
        import fcntl
    except ImportError:   # pragma: no cover (not on POSIX)
        yield
        return
    given, folder = Path(folder), Path(os.path.abspath(folder))   # without "..": the folders made here are removed
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (given, *given.parents) if p.exists() and not p.is_dir()), given)
        raise RunFolderError(f"--out {given}: {blocker} is a file, not a folder; choose another --out") from None
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunFolderError(f"{given} is in use by another fedsim process; wait for it to finish, or "
                                   "choose another --out") from None
        yield
    finally:
        os.close(fd)
        for path in created:   # the deepest first
            try:
                path.rmdir()
            except OSError:   # not empty (the run wrote there), or gone
                break
