"""Gossip learning vs the number of nodes: accuracy after R rounds and rounds to a target accuracy, plain vs
variance-corrected gossip, next to FedAvg (``fedsim experiment gossip_clients``).

Every point is one fedsim run (``fedsim.experiment.run``, resumable in its folder) of one method on n nodes with
one seed:

  fedavg     FedAvg on a star of n clients, ``fedavg_fraction`` of them sampled per round
  plain      synchronous D-PSGD on a random ``degree``-regular graph (Metropolis weights), plain averaging
  corrected  the same with the variance-corrected combine (``algorithm.averaging = "variance_corrected"``)

The gossip nodes start from their own initialisations (``same_init = false``, the vanishing-variance setting).
The data: by default scikit-learn's bundled digits (offline), each node drawing ``data.per_client`` samples
(``partition = "sampled"``: the nodes' draws may overlap, so every size has the same data per node).
Accuracy: FedAvg's global model; gossip: the mean over (``eval_nodes``) nodes of each node's own model
(``nodes_acc``). Rows per point: ``acc`` (at the last round), ``best_acc`` (the highest over the evaluated rounds:
a round picked on the test data, so an optimistic figure, kept for reference; the tables and figures use ``acc``
and ``rounds_to_target``), ``rounds_to_target`` (first evaluated
round with accuracy >= ``target``; empty if never), ``bytes_sent`` (all rounds), ``seconds``.

    fedsim experiment gossip_clients                     # CPU default: 16..1,024 nodes, 3 seeds
    fedsim experiment gossip_clients --config experiments/configs/gossip_clients_full.toml --workers 4
"""

from __future__ import annotations

import copy

from fedsim.config import ConfigError
from fedsim.studies import Point, band_plot, band_style, fedsim_run, first_reaching, run_config, series

NAME = "gossip_clients"
CPU_TIME = "about 1 min with --workers 2"   # README
METHODS = ("fedavg", "plain", "corrected")
LABELS = {"fedavg": "FedAvg (star)", "plain": "plain gossip", "corrected": "variance-corrected gossip"}
DEFAULTS = {
    "name": "cpu",                       # the run id: results/gossip_clients/<name>
    "nodes": (16, 32, 64, 128, 256, 512, 1024),
    "methods": METHODS,
    "seeds": (0, 1, 2),
    "rounds": 200,                       # R
    "eval_every": 5,
    "target": 0.7,                       # rounds to this accuracy
    "degree": 4,                         # of the random regular graph
    "fedavg_fraction": 0.1,              # share of FedAvg clients sampled per round
    "checkpoint_every": 0,               # rounds between checkpoints of a point (0: none; a point restarts)
    "run": {},                           # a partial fedsim run config shared by every point
}
GROUP_BY = ("nodes", "method")
CURVE_X = "round"
# keys of a point's run config the study sets
SET_BY_STUDY = ("name", "seed", "clients", "rounds", "eval_every", "checkpoint_every", "algorithm.name",
                "algorithm.averaging", "algorithm.clients_per_round", "topology.name", "topology.k")


def _has(table: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(table, dict) or part not in table:
            return False
        table = table[part]
    return True


def validate(cfg: dict) -> None:
    bad = [m for m in cfg["methods"] if m not in METHODS]
    if bad:
        raise ConfigError(f"methods: unknown method {bad[0]!r}; known: {', '.join(METHODS)}")
    for key in ("rounds", "eval_every", "degree"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg["checkpoint_every"] < 0 or any(s < 0 for s in cfg["seeds"]):
        raise ConfigError("checkpoint_every and seeds must be >= 0")
    if not 0 < cfg["target"] <= 1 or not 0 < cfg["fedavg_fraction"] <= 1:
        raise ConfigError(f"target and fedavg_fraction must be in (0, 1], got {cfg['target']}, "
                          f"{cfg['fedavg_fraction']}")
    for n in cfg["nodes"]:
        if {"plain", "corrected"} & set(cfg["methods"]) and not (1 <= cfg["degree"] < n and n * cfg["degree"] % 2 == 0):
            raise ConfigError(f"nodes = {n}: a random {cfg['degree']}-regular graph on {n} nodes does not exist "
                              "(need degree < nodes and nodes x degree even)")
    for dotted in SET_BY_STUDY:
        if _has(cfg["run"], dotted):
            raise ConfigError(f"run.{dotted} is set by the study for every point; remove it from [run]")
    for m in cfg["methods"]:   # the [run] keys, checked once per method
        run_config(point_run(cfg, Point.of(cfg["seeds"][0], nodes=min(cfg["nodes"]), method=m)), f"[run] for {m}")


def check_inputs(cfg: dict) -> None:
    """The data set of the [run] table is there (a DataNotFoundError says how to get it), before anything runs."""
    from fedsim import data as fdata

    data = cfg["run"].get("data", {})
    fdata.load(data.get("dataset", "digits"), data.get("dir") or None)


def points(cfg: dict) -> list[Point]:
    return [Point.of(s, nodes=n, method=m) for n in cfg["nodes"] for m in cfg["methods"] for s in cfg["seeds"]]


def cost(cfg: dict, p: Point) -> float:
    return p["nodes"] * (1 if p["method"] == "fedavg" else 2)


def point_run(cfg: dict, p: Point) -> dict:
    """The fedsim run config (a dict) of one point."""
    values = copy.deepcopy(cfg["run"])
    n, m = p["nodes"], p["method"]
    values.update(name=p.id, seed=p.seed, clients=n, rounds=cfg["rounds"], eval_every=cfg["eval_every"],
                  checkpoint_every=cfg["checkpoint_every"])
    alg = values.setdefault("algorithm", {})
    if m == "fedavg":
        alg.update(name="fedavg", clients_per_round=max(1, round(cfg["fedavg_fraction"] * n)))
        for key in ("averaging", "beta", "same_init", "active_fraction"):
            alg.pop(key, None)
        values["topology"] = {"name": "star"}
        values.pop("eval_nodes", None)
    else:
        alg.update(name="gossip", averaging="plain" if m == "plain" else "variance_corrected")
        values.setdefault("topology", {}).update(name="regular", k=cfg["degree"])
    return values


def run_point(cfg: dict, p: Point, folder) -> dict:
    history = fedsim_run(point_run(cfg, p), folder, f"[run] for point {p.id}")
    key = "global_acc" if p["method"] == "fedavg" else "nodes_acc"
    rounds, acc = series(history, key)
    row = {"nodes": p["nodes"], "method": p["method"], "acc": acc[-1] if acc else None,
           "best_acc": max(acc) if acc else None, "rounds_to_target": first_reaching(rounds, acc, cfg["target"]),
           "bytes_sent": sum(r.get("bytes_sent", 0) for r in history)}
    curves = [{"nodes": p["nodes"], "method": p["method"], "round": t, "acc": a} for t, a in zip(rounds, acc)]
    return {"rows": [row], "curves": curves}


def summary(cfg: dict, groups: list[dict]) -> list[str]:
    lines = []
    for g in groups:
        acc, rt = g["acc"], g["rounds_to_target"]
        reach = (f"{rt['mean']:.0f} [{rt['min']:.0f}, {rt['max']:.0f}]" if rt["n"] == rt["of"]
                 else f"reached by {rt['n']}/{rt['of']} seeds" + (f" (their mean {rt['mean']:.0f})" if rt["n"] else ""))
        lines.append(f"n={g['nodes']:>5} {g['method']:9s} acc@{cfg['rounds']} {acc['mean']:.3f} +- {acc['std']:.3f}  "
                     f"rounds to {cfg['target']:.0%}: {reach}")
    return lines


def _setting(cfg: dict) -> str:
    run = cfg["run"]
    data = run.get("data", {})
    model = run.get("model", {})
    return (f"{data.get('dataset', 'digits')} ({data.get('partition', 'iid')}), {model.get('name', 'mlp')}"
            f"{model.get('hidden', '')}; gossip on random {cfg['degree']}-regular graphs; FedAvg "
            f"{cfg['fedavg_fraction']:.0%} of clients per round")


def figures(cfg: dict, groups: list[dict], curves: list[dict]) -> dict:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    from fedsim.plots import fit_titles, say_not_finite, seeds_text  # (and the Agg backend)

    seeds = len(cfg["seeds"])
    spread = f"line: mean over {seeds_text(seeds)}, band: min-max" if seeds > 1 else "line: 1 seed"
    target = f"{cfg['target']:.0%}"
    figs = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # order=METHODS: a method has the same colour, marker and dash in every panel, drawn or not
    band_plot(axes[0], groups, "nodes", "acc", "method", LABELS, order=METHODS)
    axes[0].set(xscale="log", xlabel="nodes (clients)", ylabel=f"test accuracy after {cfg['rounds']} rounds",
                title=f"accuracy after {cfg['rounds']} rounds")
    never = band_plot(axes[1], groups, "nodes", "rounds_to_target", "method", LABELS, order=METHODS)
    for line in axes[1].lines:   # a method that reached the target at some sizes only: say where it did not
        method = next(m for m in METHODS if LABELS[m] == line.get_label())
        missed = [g["nodes"] for g in groups if g["method"] == method and g["rounds_to_target"]["mean"] is None]
        if missed:
            line.set_label(f"{line.get_label()} (not reached at {', '.join(map(str, missed))} nodes)")
    partial = False
    for g in groups:   # a mean over fewer seeds than ran: say how many reached the target
        rt = g["rounds_to_target"]
        if 0 < rt["n"] < rt["of"]:
            axes[1].annotate(f"{rt['n']}/{rt['of']}", (g["nodes"], rt["mean"]), fontsize=7, xytext=(3, 3),
                             textcoords="offset points")
            partial = True
    axes[1].set(xscale="log", xlabel="nodes (clients)", ylabel="rounds (mean of the seeds reaching it)",
                title=f"rounds to {target} test accuracy")
    empty = {0: f"nothing to draw:\nno finite accuracy after {cfg['rounds']} rounds",
             1: f"nothing to draw:\nno run reached {target} in {cfg['rounds']} rounds"}
    for i, ax in enumerate(axes):
        ax.set_xticks(cfg["nodes"], [str(n) for n in cfg["nodes"]])
        ax.xaxis.set_minor_formatter(NullFormatter())   # no "2 x 10^1" labels between the sizes
        ax.set_xlim(min(cfg["nodes"]) / 1.2, max(cfg["nodes"]) * 1.3)   # both panels: the same sizes, room for k/n
        if ax.lines:
            handles, labels = ax.get_legend_handles_labels()
            if i == 1:   # the methods that never reached the target: in the legend, in their style (faded)
                for method in never:
                    handles.append(Line2D([], [], alpha=0.5, **band_style(METHODS.index(method))))
                    labels.append(f"{LABELS[method]}: never reached {target}")
            ax.legend(handles, labels, fontsize=8, title="k/n: k of n seeds reached it" if i == 1 and partial else None,
                      title_fontsize=7)
        else:
            say_not_finite(ax, empty[i])
    fig.suptitle(f"gossip_clients: {_setting(cfg)}\n{spread}", fontsize=9)
    fit_titles(fig)
    figs["accuracy_vs_nodes"] = fig

    sizes = cfg["nodes"]
    cols = min(4, len(sizes))
    rows = -(-len(sizes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.8 * cols, 7.5), 3.4 * rows + 0.6), squeeze=False,
                             sharey=True)
    for ax in axes.flat[len(sizes):]:
        ax.set_visible(False)
    for ax, n in zip(axes.flat, sizes):
        band_plot(ax, [c for c in curves if c["nodes"] == n], "round", "acc", "method", LABELS, order=METHODS)
        ax.axhline(cfg["target"], color="grey", ls="--", lw=0.8)
        ax.set(title=f"{n} nodes", xlabel="round", ylabel="test accuracy" if ax in axes[:, 0] else None)
        if ax.lines[:-1]:   # the target line is not a curve
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"gossip_clients: test accuracy per round (dashed: the {target} target)\n{_setting(cfg)}; "
                 f"{spread}", fontsize=9)
    fit_titles(fig)
    figs["accuracy_vs_round"] = fig
    return figs
