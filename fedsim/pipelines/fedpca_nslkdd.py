"""Federated PCA anomaly detection on NSL-KDD: data preparation, every method, one evaluation (the driver behind
``fedsim fedpca``).

``prepare(...)`` builds the clients' statistics from KDDTrain+ normal rows (the paper's non-IID split by default)
and the standardized test set(s): KDDTest+, KDDTest-21 or both (``test``). ``train_method(...)`` trains one
method (the iterative ones through ``engine.simulate``, stopping early where the method has a stopping rule);
``evaluate_method(...)`` scores it on one test set under one threshold protocol: the honest
``"train-quantile"`` by default (the threshold comes from normal training rows only).

Scalers (``SCALERS``): the methods that learn from the clients' blocks z-score each block with its own statistics
(the paper's pipeline); "exact-federated" uses the federated global scaler, pooled from the clients' counts, sums
and sums of squares; "centralized" z-scores all normal training rows in one place. The test rows are z-scored with
the centralized scaler (the paper), or the federated one (``test_scaler="federated"``). ``global_scaler``:
"blocks" pools the scaler over the split's blocks (the paper split leaves the n mod N normal rows with the largest
dst_bytes out: 3 rows for 20 clients); "all-normal" gives those rows to the last client (the one holding the
largest dst_bytes) for the global-scaler methods, so the scaler is the one fitted on every normal training row and
exact federated PCA equals centralized PCA. The rows matter, not only the scaler: with the scaler of all normal
rows but the blocks' rows, the top-15 subspace is 1.48 rad from centralized PCA's (measured; 0.40 rad with the
blocks' own scaler).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsim import anomaly
from fedsim.data import nslkdd as K
from fedsim.engine import simulate
from fedsim.fedpca import baselines
from fedsim.fedpca.decentralized import DecentralizedFedPG
from fedsim.fedpca.fedpg import FedPG, PCAFederation
from fedsim.fedpca.problem import PCAClients, check_k, objective, pooled_matrix, top_k_eigenspace
from fedsim.rng import Streams

METHODS = ("centralized", "exact-federated", "exact-federated-local", "projector-avg", "local-only", "fedpg",
           "fedpg-paper", "fedpe-paper", "fedpg-decentralized")
ITERATIVE = ("fedpg", "fedpg-paper", "fedpe-paper", "fedpg-decentralized")
PAPER_METHODS = ("fedpg-paper", "fedpe-paper")
# honest protocols first: the default is the first
PROTOCOLS = ("train-quantile", "q-statistic", "paper-minmax", "paper-quantile")
HONEST_PROTOCOLS = ("train-quantile", "q-statistic")
DEFAULT_PROTOCOL = "train-quantile"
# test-set name -> (load_nslkdd split, title)
TEST_SETS = {"test+": ("test", "KDDTest+"), "test21": ("test21", "KDDTest-21")}
TEST_CHOICES = ("test+", "test21", "both")
GLOBAL_SCALERS = ("blocks", "all-normal")
ROUNDS = 1000        # round cap of clean FedPG (stopping rule: TOL) and decentralized FedPG (no stopping rule)
PAPER_ROUNDS = 100   # the paper variants' rounds (the paper's)
TOL = 1e-6           # clean FedPG stops once its Davis-Kahan angle estimate (rad) is below this
CHUNK = 10           # rounds simulated between two checks of the stopping flag


def scaler_of(method: str, global_scaler: str = "blocks") -> str:
    """How the training rows of ``method`` are z-scored: "own" (each client), "global (blocks)" / "global
    (all normal)" (the federated global scaler) or "centralized"."""
    if method == "centralized":
        return "centralized"
    if method == "exact-federated":
        return "global (all normal)" if global_scaler == "all-normal" else "global (blocks)"
    return "own"


SCALER_NOTES = {
    "own": "each client z-scores its own rows (the paper's pipeline; their optimum is exact-federated-local)",
    "global (blocks)": "the federated global scaler, pooled from the clients' counts, sums and sums of squares "
                       "over the split's blocks",
    "global (all normal)": "the federated global scaler over every normal training row (the rows the split leaves "
                           "out join the last client)",
    "centralized": "z-scoring fitted on all normal training rows in one place",
}


@dataclass(frozen=True)
class TestSet:
    """One standardized test set: ``name`` ("test+" | "test21"), ``title`` (file name), rows ``X``, labels."""

    name: str
    title: str
    X: np.ndarray
    is_attack: np.ndarray
    category: np.ndarray

    __test__ = False   # not a pytest class

    def describe(self) -> str:
        n_attack = int(np.count_nonzero(self.is_attack))
        return f"{self.title} ({len(self.X):,} rows: {len(self.X) - n_attack:,} normal, {n_attack:,} attacks)"


@dataclass(frozen=True)
class NslKddData:
    """Everything the methods and the evaluation need."""

    blocks: list[np.ndarray]          # per-client normal rows, standardized by each client (paper)
    global_blocks: list[np.ndarray]   # the clients' rows standardized with the federated global scaler
    central_train: np.ndarray         # all normal training rows, centrally standardized (centralized PCA)
    tests: tuple[TestSet, ...]        # the test set(s), standardized with the test scaler
    train_normal: np.ndarray          # normal training rows standardized like the test rows (honest thresholds)
    feature_names: tuple[str, ...]
    global_scaler: str = "blocks"
    unassigned: int = 0               # normal training rows the split gives to no client (paper: n mod N)

    @property
    def clients(self) -> PCAClients:
        return PCAClients.from_blocks(self.blocks)

    def test(self, name: str | None = None) -> TestSet:
        """The test set called ``name`` (None: the first one prepared)."""
        if name is None:
            return self.tests[0]
        for t in self.tests:
            if t.name == name:
                return t
        raise ValueError(f"test set {name!r} was not prepared; prepared: {', '.join(t.name for t in self.tests)}")

    # the first test set, under the names of the single-test-set pipeline
    @property
    def X_test(self) -> np.ndarray:
        return self.tests[0].X

    @property
    def is_attack(self) -> np.ndarray:
        return self.tests[0].is_attack

    @property
    def category(self) -> np.ndarray:
        return self.tests[0].category


def split_normal_rows(dst_bytes: np.ndarray, n_clients: int, split: str, seed: int) -> list[np.ndarray]:
    """The clients' normal training rows (indices into ``dst_bytes``, the normal rows' dst_bytes column) under
    ``split``; a PartitionError when some client would get none. Dirichlet(0.5) over 10 dst_bytes quantile bins."""
    kwargs = {"alpha": 0.5, "labels": K.quantile_labels(dst_bytes, 10)} if split == "dirichlet" else {}
    return K.split_clients(len(dst_bytes), dst_bytes, n_clients, how=split, seed=seed, **kwargs)


def prepare(data_dir=None, n_clients: int = 20, split: str = "paper", features: str = "paper",
            test_scaler: str = "central", seed: int = 0, test: str = "test+",
            global_scaler: str = "blocks") -> NslKddData:
    """Load NSL-KDD and build the federated data set.

    split: "paper" (stable sort of the normal rows by dst_bytes, equal contiguous blocks; the n mod N rows with
    the largest dst_bytes are left out), "iid" or "dirichlet" (over dst_bytes quantile bins). test: "test+"
    (KDDTest+), "test21" (KDDTest-21) or "both". test_scaler: "central" (the paper: fit on all normal training
    rows) or "federated" (the global scaler below). global_scaler: "blocks" (pooled over the split's blocks) or
    "all-normal" (the rows the split leaves out join the last client for the global-scaler methods: the scaler
    and exact federated PCA then cover every normal training row).
    """
    if test_scaler not in ("central", "federated"):
        raise ValueError(f"test_scaler must be 'central' or 'federated', got {test_scaler!r}")
    if test not in TEST_CHOICES:
        raise ValueError(f"test must be one of {', '.join(TEST_CHOICES)}; got {test!r}")
    if global_scaler not in GLOBAL_SCALERS:
        raise ValueError(f"global_scaler must be one of {', '.join(GLOBAL_SCALERS)}; got {global_scaler!r}")
    names_wanted = list(TEST_SETS) if test == "both" else [test]
    train = K.load_nslkdd("train", data_dir)
    loaded = [(name, K.load_nslkdd(TEST_SETS[name][0], data_dir)) for name in names_wanted]
    vocab = K.category_vocabulary(train) if features == "onehot" else None
    X_train, names = K.features(train, features, vocab)
    normal = X_train[~train.is_attack]
    key = normal[:, names.index("dst_bytes")]
    parts = split_normal_rows(key, n_clients, split, seed)
    raw = [normal[p] for p in parts]
    left = np.setdiff1d(np.arange(len(normal)), np.concatenate(parts))
    global_raw = list(raw)
    if global_scaler == "all-normal" and len(left):
        global_raw[-1] = np.concatenate([raw[-1], normal[left]])
    blocks = [K.standardize(b, *K.fit_scaler(b)) for b in raw]
    fed_mean, fed_std = K.pooled_scaler([K.client_moments(b) for b in global_raw])
    central_mean, central_std = K.fit_scaler(normal)
    mean, std = (central_mean, central_std) if test_scaler == "central" else (fed_mean, fed_std)
    tests = tuple(TestSet(name, TEST_SETS[name][1], K.standardize(K.features(ds, features, vocab)[0], mean, std),
                          ds.is_attack, ds.category) for name, ds in loaded)
    return NslKddData(blocks, [K.standardize(b, fed_mean, fed_std) for b in global_raw],
                      K.standardize(normal, central_mean, central_std), tests, K.standardize(normal, mean, std),
                      tuple(names), global_scaler, len(left))


@dataclass
class MethodResult:
    """A trained method: its subspace(s), time and bytes.

    ``extra`` of the iterative methods: "angle_to_pooled_topk" (largest principal angle to the pooled top-k
    eigenspace of the clients' data, rad), "objective_gap", "rounds" (rounds that sent messages), "stopped" (by
    the stopping rule) and, with ``trace=True``, "curve": {"round", "angle", "objective_gap"} per round.
    """

    name: str
    Z: np.ndarray                     # [d, k], or [N, d, k] for local-only
    seconds: float
    bytes_sent: int
    orthonormal: bool = True
    extra: dict = field(default_factory=dict)


def default_rounds(name: str) -> int:
    """The round cap of an iterative method when none is given: ``PAPER_ROUNDS`` for the paper variants (the
    paper's), else ``ROUNDS``."""
    return PAPER_ROUNDS if name in PAPER_METHODS else ROUNDS


def _run(alg, fed: PCAFederation, rounds: int, trace: bool):
    """Simulate up to ``rounds`` rounds in chunks, ending early once the state says it stopped."""
    state, history, t = None, [], 0
    while t < rounds:
        end = min(rounds, t + CHUNK)
        res = simulate(alg, fed, end, state=state, start_round=t, history=history, eval_every=1 if trace else 0)
        state, history, t = res.state, res.history, end
        if bool(getattr(state, "stopped", False)):
            break
    return state, history


def train_method(name: str, data: NslKddData, k: int, *, rounds: int | None = None, seed: int = 0,
                 fedpg_kwargs: dict | None = None, topology=None, tol: float | None = None,
                 trace: bool = False) -> MethodResult:
    """Train one method of ``METHODS``.

    ``fedpg_kwargs``: {"clean": ..., "paper": ..., "decentralized": ...}, keyword arguments of the algorithms (clean
    FedPG: full participation unless "clean" sets ``client_fraction``, as ``fedsim fedpca --fraction``).
    ``rounds``: the round cap of an iterative method (None: ``default_rounds(name)``). ``tol``: clean FedPG's
    stopping rule (None: ``TOL``, unless ``fedpg_kwargs["clean"]`` sets it; 0: run every round). ``trace``: record
    the angle to the optimum and the objective gap every round (``extra["curve"]``).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    check_k(k, data.blocks[0].shape[1])
    start = time.perf_counter()
    clients = data.clients
    if name == "centralized":
        S = torch.as_tensor(data.central_train.T @ data.central_train / len(data.central_train))
        Z, bytes_sent = top_k_eigenspace(S, k)[0], 0
    elif name == "exact-federated":
        res = baselines.exact_federated_pca(PCAClients.from_blocks(data.global_blocks), k)
        Z, bytes_sent = res.Z, res.bytes_sent
    elif name == "exact-federated-local":  # the optimum FedPG targets: clients' own z-scored statistics
        res = baselines.exact_federated_pca(clients, k)
        Z, bytes_sent = res.Z, res.bytes_sent
    elif name == "projector-avg":
        res = baselines.projector_averaging(clients, k)
        Z, bytes_sent = res.Z, res.bytes_sent
    elif name == "local-only":
        Z, bytes_sent = baselines.local_only(clients, k).Z, 0
    else:
        kwargs = dict(fedpg_kwargs or {})
        if name == "fedpg-paper":
            alg = FedPG(k, variant="paper", **kwargs.get("paper", {}))
        elif name == "fedpe-paper":
            alg = FedPG(k, variant="paper", method="euclidean", **kwargs.get("paper", {}))
        elif name == "fedpg":
            alg = FedPG(k, **{"tol": TOL if tol is None else tol, "client_fraction": 1.0, **kwargs.get("clean", {})})
        else:
            alg = DecentralizedFedPG(k, **kwargs.get("decentralized", {}))
        ref = top_k_eigenspace(pooled_matrix(clients), k)[0]
        fed = PCAFederation(clients, Streams(seed), reference=ref, schedule=topology)
        state, history = _run(alg, fed, default_rounds(name) if rounds is None else rounds, trace)
        Z = alg.subspace(state) if name in ("fedpg", "fedpg-decentralized") else state.Z
        bytes_sent = sum(r.get("bytes_sent", 0) for r in history)
        seconds = time.perf_counter() - start
        used = max((r["round"] for r in history if r.get("participants", 0) > 0), default=0)
        final = alg.evaluate(state, fed)
        w = clients.n / clients.n.sum()
        best = float((w * objective(clients, ref)).sum())
        extra = {"angle_to_pooled_topk": final.get("angle_to_reference"), "objective_gap": final["objective"] - best,
                 "rounds": used, "stopped": bool(getattr(state, "stopped", False))}
        if trace:
            rows = [r for r in history if r["round"] <= used and "angle_to_reference" in r]
            extra["curve"] = {"round": [r["round"] for r in rows], "angle": [r["angle_to_reference"] for r in rows],
                              "objective_gap": [r["objective"] - best for r in rows]}
        return MethodResult(name, Z.numpy(), seconds, bytes_sent, orthonormal=name in ("fedpg", "fedpg-decentralized"),
                            extra=extra)
    return MethodResult(name, Z.numpy(), time.perf_counter() - start, bytes_sent)


def evaluate_method(res: MethodResult, data: NslKddData, protocol: str = DEFAULT_PROTOCOL, *, tau: float = 0.00025,
                    q: float = 0.5, alpha: float = 0.01, test: str | None = None) -> dict:
    """Scores, threshold and metrics of one method on one test set (``test``: a name of ``data.tests``, None: the
    first) under one threshold protocol (local-only: mean over clients, "auc_min" the worst client).

    Honest protocols ("train-quantile": the (1 - alpha) quantile of the normal training rows' residuals;
    "q-statistic": Jackson-Mudholkar at level alpha from the training covariance) use no test statistics; the
    paper's ("paper-minmax" with tau, "paper-quantile" with q) threshold the test scores themselves. The paper
    reconstructs with the raw server Z (``orthonormal=False`` for the paper variants). "threshold" is returned.

    "q-statistic" assumes that Z is orthonormal and spans the top-k eigenvectors of the normal training rows'
    covariance (the centralized scaler's): exact for centralized PCA (and exact-federated PCA with the all-normal
    global scaler), approximate for the other methods, most of all those that scale each client's rows on its own
    (their false-positive rate drifts from alpha); refused for
    a raw, non-orthonormal Z, whose residuals are on another scale (every normal row would be flagged).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "q-statistic" and not res.orthonormal:
        raise ValueError(f"protocol 'q-statistic' needs an orthonormal subspace; {res.name} reconstructs with its raw, "
                         "non-orthonormal Z (use 'train-quantile')")
    ts = data.test(test)
    Zs = res.Z if res.Z.ndim == 3 else res.Z[None]
    rows = []
    for Z in Zs:
        scores = anomaly.residual_scores(ts.X, Z, orthonormal=res.orthonormal)
        if protocol == "paper-minmax":
            thr = anomaly.paper_minmax_threshold(scores, tau)
        elif protocol == "paper-quantile":
            thr = anomaly.paper_quantile_threshold(scores, q)
        elif protocol == "train-quantile":
            train_scores = anomaly.residual_scores(data.train_normal, Z, orthonormal=res.orthonormal)
            thr = anomaly.quantile_threshold(train_scores, 1 - alpha)
        else:
            thr = anomaly.q_statistic_threshold(anomaly.covariance_eigenvalues(data.train_normal), Z.shape[1], alpha)
        row = anomaly.detection_metrics(scores, ts.is_attack, thr)
        row["auc"] = anomaly.auc(scores, ts.is_attack)
        row["threshold"] = float(thr)
        for cat, value in anomaly.category_auc(scores, ts.category).items():
            row[f"auc_{cat}"] = value
        rows.append(row)
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    if len(rows) > 1:
        out["auc_min"] = float(min(r["auc"] for r in rows))
    return out


def raw_subspace_methods(protocol: str, methods) -> list[str]:
    """The methods of ``methods`` that ``protocol`` cannot threshold: "q-statistic" needs an orthonormal Z, and the
    paper variants score with their raw one (``evaluate_method`` refuses them)."""
    return [m for m in methods if m in PAPER_METHODS] if protocol == "q-statistic" else []


def scores_on(res: MethodResult, data: NslKddData, test: str | None = None) -> np.ndarray | None:
    """A single-subspace method's residual scores on a test set (None for local-only's many subspaces)."""
    if res.Z.ndim != 2:
        return None
    return anomaly.residual_scores(data.test(test).X, res.Z, orthonormal=res.orthonormal)

