"""Federated PCA anomaly detection on NSL-KDD: data preparation, every method, one evaluation.

``prepare(...)`` builds the clients' statistics from KDDTrain+ normal rows (the paper's non-IID split by
default) and the standardized KDDTest+; ``run_methods(...)`` trains the requested methods and evaluates them
all with the same scoring and threshold protocol, returning one row per method (AUCs, detection metrics,
time, bytes sent).
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
from fedsim.fedpca.problem import PCAClients, check_k, pooled_matrix, top_k_eigenspace
from fedsim.rng import Streams

METHODS = ("centralized", "exact-federated", "exact-federated-local", "projector-avg", "local-only", "fedpg",
           "fedpg-paper", "fedpe-paper", "fedpg-decentralized")
PROTOCOLS = ("paper-minmax", "paper-quantile", "train-quantile", "q-statistic")


@dataclass(frozen=True)
class NslKddData:
    """Everything the methods and the evaluation need."""

    blocks: list[np.ndarray]          # per-client normal rows, standardized by each client (paper)
    global_blocks: list[np.ndarray]   # the same rows standardized with the federated global scaler
    central_train: np.ndarray         # all normal training rows, centrally standardized (centralized PCA)
    X_test: np.ndarray                # KDDTest+, standardized with the test scaler
    is_attack: np.ndarray
    category: np.ndarray
    train_normal: np.ndarray          # normal training rows standardized like X_test (honest thresholds)
    feature_names: tuple[str, ...]

    @property
    def clients(self) -> PCAClients:
        return PCAClients.from_blocks(self.blocks)


def prepare(data_dir=None, n_clients: int = 20, split: str = "paper", features: str = "paper",
            test_scaler: str = "central", seed: int = 0) -> NslKddData:
    """Load NSL-KDD and build the federated data set.

    split: "paper" (stable sort of the normal rows by dst_bytes, equal contiguous blocks), "iid" or
    "dirichlet" (over dst_bytes quantile bins). test_scaler: "central" (the paper: fit on all normal
    training rows) or "federated" (the same statistics aggregated from the clients' counts, sums and sums of
    squares; differs only by the rows the split leaves unused).
    """
    if test_scaler not in ("central", "federated"):
        raise ValueError(f"test_scaler must be 'central' or 'federated', got {test_scaler!r}")
    train, test = K.load_nslkdd("train", data_dir), K.load_nslkdd("test", data_dir)
    vocab = K.category_vocabulary(train) if features == "onehot" else None
    X_train, names = K.features(train, features, vocab)
    X_test, _ = K.features(test, features, vocab)
    normal = X_train[~train.is_attack]
    key = normal[:, names.index("dst_bytes")]
    kwargs = {"alpha": 0.5, "labels": K.quantile_labels(key, 10)} if split == "dirichlet" else {}
    parts = K.split_clients(len(normal), key, n_clients, how=split, seed=seed, **kwargs)
    raw = [normal[p] for p in parts]
    blocks = [K.standardize(b, *K.fit_scaler(b)) for b in raw]
    fed_mean, fed_std = K.pooled_scaler([K.client_moments(b) for b in raw])
    central_mean, central_std = K.fit_scaler(normal)
    mean, std = (central_mean, central_std) if test_scaler == "central" else (fed_mean, fed_std)
    return NslKddData(blocks, [K.standardize(b, fed_mean, fed_std) for b in raw],
                      K.standardize(normal, central_mean, central_std), K.standardize(X_test, mean, std),
                      test.is_attack, test.category, K.standardize(normal, mean, std), tuple(names))


@dataclass
class MethodResult:
    """A trained method: its subspace(s), time and bytes."""

    name: str
    Z: np.ndarray                     # [d, k], or [N, d, k] for local-only
    seconds: float
    bytes_sent: int
    orthonormal: bool = True
    extra: dict = field(default_factory=dict)


def train_method(name: str, data: NslKddData, k: int, *, rounds: int = 100, seed: int = 0,
                 fedpg_kwargs: dict | None = None, topology=None) -> MethodResult:
    """Train one method of ``METHODS``."""
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
            alg = FedPG(k, **kwargs.get("clean", {}))
        else:
            alg = DecentralizedFedPG(k, **kwargs.get("decentralized", {}))
        ref = top_k_eigenspace(pooled_matrix(clients), k)[0]
        fed = PCAFederation(clients, Streams(seed), reference=ref, schedule=topology)
        result = simulate(alg, fed, rounds, eval_every=rounds)
        Z = alg.subspace(result.state) if name in ("fedpg", "fedpg-decentralized") else result.state.Z
        bytes_sent = sum(r["bytes_sent"] for r in result.history)
        seconds = time.perf_counter() - start
        return MethodResult(name, Z.numpy(), seconds, bytes_sent, orthonormal=name in ("fedpg", "fedpg-decentralized"),
                            extra={"angle_to_pooled_topk": result.history[-1].get("angle_to_reference")})
    return MethodResult(name, Z.numpy(), time.perf_counter() - start, bytes_sent)


def evaluate_method(res: MethodResult, data: NslKddData, protocol: str, *, tau: float = 0.00025,
                    q: float = 0.5, alpha: float = 0.01) -> dict:
    """Scores, threshold and metrics of one method under one threshold protocol (local-only: mean over clients).

    The paper reconstructs with the raw server Z (``orthonormal=False`` for the paper variants).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    Zs = res.Z if res.Z.ndim == 3 else res.Z[None]
    rows = []
    for Z in Zs:
        scores = anomaly.residual_scores(data.X_test, Z, orthonormal=res.orthonormal)
        if protocol == "paper-minmax":
            thr = anomaly.paper_minmax_threshold(scores, tau)
        elif protocol == "paper-quantile":
            thr = anomaly.paper_quantile_threshold(scores, q)
        elif protocol == "train-quantile":
            train_scores = anomaly.residual_scores(data.train_normal, Z, orthonormal=res.orthonormal)
            thr = anomaly.quantile_threshold(train_scores, 1 - alpha)
        else:
            thr = anomaly.q_statistic_threshold(anomaly.covariance_eigenvalues(data.train_normal), Z.shape[1], alpha)
        row = anomaly.detection_metrics(scores, data.is_attack, thr)
        row["auc"] = anomaly.auc(scores, data.is_attack)
        for cat, value in anomaly.category_auc(scores, data.category).items():
            row[f"auc_{cat}"] = value
        rows.append(row)
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    if len(rows) > 1:
        out["auc_min"] = float(min(r["auc"] for r in rows))
    return out
