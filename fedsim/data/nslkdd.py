"""NSL-KDD (Tavallaee et al., 2009): reader, feature sets, and federated scaling / splitting helpers.

Files are headerless CSV with 43 fields per row: 41 features, the label (attack name or
``normal``) and the difficulty level. See ``shared/data/nsl-kdd/SOURCE.md`` for provenance.
The FedPCA pipeline (INFOCOM 2023) uses the 34 ``PAPER_FEATURES`` of the normal rows of
KDDTrain+, split into clients by ``paper_split`` on ``dst_bytes``.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._checks import check_int, check_labels, check_seed
from .partition import PartitionError
from .partition import dirichlet as _dirichlet
from .partition import iid as _iid
from .paths import DataNotFoundError, MalformedDataError, short_reason
from .paths import data_dir as _resolve_data_dir
from .paths import download as _download

__all__ = [
    "ATTACK_CATEGORIES",
    "CATEGORICAL",
    "COLUMNS",
    "FEATURE_MODES",
    "NSLKDD_MIRRORS",
    "NSLKDD_SPLITS",
    "NUMERIC_FEATURES",
    "NslKdd",
    "PAPER_DROPPED",
    "PAPER_FEATURES",
    "SPLIT_HOWS",
    "category_vocabulary",
    "client_moments",
    "features",
    "fit_scaler",
    "load_nslkdd",
    "paper_split",
    "pooled_scaler",
    "quantile_labels",
    "read_nslkdd",
    "split_clients",
    "standardize",
]

COLUMNS: tuple[str, ...] = (
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land",
    "wrong_fragment", "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised",
    "root_shell", "su_attempted", "num_root", "num_file_creations", "num_shells",
    "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login", "count",
    "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate",
    "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate", "dst_host_count",
    "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
    "label", "difficulty",
)  # fmt: skip
CATEGORICAL: tuple[str, ...] = ("protocol_type", "service", "flag")
PAPER_DROPPED: tuple[str, ...] = (
    "protocol_type", "service", "flag", "land", "logged_in", "is_host_login", "is_guest_login",
)  # fmt: skip
#: The 38 non-categorical feature columns, in file order (``NslKdd.numeric``'s columns).
NUMERIC_FEATURES: tuple[str, ...] = tuple(c for c in COLUMNS[:41] if c not in CATEGORICAL)
#: The 34 numeric features FedPCA keeps, in file order.
PAPER_FEATURES: tuple[str, ...] = tuple(c for c in COLUMNS[:41] if c not in PAPER_DROPPED)

_CATEGORY_LISTS = {
    "DoS": "apache2 back land neptune mailbomb pod processtable smurf teardrop udpstorm worm",
    "Probe": "ipsweep mscan nmap portsweep saint satan",
    "U2R": "buffer_overflow loadmodule perl ps rootkit sqlattack xterm",
    "R2L": "ftp_write guess_passwd httptunnel imap multihop named phf sendmail snmpgetattack "
    "snmpguess spy warezclient warezmaster xlock xsnoop",
}
#: attack name -> "DoS" | "Probe" | "R2L" | "U2R" (FedPCA notebooks' lists, SOURCE.md).
ATTACK_CATEGORIES: dict[str, str] = {
    name: cat for cat, names in _CATEGORY_LISTS.items() for name in names.split()
}
# every label a file may hold: a row with any other label is malformed
_KNOWN_LABELS = np.array(["normal", *sorted(ATTACK_CATEGORIES)])
_KNOWN_LABEL_SET = frozenset(_KNOWN_LABELS.tolist())

#: split -> (file name, sha256 of the uncompressed text).
NSLKDD_SPLITS: dict[str, tuple[str, str]] = {
    "train": ("KDDTrain+.txt", "1b86d2f957b33082081bba410fe129b475efebcc13c9014c3f447c8271aadf95"),
    "test": ("KDDTest+.txt", "fa46b0935342616aa83b7c2578db355b6a7aaabbc492248172c7a1e8b7ab8f84"),
    "test21": ("KDDTest-21.txt", "746993ac9e25868827cacf09eab450050a2a1056e1ce48a1ad39f5dc801d531d"),
    "train20": (
        "KDDTrain+_20Percent.txt",
        "7ea86479faab5ca2190b7f18b4982fb058ce5bf2b46e0e1017d0d9ef90f9c16e",
    ),
}
# UNB's own site needs a form; a public mirror of the raw text files (read at call time so
# tests can point it elsewhere). Each is tried in turn; downloads are sha256-verified.
NSLKDD_MIRRORS: tuple[str, ...] = ("https://raw.githubusercontent.com/defcom17/NSL_KDD/master/",)

FEATURE_MODES = ("paper", "onehot")
SPLIT_HOWS = ("paper", "iid", "dirichlet")

_N_FIELDS = len(COLUMNS)
_NUMERIC_IDX = tuple(COLUMNS.index(c) for c in NUMERIC_FEATURES)
_CATEGORICAL_IDX = tuple(COLUMNS.index(c) for c in CATEGORICAL)
_LABEL_IDX = COLUMNS.index("label")
_DIFFICULTY_IDX = COLUMNS.index("difficulty")
_GZIP_MAGIC = b"\x1f\x8b"
# A variance below this fraction of the column's mean square is rounding noise (relative
# spread std/|mean| < 1e-6): such columns count as constant and get scale 1.
_ZERO_VAR_RTOL = 1e-12


@dataclass(frozen=True, eq=False, repr=False)
class NslKdd:
    """One NSL-KDD file as arrays (read-only).

    ``numeric`` float64 [n, 38] (columns ``numeric_names`` = NUMERIC_FEATURES), ``categorical``
    str [n, 3] (protocol_type, service, flag), ``labels`` str [n], ``difficulty`` int64 [n].
    """

    numeric: np.ndarray
    numeric_names: tuple[str, ...]
    categorical: np.ndarray
    labels: np.ndarray
    difficulty: np.ndarray
    source: str

    def __post_init__(self) -> None:
        n = np.shape(self.labels)[0] if np.ndim(self.labels) == 1 else -1
        if n < 0:
            raise ValueError(f"labels must be 1-D, got shape {np.shape(self.labels)}")
        names = tuple(self.numeric_names)
        expected = {
            "numeric": (n, len(names)),
            "categorical": (n, len(CATEGORICAL)),
            "difficulty": (n,),
        }
        for field, shape in expected.items():
            if np.shape(getattr(self, field)) != shape:
                raise ValueError(
                    f"{field} must have shape {shape}, got {np.shape(getattr(self, field))}"
                )
        arrays = {
            "numeric": np.asarray(self.numeric, dtype=np.float64),
            "categorical": np.asarray(self.categorical, dtype=str),
            "labels": np.asarray(self.labels, dtype=str),
            "difficulty": np.asarray(self.difficulty, dtype=np.int64),
        }
        for field, arr in arrays.items():
            arr = arr.view()
            arr.flags.writeable = False  # instances are cached and shared
            object.__setattr__(self, field, arr)
        object.__setattr__(self, "numeric_names", names)
        object.__setattr__(self, "source", str(self.source))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"NslKdd(source={self.source!r}, n={len(self)}, n_attack={int(self.is_attack.sum())})"

    @property
    def is_attack(self) -> np.ndarray:
        """bool [n]: label is not ``normal``."""
        return self.labels != "normal"

    @property
    def category(self) -> np.ndarray:
        """str [n]: ``normal``, ``DoS``, ``Probe``, ``R2L``, ``U2R`` or ``unknown`` (unlisted attack)."""
        names, inverse = np.unique(self.labels, return_inverse=True)
        cats = np.array(
            ["normal" if a == "normal" else ATTACK_CATEGORIES.get(str(a), "unknown") for a in names],
            dtype="<U7",
        )
        return cats[inverse.reshape(-1)] if names.size else np.zeros(0, dtype="<U7")

    def column(self, name: str) -> np.ndarray:
        """One numeric column by name (float64 [n], read-only)."""
        return self.numeric[:, _numeric_index(self.numeric_names, name)]


def read_nslkdd(path: str | os.PathLike[str]) -> NslKdd:
    """Parse an NSL-KDD text file, plain or gzip'd (detected by magic bytes), validating every row.

    Raises MalformedDataError naming the file, 1-based line and column on the first bad value
    (a wrong field count, a non-number, an empty field, or a label that is neither ``normal`` nor
    an attack of ``ATTACK_CATEGORIES``). Results are cached in memory per (resolved path, mtime, size).
    """
    p = Path(path)
    try:
        st = p.resolve().stat()
    except OSError as exc:
        raise DataNotFoundError(f"cannot read NSL-KDD file {p}: {exc}") from exc
    return _read_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _read_cached(path: str, mtime_ns: int, size: int) -> NslKdd:
    del mtime_ns, size  # cache key only
    text = _read_text(Path(path))
    lines = text.split("\n")
    while lines and not lines[-1].strip():  # the final newline and trailing blank lines
        lines.pop()
    if not lines:
        raise MalformedDataError(f"{path}: no data rows")
    try:
        parsed = _parse_fast(text, lines)
    except ValueError:
        parsed = None
    if parsed is None:
        parsed = _parse_slow(lines, path)  # raises with the exact line and column
    numeric, categorical, labels, difficulty = parsed
    return NslKdd(numeric, NUMERIC_FEATURES, categorical, labels, difficulty, path)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataNotFoundError(f"cannot read NSL-KDD file {path}: {exc}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
            raise MalformedDataError(f"{path}: not a valid gzip file ({exc})") from exc
    elif path.suffix == ".gz":
        raise MalformedDataError(f"{path}: name ends in .gz but the file is not gzip data")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MalformedDataError(
            f"{path} line {line}: byte 0x{raw[exc.start]:02x} is not valid UTF-8 text"
        ) from exc
    return text.replace("\r\n", "\n") if "\r" in text else text


def _parse_fast(text: str, lines: list[str]) -> tuple | None:
    """Vectorized parse; returns None (or raises ValueError) when any row looks wrong."""
    n = len(lines)
    if any(line.count(",") != _N_FIELDS - 1 for line in lines):
        return None
    body = "\n".join(lines)
    numeric = np.loadtxt(
        io.StringIO(body), delimiter=",", usecols=_NUMERIC_IDX, dtype=np.float64,
        comments=None, ndmin=2,
    )  # fmt: skip
    if numeric.shape != (n, len(_NUMERIC_IDX)) or not np.isfinite(numeric).all():
        return None
    flat = body.replace("\n", ",").split(",")
    if len(flat) != n * _N_FIELDS:
        return None
    difficulty = np.array(flat[_DIFFICULTY_IDX::_N_FIELDS], dtype=np.int64)
    categorical = np.array([flat[i::_N_FIELDS] for i in _CATEGORICAL_IDX], dtype=str).T
    labels = np.array(flat[_LABEL_IDX::_N_FIELDS], dtype=str)
    if (np.char.str_len(categorical) == 0).any() or (np.char.str_len(labels) == 0).any():
        return None
    if not np.isin(labels, _KNOWN_LABELS).all():
        return None
    return numeric, categorical.reshape(n, len(_CATEGORICAL_IDX)), labels, difficulty


def _parse_slow(lines: list[str], path: str) -> tuple:
    """Row-by-row parse that raises MalformedDataError at the first bad field."""
    n = len(lines)
    numeric = np.empty((n, len(_NUMERIC_IDX)), dtype=np.float64)
    categorical: list[list[str]] = []
    labels: list[str] = []
    difficulty = np.empty(n, dtype=np.int64)

    def fail(lineno: int, col: int, problem: str) -> MalformedDataError:
        return MalformedDataError(f"{path} line {lineno}, column {col} ({COLUMNS[col]}): {problem}")

    for row, line in enumerate(lines):
        lineno = row + 1
        fields = line.split(",")
        if len(fields) != _N_FIELDS:
            raise MalformedDataError(
                f"{path} line {lineno}: expected {_N_FIELDS} fields, got {len(fields)}"
            )
        for j, col in enumerate(_NUMERIC_IDX):
            value = fields[col]
            try:
                x = float(value)
            except ValueError:
                raise fail(lineno, col, f"{value!r} is not a number") from None
            if not math.isfinite(x):
                raise fail(lineno, col, f"{value!r} is not finite")
            numeric[row, j] = x
        for col in (*_CATEGORICAL_IDX, _LABEL_IDX):
            if not fields[col].strip():
                raise fail(lineno, col, "empty value")
        if fields[_LABEL_IDX] not in _KNOWN_LABEL_SET:
            raise fail(lineno, _LABEL_IDX, _unknown_label(fields[_LABEL_IDX]))
        try:
            difficulty[row] = int(fields[_DIFFICULTY_IDX])
        except ValueError:
            raise fail(
                lineno, _DIFFICULTY_IDX, f"{fields[_DIFFICULTY_IDX]!r} is not an integer"
            ) from None
        categorical.append([fields[c] for c in _CATEGORICAL_IDX])
        labels.append(fields[_LABEL_IDX])
    return numeric, np.array(categorical, dtype=str), np.array(labels, dtype=str), difficulty


def _unknown_label(label: str) -> str:
    close = difflib.get_close_matches(label, _KNOWN_LABELS.tolist(), n=1, cutoff=0.75)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown label {label!r}{guess}; known: normal, or one of the {len(ATTACK_CATEGORIES)} NSL-KDD "
        f"attack names (e.g. neptune, smurf, satan)"
    )


def load_nslkdd(
    split: str, data_dir: str | os.PathLike[str] | None = None, download: bool = True
) -> NslKdd:
    """Load a split (``train``, ``test``, ``test21``, ``train20``) from ``<data_dir>/nsl-kdd/``.

    Accepts ``<file>`` or ``<file>.gz``. A missing file is downloaded from ``NSLKDD_MIRRORS``
    (sha256-checked) unless ``download=False``; failure raises DataNotFoundError.
    """
    if split not in NSLKDD_SPLITS:
        raise ValueError(f"unknown NSL-KDD split {split!r}; known splits: {', '.join(NSLKDD_SPLITS)}")
    fname, sha = NSLKDD_SPLITS[split]
    folder = _resolve_data_dir(data_dir) / "nsl-kdd"
    candidates = (folder / fname, folder / f"{fname}.gz")
    for candidate in candidates:
        if candidate.is_file():
            return read_nslkdd(candidate)

    def not_found(why: str) -> DataNotFoundError:
        return DataNotFoundError(
            f"NSL-KDD {split} file not found: no {candidates[0]} (or {fname}.gz); {why}",
            holding=f"nsl-kdd/{fname}",
        )

    if not download:
        raise not_found("download=False")
    failures = []
    for mirror in NSLKDD_MIRRORS:
        url = mirror.rstrip("/") + "/" + fname
        try:
            _download(url, candidates[0], sha256=sha)
        except (DataNotFoundError, MalformedDataError) as exc:
            failures.append(f"{url} ({short_reason(exc)})")
            continue
        return read_nslkdd(candidates[0])
    raise not_found(f"download failed: {', '.join(failures)}" if failures else "no mirrors configured")


def category_vocabulary(ds: NslKdd) -> dict[str, list[str]]:
    """Sorted distinct values of each categorical column: build from TRAINING data for ``features``."""
    _check_ds(ds)
    return {name: sorted(set(ds.categorical[:, j].tolist())) for j, name in enumerate(CATEGORICAL)}


def features(
    ds: NslKdd, mode: str = "paper", categories: dict[str, Sequence[str]] | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Feature matrix (float64 [n, d], a copy) and column names.

    ``paper``: the 34 PAPER_FEATURES. ``onehot``: the 38 numeric columns, then one-hot blocks
    for protocol_type, service, flag over ``categories`` (required; use
    ``category_vocabulary(train_ds)`` so train and test share columns). Unseen values -> all zeros.
    """
    _check_ds(ds)
    if mode not in FEATURE_MODES:
        raise ValueError(f"unknown feature mode {mode!r}; known modes: {', '.join(FEATURE_MODES)}")
    if mode == "paper":
        if categories is not None:
            raise ValueError("categories is only used with mode='onehot'")
        idx = [_numeric_index(ds.numeric_names, c) for c in PAPER_FEATURES]
        return ds.numeric[:, idx].copy(), PAPER_FEATURES
    if categories is None:
        raise ValueError(
            "mode='onehot' needs categories=category_vocabulary(train_ds) so that train and "
            "test get the same columns"
        )
    vocab = _check_vocabulary(categories)
    blocks = [np.array(ds.numeric, dtype=np.float64)]
    names = list(ds.numeric_names)
    for j, col in enumerate(CATEGORICAL):
        values = np.asarray(vocab[col], dtype=str)
        block = (ds.categorical[:, j][:, None] == values[None, :]).astype(np.float64)
        blocks.append(block.reshape(len(ds), values.size))
        names.extend(f"{col}={v}" for v in vocab[col])
    return np.concatenate(blocks, axis=1), tuple(names)


def fit_scaler(X: Any) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and population std (ddof=0) of ``X`` [n, d]; constant columns get std 1."""
    X = _check_matrix(X, "X")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    mean = X.mean(axis=0)
    var = X.var(axis=0)
    return mean, _std_from_var(var, mean)


def standardize(X: Any, mean: Any, std: Any) -> np.ndarray:
    """Return ``(X - mean) / std`` as float64 (a new array)."""
    X = _check_matrix(X, "X")
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    for name, v in (("mean", mean), ("std", std)):
        if v.shape != (X.shape[1],):
            raise ValueError(f"{name} must have shape ({X.shape[1]},) to match X, got {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"{name} has non-finite values")
    if (std <= 0).any():
        raise ValueError(f"std must be positive; column {int(np.argmax(std <= 0))} is {std[std <= 0][0]}")
    return (X - mean) / std


def client_moments(X: Any) -> tuple[int, np.ndarray, np.ndarray]:
    """One client's sufficient statistics ``(n, column sums, column sums of squares)``."""
    X = _check_matrix(X, "X")
    return int(X.shape[0]), X.sum(axis=0), np.square(X).sum(axis=0)


def pooled_scaler(moments_list: Sequence[tuple[int, Any, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Combine clients' ``client_moments`` into the global mean and population std (constant -> 1).

    Equals ``fit_scaler`` on the concatenated data up to rounding (the sum-of-squares formula
    loses relative precision ~ eps * mean^2 / var on columns whose spread is tiny vs. their mean).
    """
    moments = list(moments_list)
    if not moments:
        raise ValueError("moments_list is empty; need at least one client")
    total = 0
    s = q = None
    for i, item in enumerate(moments):
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ValueError(f"moments_list[{i}] must be (n, sum, sumsq), got {type(item).__name__}")
        n_i = check_int(item[0], f"moments_list[{i}] count", minimum=0)
        s_i = np.asarray(item[1], dtype=np.float64)
        q_i = np.asarray(item[2], dtype=np.float64)
        if s_i.ndim != 1 or q_i.shape != s_i.shape:
            raise ValueError(
                f"moments_list[{i}]: sum and sumsq must be 1-D of equal shape, got {s_i.shape} "
                f"and {q_i.shape}"
            )
        if s is not None and s_i.shape != s.shape:
            raise ValueError(f"moments_list[{i}] has {s_i.shape[0]} columns, expected {s.shape[0]}")
        total += n_i
        s = s_i.copy() if s is None else s + s_i
        q = q_i.copy() if q is None else q + q_i
    if total == 0:
        raise ValueError("all clients report 0 rows")
    mean = s / total
    var = np.maximum(q / total - np.square(mean), 0.0)
    return mean, _std_from_var(var, mean)


def paper_split(X_normal: Any, sort_key: Any, n_clients: int) -> list[np.ndarray]:
    """FedPCA's non-IID split: stable-sort rows by ``sort_key``, cut N contiguous blocks of floor(n/N).

    ``sort_key`` is a column index of ``X_normal`` or a 1-D key array of length n. The last
    n mod N rows of the sorted order (largest keys) are unused. Each block is returned as
    ascending int64 row indices; block i holds keys <= those of block i+1.
    """
    X = np.asarray(X_normal)
    if X.ndim != 2:
        raise ValueError(f"X_normal must be 2-D [n, d], got shape {X.shape}")
    if isinstance(sort_key, (int, np.integer)) and not isinstance(sort_key, (bool, np.bool_)):
        col = int(sort_key)
        if not -X.shape[1] <= col < X.shape[1]:
            raise IndexError(f"sort_key column {col} out of range for {X.shape[1]} columns")
        key = X[:, col]
    else:
        key = np.asarray(sort_key)
        if key.shape != (X.shape[0],):
            raise ValueError(
                f"sort_key must be a column index or a 1-D array of length {X.shape[0]}, "
                f"got shape {key.shape}"
            )
    return _sorted_equal_blocks(key, n_clients)


def quantile_labels(key: Any, n_bins: int) -> np.ndarray:
    """Discretize a numeric key into <= ``n_bins`` quantile bins: int64 ids 0..k-1 (ties share a bin).

    Use as ``labels`` for a Dirichlet split on a continuous feature (e.g. dst_bytes).
    """
    key = np.asarray(key, dtype=np.float64)
    if key.ndim != 1 or key.size == 0:
        raise ValueError(f"key must be a non-empty 1-D array, got shape {key.shape}")
    n_bins = check_int(n_bins, "n_bins", minimum=1)
    edges = np.unique(np.quantile(key, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, key, side="right")
    return np.unique(bins, return_inverse=True)[1].reshape(-1).astype(np.int64)


def split_clients(
    n_rows: int,
    key: Any,
    n_clients: int,
    how: str = "paper",
    seed: int | None = None,
    alpha: float | None = None,
    labels: Any = None,
) -> list[np.ndarray]:
    """Split ``n_rows`` rows among clients: ``paper`` (sorted equal blocks by ``key``, seed unused),
    ``iid`` (needs seed) or ``dirichlet`` (needs seed, alpha and int ``labels``, e.g.
    ``quantile_labels(key, 10)``). ``paper`` drops the remainder rows; the others use every row.
    """
    n_rows = check_int(n_rows, "n_rows", minimum=1)
    if how not in SPLIT_HOWS:
        raise ValueError(f"unknown split {how!r}; known splits: {', '.join(SPLIT_HOWS)}")
    if how == "paper":
        if key is None:
            raise ValueError("how='paper' needs key (1-D array of length n_rows, e.g. dst_bytes)")
        key = np.asarray(key)
        if key.shape != (n_rows,):
            raise ValueError(f"key must have shape ({n_rows},), got {key.shape}")
        return _sorted_equal_blocks(key, n_clients)
    if seed is None:
        raise ValueError(f"how={how!r} needs an explicit seed")
    seed = check_seed(seed)
    if how == "iid":
        return _iid(n_rows, n_clients, seed)
    if alpha is None or labels is None:
        raise ValueError(
            "how='dirichlet' needs alpha and labels (int class ids per row; for a continuous "
            "key use labels=quantile_labels(key, n_bins))"
        )
    labels = check_labels(labels)
    if labels.shape != (n_rows,):
        raise ValueError(f"labels must have shape ({n_rows},), got {labels.shape}")
    return _dirichlet(labels, n_clients, alpha, seed)


def _sorted_equal_blocks(key: np.ndarray, n_clients: Any) -> list[np.ndarray]:
    if key.ndim != 1 or key.size == 0:
        raise ValueError(f"sort key must be a non-empty 1-D array, got shape {key.shape}")
    if key.dtype.kind not in "biuf":
        raise TypeError(f"sort key must be numeric, got dtype {key.dtype}")
    if key.dtype.kind == "f" and np.isnan(key).any():
        raise ValueError("sort key has NaN values")
    n_clients = check_int(n_clients, "n_clients", minimum=1)
    size = key.shape[0] // n_clients
    if size == 0:
        raise PartitionError(f"n_clients={n_clients} exceeds the {key.shape[0]} rows; blocks would be empty")
    order = np.argsort(key, kind="stable").astype(np.int64, copy=False)
    return [np.sort(order[i * size : (i + 1) * size]) for i in range(n_clients)]


def _std_from_var(var: np.ndarray, mean: np.ndarray) -> np.ndarray:
    std = np.sqrt(var)
    constant = var <= _ZERO_VAR_RTOL * (var + np.square(mean))
    std[constant] = 1.0
    return std


def _check_matrix(X: Any, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} has {int(np.count_nonzero(~np.isfinite(X)))} non-finite values")
    return X


def _check_ds(ds: Any) -> None:
    if not isinstance(ds, NslKdd):
        raise TypeError(f"expected an NslKdd dataset, got {type(ds).__name__}")


def _numeric_index(names: Sequence[str], name: str) -> int:
    try:
        return list(names).index(name)
    except ValueError:
        raise KeyError(f"no numeric column {name!r}; columns: {', '.join(names)}") from None


def _check_vocabulary(categories: Any) -> dict[str, list[str]]:
    if not isinstance(categories, dict):
        raise TypeError(f"categories must be a dict column -> values, got {type(categories).__name__}")
    missing = [c for c in CATEGORICAL if c not in categories]
    extra = sorted(set(categories) - set(CATEGORICAL))
    if missing or extra:
        raise ValueError(
            f"categories must have exactly the keys {', '.join(CATEGORICAL)}; "
            f"missing: {missing or 'none'}, unexpected: {extra or 'none'}"
        )
    vocab = {}
    for col in CATEGORICAL:
        values = [str(v) for v in categories[col]]
        if len(set(values)) != len(values):
            raise ValueError(f"categories[{col!r}] has duplicate values")
        vocab[col] = values
    return vocab
