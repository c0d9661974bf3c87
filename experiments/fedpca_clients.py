"""Federated PCA anomaly detection on NSL-KDD vs the number of clients (``fedsim experiment fedpca_clients``).

Per point (a client count N x a seed) the NSL-KDD normal training rows are split among N clients
(``fedsim.pipelines.fedpca_nslkdd.prepare``: the paper's split by default) and every method of ``methods`` is
trained and evaluated on KDDTest+ with the honest threshold (``protocol = "train-quantile"``: the (1 - alpha)
quantile of the normal training rows' residuals; no test statistics):

  fedpg                clean FedPG (closed-form client step, stopping rule ``tol``), full participation
  fedpg-paper          the paper's FedPG (Riemannian ADMM; eta, rho, local steps, client fraction of the paper)
  fedpe-paper          the paper's FedPE (Euclidean ADMM)
  fedpg-decentralized  decentralized FedPG (gradient tracking + accelerated gossip) on ``topology``
  exact-federated      exact federated PCA (the clients send their covariance statistics once)
  local-only           every client's own PCA (mean over ``local_eval`` evenly spaced clients' subspaces)

Rows: ``auc``, ``f1``, ``precision``, ``recall``, ``fpr``, ``accuracy`` (percent), ``seconds`` (train time,
after an untimed two-round warm-up of each iterative method), ``bytes_sent``, ``rounds`` and ``angle`` (largest
principal angle to the clients' pooled top-k eigenspace, rad) of the iterative methods. The seed draws FedPG's
initialisation and the paper variants' client sampling (and the split for ``split = "iid"`` or ``"dirichlet"``).

    fedsim experiment fedpca_clients                      # CPU default: N in {10, 30, 100, 300, 1000}, 3 seeds
    fedsim experiment fedpca_clients --config experiments/configs/fedpca_clients_full.toml --workers 4
"""

from __future__ import annotations

import numpy as np

from fedsim.config import ConfigError
from fedsim.studies import Point, band_plot

NAME = "fedpca_clients"
CPU_TIME = "about 3 min (needs NSL-KDD in the data folder)"   # README
METHODS = ("fedpg", "fedpg-paper", "fedpe-paper", "fedpg-decentralized", "exact-federated", "local-only")
LABELS = {"fedpg": "clean FedPG", "fedpg-paper": "paper FedPG", "fedpe-paper": "paper FedPE",
          "fedpg-decentralized": "decentralized FedPG", "exact-federated": "exact federated PCA",
          "local-only": "local-only PCA"}
GRAPHS = ("ring", "torus", "regular", "exponential", "watts_strogatz", "barabasi_albert", "complete")
DEFAULTS = {
    "name": "cpu",
    "clients": (10, 30, 100, 300, 1000),
    "methods": METHODS,
    "seeds": (0, 1, 2),
    "k": 30,                       # subspace dimension (the paper's)
    "split": "paper",              # paper | iid | dirichlet
    "features": "paper",           # paper (34 numeric) | onehot
    "protocol": "train-quantile",  # train-quantile | q-statistic (honest thresholds; q-statistic: no paper variants)
    "alpha": 0.01,                 # false-alarm level of the honest threshold
    "rounds": 1000,                # clean FedPG's round cap (it stops by tol)
    "tol": 1e-6,
    "paper_rounds": 100,           # the paper variants' rounds, eta, rho, local steps and client fraction
    "paper_eta": 1e-4,
    "paper_rho": 0.01,
    "paper_local_steps": 30,
    "paper_fraction": 0.1,
    "decentralized_rounds": 100,   # decentralized FedPG has no stopping rule: it runs them all
    "topology": "exponential",     # graph of decentralized FedPG
    "degree": 4,                   # of regular / watts_strogatz graphs
    "local_eval": 50,              # local-only: evaluate this many evenly spaced clients' subspaces (0: all)
    "data_dir": "",                # folder holding nsl-kdd/ ("": $FEDSIM_DATA_DIR, else ~/.cache/fedsim)
    "threads": 1,                  # torch threads per point (parallelism comes from --workers / --ray)
}
GROUP_BY = ("clients", "method")
CURVE_X = "round"
METRICS = ("auc", "f1", "precision", "recall", "fpr", "accuracy")


def validate(cfg: dict) -> None:
    from fedsim.data import nslkdd
    from fedsim.pipelines import fedpca_nslkdd as pipeline

    choices = {"methods": METHODS, "split": ("paper", "iid", "dirichlet"), "features": ("paper", "onehot"),
               "protocol": pipeline.HONEST_PROTOCOLS, "topology": GRAPHS}
    for key, allowed in choices.items():
        values = cfg[key] if isinstance(cfg[key], tuple) else (cfg[key],)
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ConfigError(f"{key}: unknown value {bad[0]!r}; known: {', '.join(allowed)}"
                              + (" (the paper's test-set protocols are for `fedsim fedpca`)" if key == "protocol"
                                 else ""))
    raw = pipeline.raw_subspace_methods(cfg["protocol"], cfg["methods"])
    if raw:   # their residuals are not on the covariance's scale
        raise ConfigError(f"protocol = 'q-statistic' needs an orthonormal subspace, and methods holds {raw[0]!r} (a "
                          "paper variant scores with its raw, non-orthonormal Z: every normal row would be flagged); "
                          "use protocol = 'train-quantile', or leave the paper variants out of methods")
    for key in ("k", "rounds", "paper_rounds", "paper_local_steps", "decentralized_rounds", "degree", "threads"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if min(cfg["clients"]) < 2 or cfg["local_eval"] < 0 or any(s < 0 for s in cfg["seeds"]):
        raise ConfigError("clients must be >= 2, local_eval and seeds >= 0")
    for key in ("alpha", "paper_fraction"):
        if not 0 < cfg[key] <= 1:
            raise ConfigError(f"{key} must be in (0, 1], got {cfg[key]}")
    if cfg["tol"] < 0 or cfg["paper_eta"] <= 0 or cfg["paper_rho"] <= 0:
        raise ConfigError("tol must be >= 0, paper_eta and paper_rho > 0")
    if cfg["features"] == "paper":   # onehot's d comes from the training set's categories (check_inputs)
        _check_k(cfg, len(nslkdd.PAPER_FEATURES))
    if "fedpg-decentralized" in cfg["methods"]:
        for n in cfg["clients"]:
            _schedule(cfg, n, cfg["seeds"][0])


def _check_k(cfg: dict, d: int) -> None:
    if not 1 <= cfg["k"] < d:
        raise ConfigError(f"k = {cfg['k']} must be in 1..{d - 1}: below d = {d}, the number of "
                          f"features = {cfg['features']!r} columns (k = d leaves every anomaly score 0)")


def check_inputs(cfg: dict) -> None:
    """The NSL-KDD files are there (a DataNotFoundError says how to get them) and every ``clients`` value gets
    normal training rows for every client under the split (as ``pipeline.prepare`` will split them)."""
    from fedsim.data import PartitionError, nslkdd
    from fedsim.pipelines import fedpca_nslkdd as pipeline

    train = nslkdd.load_nslkdd("train", cfg["data_dir"] or None)
    nslkdd.load_nslkdd("test", cfg["data_dir"] or None)
    X, names = nslkdd.features(train, cfg["features"], nslkdd.category_vocabulary(train)
                               if cfg["features"] == "onehot" else None)
    _check_k(cfg, X.shape[1])
    key = X[~train.is_attack][:, names.index("dst_bytes")]
    for n in cfg["clients"]:
        for seed in cfg["seeds"] if cfg["split"] != "paper" else cfg["seeds"][:1]:
            try:
                pipeline.split_normal_rows(key, n, cfg["split"], seed)
            except PartitionError:
                raise ConfigError(f"clients = {n:,} is too many for split = {cfg['split']!r}: some client would get "
                                  f"no normal training rows ({len(key):,} in KDDTrain+); use fewer clients") from None


def points(cfg: dict) -> list[Point]:
    return [Point.of(s, clients=n) for n in cfg["clients"] for s in cfg["seeds"]]


def cost(cfg: dict, p: Point) -> float:
    return p["clients"]


def _schedule(cfg: dict, n: int, seed: int):
    import inspect

    import topologies

    fn = topologies.GENERATORS[cfg["topology"]]
    params = {k: v for k, v in {"k": cfg["degree"], "p": 0.1, "m": 2}.items() if k in inspect.signature(fn).parameters}
    try:
        graph = topologies.build(cfg["topology"], n, seed=seed, **params)
    except topologies.TopologyError as e:
        raise ConfigError(f"topology = {cfg['topology']!r} with clients = {n}: {e}") from None
    return topologies.Static(topologies.metropolis_hastings(graph))


def run_point(cfg: dict, p: Point, folder) -> list[dict]:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(cfg["threads"])
    with threadpool_limits(cfg["threads"]):   # numpy's BLAS too: on a busy machine more threads are much slower
        return _run_point(cfg, p)


def _run_point(cfg: dict, p: Point) -> list[dict]:
    from fedsim.pipelines import fedpca_nslkdd as pipeline

    n = p["clients"]
    data = pipeline.prepare(cfg["data_dir"] or None, n_clients=n, split=cfg["split"], features=cfg["features"], seed=p.seed)
    kwargs = {"paper": {"eta": cfg["paper_eta"], "rho": cfg["paper_rho"], "local_steps": cfg["paper_local_steps"],
                        "client_fraction": cfg["paper_fraction"]}, "clean": {}, "decentralized": {}}
    schedule = _schedule(cfg, n, p.seed) if "fedpg-decentralized" in cfg["methods"] else None
    rows = []
    for m in cfg["methods"]:
        rounds = {"fedpg": cfg["rounds"], "fedpg-paper": cfg["paper_rounds"], "fedpe-paper": cfg["paper_rounds"],
                  "fedpg-decentralized": cfg["decentralized_rounds"]}.get(m)
        args = {"seed": p.seed, "fedpg_kwargs": kwargs, "tol": cfg["tol"],
                "topology": schedule if m == "fedpg-decentralized" else None}
        if rounds is not None:   # an untimed warm-up of two rounds (imports, first LAPACK calls)
            pipeline.train_method(m, data, cfg["k"], rounds=2, **args)
        res = pipeline.train_method(m, data, cfg["k"], rounds=rounds, **args)
        if m == "local-only" and cfg["local_eval"] and cfg["local_eval"] < n:
            res.Z = res.Z[np.linspace(0, n - 1, cfg["local_eval"]).round().astype(int)]
        ev = pipeline.evaluate_method(res, data, cfg["protocol"], alpha=cfg["alpha"])
        angle = res.extra.get("angle_to_pooled_topk")
        rows.append({"clients": n, "method": m, **{k: ev[k] for k in METRICS}, "seconds": res.seconds,
                     "bytes_sent": res.bytes_sent, "rounds": res.extra.get("rounds"),
                     "angle": None if angle is None else float(angle)})
    return rows


def summary(cfg: dict, groups: list[dict]) -> list[str]:
    from fedsim.plots import seeds_text

    lines = [(f"KDDTest+, k = {cfg['k']}, {cfg['split']} split, {cfg['protocol']} threshold (alpha {cfg['alpha']}); "
              f"mean +- std over {seeds_text(len(cfg['seeds']))}"
              + (" (the paper split is deterministic: methods without random draws show +- 0.00)"
                 if cfg["split"] == "paper" else "")),
             f"{'clients':>7}  {'method':20s} {'AUC %':>13} {'F1 %':>13} {'train s':>9} {'MB sent':>11}"]
    for g in groups:
        lines.append(f"{g['clients']:7d}  {g['method']:20s} {g['auc']['mean']:6.2f} +- {g['auc']['std']:4.2f} "
                     f"{g['f1']['mean']:6.2f} +- {g['f1']['std']:4.2f} {g['seconds']['mean']:9.2f} "
                     f"{g['bytes_sent']['mean'] / 1e6:11.2f}")
    return lines


def figures(cfg: dict, groups: list[dict], curves: list[dict]) -> dict:
    import matplotlib.pyplot as plt

    from fedsim.plots import seeds_text  # (and the Agg backend)

    seeds = len(cfg["seeds"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    f1_label = f"F1 on KDDTest+ (%), {cfg['protocol']} threshold"
    panels = [("auc", "AUC on KDDTest+ (%)", "linear"), ("f1", f1_label, "linear"),
              ("seconds", "training time (s)", "log"), ("bytes_sent", "bytes sent (all messages, B)", "log")]
    for ax, (metric, label, scale) in zip(axes.flat, panels):
        mine = [g for g in groups if not (scale == "log" and (g[metric]["min"] or 0) <= 0)]
        band_plot(ax, mine, "clients", metric, "method", LABELS)
        ax.set(xscale="log", yscale=scale, xlabel="clients N", ylabel=label, title=label.split(" (")[0] + " vs clients")
        ax.set_xticks(list(cfg["clients"]), [f"{n:,}" for n in cfg["clients"]])
        ax.minorticks_off() if scale == "linear" else ax.xaxis.set_minor_locator(plt.NullLocator())
        if ax.lines:
            ax.legend(fontsize=7)
    graph = f", decentralized on {cfg['topology']}" if any("decentralized" in g["method"] for g in groups) else ""
    fig.suptitle(f"fedpca_clients: NSL-KDD ({cfg['split']} split, k = {cfg['k']}{graph}); line: mean over "
                 f"{seeds_text(seeds)}, band: min-max\n"
                 "(local-only and exact federated PCA send nothing iterative: local-only 0 bytes is not drawn on the "
                 "log axis)", fontsize=9)
    return {"fedpca_vs_clients": fig}
