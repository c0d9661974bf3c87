"""Topology sweep: consensus rate measured vs predicted from the spectral gap, and gossip accuracy, across graph
families (``fedsim experiment topologies``).

Per point (graph family x nodes x seed; the seed draws the random graphs, the consensus start and the training):

* consensus: pure averaging x_{t+1} = W x_t with Metropolis-Hastings weights from a random start
  x_0 ~ N(0, 1)^{n x dim}. The consensus distance d_t = ||x_t - mean(x_t)||_F is tracked on the deviation from
  the mean (re-centred and re-scaled every round, so neither cancellation nor underflow limits how far it is
  followed). ``rate_measured`` = (d_T / d_{T/2})^{1/(T - T/2)}, the per-round contraction over the second half of
  ``consensus_rounds`` = T (past the transient of the faster modes); ``rate_predicted`` = |lambda_2(W)| =
  1 - spectral gap, the rate it must approach (power iteration on the mean-free subspace). Also
  ``rounds_to_eps``: the first round with d_t / d_0 <= ``eps``, measured and predicted (ln eps / ln |lambda_2|).
* accuracy: D-PSGD (``fedsim.experiment.run``) on the same graph for ``rounds`` rounds, the mean node accuracy
  (``nodes_acc``) at the end (``accuracy = false`` skips it).

    fedsim experiment topologies                          # CPU default: 64 and 256 nodes, six families, 3 seeds
    fedsim experiment topologies --config experiments/configs/topologies_full.toml --workers 4
"""

from __future__ import annotations

import copy
import math

import numpy as np

from fedsim.config import ConfigError
from fedsim.studies import Point, band_plot, band_style, fedsim_run, run_config, series

NAME = "topologies"
CPU_TIME = "about 10 s"   # README
FAMILIES = {   # study name -> (topologies generator, its parameters from the config, label)
    "ring": ("ring", (), "ring"),
    "torus": ("torus", (), "2-D torus"),
    "regular": ("regular", ("k",), "random k-regular"),
    "small_world": ("watts_strogatz", ("k", "p"), "small world (Watts-Strogatz)"),
    "scale_free": ("barabasi_albert", ("m",), "scale free (Barabasi-Albert)"),
    "exponential": ("exponential", (), "exponential"),
}
DEFAULTS = {
    "name": "cpu",
    "graphs": tuple(FAMILIES),
    "nodes": (64, 256),
    "seeds": (0, 1, 2),
    "k": 4,                      # degree of regular and small-world graphs
    "p": 0.1,                    # rewiring probability of small-world graphs
    "m": 2,                      # edges per new node of scale-free graphs
    "consensus_rounds": 600,     # T
    "dim": 8,                    # columns of the averaged vector x
    "eps": 1e-3,                 # rounds_to_eps: d_t / d_0 <= eps
    "curve_every": 5,            # record d_t / d_0 every this many rounds (the decay figure)
    "accuracy": True,            # also train D-PSGD on each graph
    "rounds": 60,                # ... for this many rounds
    "run": {},                   # a partial fedsim run config for the training points
}
GROUP_BY = ("graph", "nodes")
CURVE_X = "round"
SET_BY_STUDY = ("name", "seed", "clients", "rounds", "eval_every", "checkpoint_every", "algorithm.name",
                "topology.name", "topology.k", "topology.p", "topology.m")


def validate(cfg: dict) -> None:
    bad = [g for g in cfg["graphs"] if g not in FAMILIES]
    if bad:
        raise ConfigError(f"graphs: unknown graph {bad[0]!r}; known: {', '.join(FAMILIES)}")
    for key in ("consensus_rounds", "dim", "curve_every", "rounds", "k", "m"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg["consensus_rounds"] < 10:
        raise ConfigError(f"consensus_rounds must be >= 10, got {cfg['consensus_rounds']}")
    if not 0 < cfg["eps"] < 1 or not 0 <= cfg["p"] <= 1:
        raise ConfigError(f"eps must be in (0, 1) and p in [0, 1], got {cfg['eps']}, {cfg['p']}")
    if any(s < 0 for s in cfg["seeds"]):
        raise ConfigError("seeds must be >= 0")
    for dotted in SET_BY_STUDY:
        table = cfg["run"]
        for part in dotted.split("."):
            table = table.get(part) if isinstance(table, dict) else None
        if table is not None:
            raise ConfigError(f"run.{dotted} is set by the study for every point; remove it from [run]")
    for g in cfg["graphs"]:
        for n in cfg["nodes"]:
            graph(cfg, g, n, cfg["seeds"][0])   # a TopologyError names the family and n
    if cfg["accuracy"]:
        run_config(point_run(cfg, Point.of(cfg["seeds"][0], graph=cfg["graphs"][0], nodes=cfg["nodes"][0])), "[run]")


def check_inputs(cfg: dict) -> None:
    """The data set of the [run] table is there (a DataNotFoundError says how to get it), before anything runs."""
    from fedsim import data as fdata

    if cfg["accuracy"]:
        data = cfg["run"].get("data", {})
        fdata.load(data.get("dataset", "digits"), data.get("dir") or None)


def graph(cfg: dict, family: str, n: int, seed: int):
    import topologies

    name, params, _ = FAMILIES[family]
    try:
        return topologies.build(name, n, seed=seed, **{p: cfg[p] for p in params})
    except topologies.TopologyError as e:
        raise ConfigError(f"graphs = {family!r} with nodes = {n}: {e}") from None


def points(cfg: dict) -> list[Point]:
    return [Point.of(s, graph=g, nodes=n) for n in cfg["nodes"] for g in cfg["graphs"] for s in cfg["seeds"]]


def cost(cfg: dict, p: Point) -> float:
    return p["nodes"]


def consensus_decay(W, x0: np.ndarray, rounds: int) -> np.ndarray:
    """log of d_t / d_0 for t = 0..rounds under x_{t+1} = W x_t (d_t: Frobenius distance to the mean).

    Iterates the mean-free part, re-centred and re-normalised every round (W doubly stochastic keeps the mean).
    """
    y = x0 - x0.mean(axis=0)
    y /= np.linalg.norm(y)
    logs = np.zeros(rounds + 1)
    for t in range(1, rounds + 1):
        y = W @ y
        y -= y.mean(axis=0)
        norm = float(np.linalg.norm(y))
        logs[t] = logs[t - 1] + math.log(norm)
        y /= norm
    return logs


def consensus_metrics(W, x0: np.ndarray, rounds: int, eps: float) -> tuple[dict, np.ndarray]:
    """Measured and predicted consensus rate of W (see the module docstring) and the log-decay curve."""
    import topologies

    logs = consensus_decay(W, x0, rounds)
    half = rounds // 2
    lam2 = topologies.second_eigenvalue(W)
    reached = np.flatnonzero(logs <= math.log(eps))
    return {"rate_measured": math.exp((logs[rounds] - logs[half]) / (rounds - half)),
            "rate_predicted": lam2, "spectral_gap": 1.0 - lam2,
            "rounds_to_eps": int(reached[0]) if reached.size else None,
            "rounds_to_eps_predicted": math.log(eps) / math.log(lam2) if 0 < lam2 < 1 else None}, logs


def point_run(cfg: dict, p: Point) -> dict:
    values = copy.deepcopy(cfg["run"])
    name, params, _ = FAMILIES[p["graph"]]
    values.update(name=p.id, seed=p.seed, clients=p["nodes"], rounds=cfg["rounds"],
                  eval_every=cfg["rounds"], checkpoint_every=0)
    values.setdefault("algorithm", {})["name"] = "gossip"
    values.setdefault("topology", {}).update(name=name, **{k: cfg[k] for k in params})
    return values


def run_point(cfg: dict, p: Point, folder) -> dict:
    import topologies

    G = graph(cfg, p["graph"], p["nodes"], p.seed)
    W = topologies.metropolis_hastings(G)
    x0 = np.random.default_rng([p.seed, 0x70b0]).standard_normal((p["nodes"], cfg["dim"]))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):   # one BLAS thread per point, like the training (parallelism: --workers / --ray)
        metrics, logs = consensus_metrics(W, x0, cfg["consensus_rounds"], cfg["eps"])
    degrees = [d for _, d in G.degree()]
    row = {"graph": p["graph"], "nodes": p["nodes"], "edges": G.number_of_edges(), "mean_degree": float(np.mean(degrees)),
           "max_degree": int(max(degrees)), **metrics}
    if cfg["accuracy"]:
        history = fedsim_run(point_run(cfg, p), folder, f"[run] for point {p.id}")
        _, acc = series(history, "nodes_acc")
        row["acc"] = acc[-1] if acc else None
        row["bytes_sent"] = sum(r.get("bytes_sent", 0) for r in history)
    every = cfg["curve_every"]
    curves = [{"graph": p["graph"], "nodes": p["nodes"], "round": t, "log10_distance": logs[t] / math.log(10)}
              for t in range(0, cfg["consensus_rounds"] + 1, every)]
    return {"rows": [row], "curves": curves}


def summary(cfg: dict, groups: list[dict]) -> list[str]:
    lines = ["graph          nodes  rate measured   rate predicted  rel. diff  rounds to eps (meas / pred)"
             + ("  accuracy" if cfg["accuracy"] else "")]
    for g in groups:
        rm, rp = g["rate_measured"]["mean"], g["rate_predicted"]["mean"]
        re, rpe = g["rounds_to_eps"], g["rounds_to_eps_predicted"]
        line = (f"{g['graph']:13s} {g['nodes']:6d}  {rm:.5f}         {rp:.5f}         {abs(rm - rp) / rp:8.2%}   "
                f"{_fmt(re)} / {_fmt(rpe)}")
        if cfg["accuracy"]:
            line += f"  {_fmt(g['acc'], '.3f')}"
        lines.append(line)
    return lines


def _fmt(s: dict, spec: str = ".0f") -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:{spec}}" + ("" if s["n"] == s["of"] else f" ({s['n']}/{s['of']} seeds)")


def figures(cfg: dict, groups: list[dict], curves: list[dict]) -> dict:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from fedsim.plots import fit_titles, label_points, seeds_text  # (and the Agg backend)

    seeds = len(cfg["seeds"])
    labels = {g: FAMILIES[g][2] for g in FAMILIES}
    order = tuple(FAMILIES)   # a family's colour (and marker) in every figure: its place among all families
    setting = f"Metropolis weights, k = {cfg['k']}, p = {cfg['p']}, m = {cfg['m']}, {seeds_text(seeds)}"
    figs = {}
    fig, ax = plt.subplots(figsize=(6, 5))
    for g in dict.fromkeys(x["graph"] for x in groups):
        mine = [x for x in groups if x["graph"] == g]
        xs = [x["rate_predicted"]["mean"] for x in mine]
        ys = [x["rate_measured"]["mean"] for x in mine]
        err = [[max(0.0, y - x["rate_measured"]["min"]) for y, x in zip(ys, mine)],
               [max(0.0, x["rate_measured"]["max"] - y) for y, x in zip(ys, mine)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", ls="none", capsize=3, label=labels[g],
                    color=band_style(order.index(g))["color"])
    lo = min([x["rate_predicted"]["min"] for x in groups] + [x["rate_measured"]["min"] for x in groups])
    ax.plot([lo, 1], [lo, 1], color="grey", ls="--", lw=0.8, label="measured = predicted")
    ax.set(xlabel=r"predicted rate $|\lambda_2(W)|$ = 1 - spectral gap (per round)",
           ylabel=f"measured rate (per round, rounds {cfg['consensus_rounds'] // 2}-{cfg['consensus_rounds']})",
           title=f"topologies: consensus rate, measured vs predicted\n{setting}\nbars: min-max of the measured rate "
                 "over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figs["consensus_rate"] = fig

    sizes = cfg["nodes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        band_plot(ax, [c for c in curves if c["nodes"] == n], "round", "log10_distance", "graph", labels,
                  order=order)
        ax.set(xlabel="round", ylabel=r"$\log_{10}$ consensus distance $d_t / d_0$", title=f"{n} nodes")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"topologies: decay of the consensus distance under pure averaging ({setting}; band: min-max)",
                 fontsize=9)
    figs["consensus_decay"] = fig

    if cfg["accuracy"]:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        points, bars = [], []   # the labels; the error bars they must not cover
        for n in sizes:
            mine = [x for x in groups if x["nodes"] == n and x["acc"]["mean"] is not None]
            gaps = [x["spectral_gap"]["mean"] for x in mine]
            acc = [x["acc"]["mean"] for x in mine]
            err = [[max(0.0, a - x["acc"]["min"]) for a, x in zip(acc, mine)],
                   [max(0.0, x["acc"]["max"] - a) for a, x in zip(acc, mine)]]
            ax.errorbar(gaps, acc, yerr=err, marker="o", ls="none", capsize=3, label=f"{n} nodes")
            points += [(x["graph"], gx, a) for gx, a, x in zip(gaps, acc, mine)]
            bars += [(gx, x["acc"]["min"], x["acc"]["max"]) for gx, x in zip(gaps, mine)]
        data = cfg["run"].get("data", {}).get("dataset", "digits")
        ax.set(xscale="log", xlabel=r"spectral gap $1 - |\lambda_2(W)|$",
               ylabel=f"mean node test accuracy after {cfg['rounds']} rounds",
               title=f"topologies: D-PSGD accuracy vs spectral gap ({data})\nbars: min-max over {seeds_text(seeds)}")
        ax.grid(alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())   # minor labels (3x10^-1, ...) overlap
        ax.margins(y=0.12)   # room above and below the outermost points for their labels
        if points:   # ... and right of the rightmost point (log x: a factor)
            ax.set_xlim(right=max(x for _, x, _ in points) * 2.5)
        ax.legend(fontsize=7, loc="lower right")   # accuracy grows with the gap: that corner is empty
        fit_titles(fig)   # lay out first: the labels are placed for the final size of the axes
        label_points(ax, points, avoid=bars, far=True)
        figs["accuracy_vs_gap"] = fig
    return figs
