"""Subspace anomaly detection: residual scores, threshold protocols and detection metrics.

A k-dim subspace, given as a d x k matrix ``Z`` with orthonormal columns, is learned on normal
traffic. A sample's anomaly score is its squared residual ``e(x) = ||x - Z Z^T x||^2``, with no
re-centering (``x`` is already standardized). The positive class is *attack*: a sample is
predicted an attack when ``e(x) > threshold``.

Threshold protocols (all return a threshold on the raw score scale):

* ``"paper-minmax"`` / ``"paper-quantile"``: the FedPCA paper's protocols. They use statistics of
  the TEST scores (min/max or a quantile), so they leak test information; they are kept only to
  reproduce the paper's numbers.
* ``"train-quantile"`` / ``"q-statistic"``: honest protocols whose threshold comes from normal
  TRAINING data only (a quantile of training residuals, or the Jackson-Mudholkar Q statistic
  computed from the training covariance eigenvalues).

Rates in :func:`detection_metrics`, :func:`auc` and :func:`category_auc` are in percent, as in the
paper's tables (83.55 means 83.55%). :func:`roc_points` returns fractions, for plotting.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "PROTOCOLS",
    "residual_scores",
    "covariance_eigenvalues",
    "paper_minmax_threshold",
    "paper_quantile_threshold",
    "quantile_threshold",
    "q_statistic_threshold",
    "threshold",
    "detection_metrics",
    "auc",
    "category_auc",
    "roc_points",
    "evaluate_subspace",
]

ORTHONORMAL_TOL = 1e-6

# protocol name -> arguments it needs (in the order of the dispatcher's keywords)
PROTOCOLS = {
    "paper-minmax": ("test_scores", "tau"),
    "paper-quantile": ("test_scores", "q"),
    "train-quantile": ("train_scores", "q"),
    "q-statistic": ("eigenvalues", "k", "alpha"),
}


# --------------------------------------------------------------------------- validation helpers


def _matrix(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def _scores(s, name: str = "scores") -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {s.shape}")
    if s.size == 0:
        raise ValueError(f"{name} is empty")
    n_bad = int(np.count_nonzero(~np.isfinite(s)))
    if n_bad:
        kind = "NaN" if np.isnan(s).any() else "inf"
        raise ValueError(f"{name} contain {n_bad} non-finite values ({kind}); cannot threshold or rank")
    return s


def _binary(labels, n: int, name: str = "is_attack") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but scores has {n}")
    if y.dtype == bool:
        return y
    if y.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be binary (bool or 0/1), got dtype {y.dtype}")
    values = np.unique(y)
    if not np.all(np.isin(values, (0, 1))):
        shown = values[:10].tolist()
        raise ValueError(f"{name} must be binary (bool or 0/1); labels not binary, found values {shown}")
    return y == 1


def _both_classes(y: np.ndarray, what: str = "AUC") -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        cls = "attack" if n_pos == 0 else "normal"
        raise ValueError(f"{what} needs both classes, but there are no {cls} samples")


def _fraction(x, name: str, lo_open: bool = False, hi_open: bool = False) -> float:
    x = float(x)
    lo_ok = x > 0 if lo_open else x >= 0
    hi_ok = x < 1 if hi_open else x <= 1
    if not (math.isfinite(x) and lo_ok and hi_ok):
        lo, hi = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {x}")
    return x


# --------------------------------------------------------------------------- scores


def residual_scores(X, Z, orthonormal: bool = True) -> np.ndarray:
    """Squared residuals ``e_i = ||x_i - Z Z^T x_i||^2`` (float64, shape [n]) of the rows of X (n x d).

    ``Z`` (d x k) must have orthonormal columns (``|Z^T Z - I| <= 1e-6`` entrywise), unless
    ``orthonormal=False``: the paper protocol reconstructs with the raw, non-orthonormal server Z.
    """
    X = _matrix(X, "X")
    Z = _matrix(Z, "Z")
    d, k = Z.shape
    if X.shape[1] != d:
        raise ValueError(f"shape mismatch: X is {X.shape} (d={X.shape[1]}) but Z is {Z.shape} (d={d})")
    if k > d:
        raise ValueError(f"Z is {Z.shape}: k = {k} > d = {d}, columns cannot be orthonormal")
    dev = float(np.max(np.abs(Z.T @ Z - np.eye(k)))) if k else 0.0
    if orthonormal and dev > ORTHONORMAL_TOL:
        raise ValueError(
            f"Z ({d} x {k}) does not have orthonormal columns: max |Z^T Z - I| = {dev:.3g} > {ORTHONORMAL_TOL:g}"
        )
    R = X - (X @ Z) @ Z.T
    return np.einsum("ij,ij->i", R, R)


def covariance_eigenvalues(X) -> np.ndarray:
    """Eigenvalues of ``X^T X / n`` (uncentered, as the scores are), sorted descending, length d.

    This is the scale that matches :func:`residual_scores`: the expected score of a sample under
    the top-k eigenspace is the sum of the remaining eigenvalues. Round-off negatives are set to 0.
    """
    X = _matrix(X, "X")
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    ev = np.linalg.eigvalsh(X.T @ X / X.shape[0])[::-1]
    return np.clip(ev, 0.0, None)


# --------------------------------------------------------------------------- thresholds


def paper_minmax_threshold(test_scores, tau: float) -> float:
    """Paper protocol (uses TEST statistics): raw threshold equivalent to ``e' > tau``.

    The paper normalizes ``e' = (e - min) / (max - min)`` over the test set and predicts attack
    when ``e' > tau``. Returns ``min + tau (max - min)``; if floating-point rounding makes that
    disagree with ``e' > tau`` on some test score, it returns the largest test score with
    ``e' <= tau`` instead, so ``test_scores > t`` equals ``e' > tau`` exactly.
    """
    e = _scores(test_scores, "test_scores")
    tau = _fraction(tau, "tau")
    lo, hi = float(e.min()), float(e.max())
    if hi == lo:
        raise ValueError(f"test_scores are all equal ({lo}); min-max normalization is undefined")
    t = lo + tau * (hi - lo)
    flagged = (e - lo) / (hi - lo) > tau
    if np.array_equal(e > t, flagged):
        return float(t)
    return float(e[~flagged].max())  # e' = 0 at the minimum, so this set is never empty


def paper_quantile_threshold(test_scores, q: float) -> float:
    """Paper protocol (uses TEST statistics): the q-quantile of the test scores (paper: q = 0.5)."""
    return float(np.quantile(_scores(test_scores, "test_scores"), _fraction(q, "q")))


def quantile_threshold(train_scores, q: float) -> float:
    """Honest protocol: the q-quantile of normal TRAINING scores (e.g. q = 0.95 -> ~5% FPR)."""
    return float(np.quantile(_scores(train_scores, "train_scores"), _fraction(q, "q")))


def q_statistic_threshold(eigenvalues, k: int, alpha: float) -> float:
    """Honest protocol: Jackson-Mudholkar (1979) upper control limit Q_alpha of the squared residual.

    ``eigenvalues``: all d eigenvalues of the training second-moment matrix ``X^T X / n``, sorted
    descending (see :func:`covariance_eigenvalues`): the scores are per-sample sums of squares, so
    the eigenvalues must be on that scale (not of ``X^T X``, not of another scaling). The residual
    eigenvalues are those with index >= k. With ``theta_i = sum_{j>=k} lambda_j^i`` and
    ``h0 = 1 - 2 theta1 theta3 / (3 theta2^2)``::

        Q = theta1 [c_alpha sqrt(2 theta2 h0^2) / theta1 + 1 + theta2 h0 (h0 - 1) / theta1^2]^(1/h0)

    with ``c_alpha = Phi^{-1}(1 - alpha)``. Assumes Gaussian normal data and that Z spans the top-k
    eigenvectors of that matrix; then about a fraction alpha of normal samples exceed Q.
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    if ev.ndim != 1 or ev.size == 0:
        raise ValueError(f"eigenvalues must be a non-empty 1-D array, got shape {ev.shape}")
    if not np.all(np.isfinite(ev)):
        raise ValueError("eigenvalues contain NaN or inf values")
    d = ev.size
    scale = float(np.max(np.abs(ev)))
    if np.any(np.diff(ev) > 1e-12 * scale):
        raise ValueError("eigenvalues must be sorted descending (np.linalg.eigvalsh returns ascending: reverse it)")
    if ev.min() < -1e-10 * scale:
        raise ValueError(f"eigenvalues must be >= 0 (covariance eigenvalues), got min {ev.min():.3g}")
    if isinstance(k, bool) or int(k) != k:
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k >= d:
        raise ValueError(
            f"k = {k} >= d = {d}: there is no residual space (no eigenvalues with index >= k), "
            "the Q statistic is undefined"
        )
    alpha = _fraction(alpha, "alpha", lo_open=True, hi_open=True)
    rest = np.clip(ev[k:], 0.0, None)
    t1, t2, t3 = (float(np.sum(rest**i)) for i in (1, 2, 3))
    if t1 <= 0.0:
        raise ValueError(f"the residual eigenvalues (index >= k = {k}) are all zero; the Q statistic is undefined")
    h0 = 1.0 - 2.0 * t1 * t3 / (3.0 * t2**2)
    if h0 <= 0.0:
        raise ValueError(
            f"Jackson-Mudholkar h0 = {h0:.3g} <= 0 (residual spectrum too skewed); the approximation does not apply"
        )
    c = float(norm.ppf(1.0 - alpha))
    base = c * math.sqrt(2.0 * t2 * h0**2) / t1 + 1.0 + t2 * h0 * (h0 - 1.0) / t1**2
    if base <= 0.0:
        raise ValueError(f"Jackson-Mudholkar bracket is {base:.3g} <= 0 for alpha = {alpha}; Q is undefined")
    return float(t1 * base ** (1.0 / h0))


def threshold(
    protocol: str,
    *,
    train_scores=None,
    test_scores=None,
    eigenvalues=None,
    k=None,
    tau=None,
    q=None,
    alpha=None,
) -> float:
    """Threshold on the raw score scale for a named protocol (see ``PROTOCOLS`` for what each needs).

    "paper-minmax" (test_scores, tau), "paper-quantile" (test_scores, q), "train-quantile"
    (train_scores, q), "q-statistic" (eigenvalues, k, alpha). Missing or unused arguments are errors.
    """
    given = dict(train_scores=train_scores, test_scores=test_scores, eigenvalues=eigenvalues, k=k, tau=tau, q=q,
                 alpha=alpha)
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown threshold protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
    needed = PROTOCOLS[protocol]
    missing = [a for a in needed if given[a] is None]
    if missing:
        raise ValueError(f"protocol {protocol!r} needs {', '.join(needed)}; missing argument(s): {', '.join(missing)}")
    unused = [a for a, v in given.items() if v is not None and a not in needed]
    if unused:
        raise ValueError(f"protocol {protocol!r} does not use argument(s): {', '.join(unused)} (it needs "
                         f"{', '.join(needed)})")
    if protocol == "paper-minmax":
        return paper_minmax_threshold(test_scores, tau)
    if protocol == "paper-quantile":
        return paper_quantile_threshold(test_scores, q)
    if protocol == "train-quantile":
        return quantile_threshold(train_scores, q)
    return q_statistic_threshold(eigenvalues, k, alpha)


# --------------------------------------------------------------------------- metrics


def _pct(num: int, den: int) -> float:
    return 100.0 * num / den if den else 0.0


def detection_metrics(scores, is_attack, threshold: float) -> dict:
    """Confusion counts and rates (percent) of the prediction ``scores > threshold`` (attack = positive).

    Keys: tp, fp, tn, fn (ints); accuracy, precision, recall, f1, fpr (fpr = FP / normals).
    A rate whose denominator is zero is reported as 0.0 (scikit-learn's ``zero_division=0``).
    """
    s = _scores(scores)
    y = _binary(is_attack, s.size)
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be finite, got {t}")
    pred = s > t
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    tn = int(np.count_nonzero(~pred & ~y))
    fn = int(np.count_nonzero(~pred & y))
    return {
        "accuracy": _pct(tp + tn, s.size),
        "precision": _pct(tp, tp + fp),
        "recall": _pct(tp, tp + fn),
        "f1": _pct(2 * tp, 2 * tp + fp + fn),
        "fpr": _pct(fp, fp + tn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def auc(scores, is_attack) -> float:
    """ROC-AUC (percent) of the scores for attack vs normal; threshold-free."""
    s = _scores(scores)
    y = _binary(is_attack, s.size)
    _both_classes(y)
    return 100.0 * float(roc_auc_score(y, s))


def category_auc(scores, categories, normal_label="normal") -> dict:
    """AUC (percent) of each non-normal category against the normal rows only.

    For every category present other than ``normal_label`` (sorted), the AUC is computed on the
    normal rows plus that category's rows; other attack categories are left out.
    """
    s = _scores(scores)
    cats = np.asarray(categories)
    if cats.ndim != 1 or cats.shape[0] != s.size:
        raise ValueError(f"categories must be 1-D with {s.size} entries (one per score), got shape {cats.shape}")
    normal = cats == normal_label
    if not normal.any():
        raise ValueError(f"no rows with the normal label {normal_label!r} in categories")
    out = {}
    for c in sorted(set(cats[~normal].tolist()), key=str):
        mask = normal | (cats == c)
        out[c] = auc(s[mask], cats[mask] == c)
    return out


def roc_points(scores, is_attack) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` as fractions in [0, 1] (scikit-learn's ``roc_curve``), for plotting."""
    s = _scores(scores)
    y = _binary(is_attack, s.size)
    _both_classes(y, "ROC curve")
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def evaluate_subspace(
    Z,
    X_test,
    is_attack,
    categories,
    *,
    protocol: str,
    X_train=None,
    eigenvalues=None,
    tau=None,
    q=None,
    alpha=None,
) -> dict:
    """Score X_test against subspace Z and return metrics, AUC, per-category AUC and the threshold.

    ``X_train`` (normal training rows, same scaling) feeds "train-quantile" (its residual scores)
    and "q-statistic" (its ``X^T X / n`` eigenvalues, unless ``eigenvalues`` is given; k = Z's
    column count). ``categories`` may be None to skip per-category AUC. Returns the
    :func:`detection_metrics` keys plus "auc", "category_auc", "threshold", "protocol".
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown threshold protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
    Z = _matrix(Z, "Z")
    test_scores = residual_scores(X_test, Z)
    kw = dict(tau=tau, q=q, alpha=alpha)
    if protocol.startswith("paper-"):
        if X_train is not None or eigenvalues is not None:
            raise ValueError(f"protocol {protocol!r} uses test statistics only; X_train/eigenvalues are not used")
        kw["test_scores"] = test_scores
    elif protocol == "train-quantile":
        if X_train is None:
            raise ValueError("protocol 'train-quantile' needs X_train (normal training rows); missing argument: X_train")
        if eigenvalues is not None:
            raise ValueError("protocol 'train-quantile' does not use eigenvalues")
        kw["train_scores"] = residual_scores(X_train, Z)
    else:  # q-statistic
        if eigenvalues is None and X_train is None:
            raise ValueError("protocol 'q-statistic' needs eigenvalues or X_train; missing argument: eigenvalues")
        if eigenvalues is not None and X_train is not None:
            raise ValueError("protocol 'q-statistic': give either eigenvalues or X_train, not both")
        if eigenvalues is None:
            eigenvalues = covariance_eigenvalues(X_train)
        if np.ndim(eigenvalues) != 1 or len(eigenvalues) != Z.shape[0]:
            raise ValueError(f"eigenvalues have shape {np.shape(eigenvalues)} but Z is {Z.shape}: need d = {Z.shape[0]}")
        kw.update(eigenvalues=eigenvalues, k=Z.shape[1])
    t = threshold(protocol, **kw)
    out = detection_metrics(test_scores, is_attack, t)
    out["auc"] = auc(test_scores, is_attack)
    out["category_auc"] = {} if categories is None else category_auc(test_scores, categories)
    out["threshold"] = t
    out["protocol"] = protocol
    return out
