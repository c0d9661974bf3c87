"""Dataset validation, scikit-learn digits, train_test_split and load()."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.data import Dataset, load, train_test_split


def test_digits_shape_range_classes(digits):
    assert digits.x.shape == (1797, 1, 8, 8)
    assert digits.x.dtype == np.float32 and digits.y.dtype == np.int64
    assert digits.x.min() == 0.0 and digits.x.max() == 1.0
    assert digits.n_classes == 10 and set(np.unique(digits.y)) == set(range(10))
    assert len(digits) == 1797 and digits.name == "digits"


def test_load_dispatch_and_unknown_name(digits):
    assert np.array_equal(load("digits").y, digits.y)
    with pytest.raises(ValueError, match="'cifar'.*digits, mnist"):
        load("cifar")


def _indexed(labels: np.ndarray) -> Dataset:
    """A dataset whose x[i] == i, so subsets reveal which samples they hold."""
    x = np.arange(labels.shape[0], dtype=np.float32)[:, None]
    return Dataset(x, labels, "indexed", int(labels.max()) + 1)


def _ids(ds: Dataset) -> np.ndarray:
    return ds.x[:, 0].astype(np.int64)


@pytest.mark.parametrize("stratify", [True, False])
def test_split_sizes_disjoint_cover(digit_labels, stratify):
    ds = _indexed(digit_labels)
    train, test = train_test_split(ds, 0.2, seed=0, stratify=stratify)
    assert (len(train), len(test)) == (1437, 360)  # test = ceil(0.2 * 1797), as scikit-learn
    ids = np.concatenate([_ids(train), _ids(test)])
    assert np.array_equal(np.sort(ids), np.arange(1797))
    assert np.array_equal(train.y, digit_labels[_ids(train)])  # labels travel with samples
    assert np.all(np.diff(_ids(train)) > 0)  # original order kept


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fraction", [0.2, 0.33, 0.5])
def test_split_is_stratified(digit_labels, seed, fraction):
    _, test = train_test_split(_indexed(digit_labels), fraction, seed=seed)
    per_class = np.bincount(test.y, minlength=10)
    expected = fraction * np.bincount(digit_labels, minlength=10)
    assert np.all(np.abs(per_class - expected) < 1), (per_class, expected)


def test_split_deterministic_per_seed(digit_labels):
    ds = _indexed(digit_labels)
    a = _ids(train_test_split(ds, 0.25, seed=7)[1])
    b = _ids(train_test_split(ds, 0.25, seed=7)[1])
    c = _ids(train_test_split(ds, 0.25, seed=8)[1])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_split_real_digits(digits):
    train, test = train_test_split(digits, 0.2, seed=0)
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.name == "digits" and test.n_classes == 10


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(digits, fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(digits, fraction, seed=0)


def test_split_rejects_bad_seed(digits):
    with pytest.raises(TypeError, match="seed"):
        train_test_split(digits, 0.2, seed=1.5)


def test_dataset_rejects_nan():
    x = np.zeros((5, 2), dtype=np.float32)
    x[[0, 1, 3], 0] = np.nan
    with pytest.raises(ValueError, match="x has 3 NaN values"):
        Dataset(x, np.zeros(5, dtype=np.int64), "t", 2)


def test_dataset_rejects_inf():
    x = np.zeros((2, 2))
    x[1, 1] = -np.inf
    with pytest.raises(ValueError, match="x has 1 infinite values"):
        Dataset(x, np.zeros(2, dtype=np.int64), "t", 2)


def test_dataset_rejects_label_out_of_range():
    with pytest.raises(ValueError, match=r"2 labels outside \[0, 3\) \(e.g. 3\)"):
        Dataset(np.zeros((4, 1)), np.array([0, 3, 2, -1]), "t", 3)


def test_dataset_rejects_length_mismatch_and_float_labels():
    with pytest.raises(ValueError, match="x has 3 samples but y has 2 labels"):
        Dataset(np.zeros((3, 1)), np.zeros(2, dtype=np.int64), "t", 2)
    with pytest.raises(TypeError, match="y must hold integer labels"):
        Dataset(np.zeros((2, 1)), np.zeros(2), "t", 2)


def test_dataset_casts_dtypes_and_subsets():
    ds = Dataset(np.arange(6, dtype=np.float64).reshape(3, 2), np.array([0, 1, 1], dtype=np.int32), "t", 2)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    sub = ds.subset([2, 0])
    assert np.array_equal(sub.y, [1, 0]) and np.array_equal(sub.x, [[4, 5], [0, 1]])
    assert np.array_equal(ds.subset(np.array([True, False, True])).y, [0, 1])
    assert len(ds.subset(np.array([], dtype=np.int64))) == 0
    with pytest.raises(IndexError, match="3"):
        ds.subset([3])
    with pytest.raises(IndexError, match="-1"):
        ds.subset([-1])
    with pytest.raises(ValueError, match="length 2"):
        ds.subset(np.array([True, False]))
    assert "n=3" in repr(ds)
