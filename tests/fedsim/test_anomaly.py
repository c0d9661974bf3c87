import numpy as np
import pytest
from scipy.stats import chi2

from fedsim import anomaly as an


def _orthonormal(d, k, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, k)))
    return q


# --------------------------------------------------------------------------- residual scores


def test_residual_scores_hand_example_2d():
    Z = np.array([[1.0], [1.0]]) / np.sqrt(2.0)  # the diagonal line
    X = np.array([[3.0, 1.0], [1.0, -1.0], [2.0, 2.0], [0.0, 4.0]])
    # projections: (2,2), (0,0), (2,2), (2,2) -> residuals (1,-1), (1,-1), (0,0), (-2,2)
    e = an.residual_scores(X, Z)
    assert e.dtype == np.float64 and e.shape == (4,)
    np.testing.assert_allclose(e, [2.0, 2.0, 0.0, 8.0], atol=1e-12)


def test_residual_scores_equals_norm_difference():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((500, 34)).astype(np.float32)
    Z = _orthonormal(34, 20)
    e = an.residual_scores(X, Z)
    Xd = X.astype(np.float64)
    want = (Xd**2).sum(1) - ((Xd @ Z) ** 2).sum(1)
    assert e.dtype == np.float64
    np.testing.assert_allclose(e, want, rtol=1e-9, atol=1e-9)
    assert np.all(e >= 0)
    # k = d: everything is reconstructed; k = 0: the score is ||x||^2
    np.testing.assert_allclose(an.residual_scores(Xd[:5], _orthonormal(34, 34)), 0.0, atol=1e-10)
    np.testing.assert_allclose(an.residual_scores(Xd[:5], np.zeros((34, 0))), (Xd[:5] ** 2).sum(1))


# --------------------------------------------------------------------------- thresholds


def test_paper_minmax_threshold_reproduces_normalized_rule_exactly():
    rng = np.random.default_rng(2)
    e = rng.exponential(size=5000) * 1e3 + 7.0
    ep = (e - e.min()) / (e.max() - e.min())
    taus = [0.0, 0.00025, 0.00019, 0.3, 1.0, *rng.uniform(size=20), *ep[:300]]  # ep: ties at the boundary
    plain = [np.array_equal(e > e.min() + tau * (e.max() - e.min()), ep > tau) for tau in taus]
    assert not all(plain)  # the naive formula disagrees with e' > tau at some boundary taus
    for tau in taus:
        t = an.paper_minmax_threshold(e, tau)
        np.testing.assert_array_equal(e > t, ep > tau, err_msg=f"tau={tau}")
        assert t == pytest.approx(e.min() + tau * (e.max() - e.min()), rel=1e-12)
    assert an.paper_minmax_threshold(e, 0.0) == e.min()


def test_paper_quantile_threshold_flags_half():
    e = np.random.default_rng(3).standard_normal(1000) ** 2
    t = an.paper_quantile_threshold(e, 0.5)
    assert t == pytest.approx(np.median(e))
    assert np.count_nonzero(e > t) == 500


def test_q_statistic_matches_chi2_for_equal_residual_eigenvalues():
    # residual = lambda * chi2_m exactly when the m residual eigenvalues are equal (h0 = 1/3,
    # J-M reduces to the Wilson-Hilferty approximation, accurate to well under 1%)
    ev = np.array([9.0, 5.0, 4.0] + [0.7] * 7)
    for alpha in (0.05, 0.01):
        want = 0.7 * chi2.ppf(1 - alpha, 7)
        assert an.q_statistic_threshold(ev, 3, alpha) == pytest.approx(want, rel=5e-3)


@pytest.fixture(scope="module")
def gaussian_normal_data():
    """d=10 Gaussian with a known covariance; train/fresh normal sets and a k=3 PCA subspace."""
    d, k, n = 10, 3, 200_000
    rng = np.random.default_rng(4)
    lam = np.array([10.0, 8.0, 6.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.7, 0.5])
    V = _orthonormal(d, d, seed=5)

    def draw(m):
        return (rng.standard_normal((m, d)) * np.sqrt(lam)) @ V.T

    X_train, X_fresh = draw(n), draw(n)
    ev = an.covariance_eigenvalues(X_train)
    _, vecs = np.linalg.eigh(X_train.T @ X_train / n)
    Z = vecs[:, ::-1][:, :k]
    return X_train, X_fresh, Z, ev, k


def test_covariance_eigenvalues_scale_and_order(gaussian_normal_data):
    X_train, _, _, ev, _ = gaussian_normal_data
    assert np.all(np.diff(ev) <= 0)
    np.testing.assert_allclose(ev, [10.0, 8.0, 6.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.7, 0.5], rtol=0.03)


def test_q_statistic_false_alarm_rate(gaussian_normal_data):
    X_train, X_fresh, Z, ev, k = gaussian_normal_data
    fresh = an.residual_scores(X_fresh, Z)
    q05 = an.q_statistic_threshold(ev, k, 0.05)
    assert abs(np.mean(fresh > q05) - 0.05) <= 0.01
    q01 = an.q_statistic_threshold(ev, k, 0.01)
    assert q01 > q05
    assert abs(np.mean(fresh > q01) - 0.01) <= 0.003
    # the expected score is the residual eigenvalue sum (the scale check)
    assert np.mean(fresh) == pytest.approx(ev[k:].sum(), rel=0.02)


def test_train_quantile_false_positive_rate(gaussian_normal_data):
    X_train, X_fresh, Z, _, _ = gaussian_normal_data
    t = an.threshold("train-quantile", train_scores=an.residual_scores(X_train, Z), q=0.95)
    fresh = an.residual_scores(X_fresh, Z)
    m = an.detection_metrics(fresh, np.zeros(fresh.size, bool), t)
    assert abs(m["fpr"] - 5.0) <= 1.0
    assert m["tp"] == m["fn"] == 0 and m["fp"] + m["tn"] == fresh.size


def test_threshold_dispatcher_matches_direct_calls():
    rng = np.random.default_rng(6)
    tr, te = rng.exponential(size=300), rng.exponential(size=400)
    ev = np.sort(rng.uniform(0.1, 5, 8))[::-1]
    assert an.threshold("paper-minmax", test_scores=te, tau=0.1) == an.paper_minmax_threshold(te, 0.1)
    assert an.threshold("paper-quantile", test_scores=te, q=0.5) == an.paper_quantile_threshold(te, 0.5)
    assert an.threshold("train-quantile", train_scores=tr, q=0.9) == an.quantile_threshold(tr, 0.9)
    assert an.threshold("q-statistic", eigenvalues=ev, k=3, alpha=0.05) == an.q_statistic_threshold(ev, 3, 0.05)


# --------------------------------------------------------------------------- metrics


def test_detection_metrics_hand_case():
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    y = np.array([1, 0, 0, 1, 0, 1, 1, 1])
    m = an.detection_metrics(s, y, 0.35)  # predicted attack: indices 3..7
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (4, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(75.0)
    assert m["precision"] == pytest.approx(80.0)
    assert m["recall"] == pytest.approx(80.0)
    assert m["f1"] == pytest.approx(80.0)
    assert m["fpr"] == pytest.approx(100.0 / 3.0)
    # a score equal to the threshold is predicted normal (strict >); bool labels work too
    m = an.detection_metrics(s, y.astype(bool), 0.4)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 2, 2)
    assert m["precision"] == pytest.approx(75.0) and m["recall"] == pytest.approx(60.0)
    assert m["f1"] == pytest.approx(2 * 75 * 60 / 135)


def _pairwise_auc(s, y):
    pos, neg = s[y], s[~y]
    diff = pos[:, None] - neg[None, :]
    return 100.0 * (np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def test_auc_matches_pairwise_bruteforce_with_ties():
    rng = np.random.default_rng(7)
    y = rng.uniform(size=400) < 0.4
    s = np.round(rng.standard_normal(400) + 0.8 * y, 1)  # rounding creates ties
    assert len(np.unique(s)) < 400
    assert an.auc(s, y) == pytest.approx(_pairwise_auc(s, y), abs=1e-9)
    assert an.auc(s, y.astype(int)) == pytest.approx(_pairwise_auc(s, y), abs=1e-9)


def test_category_auc_uses_normal_plus_that_category_only():
    rng = np.random.default_rng(8)
    n = 900
    cats = rng.choice(np.array(["normal", "DoS", "Probe", "R2L"]), size=n, p=[0.4, 0.3, 0.2, 0.1])
    shift = {"normal": 0.0, "DoS": 2.0, "Probe": 1.0, "R2L": 0.2}
    s = rng.standard_normal(n) + np.array([shift[c] for c in cats])
    got = an.category_auc(s, cats)
    assert set(got) == {"DoS", "Probe", "R2L"}
    for c, v in got.items():
        mask = (cats == "normal") | (cats == c)
        assert v == pytest.approx(an.auc(s[mask], cats[mask] == c))
        assert v == pytest.approx(_pairwise_auc(s[mask], cats[mask] == c))
        # not the same as "this category vs all other rows" (other attacks would count as negatives)
        assert abs(v - an.auc(s, cats == c)) > 0.5
    assert got["DoS"] > got["Probe"] > got["R2L"]


def test_roc_points_area_equals_auc():
    rng = np.random.default_rng(9)
    y = rng.uniform(size=300) < 0.5
    s = rng.standard_normal(300) + y
    fpr, tpr = an.roc_points(s, y)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert 100 * area == pytest.approx(an.auc(s, y))


def test_evaluate_subspace_consistent_with_parts(gaussian_normal_data):
    X_train, X_fresh, Z, ev, k = gaussian_normal_data
    rng = np.random.default_rng(10)
    normal = X_fresh[:2000]
    resid_dir = np.linalg.qr(np.eye(10) - Z @ Z.T)[0][:, :7] @ rng.standard_normal(7)
    attack = X_fresh[2000:3000] + 8.0 * resid_dir / np.linalg.norm(resid_dir)
    X_test = np.vstack([normal, attack])
    y = np.r_[np.zeros(2000, bool), np.ones(1000, bool)]
    cats = np.r_[["normal"] * 2000, ["DoS"] * 500, ["Probe"] * 500]
    scores = an.residual_scores(X_test, Z)

    out = an.evaluate_subspace(Z, X_test, y, cats, protocol="q-statistic", X_train=X_train[:20000], alpha=0.05)
    assert out["protocol"] == "q-statistic"
    assert out["threshold"] == pytest.approx(
        an.q_statistic_threshold(an.covariance_eigenvalues(X_train[:20000]), k, 0.05))
    for key, v in an.detection_metrics(scores, y, out["threshold"]).items():
        assert out[key] == v
    assert out["auc"] == an.auc(scores, y)
    assert out["category_auc"] == an.category_auc(scores, cats)
    assert 3.0 < out["fpr"] < 7.0 and out["auc"] > 90

    out2 = an.evaluate_subspace(Z, X_test, y, None, protocol="train-quantile", X_train=X_train[:20000], q=0.95)
    assert out2["threshold"] == an.quantile_threshold(an.residual_scores(X_train[:20000], Z), 0.95)
    assert out2["category_auc"] == {}
    out3 = an.evaluate_subspace(Z, X_test, y, cats, protocol="paper-minmax", tau=0.00025)
    assert out3["threshold"] == an.paper_minmax_threshold(scores, 0.00025)
    out4 = an.evaluate_subspace(Z, X_test, y, cats, protocol="q-statistic", eigenvalues=ev, alpha=0.05)
    assert out4["threshold"] == an.q_statistic_threshold(ev, k, 0.05)


# --------------------------------------------------------------------------- errors


def test_errors_name_the_problem():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((5, 4))
    Z = _orthonormal(4, 2)
    with pytest.raises(ValueError, match="orthonormal"):
        an.residual_scores(X, 2.0 * Z)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(5, 4\).*\(3, 2\)"):
        an.residual_scores(X, _orthonormal(3, 2))
    with pytest.raises(ValueError, match="k = 5 > d = 4"):
        an.residual_scores(X, rng.standard_normal((4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        an.residual_scores(np.where(X > 1, np.nan, X), Z)
    bad = np.array([0.1, np.nan, 0.3, 0.4])
    with pytest.raises(ValueError, match="NaN"):
        an.auc(bad, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        an.detection_metrics(bad, [0, 1, 0, 1], 0.2)
    with pytest.raises(ValueError, match="NaN"):
        an.quantile_threshold(bad, 0.9)
    with pytest.raises(ValueError, match="not binary"):
        an.auc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="3 entries but scores has 4"):
        an.detection_metrics([0.1, 0.2, 0.3, 0.4], [0, 1, 1], 0.2)
    with pytest.raises(ValueError, match="no attack samples"):
        an.auc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match=r"unknown threshold protocol 'paper'.*paper-minmax.*q-statistic"):
        an.threshold("paper", test_scores=[1.0, 2.0], tau=0.1)
    with pytest.raises(ValueError, match="unknown threshold protocol"):
        an.evaluate_subspace(Z, X, np.r_[0, 1, 0, 1, 0], None, protocol="median")
    with pytest.raises(ValueError, match="missing argument.*tau"):
        an.threshold("paper-minmax", test_scores=[1.0, 2.0])
    with pytest.raises(ValueError, match="missing argument.*k"):
        an.threshold("q-statistic", eigenvalues=[3.0, 2.0, 1.0], alpha=0.05)
    with pytest.raises(ValueError, match="missing argument.*X_train"):
        an.evaluate_subspace(Z, X, np.r_[0, 1, 0, 1, 0], None, protocol="train-quantile", q=0.95)
    with pytest.raises(ValueError, match="does not use.*tau"):
        an.threshold("paper-quantile", test_scores=[1.0, 2.0], q=0.5, tau=0.1)
    with pytest.raises(ValueError, match="no residual space"):
        an.q_statistic_threshold([3.0, 2.0, 1.0], 3, 0.05)
    with pytest.raises(ValueError, match="sorted descending"):
        an.q_statistic_threshold([1.0, 2.0, 3.0], 1, 0.05)
    with pytest.raises(ValueError, match="h0 = .* <= 0"):
        an.q_statistic_threshold([1.0] + [0.01] * 100, 0, 0.05)
    with pytest.raises(ValueError, match="all zero"):
        an.q_statistic_threshold([3.0, 0.0, 0.0], 1, 0.05)
    with pytest.raises(ValueError, match="all equal"):
        an.paper_minmax_threshold([2.0, 2.0, 2.0], 0.1)
    with pytest.raises(ValueError, match=r"tau must be in \[0, 1\]"):
        an.paper_minmax_threshold([1.0, 2.0], 1.5)
    with pytest.raises(ValueError, match="normal label 'normal'"):
        an.category_auc([0.1, 0.2], ["DoS", "Probe"])
