"""The ``fedsim`` command line: run configs, federated PCA, Flower and topology inspection here; the commands of
the packages above fedsim (``attack``, ``experiment``, ``quickstart``) come in through the ``fedsim.commands``
entry points (``register(subparsers)`` functions), so that fedsim never imports attacks/ or experiments/."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

from fedsim.runs import RunFolderError, claim_results_folder, folder_lock  # light: imports torch only when used

EPILOG = """examples:
  fedsim quickstart                           the tour: digits runs, corrected gossip, federated PCA, DIA -> report.md
  fedsim run experiments/configs/quickstart_fedavg.toml --out results/fedavg
  fedsim run CONFIG.toml --set rounds=100 --set algorithm.lr=0.05 --out results/lr005
  fedsim run CONFIG.toml --set rounds=200 --set algorithm.lr=0.05 --out results/lr005 --resume
                                              continue that run after an interruption, or extend it
  fedsim topology regular -n 100 -k 8 --draw regular.png
  fedsim fedpca --data-dir ../shared/data        federated PCA anomaly detection on NSL-KDD, all methods
  fedsim experiment --list                    the studies (sweeps over settings x seeds); then e.g.
  fedsim experiment gossip_clients --workers 2   results/gossip_clients/cpu/: metrics.csv, metrics.json, figures

Data is looked up in --data-dir, else $FEDSIM_DATA_DIR, else ~/.cache/fedsim.
"""


def _parse_override(text: str) -> tuple[str, object]:
    from fedsim.config import ConfigError, tomllib

    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # bare strings need no quotes
    return key.strip(), parsed


def format_column(values: list) -> list[str]:
    """One table column as text, its numbers written alike: '-' for missing, NaN or inf; a column of whole
    numbers (ints, or floats such as 300.0) with thousands separators; other floats with thousands separators and
    the decimals that give the smallest nonzero one 4 significant digits (0 to 4 decimals)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    whole = all(float(v).is_integer() for v in numbers)
    smallest = min((abs(v) for v in numbers if v), default=1.0)
    decimals = min(4, max(0, 3 - math.floor(math.log10(smallest))))

    def one(v) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        return f"{int(v):,}" if whole else f"{v:,.{decimals}f}"

    return [one(v) for v in values]


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table with one row per dict (missing values shown as '-'; ``format_column``)."""
    by_column = [format_column([r.get(c) for r in rows]) for c in columns]
    cells = [[col[i] for col in by_column] for i in range(len(rows))]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    line = "  ".join(c.rjust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def summarize(name: str, cfg, result, seconds: float) -> dict:
    """One summary row of a finished run."""
    from fedsim.plots import accuracy_key

    key = accuracy_key(result)
    h = result.history
    total_bytes = sum(r.get("bytes_sent", 0) for r in h)
    return {"run": name, "algorithm": cfg.algorithm.name, "topology": cfg.topology.name, "clients": cfg.clients,
            "rounds": len(h), "test_acc": result.final(key), "worst_node_acc": result.final("nodes_acc_min")
            if "nodes_acc_min" in result.keys() else float("nan"), "train_loss": last_training_loss(h),
            "MB_sent": total_bytes / 1e6, "seconds": seconds}


def _trained(history: list[dict]) -> list[dict]:
    """The rounds (ticks) in which some node trained: an asynchronous tick whose clocks did not fire records no
    training loss (NaN), which says nothing about the run."""
    return [r for r in history if r.get("participants", 1) != 0]


def last_training_loss(history: list[dict]) -> float:
    """The training loss of the last round (tick) in which some node trained; NaN if none did."""
    losses = [r["train_loss"] for r in _trained(history) if "train_loss" in r]
    return losses[-1] if losses else float("nan")


SUMMARY_COLUMNS = ["run", "algorithm", "topology", "clients", "rounds", "test_acc", "worst_node_acc",
                   "train_loss", "MB_sent", "seconds"]


def run_one(cfg, out_dir: Path, resume: bool, progress: bool, overwrite: bool = False):
    """Run one config into ``out_dir`` with a progress bar; returns (result, seconds)."""
    from tqdm import tqdm

    from fedsim.experiment import run
    from fedsim.progress import progress_bar

    # the bar and the note appear once the run has passed its checks and done its first round, so a refusal
    # (a disconnected graph, a bad checkpoint) stays one line
    bars = []
    note = [f"fedsim: note: no checkpoint in {out_dir}; --resume starts at round 0"] \
        if resume and not (out_dir / "checkpoint.pt").exists() else []

    def on_round(t, state, history):
        while note:
            tqdm.write(note.pop(), file=sys.stderr)
        if not bars:
            bars.append(progress_bar(cfg.rounds, cfg.name, "round", progress, leave=False, initial=t))
        bar = bars[0]
        row = history[-1]
        shown = {k: f"{row[k]:.3f}" for k in ("train_loss", "global_acc", "average_acc") if k in row
                 and (k != "train_loss" or row.get("participants", 1) != 0)}
        bar.set_postfix(shown, refresh=False)
        bar.update(t + 1 - bar.n)   # redraws at most every mininterval (rare off a terminal)

    start = time.perf_counter()
    try:
        result = run(cfg, out_dir, resume=resume, on_round=on_round, overwrite=overwrite)
    finally:
        for bar in bars:
            bar.close()
    # the run's own time, over every invocation of a resumed run (a finished run resumed adds nothing)
    return result, result.seconds if result.seconds is not None else time.perf_counter() - start


def finish_runs(rows: list[dict], results: dict, out_dir: Path, title: str, configs: list) -> None:
    """Print and save the summary table of finished runs, and their accuracy (and diagnostics) plots."""
    from fedsim.engine import atomic_write_text
    from fedsim.files import listing
    from fedsim.plots import diagnostic_panels, plot_diagnostics, plot_runs

    table = format_table(rows, SUMMARY_COLUMNS)
    print(table)
    atomic_write_text(out_dir / "summary.txt", table + "\n")
    for name, result in results.items():
        problem = divergence(result.history)
        if problem:
            print(f"fedsim: note: {name}: {problem}; the run diverged (try a smaller algorithm.lr)", file=sys.stderr)
    ticks = any(cfg.time.mode == "async" for cfg in configs)
    x_label = "tick" if ticks else "round"
    plots = [f"plot:    {plot_runs(results, out_dir / 'accuracy.png', title=title, x_label=x_label)}"]
    if diagnostic_panels(list(results.values())):
        more = plot_diagnostics(results, out_dir / "diagnostics.png", x_label=x_label, x_key="round", title=title)
        plots.append(f"         {more}  (node accuracy range, weight variance vs Xavier, consensus, bytes)")
    print(f"\nresults: {out_dir}/  ({listing(out_dir)})")
    print("\n".join(plots))


LOSS_LIMIT = 50.0
"""A mean cross-entropy above this many nats (a probability of e^-50 on the right class) means divergence: a model
that guesses has ln(classes), 2.3 for 10 classes."""


def divergence(history: list[dict]) -> str | None:
    """What says a run diverged: a final training loss that is NaN/inf, above ``LOSS_LIMIT``, or 10x its first
    (over the rounds or ticks in which some node trained)."""
    losses = [r["train_loss"] for r in _trained(history) if isinstance(r.get("train_loss"), (int, float))]
    if not losses:
        return None
    last = losses[-1]
    if not math.isfinite(last):
        return f"the training loss became {last}"
    if last > LOSS_LIMIT:
        return f"the final training loss is {last:.3g} (a model that guesses has ln(classes), 2.3 for 10)"
    first = next((v for v in losses if math.isfinite(v)), None)
    if first is not None and first > 0 and last > 10 * first:
        return f"the training loss grew from {first:.3g} to {last:.3g}"
    return None


def apply_run_options(cfg, args):
    """``cfg`` with the options of ``add_run_options`` applied (--set, --data-dir, --threads, --device)."""
    from fedsim.config import replace

    overrides = dict(_parse_override(s) for s in args.set or [])
    if args.data_dir:
        overrides["data.dir"] = str(args.data_dir)
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.device:
        overrides["device"] = args.device
    return replace(cfg, overrides) if overrides else cfg


def cmd_run(args) -> int:
    from fedsim.config import load

    cfg = apply_run_options(load(args.config), args)
    out_dir = Path(args.out) if args.out else Path("results") / cfg.name
    result, seconds = run_one(cfg, out_dir, args.resume, not args.no_progress, args.overwrite)
    where = "star" if cfg.algorithm.name == "fedavg" else f"{cfg.topology.name} graph"
    title = f"{cfg.name}: {cfg.algorithm.name} on a {where}, {cfg.clients} clients, {cfg.data.dataset}, seed {cfg.seed}"
    finish_runs([summarize(cfg.name, cfg, result, seconds)], {cfg.name: result}, out_dir, title, [cfg])
    return 0


DIRECTED_TOPOLOGIES = ("directed_ring", "directed_exponential")


def cmd_topology(args) -> int:
    import topologies
    from fedsim.config import ConfigError

    known = sorted([*topologies.GENERATORS, *DIRECTED_TOPOLOGIES])
    if args.name not in known:
        raise ConfigError(f"unknown topology {args.name!r}; known: {', '.join(known)}")
    if args.n is None and args.name != "edge_list":
        raise ConfigError(f"topology {args.name} needs -n N, the number of nodes")
    params = {k: v for k, v in (("k", args.k), ("p", args.p), ("m", args.m), ("path", args.path))
              if v is not None}
    if args.name in DIRECTED_TOPOLOGIES:
        graph = getattr(topologies, args.name)(args.n)
    else:
        graph = topologies.build(args.name, args.n, seed=args.seed, **params)
    if graph.is_directed():
        W = topologies.push_sum_weights(graph)
    else:
        W = {"metropolis": topologies.metropolis_hastings, "max_degree": topologies.max_degree,
             "uniform": topologies.uniform_neighbour}[args.mixing](graph)
    info = topologies.describe(graph, W)
    label = args.mixing if not graph.is_directed() else "push-sum"
    print(f"topology {args.name}")
    print(f"  nodes         {info['nodes']:,}")
    print(f"  edges         {info['edges']:,}{' (directed)' if graph.is_directed() else ''}")
    print(f"  degree        min {info['min_degree']}, max {info['max_degree']}, mean {info['mean_degree']:.2f}")
    print(f"  spectral gap  {info['spectral_gap']:.6f}  (1 - |lambda_2| of the {label} weights)")
    if args.draw:  # its folder was checked before the work (_check_args); this catches the rest
        shown = ", ".join(f"{k} = {v}" for k, v in params.items() if k != "path")
        name = f"{args.name} ({shown})" if shown else args.name
        try:
            topologies.draw(graph, args.draw, seed=args.seed, name=name)
        except OSError as e:
            raise ConfigError(f"--draw {args.draw}: cannot write it ({e.strerror or e})") from None
        big = info["nodes"] > topologies.drawing.DRAW_MAX
        print(f"  drawing       {args.draw}" + (f"  (the degree distribution: above {topologies.drawing.DRAW_MAX} "
                                                "nodes a drawing is unreadable)" if big else ""))
    return 0


PAPER_ROWS = [
    {"method": "paper: FedPG (k=30)", "auc": 89.61, "auc_DoS": 93.74, "auc_Probe": 96.97, "auc_R2L": 67.88,
     "auc_U2R": 94.74, "accuracy": 83.73, "f1": 85.23, "fpr": 14.55},   # (their time, 75.1 s, is for 1,000 rounds)
    {"method": "paper: centralized (AUC k=20)", "auc": 91.01, "auc_DoS": 95.77, "auc_Probe": 96.87,
     "auc_R2L": 73.72, "auc_U2R": 93.58},
]
FEDPCA_COLUMNS = ["method", "scaler", "auc", "auc_DoS", "auc_Probe", "auc_R2L", "auc_U2R", "accuracy", "f1", "fpr",
                  "seconds", "rounds", "MB_sent", "angle"]


def _fedpca_protocol_line(args) -> str:
    """What the threshold protocol uses, in one line (printed above the tables)."""
    if args.protocol == "train-quantile":
        return (f"threshold: train-quantile, honest (the {100 * (1 - args.alpha):g}% quantile of the normal training "
                f"rows' residuals, alpha = {args.alpha}); AUC needs no threshold")
    if args.protocol == "q-statistic":
        return (f"threshold: q-statistic, honest (Jackson-Mudholkar Q at alpha = {args.alpha} from the normal training "
                f"rows' covariance; calibrated for a subspace of the centrally scaled rows, approximate for own-scaled "
                f"methods; not for the paper variants' raw Z); AUC needs no threshold")
    if args.protocol == "paper-minmax":
        return f"threshold: paper-minmax, tau = {args.tau} (the paper's: min + tau (max - min) of the test scores)"
    return f"threshold: paper-quantile, q = {args.quantile} (the paper's: the q-quantile of the test scores)"


def _fedpca_protocol_note(args, title: str) -> str | None:
    """The line under a table whose threshold used test-set statistics (None for the honest protocols)."""
    if args.protocol == "paper-minmax":
        return (f"note: the scores are min-max normalised over the test set and tau is the authors' value for their "
                f"variant (raw, non-orthonormal Z; its choice undocumented); accuracy/F1/FPR here use {title}'s own "
                f"score range: not an honest evaluation (AUC is)")
    if args.protocol == "paper-quantile":
        return (f"note: the threshold is the q-quantile of {title}'s own scores (the paper's protocol): accuracy/F1/FPR "
                f"use test-set statistics, not an honest evaluation (AUC is)")
    return None


def cmd_fedpca(args) -> int:
    import json

    import torch

    import topologies
    from fedsim import anomaly
    from fedsim.config import ConfigError
    from fedsim.data import PartitionError
    from fedsim.engine import atomic_write_text
    from fedsim.pipelines import fedpca_nslkdd as pipeline
    from fedsim.plots import plot_convergence, plot_roc, plot_roc_panels

    methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip())) \
        if args.methods is not None else list(pipeline.METHODS)
    unknown = [m for m in methods if m not in pipeline.METHODS]
    if unknown or not methods:
        what = f"unknown --methods entry {unknown[0]!r}" if unknown else f"--methods {args.methods!r} names no method"
        raise ConfigError(f"{what}; known: {', '.join(pipeline.METHODS)}")
    _check_fedpca_args(args)
    raw = pipeline.raw_subspace_methods(args.protocol, methods)
    if raw and args.methods is None:   # the default list: all that the protocol applies to
        methods, raw = [m for m in methods if m not in raw], []
    if raw:   # their residuals are not on the covariance's scale
        raise ConfigError(f"--protocol q-statistic needs an orthonormal subspace, and {raw[0]} (a paper variant) "
                          "scores with its raw, non-orthonormal Z: every normal row would be flagged; use --protocol "
                          "train-quantile, or leave the paper variants out of --methods")
    graphs = sorted(set(topologies.GENERATORS) - {"edge_list"})
    if args.topology not in graphs:
        raise ConfigError(f"unknown --topology {args.topology!r}; known: {', '.join(graphs)}")
    settings = settings_of(args)
    claim_results_folder(args.out, "fedpca", settings, args.overwrite)
    torch.set_num_threads(args.threads)
    try:
        data = pipeline.prepare(args.data_dir, n_clients=args.clients, split=args.split, features=args.features,
                                seed=args.seed, test=args.test, global_scaler=args.global_scaler)
    except PartitionError:
        raise ConfigError(f"--clients {args.clients:,} is too many for --split {args.split}: some client would "
                          "get no normal training rows; use fewer --clients") from None
    d = data.tests[0].X.shape[1]
    if args.k >= d:   # k = d: the subspace is all of R^d, every residual (anomaly score) is 0
        raise ConfigError(f"-k {args.k} must be smaller than d = {d}, the number of --features {args.features} "
                          f"columns ({'k = d leaves every anomaly score 0' if args.k == d else 'k > d'}); "
                          f"use -k 1..{d - 1}")
    # --eta / --rho / --local-steps unset: clean and decentralized FedPG use their defaults (issue 10: the
    # linearized solver and gradient tracking, data-derived); any of them set: the Riemannian / ADMM schedule
    given = {key: v for key, v in (("eta", args.eta), ("rho", args.rho), ("local_steps", args.local_steps))
             if v is not None}
    kwargs = {"clean": {**given, "client_fraction": args.fraction},
              "paper": {"eta": args.paper_eta, "rho": args.paper_rho, "local_steps": args.paper_local_steps,
                        "client_fraction": args.paper_fraction},
              "decentralized": dict(given)}
    schedule = None
    if "fedpg-decentralized" in methods:
        import inspect

        params = {"k": args.degree, "p": args.prob, "m": args.attach}
        accepted = inspect.signature(topologies.GENERATORS.get(args.topology, topologies.ring)).parameters
        used = {key: v for key, v in params.items() if key in accepted}
        try:
            graph = topologies.build(args.topology, args.clients, seed=args.seed, **used)
        except topologies.TopologyError as e:
            flags = {"k": "--degree", "p": "--prob", "m": "--attach"}
            shown = ", ".join([f"--clients {args.clients}", *(f"{flags[key]} {v}" for key, v in used.items())])
            raise ConfigError(f"--topology {args.topology} with {shown}: {e}") from None
        schedule = topologies.Static(topologies.metropolis_hastings(graph))
    rows, curves, rocs = [], {}, {ts.name: {} for ts in data.tests}
    for name in methods:
        print(f"  training {name} ...", file=sys.stderr, flush=True)
        rounds = args.paper_rounds if name in pipeline.PAPER_METHODS else args.rounds
        res = pipeline.train_method(name, data, args.k, rounds=rounds, seed=args.seed, fedpg_kwargs=kwargs,
                                    topology=schedule, tol=args.tol, trace=True)
        if "curve" in res.extra:
            curves[name] = res.extra["curve"]
        for ts in data.tests:
            ev = pipeline.evaluate_method(res, data, args.protocol, tau=args.tau, q=args.quantile, alpha=args.alpha,
                                          test=ts.name)
            rows.append({"test": ts.name, "method": name, "scaler": pipeline.scaler_of(name, args.global_scaler),
                         **ev, "seconds": res.seconds, "rounds": res.extra.get("rounds", float("nan")),
                         "MB_sent": res.bytes_sent / 1e6, "angle": res.extra.get("angle_to_pooled_topk", float("nan")),
                         "objective_gap": res.extra.get("objective_gap", float("nan"))})
            scores = pipeline.scores_on(res, data, ts.name)
            if scores is not None:
                rocs[ts.name][name] = anomaly.roc_points(scores, ts.is_attack)
    order = [ts.name for ts in data.tests]
    rows.sort(key=lambda r: order.index(r["test"]))          # stable: the methods keep their order in each test set
    out = Path(args.out)
    honest = args.protocol in pipeline.HONEST_PROTOCOLS
    scaling = "the centralized scaler (all normal training rows), as in the paper"
    print(f"\nNSL-KDD, {args.clients} clients ({args.split} split), k = {args.k}; metrics in %; "
          f"{_fedpca_protocol_line(args)}\ntest rows z-scored with {scaling}")
    texts = []
    for ts in data.tests:
        mine = [r for r in rows if r["test"] == ts.name]
        paper = PAPER_ROWS if args.protocol == "paper-minmax" and ts.name == "test+" else []
        shown = [{**r, "angle": f"{r['angle']:.1e}" if math.isfinite(r["angle"]) else "-"} for r in mine]
        text = f"{ts.describe()}\n\n{format_table(shown + paper, FEDPCA_COLUMNS)}"
        note = _fedpca_protocol_note(args, ts.title)
        if note:
            text += f"\n{note}"
        if paper:
            ours = (f" (ours: the seconds column, {args.paper_rounds} rounds of the paper variants)"
                    if set(methods) & set(pipeline.PAPER_METHODS) else "")
            text += ("\npaper rows: the authors' published numbers (one run); their FedPG took 75.1 s for 1,000 rounds "
                     f"on their hardware{ours}")
        texts.append(text)
        print(f"\n{text}")
    scalers = list(dict.fromkeys(r["scaler"] for r in rows))
    legend = ["scaler: " + "; ".join(f"{s} = {pipeline.SCALER_NOTES[s]}" for s in scalers)]
    if any(m in pipeline.ITERATIVE for m in methods):
        legend += ["angle: largest principal angle (rad) between an iterative method's subspace and the pooled top-k "
                   "eigenspace of its clients' data (0 = converged to the federated optimum)",
                   "rounds: rounds that sent messages (" + "; ".join(
                       text for method, text in (
                           ("fedpg", f"fedpg stops once its angle estimate < --tol {args.tol:g}, at most --rounds "
                                     f"{args.rounds}"),
                           ("fedpg-decentralized", "fedpg-decentralized runs all --rounds"),
                           ("paper", f"the paper variants --paper-rounds {args.paper_rounds}"))
                       if method in methods or (method == "paper" and set(methods) & set(pipeline.PAPER_METHODS)))
                   + ")"]
    print("\n" + "\n".join(legend))
    atomic_write_text(out / "summary.txt", "\n\n".join(texts) + "\n\n" + "\n".join(legend) + "\n")
    protocol = {"name": args.protocol, "honest": honest,
                "threshold_from": "normal training rows" if honest else "test-set scores"}
    tests = {ts.name: {"title": ts.title, "rows": len(ts.X), "attacks": int(ts.is_attack.sum())} for ts in data.tests}
    atomic_write_text(out / "results.json", json.dumps({"command": "fedpca", "args": settings, "protocol": protocol,
                                                        "tests": tests, "rows": rows, "convergence": curves},
                                                       indent=1, default=str))
    title = f"NSL-KDD anomaly detection, k = {args.k}"
    if len(data.tests) == 1:
        png = plot_roc(rocs[data.tests[0].name], out / "roc.png", title=f"{title}, {data.tests[0].title}")
    else:
        png = plot_roc_panels({ts.title: rocs[ts.name] for ts in data.tests}, out / "roc.png", title=title)
    files = ["summary.txt", "results.json", "roc.png"]
    conv = None
    if curves:
        conv = plot_convergence(curves, out / "convergence.png",
                                title=f"convergence to each method's optimum, NSL-KDD, k = {args.k}")
        files.append("convergence.png")
    print(f"\nresults: {out}/  ({', '.join(files)})\nplot:    {png}" + (f"\n         {conv}" if conv else ""))
    return 0


def cmd_flower(args) -> int:
    """``fedsim flower``: FedAvg, FedPG or gossip on Flower (fedsim/flower/runner.py)."""
    from fedsim.flower.runner import cmd_flower as run_flower

    return run_flower(args)


def settings_of(args) -> dict:
    """The command's arguments as plain values (what results.json records and a re-run is compared with)."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "interrupt_hint", "run_options", "locks_out")}


def _check_fedpca_args(args) -> None:
    from fedsim.config import ConfigError

    checks = [("--rounds", args.rounds, args.rounds >= 1, ">= 1"), ("--clients", args.clients, args.clients >= 1, ">= 1"),
              ("--paper-rounds", args.paper_rounds, args.paper_rounds >= 1, ">= 1"),
              ("-k", args.k, args.k >= 1, ">= 1"), ("--threads", args.threads, args.threads >= 1, ">= 1"),
              ("--tol", args.tol, 0 <= args.tol < math.inf, ">= 0 and finite"),
              *((flag, value, 0 < value < math.inf, "> 0 and finite") for flag, value in
                (("--eta", args.eta), ("--rho", args.rho), ("--paper-eta", args.paper_eta),
                 ("--paper-rho", args.paper_rho)) if value is not None),
              *((("--local-steps", args.local_steps, args.local_steps >= 0, ">= 0"),)
                if args.local_steps is not None else ()),
              ("--paper-local-steps", args.paper_local_steps, args.paper_local_steps >= 0, ">= 0"),
              ("--fraction", args.fraction, 0 < args.fraction <= 1, "in (0, 1]"),
              ("--paper-fraction", args.paper_fraction, 0 < args.paper_fraction <= 1, "in (0, 1]"),
              ("--tau", args.tau, 0 <= args.tau <= 1, "in [0, 1]"), ("--quantile", args.quantile, 0 < args.quantile < 1, "in (0, 1)"),
              ("--alpha", args.alpha, 0 < args.alpha < 1, "in (0, 1)")]
    for name, value, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{name} must be {rule}, got {value}")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option with a default shows it as "(default: X)".

    Options whose help already says "(default..." (those without a value of their own, e.g. "(default:
    $FEDSIM_DATA_DIR ...)") and on/off flags are left as written.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (action.option_strings and "(default" not in text and "%(default)" not in text and default is not None
                and default is not False and default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with fedsim's help format; a usage error is one line ``fedsim: error: ...`` and exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"fedsim: error: {message} (see '{self.prog} --help')\n")


DATA_DIR_DEFAULT = "(default: $FEDSIM_DATA_DIR, else ~/.cache/fedsim)"


RESUME_HINT = "; rerun with --resume to continue from the last checkpoint"
COMMAND_ORDER = ("run", "quickstart", "fedpca", "attack", "experiment", "flower", "topology")
"""The commands' order in ``fedsim --help``; commands of other ``fedsim.commands`` entry points follow by name."""


def build_parser() -> argparse.ArgumentParser:
    """fedsim's parser: its own commands and those of the ``fedsim.commands`` entry points, in COMMAND_ORDER."""
    from importlib.metadata import entry_points

    parser = Parser(
        prog="fedsim", epilog=EPILOG,
        description="fedsim: a fast, reproducible simulator for federated and decentralized learning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    own = {"run": _add_run, "fedpca": _add_fedpca, "flower": _add_flower, "topology": _add_topology}
    plugins = {ep.name: ep for ep in entry_points(group="fedsim.commands") if ep.name not in own}
    rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
    for name in sorted([*own, *plugins], key=lambda n: (rank.get(n, len(rank)), n)):
        if name in own:
            own[name](sub)
        else:
            _add_entry_point(sub, plugins[name])
    return parser


def _add_entry_point(sub, entry) -> None:
    """Add the command of one ``fedsim.commands`` entry point (its ``register(subparsers)``). One that fails to load
    still shows in ``fedsim --help``, and running it is one ``fedsim: error:`` line naming what is missing."""
    try:
        entry.load()(sub)
    except Exception as e:   # a missing or broken package must leave fedsim's other commands working
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        message = f"fedsim {entry.name} is unavailable: {entry.value} failed to load ({reason})"

        def unavailable(args):
            from fedsim.config import ConfigError

            raise ConfigError(message)

        p = sub.choices.get(entry.name) or sub.add_parser(entry.name, help=f"(unavailable: {reason})",
                                                          description=message)
        p.set_defaults(func=unavailable, unavailable=True)


def add_run_options(p) -> None:
    """The options of the commands that run configs (``run``, ``quickstart``): --data-dir, --threads, --device,
    --set, --resume, --overwrite, --no-progress (``apply_run_options`` applies them to a config)."""
    p.add_argument("--data-dir", help=f"folder with the data sets {DATA_DIR_DEFAULT}")
    p.add_argument("--threads", type=int, help="torch intra-op threads, 0 = torch's own choice "
                                               "(default: the config's threads)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: the config's device)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set algorithm.lr=0.05; repeatable (default: none)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the verified checkpoint.pt in the output folder; the config must be the "
                        "same except rounds (which may grow), eval_every, eval_nodes, checkpoint_every, threads, "
                        "device, data dir and name; a folder without a checkpoint starts at round 0")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in the output folder (removes only fedsim's run files; "
                        "without it a folder that holds another run is refused)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(run_options=True, interrupt_hint=RESUME_HINT)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run one experiment from a TOML config",
                       description="Run one experiment from a TOML config; writes history, checkpoint and plot.")
    p.add_argument("config", help="path to a TOML config (see experiments/configs/)")
    p.add_argument("--out", help="output folder (default: results/<name>)")
    add_run_options(p)
    p.set_defaults(func=cmd_run)


def _add_fedpca(sub) -> None:
    class FedpcaHelp(HelpFormatter):
        """fedsim's help format, wrapping lines at spaces only: "(default: train-quantile)" stays whole."""

        def _split_lines(self, text, width):
            import textwrap

            return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    p = sub.add_parser("fedpca", help="federated PCA anomaly detection on NSL-KDD: all methods side by side",
                       formatter_class=FedpcaHelp,
                       description="Train FedPG (clean and paper variants), FedPE, decentralized FedPG and the "
                                   "baselines on NSL-KDD normal traffic, and evaluate them on KDDTest+ and/or "
                                   "KDDTest-21 with one threshold protocol (by default an honest one: the threshold "
                                   "comes from normal training rows only). Prints one table per test set; saves "
                                   "results.json, a ROC plot and a convergence plot.")
    p.add_argument("--data-dir", help=f"folder holding nsl-kdd/ {DATA_DIR_DEFAULT}")
    p.add_argument("--methods", help="comma-separated subset of: centralized, exact-federated (global scaler), "
                                     "exact-federated-local (clients' own scaling: FedPG's optimum), projector-avg, "
                                     "local-only, fedpg, fedpg-paper, fedpe-paper, fedpg-decentralized "
                                     "(default: all of them; with --protocol q-statistic all but the paper "
                                     "variants)")
    p.add_argument("--test", default="test+", choices=["test+", "test21", "both"],
                   help="test set: KDDTest+ (the paper's), KDDTest-21 (its rows that some of 21 classifiers got "
                        "wrong), or both (one table each)")
    p.add_argument("--clients", type=int, default=20, help="number of clients")
    p.add_argument("--split", default="paper", choices=["paper", "iid", "dirichlet"],
                   help="how the normal training rows are split among the clients: the paper's (sorted by "
                        "dst_bytes; the n mod clients rows with the largest dst_bytes are left out), iid, or "
                        "dirichlet over dst_bytes bins")
    p.add_argument("--global-scaler", default="blocks", choices=["blocks", "all-normal"],
                   help="rows of the federated global scaler and of exact-federated: the split's blocks, or every "
                        "normal training row (the rows the split leaves out join the last client; exact-federated "
                        "then equals centralized PCA)")
    p.add_argument("--features", default="paper", choices=["paper", "onehot"],
                   help="the paper's 34 numeric features, or all 38 numeric ones plus one-hot protocol, service "
                        "and flag")
    p.add_argument("-k", type=int, default=30, help="subspace dimension (the paper's)")
    p.add_argument("--rounds", type=int, default=1000,
                   help="round cap of fedpg (which stops earlier, by --tol) and fedpg-decentralized (no stopping "
                        "rule: runs all of them; a ring of 20 needs up to ~600 rounds at k = 10)")
    p.add_argument("--tol", type=float, default=1e-6,
                   help="fedpg (linearized solver) stops once its Davis-Kahan estimate of the angle to the optimum "
                        "is below this (rad); 0 = run all --rounds")
    p.add_argument("--paper-rounds", type=int, default=100, help="rounds of fedpg-paper and fedpe-paper (the paper's)")
    p.add_argument("--protocol", default="train-quantile",
                   choices=["train-quantile", "q-statistic", "paper-minmax", "paper-quantile"],
                   help="threshold protocol: honest (train-quantile, q-statistic: from normal training rows only) or "
                        "the paper's (paper-minmax with --tau, paper-quantile with --quantile: from the test scores)")
    p.add_argument("--tau", type=float, default=0.00025,
                   help="paper-minmax threshold on the min-max normalised test scores (the authors' value for their "
                        "variant)")
    p.add_argument("--quantile", type=float, default=0.5, help="paper-quantile q")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="false-alarm level of the honest protocols (train-quantile: the (1 - alpha) quantile of the "
                        "normal training rows' residuals)")
    p.add_argument("--eta", type=float, default=None,
                   help="clean/decentralized FedPG step size (default: unset, the data-derived default solvers; "
                        "set: the Riemannian/ADMM local-step schedule, e.g. the previous --eta 0.05 --rho 1 "
                        "--local-steps 30)")
    p.add_argument("--rho", type=float, default=None, help="clean/decentralized FedPG ADMM penalty (default: unset)")
    p.add_argument("--local-steps", type=int, default=None,
                   help="clean/decentralized FedPG local steps (default: unset)")
    p.add_argument("--fraction", type=float, default=1.0, help="clean FedPG client fraction per round")
    p.add_argument("--paper-eta", type=float, default=1e-4, help="paper variants' step size (the paper's)")
    p.add_argument("--paper-rho", type=float, default=0.01, help="paper variants' ADMM penalty (the paper's)")
    p.add_argument("--paper-local-steps", type=int, default=30, help="paper variants' local steps (the paper's)")
    p.add_argument("--paper-fraction", type=float, default=0.1, help="paper variants' client fraction (the paper's)")
    p.add_argument("--topology", default="ring", help="graph of the decentralized variant: ring, torus, complete, "
                                                      "star, regular, erdos_renyi, watts_strogatz, barabasi_albert "
                                                      "or exponential")
    p.add_argument("--degree", type=int, default=4, help="degree of regular / watts_strogatz graphs")
    p.add_argument("--prob", type=float, default=0.3, help="edge probability of erdos_renyi / watts_strogatz")
    p.add_argument("--attach", type=int, default=2, help="edges per new node of barabasi_albert graphs")
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (>= 1)")
    p.add_argument("--out", default="results/fedpca", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace other results in the output folder (removes only fedsim's files; without it a "
                        "folder holding results of other settings is refused, the same settings are re-run)")
    p.set_defaults(func=cmd_fedpca, locks_out=True)


def _add_flower(sub) -> None:
    p = sub.add_parser("flower", help="run FedAvg, FedPG or gossip on Flower (in process or Flower's simulation engine)",
                       description="Run fedsim's algorithms as Flower apps (fedsim/flower/apps.py): the same node "
                                   "and server steps as the engine; writes results.json, summary.txt and final.pt.")
    from fedsim.flower.runner import add_arguments as flower_arguments

    flower_arguments(p)
    p.set_defaults(func=cmd_flower, locks_out=True)


def _add_topology(sub) -> None:
    p = sub.add_parser("topology", help="describe a topology (nodes, edges, degrees, spectral gap)",
                       description="Build a topology and print its size, degree range and spectral gap.")
    p.add_argument("name", help="ring, torus, complete, star, regular, erdos_renyi, watts_strogatz, "
                                "barabasi_albert, exponential, edge_list, directed_ring, directed_exponential")
    p.add_argument("-n", type=int, help="number of nodes (required, except for edge_list)")
    p.add_argument("-k", type=int, help="degree (regular, watts_strogatz: required there)")
    p.add_argument("-p", type=float, help="probability (erdos_renyi, watts_strogatz: required there)")
    p.add_argument("-m", type=int, help="edges per new node (barabasi_albert: required there)")
    p.add_argument("--path", help="edge-list file (edge_list: required there)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random graphs (>= 0)")
    p.add_argument("--mixing", default="metropolis", choices=["metropolis", "max_degree", "uniform"],
                   help="mixing weights of an undirected graph (a directed one uses push-sum)")
    p.add_argument("--draw", metavar="PNG", help="save a drawing of the graph to this PNG file (default: no drawing)")
    p.set_defaults(func=cmd_topology)


def main(argv: list[str] | None = None) -> int:
    """Run the ``fedsim`` command line and return its exit status.

    An error the user can cause prints one line ``fedsim: error: ...`` on stderr and returns 2 (usage errors
    included). Ctrl-C at any point, imports included, prints one line and returns 130. A reader that closes
    stdout early (``fedsim topology ... | head``) ends the command quietly with 141 (128 + SIGPIPE, as the
    shell reports a command a closed pipe stopped). Anything else is a bug and keeps its traceback.
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe surfaces here, not as a warning at interpreter exit
        return code
    except KeyboardInterrupt:
        print("fedsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _discard_stdout()
        return 141


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again (Python's SIGPIPE recipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (e.g. captured)
        pass


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)   # parse_args, except that an unavailable command takes any
        if extra and not getattr(args, "unavailable", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help (0) or a usage error (2, already printed in one line)
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from fedsim.config import ConfigError
    from fedsim.data import DataNotFoundError, MalformedDataError
    from fedsim.fedpca.problem import SubspaceDimensionError
    from topologies import TopologyError

    try:
        _check_args(args)
        # a one-shot command (set_defaults(locks_out=True)) holds its --out folder while it runs: a second
        # process writing there meanwhile is refused (`fedsim run` and the studies lock their folders themselves)
        with folder_lock(args.out) if getattr(args, "locks_out", False) else contextlib.nullcontext():
            return args.func(args)
    except (ConfigError, TopologyError, DataNotFoundError, MalformedDataError, SubspaceDimensionError,
            RunFolderError) as e:
        message = e.describe("--data-dir") if isinstance(e, DataNotFoundError) else str(e)
        print(f"fedsim: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", "")
        out = getattr(args, "out", None)
        if hint == RESUME_HINT and getattr(args, "config", None) and out and not (Path(out) / "checkpoint.pt").exists():
            hint = "; no checkpoint was written yet: run the same command again to start over"   # `fedsim run`
        print(f"fedsim: interrupted{hint}", file=sys.stderr)
        return 130
    except OSError as e:   # the file system refused a path (a folder that cannot be made, a full disk, ...)
        if isinstance(e, BrokenPipeError) or e.filename is None:
            raise
        print(f"fedsim: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2


def _check_args(args) -> None:
    """Refuse paths and numbers that cannot work before any work starts; creates nothing."""
    from fedsim.config import ConfigError

    if getattr(args, "seed", 0) < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if getattr(args, "run_options", False):   # run, quickstart: the options of add_run_options
        if args.threads is not None and args.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0 = torch's own choice), got {args.threads}")
        if getattr(args, "rounds", None) is not None and args.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
    data_dir = getattr(args, "data_dir", None)
    if data_dir and Path(data_dir).expanduser().exists() and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(f"--data-dir {data_dir} is a file, not a folder")
    out = getattr(args, "out", None)
    if out is not None or args.command == "run":
        problem = _folder_problem(Path(out if out is not None else "results"))
        if problem:
            raise ConfigError(f"--out {out if out is not None else '(default results/<name>)'}: {problem}")
    draw = getattr(args, "draw", None)
    if draw is not None:
        path = Path(draw)
        problem = "is a folder; give a file name" if path.is_dir() else \
            _folder_problem(path.parent, create=False)
        if problem:
            raise ConfigError(f"--draw {draw}: {problem}")


def _folder_problem(path: Path, create: bool = True) -> str | None:
    """Why ``path`` cannot be (``create``: or become) a folder fedsim can write into; None if it can."""
    if path.is_dir():
        return None if os.access(path, os.W_OK | os.X_OK) else f"cannot write into {path} (permission denied)"
    if path.exists():
        return f"{path} is a file, not a folder"
    if not create:
        return f"folder {path} does not exist"
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create folders in {parent} (permission denied)"
    return None


if __name__ == "__main__":
    sys.exit(main())
