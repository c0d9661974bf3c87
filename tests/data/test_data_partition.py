"""Partitioners: coverage, sizes, skew, determinism, and the packed ClientIndex."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.data import (
    ClientIndex,
    dirichlet,
    iid,
    label_histogram,
    partition,
    sampled,
    sorted_blocks,
)

SEEDS = [0, 1, 2]


def _assert_exact_cover(parts, n):
    """Disjoint and union = range(n): the concatenation is a permutation of range(n)."""
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def _assert_well_formed(parts):
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0)  # ascending, no repeats


def _mean_entropy(labels, parts):
    hist = label_histogram(labels, parts, 10).astype(np.float64)
    q = hist / hist.sum(axis=1, keepdims=True)
    terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return float(-terms.sum(axis=1).mean())


# --- iid ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_clients", [1, 7, 100, 1797])
def test_iid_cover_and_sizes(seed, n_clients):
    parts = iid(1797, n_clients, seed)
    assert len(parts) == n_clients
    _assert_exact_cover(parts, 1797)
    _assert_well_formed(parts)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_iid_deterministic_and_seed_dependent():
    a, b, c = iid(500, 10, 3), iid(500, 10, 3), iid(500, 10, 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_rejects_more_clients_than_samples():
    with pytest.raises(ValueError, match="n_clients=11 exceeds n_samples=10"):
        iid(10, 11, 0)


@pytest.mark.parametrize("bad", [0, -3])
def test_iid_rejects_non_positive_clients(bad):
    with pytest.raises(ValueError, match=f"n_clients must be >= 1, got {bad}"):
        iid(10, bad, 0)


def test_seed_must_be_integer():
    with pytest.raises(TypeError, match="seed must be an integer, got 0.5"):
        iid(10, 2, 0.5)
    with pytest.raises(TypeError, match="seed"):
        iid(10, 2, None)


# --- dirichlet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_cover_and_min_size(digit_labels, seed, alpha):
    parts = dirichlet(digit_labels, 20, alpha, seed, min_size=5)
    assert len(parts) == 20
    _assert_exact_cover(parts, len(digit_labels))
    _assert_well_formed(parts)
    assert min(len(p) for p in parts) >= 5


@pytest.mark.parametrize("seed", SEEDS)
def test_dirichlet_small_alpha_is_far_more_skewed(digit_labels, seed):
    # Mean per-client label entropy (nats): iid-like splits sit near log(10) = 2.30; alpha=0.1
    # leaves each client with a few dominant classes (about 0.7 here), well under half of that.
    skewed = _mean_entropy(digit_labels, dirichlet(digit_labels, 20, 0.1, seed))
    mixed = _mean_entropy(digit_labels, dirichlet(digit_labels, 20, 100.0, seed))
    assert mixed > 0.95 * np.log(10)
    assert skewed < 0.5 * mixed


def test_dirichlet_deterministic_and_seed_dependent(digit_labels):
    a = dirichlet(digit_labels, 10, 0.5, 11)
    b = dirichlet(digit_labels, 10, 0.5, 11)
    c = dirichlet(digit_labels, 10, 0.5, 12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("n_clients, alpha", [(20, 0.1), (50, 0.1), (100, 0.5)])
def test_dirichlet_balance_bounds_client_size(digit_labels, n_clients, alpha):
    # A client stops receiving once it holds >= n / n_clients, so it ends below that plus one class.
    bound = len(digit_labels) / n_clients + np.bincount(digit_labels).max()
    for seed in SEEDS:
        assert max(len(p) for p in dirichlet(digit_labels, n_clients, alpha, seed)) < bound


def test_dirichlet_balance_matters():
    labels = np.repeat(np.arange(4), 50)  # 2 clients: capacity 100, classes of 50
    balanced = [max(map(len, dirichlet(labels, 2, 0.05, s))) for s in range(10)]
    unbalanced = [max(map(len, dirichlet(labels, 2, 0.05, s, balance=False))) for s in range(10)]
    assert max(balanced) < 150  # at most one class beyond the capacity
    assert max(unbalanced) >= 150  # without balancing some client collects 3+ classes


def test_dirichlet_without_balance_still_covers(digit_labels):
    parts = dirichlet(digit_labels, 10, 0.3, 0, balance=False)
    _assert_exact_cover(parts, len(digit_labels))


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(digit_labels, alpha):
    with pytest.raises(ValueError, match="alpha must be positive"):
        dirichlet(digit_labels, 10, alpha, 0)


def test_dirichlet_impossible_min_size(digit_labels):
    with pytest.raises(ValueError, match="min_size=2"):
        dirichlet(digit_labels, 1000, 1.0, 0, min_size=2)


def test_dirichlet_gives_up_after_bounded_retries():
    labels = np.repeat(np.arange(10), 20)  # 200 samples, 150 clients: someone ends up empty
    with pytest.raises(ValueError, match="max_tries=5"):
        dirichlet(labels, 150, 0.01, 0, max_tries=5)


def test_dirichlet_rejects_bad_labels():
    with pytest.raises(TypeError, match="integer class ids"):
        dirichlet(np.array([0.0, 1.0]), 2, 1.0, 0)
    with pytest.raises(ValueError, match="1 negative values"):
        dirichlet(np.array([0, -1, 1]), 2, 1.0, 0)


# --- sorted_blocks -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_clients", [1, 10, 37])
def test_sorted_blocks_cover_and_label_ranges(digit_labels, n_clients):
    parts = sorted_blocks(digit_labels, n_clients)
    _assert_exact_cover(parts, len(digit_labels))
    _assert_well_formed(parts)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for left, right in zip(parts, parts[1:]):
        assert digit_labels[left].max() <= digit_labels[right].min()


def test_sorted_blocks_ten_clients_mostly_one_class(digit_labels):
    hist = label_histogram(digit_labels, sorted_blocks(digit_labels, 10), 10)
    # Classes hold 174-183 samples and blocks 179-180, so each block is >= 95% one class.
    assert np.all(hist.max(axis=1) >= 0.95 * hist.sum(axis=1))


def test_sorted_blocks_by_feature_column_and_stability():
    feature = np.array([0.5, -1.0, 0.5, 2.0, 0.5, -1.0])
    parts = sorted_blocks(feature, 3)
    assert [p.tolist() for p in parts] == [[1, 5], [0, 2], [3, 4]]  # ties keep original order


def test_sorted_blocks_ties_keep_original_order_at_scale():
    parts = sorted_blocks(np.zeros(1000), 10)
    assert all(np.array_equal(p, np.arange(100 * i, 100 * (i + 1))) for i, p in enumerate(parts))
    labels = np.tile(np.arange(4), 250)  # class c sits at c, c+4, c+8, ...
    first = sorted_blocks(labels, 8)[0]
    assert np.array_equal(first, np.arange(0, 500, 4))


def test_sorted_blocks_rejects_too_many_clients():
    with pytest.raises(ValueError, match="n_clients=4 exceeds n_samples=3"):
        sorted_blocks([2, 1, 0], 4)


# --- sampled -----------------------------------------------------------------------------------


def test_sampled_many_clients_few_samples():
    parts = sampled(1437, 10_000, 32, seed=0)
    assert len(parts) == 10_000
    _assert_well_formed(parts)  # ascending without repeats = per_client distinct indices
    flat = np.concatenate(parts)
    assert all(len(p) == 32 for p in parts)
    assert flat.min() >= 0 and flat.max() < 1437
    assert np.bincount(flat).max() > 1  # clients overlap, by design


def test_sampled_deterministic_and_seed_dependent():
    a, b, c = sampled(100, 20, 10, 5), sampled(100, 20, 10, 5), sampled(100, 20, 10, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_sampled_whole_pool_and_too_many():
    assert all(np.array_equal(p, np.arange(5)) for p in sampled(5, 3, 5, 0))
    with pytest.raises(ValueError, match="per_client=6 exceeds n_samples=5"):
        sampled(5, 3, 6, 0)


# --- ClientIndex and label_histogram -----------------------------------------------------------


def test_client_index_round_trip(digit_labels):
    parts = dirichlet(digit_labels, 12, 0.3, 1)
    ci = ClientIndex.from_parts(parts)
    assert ci.index.dtype == np.int64 and ci.counts.dtype == np.int64
    assert ci.index.shape == (12, max(len(p) for p in parts))
    assert ci.counts.tolist() == [len(p) for p in parts]
    assert ci.n_clients == 12
    assert all(np.array_equal(x, y) for x, y in zip(ci.to_parts(), parts))
    assert np.all(ci.index[~ci.mask()] == 0)  # padding is 0
    assert np.array_equal(ci.index[ci.mask()], np.concatenate(parts))


def test_client_index_empty_part_and_validation():
    ci = ClientIndex.from_parts([np.array([3, 4]), np.array([], dtype=np.int64), [7]])
    assert ci.index.tolist() == [[3, 4], [0, 0], [7, 0]]
    assert ci.counts.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="parts is empty"):
        ClientIndex.from_parts([])
    with pytest.raises(ValueError, match="counts must lie in"):
        ClientIndex(np.zeros((2, 2), dtype=np.int64), np.array([1, 3]))
    with pytest.raises(ValueError, match="non-zero padding"):
        ClientIndex(np.ones((2, 2), dtype=np.int64), np.array([2, 1]))
    with pytest.raises(ValueError, match="part 1 has a negative index"):
        ClientIndex.from_parts([[0], [-2]])


def test_label_histogram_matches_manual_count(digit_labels):
    parts = iid(len(digit_labels), 9, 0)
    hist = label_histogram(digit_labels, parts, 10)
    assert hist.shape == (9, 10) and hist.dtype == np.int64
    for row, p in zip(hist, parts):
        assert np.array_equal(row, np.bincount(digit_labels[p], minlength=10))
    assert np.array_equal(hist.sum(axis=0), np.bincount(digit_labels))
    assert np.array_equal(label_histogram(digit_labels, ClientIndex.from_parts(parts), 10), hist)
    with pytest.raises(ValueError, match="outside \\[0, 5\\)"):
        label_histogram(digit_labels, parts, 5)


# --- partition() dispatch ----------------------------------------------------------------------


def test_partition_dispatch_matches_direct_calls(digit_labels):
    n = len(digit_labels)
    same = lambda a, b: len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert same(partition("iid", digit_labels, 8, 3), iid(n, 8, 3))
    assert same(
        partition("dirichlet", digit_labels, 8, 3, alpha=0.5, min_size=2),
        dirichlet(digit_labels, 8, 0.5, 3, min_size=2),
    )
    assert same(partition("sorted", digit_labels, 8, 3), sorted_blocks(digit_labels, 8))
    assert same(partition("sampled", digit_labels, 8, 3, per_client=5), sampled(n, 8, 5, 3))


def test_partition_errors(digit_labels):
    with pytest.raises(ValueError, match="unknown partition 'shards'.*iid, dirichlet, sorted, sampled"):
        partition("shards", digit_labels, 4, 0)
    with pytest.raises(TypeError, match="'dirichlet' needs parameter.*alpha"):
        partition("dirichlet", digit_labels, 4, 0)
    with pytest.raises(TypeError, match="'iid' got unexpected parameter.*alpha; accepts: none"):
        partition("iid", digit_labels, 4, 0, alpha=1.0)
    with pytest.raises(TypeError, match="unexpected parameter.*beta; accepts: alpha, min_size"):
        partition("dirichlet", digit_labels, 4, 0, alpha=1.0, beta=2)
