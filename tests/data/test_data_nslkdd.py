"""NSL-KDD: the four shared files, the row validator's errors, features, scalers and client splits."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import DataNotFoundError, MalformedDataError
from fedsim.data import nslkdd as nk
from fedsim.data.nslkdd import (
    ATTACK_CATEGORIES,
    CATEGORICAL,
    COLUMNS,
    NUMERIC_FEATURES,
    PAPER_DROPPED,
    PAPER_FEATURES,
    category_vocabulary,
    client_moments,
    features,
    fit_scaler,
    load_nslkdd,
    paper_split,
    pooled_scaler,
    quantile_labels,
    read_nslkdd,
    split_clients,
    standardize,
)

# (rows, normal, attack) from SOURCE.md.
COUNTS = {
    "test": (22544, 9711, 12833),
    "test21": (11850, 2152, 9698),
    "train20": (25192, 13449, 11743),
    "train": (125973, 67343, 58630),
}
TRAIN_RAW_SHA256 = "1b86d2f957b33082081bba410fe129b475efebcc13c9014c3f447c8271aadf95"
TRAIN_RAW_BYTES = 19_109_424

# KDDTest+.txt line 1, verbatim.
ROW = (
    "0,tcp,private,REJ,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,229,10,0.00,0.00,1.00,1.00,0.04,0.06,"
    "0.00,255,10,0.04,0.06,0.00,0.00,0.00,0.00,1.00,1.00,neptune,21"
)


@pytest.fixture(scope="module")
def nsl_root(require_data) -> Path:
    return require_data("nsl-kdd-all")


@pytest.fixture(scope="module")
def train(nsl_root):
    return load_nslkdd("train", nsl_root, download=False)


@pytest.fixture(scope="module")
def test_ds(nsl_root):
    return load_nslkdd("test", nsl_root, download=False)


def _rows(*overrides: tuple[int, int, str], n: int = 5) -> list[str]:
    """``n`` copies of ROW, with (line, column, value) replacements (line 1-based)."""
    rows = [ROW.split(",") for _ in range(n)]
    for line, col, value in overrides:
        rows[line - 1][col] = value
    return [",".join(r) for r in rows]


def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# --- constants ---------------------------------------------------------------------------


def test_column_constants():
    assert len(COLUMNS) == 43 and len(set(COLUMNS)) == 43
    assert COLUMNS[4] == "src_bytes" and COLUMNS[41:] == ("label", "difficulty")
    assert len(NUMERIC_FEATURES) == 38 and not set(CATEGORICAL) & set(NUMERIC_FEATURES)
    assert len(PAPER_FEATURES) == 34
    assert not set(PAPER_DROPPED) & set(PAPER_FEATURES)
    assert set(PAPER_FEATURES) | set(PAPER_DROPPED) == set(COLUMNS[:41])
    assert list(PAPER_FEATURES) == sorted(PAPER_FEATURES, key=COLUMNS.index)
    assert len(ATTACK_CATEGORIES) == 39
    assert {c: list(ATTACK_CATEGORIES.values()).count(c) for c in ("DoS", "Probe", "U2R", "R2L")} == {
        "DoS": 11, "Probe": 6, "U2R": 7, "R2L": 15,
    }  # fmt: skip


# --- the shared files --------------------------------------------------------------------


@pytest.mark.parametrize("split", list(COUNTS))
def test_row_counts_match_source(nsl_root, split):
    ds = load_nslkdd(split, nsl_root, download=False)
    n, n_normal, n_attack = COUNTS[split]
    assert len(ds) == n
    assert int((~ds.is_attack).sum()) == n_normal and int(ds.is_attack.sum()) == n_attack
    assert ds.numeric.shape == (n, 38) and ds.numeric.dtype == np.float64
    assert ds.categorical.shape == (n, 3) and ds.labels.shape == (n,)
    assert ds.numeric_names == NUMERIC_FEATURES
    assert ds.difficulty.dtype == np.int64 and 0 <= ds.difficulty.min() and ds.difficulty.max() <= 21
    assert set(ds.categorical[:, 0].tolist()) == {"tcp", "udp", "icmp"}
    assert Path(ds.source).parent.name == "nsl-kdd"


def test_first_test_row_parsed(test_ds):
    assert test_ds.numeric[0, NUMERIC_FEATURES.index("count")] == 229.0
    assert test_ds.numeric[0, NUMERIC_FEATURES.index("dst_host_srv_rerror_rate")] == 1.0
    assert test_ds.categorical[0].tolist() == ["tcp", "private", "REJ"]
    assert test_ds.labels[0] == "neptune" and test_ds.difficulty[0] == 21


def test_train_gz_raw_checksum(nsl_root):
    raw = gzip.decompress((nsl_root / "nsl-kdd" / "KDDTrain+.txt.gz").read_bytes())
    assert len(raw) == TRAIN_RAW_BYTES
    assert hashlib.sha256(raw).hexdigest() == TRAIN_RAW_SHA256
    assert nk.NSLKDD_SPLITS["train"][1] == TRAIN_RAW_SHA256


def test_test_categories(test_ds):
    cats, counts = np.unique(test_ds.category, return_counts=True)
    assert dict(zip(cats.tolist(), counts.tolist())) == {
        "DoS": 7460, "Probe": 2421, "R2L": 2885, "U2R": 67, "normal": 9711,
    }  # fmt: skip
    assert (test_ds.category == "normal").tolist() == (~test_ds.is_attack).tolist()


def test_unknown_attack_name_is_an_error_naming_file_and_line(tmp_path):
    path = _write(tmp_path / "x.txt", _rows((2, 41, "zeroday"), (3, 41, "normal")))
    with pytest.raises(MalformedDataError, match=r"line 2, column 41 \(label\): unknown label 'zeroday'; known: normal"):
        read_nslkdd(path)


def test_arrays_are_read_only(test_ds):
    with pytest.raises(ValueError):
        test_ds.numeric[0, 0] = 1.0


# --- features ----------------------------------------------------------------------------


def test_paper_features(test_ds):
    X, names = features(test_ds)
    assert X.shape == (22544, 34) and names == PAPER_FEATURES
    assert np.array_equal(X[:, names.index("dst_bytes")], test_ds.column("dst_bytes"))
    X[0, 0] = -1.0  # a copy, not a view of the read-only data
    assert test_ds.numeric[0, 0] != -1.0


def test_onehot_shared_columns(train, test_ds):
    vocab = category_vocabulary(train)
    assert [len(vocab[c]) for c in CATEGORICAL] == [3, 70, 11]
    Xtr, ntr = features(train, "onehot", vocab)
    Xte, nte = features(test_ds, "onehot", vocab)
    assert ntr == nte and Xtr.shape[1] == Xte.shape[1] == 38 + 3 + 70 + 11
    assert np.array_equal(Xte[:, :38], test_ds.numeric)
    start = 38
    for j, col in enumerate(CATEGORICAL):
        block = Xte[:, start : start + len(vocab[col])]
        assert set(np.unique(block).tolist()) == {0.0, 1.0}
        assert np.array_equal(block.sum(axis=1), np.ones(len(test_ds)))  # all seen in train
        hot = np.array(vocab[col])[block.argmax(axis=1)]
        assert np.array_equal(hot, test_ds.categorical[:, j])
        start += len(vocab[col])


def test_onehot_unseen_value_is_all_zeros(nsl_root, test_ds):
    vocab = category_vocabulary(load_nslkdd("train20", nsl_root, download=False))
    assert "tftp_u" not in vocab["service"]
    X, names = features(test_ds, "onehot", vocab)
    service = [i for i, n in enumerate(names) if n.startswith("service=")]
    sums = X[:, service].sum(axis=1)
    unseen = test_ds.categorical[:, 1] == "tftp_u"
    assert unseen.sum() > 0
    assert np.all(sums[unseen] == 0) and np.all(sums[~unseen] == 1)


def test_features_errors(test_ds):
    with pytest.raises(ValueError, match="paper, onehot"):
        features(test_ds, "pca")
    with pytest.raises(ValueError, match="category_vocabulary"):
        features(test_ds, "onehot")
    with pytest.raises(ValueError, match="missing"):
        features(test_ds, "onehot", {"service": ["http"]})


# --- malformed files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ((4, 4, "abc"), r"line 4, column 4 \(src_bytes\): 'abc' is not a number"),
        ((2, 5, "nan"), r"line 2, column 5 \(dst_bytes\): 'nan' is not finite"),
        ((5, 22, "inf"), r"line 5, column 22 \(count\): 'inf' is not finite"),
        ((3, 42, "7.5"), r"line 3, column 42 \(difficulty\): '7.5' is not an integer"),
        ((1, 2, ""), r"line 1, column 2 \(service\): empty value"),
    ],
)
def test_malformed_value_names_file_line_column(tmp_path, override, expected):
    path = _write(tmp_path / "KDDTest+.txt", _rows(override))
    with pytest.raises(MalformedDataError, match=expected) as info:
        read_nslkdd(path)
    assert str(path.resolve()) in str(info.value)


def test_wrong_field_count(tmp_path):
    lines = _rows()
    lines[2] = lines[2].rsplit(",", 2)[0]  # line 3 loses label and difficulty
    path = _write(tmp_path / "bad.txt", lines)
    with pytest.raises(MalformedDataError, match="line 3: expected 43 fields, got 41") as info:
        read_nslkdd(path)
    assert "bad.txt" in str(info.value)


def test_blank_line_inside_and_empty_file(tmp_path):
    lines = _rows()
    lines.insert(1, "")
    with pytest.raises(MalformedDataError, match="line 2: expected 43 fields, got 1"):
        read_nslkdd(_write(tmp_path / "blank.txt", lines))
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(MalformedDataError, match="no data rows"):
        read_nslkdd(tmp_path / "empty.txt")


def test_bad_gzip_and_fake_gz_extension(tmp_path):
    (tmp_path / "trunc.txt").write_bytes(gzip.compress(("\n".join(_rows()) + "\n").encode())[:40])
    with pytest.raises(MalformedDataError, match="not a valid gzip"):
        read_nslkdd(tmp_path / "trunc.txt")
    with pytest.raises(MalformedDataError, match="not gzip data"):
        read_nslkdd(_write(tmp_path / "plain.txt.gz", _rows()))


def test_gz_and_plain_parse_identically(tmp_path):
    lines = _rows((2, 41, "normal"), (3, 5, "12345"), (4, 2, "http"))
    plain = read_nslkdd(_write(tmp_path / "a.txt", lines))
    gz = read_nslkdd(_write(tmp_path / "a.txt.gz", lines, gz=True))
    sniffed = read_nslkdd(_write(tmp_path / "gz_without_suffix.txt", lines, gz=True))
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    for other in (gz, sniffed, read_nslkdd(crlf)):
        for field in ("numeric", "categorical", "labels", "difficulty"):
            assert np.array_equal(getattr(plain, field), getattr(other, field)), field
    assert plain.numeric[2, NUMERIC_FEATURES.index("dst_bytes")] == 12345.0


def test_cache_sees_rewritten_file(tmp_path):
    path = _write(tmp_path / "c.txt", _rows())
    assert len(read_nslkdd(path)) == 5
    _write(path, _rows(n=7))
    assert len(read_nslkdd(path)) == 7


# --- load_nslkdd: missing files and downloads --------------------------------------------


def test_missing_file_without_download(tmp_path):
    with pytest.raises(DataNotFoundError, match="download=False") as info:
        load_nslkdd("test", tmp_path, download=False)
    msg = str(info.value)
    assert str(tmp_path / "nsl-kdd" / "KDDTest+.txt") in msg and "KDDTest+.txt.gz" in msg


def test_unknown_split():
    with pytest.raises(ValueError, match="train, test, test21, train20"):
        load_nslkdd("validation", download=False)


def test_download_from_mirror(nsl_root, tmp_path, monkeypatch):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    shutil.copy(nsl_root / "nsl-kdd" / "KDDTest-21.txt", good / "KDDTest-21.txt")
    (bad / "KDDTest-21.txt").write_text(ROW + "\n")
    monkeypatch.setattr(nk, "NSLKDD_MIRRORS", (bad.as_uri() + "/", tmp_path.as_uri() + "/none/"))
    with pytest.raises(DataNotFoundError) as info:
        load_nslkdd("test21", tmp_path / "data")
    msg = str(info.value)
    assert "sha256" in msg and str(tmp_path / "data" / "nsl-kdd") in msg
    assert not (tmp_path / "data" / "nsl-kdd" / "KDDTest-21.txt").exists()

    monkeypatch.setattr(nk, "NSLKDD_MIRRORS", (bad.as_uri(), good.as_uri()))
    ds = load_nslkdd("test21", tmp_path / "data")
    assert len(ds) == 11850 and (tmp_path / "data" / "nsl-kdd" / "KDDTest-21.txt").is_file()


# --- scalers -----------------------------------------------------------------------------


def test_fit_scaler_and_standardize():
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, size=(200, 4))
    X[:, 1] = 0.0
    X[:, 2] = 0.1  # constant but not exactly representable: rounding must not give a tiny std
    mean, std = fit_scaler(X)
    assert std[1] == 1.0 and std[2] == 1.0
    assert np.allclose(std[[0, 3]], X[:, [0, 3]].std(axis=0), rtol=1e-12)
    Z = standardize(X, mean, std)
    assert np.allclose(Z.mean(axis=0), 0.0, atol=1e-12)
    assert np.allclose(Z[:, [0, 3]].std(axis=0), 1.0) and np.allclose(Z[:, 1:3], 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        standardize(X, mean[:3], std)
    with pytest.raises(ValueError, match="positive"):
        standardize(X, mean, np.zeros(4))


def test_pooled_scaler_equals_centralized(train):
    X, names = features(train)
    normal = X[~train.is_attack]
    parts = paper_split(normal, names.index("dst_bytes"), 20)  # very non-iid clients
    rest = np.setdiff1d(np.arange(len(normal)), np.concatenate(parts))
    mean, std = pooled_scaler([client_moments(normal[p]) for p in [*parts, rest]])
    ref_mean, ref_std = fit_scaler(normal)
    assert np.allclose(mean, ref_mean, rtol=1e-10, atol=0)
    assert np.allclose(std, ref_std, rtol=1e-10, atol=0)
    assert std[names.index("num_outbound_cmds")] == 1.0  # constant zero column

    rng = np.random.default_rng(1)
    Y = rng.normal(100.0, 2.0, size=(1000, 3))
    Y[:, 2] = 0.1
    chunks = np.array_split(Y, [10, 11, 500])  # includes a 1-row client
    mean, std = pooled_scaler([client_moments(c) for c in chunks] + [client_moments(Y[:0])])
    ref_mean, ref_std = fit_scaler(Y)
    assert np.allclose(mean, ref_mean, rtol=1e-10, atol=0)
    assert np.allclose(std, ref_std, rtol=1e-10, atol=0) and std[2] == 1.0
    with pytest.raises(ValueError, match="empty"):
        pooled_scaler([])
    with pytest.raises(ValueError, match="columns"):
        pooled_scaler([client_moments(Y), client_moments(Y[:, :2])])


# --- client splits -----------------------------------------------------------------------


def test_paper_split_on_normal_train(train):
    X, names = features(train)
    normal = X[~train.is_attack]
    assert normal.shape == (67343, 34)
    col = names.index("dst_bytes")
    parts = paper_split(normal, col, 20)
    assert [p.size for p in parts] == [3367] * 20
    used = np.concatenate(parts)
    assert np.unique(used).size == 67340
    key = normal[:, col]
    lo = [key[p].min() for p in parts]
    hi = [key[p].max() for p in parts]
    assert all(hi[i] <= lo[i + 1] for i in range(19)) and lo[0] < hi[-1]
    unused = np.setdiff1d(np.arange(67343), used)
    assert unused.size == 3 and key[unused].min() >= hi[-1]
    # stable: the first block is the first 3,367 rows (file order) with dst_bytes == 0
    assert (key == 0).sum() > 3367
    assert np.array_equal(parts[0], np.flatnonzero(key == 0)[:3367])
    assert all(np.all(np.diff(p) > 0) for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, paper_split(normal, key, 20)))


def test_split_clients():
    key = np.array([5, 1, 1, 9, 0, 3, 3, 7, 2, 8, 4], dtype=float)
    paper = split_clients(11, key, 3)
    assert [p.tolist() for p in paper] == [[1, 2, 4], [5, 6, 8], [0, 7, 10]]
    iid = split_clients(11, None, 3, how="iid", seed=4)
    assert sorted(np.concatenate(iid).tolist()) == list(range(11))
    assert all(np.array_equal(a, b) for a, b in zip(iid, split_clients(11, None, 3, "iid", 4)))
    labels = quantile_labels(key, 3)
    assert labels.tolist() == [2, 0, 0, 2, 0, 1, 1, 2, 0, 2, 1]
    dirich = split_clients(11, None, 2, how="dirichlet", seed=0, alpha=0.5, labels=labels)
    assert sorted(np.concatenate(dirich).tolist()) == list(range(11))
    with pytest.raises(ValueError, match="seed"):
        split_clients(11, None, 3, how="iid")
    with pytest.raises(ValueError, match="quantile_labels"):
        split_clients(11, key, 3, how="dirichlet", seed=0, alpha=1.0)
    with pytest.raises(ValueError, match="paper, iid, dirichlet"):
        split_clients(11, key, 3, how="sorted")
    with pytest.raises(ValueError, match="exceeds"):
        paper_split(np.zeros((3, 2)), 0, 4)
