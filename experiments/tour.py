"""The quickstart tour: three short studies that show what fedsim does, and one report (``fedsim quickstart``).

Parts (each a pure function of its settings, the data folder and an output folder; none prints):

* ``gossip_part``: plain vs variance-corrected gossip on scikit-learn's bundled digits (offline): nodes start
  from their own Xavier initialisations, so plain averaging shrinks the weights' variance and training stalls;
  the corrected rule keeps it (``fedsim/averaging.py``, docs/gossip.md). Several seeds, mean and spread.
* ``fedpca_part``: federated PCA anomaly detection on NSL-KDD with the honest threshold (the (1 - alpha) quantile
  of the normal training rows' residuals; ``fedsim/pipelines/fedpca_nslkdd.py``).
* ``attack_part``: the Dropout Inversion Attack next to Inverting Gradients on MNIST victims (``attacks/``): the
  DIA victim set where present, else the first MNIST test images (downloaded on first use when online).

A part whose data is missing (and cannot be downloaded) is skipped: its ``Part.note`` says how to get the data.
``write_report`` writes ``report.md`` with every part's headline numbers and figures, and ``tour.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from fedsim.files import atomic_write_text

NSLKDD_HINT = ("put KDDTrain+.txt[.gz] and KDDTest+.txt into <data dir>/nsl-kdd/ (https://www.unb.ca/cic/datasets/"
               "nsl.html), or go online once (fedsim downloads and checksums them), or pass --data-dir")
VICTIMS_HINT = ("put dia_mnist_128.npz (the DIA victim set, see docs/attacks.md) or the MNIST test set "
                "(t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) into <data dir>/mnist/, or go online once "
                "(fedsim downloads both from their official sources), or pass --data-dir")


@dataclass(frozen=True)
class TourSettings:
    """The sizes of the tour's parts (the defaults run in 10-20 s on one CPU thread)."""

    gossip_clients: int = 50
    gossip_degree: int = 8
    gossip_rounds: int = 150
    gossip_seeds: tuple[int, ...] = (0, 1, 2)
    gossip_hidden: tuple[int, ...] = (64, 64)
    fedpca_clients: int = 20
    fedpca_k: int = 30
    fedpca_methods: tuple[str, ...] = ("centralized", "fedpg", "fedpg-paper", "fedpe-paper")
    fedpca_alpha: float = 0.01
    attack_victims: int = 4
    attack_iterations: int = 300
    attack_dropout: float = 0.25
    seed: int = 0


@dataclass
class Part:
    """One part of the tour: its headline numbers (``rows``), figures, and why it was skipped (``note``)."""

    name: str
    title: str
    setting: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)      # file names in the output folder
    note: str | None = None                                # set: the part was skipped, and this says why
    seconds: float = 0.0
    earlier: bool = False                                  # not run this time: kept from the folder's last tour

    @property
    def skipped(self) -> bool:
        return self.note is not None


def fmt(v) -> str:
    """How a number is written in the report (and looked up by the tests)."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


# --------------------------------------------------------------------------- gossip: plain vs corrected


def gossip_config(rule: str, seed: int, s: TourSettings):
    """The fedsim run config of one gossip point (rule "beta" = plain mixing with beta 0.5, or "variance_corrected")."""
    from fedsim.config import from_dict

    return from_dict({
        "name": f"tour-gossip-{rule}-seed{seed}", "seed": seed, "rounds": s.gossip_rounds,
        "clients": s.gossip_clients, "eval_every": max(1, s.gossip_rounds // 15), "threads": 1,
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": list(s.gossip_hidden), "init": "xavier_fan_in"},
        "algorithm": {"name": "gossip", "lr": 0.01, "momentum": 0.9, "local_steps": 1, "batch_size": 32,
                      "averaging": rule, "beta": 0.5, "same_init": False},
        "topology": {"name": "regular", "k": s.gossip_degree}})


GOSSIP_RULES = {"beta": "plain (beta = 0.5)", "variance_corrected": "variance-corrected"}


def gossip_part(out: Path, s: TourSettings) -> Part:
    """Plain vs variance-corrected gossip over ``s.gossip_seeds``; writes gossip.png and gossip.csv."""
    from fedsim.experiment import run
    from fedsim.plots import plot_seed_bands

    start = time.perf_counter()
    curves = {key: {} for key in ("nodes_acc", "weight_var_ratio")}
    rows = []
    for rule, label in GOSSIP_RULES.items():
        finals = {key: [] for key in curves}
        for seed in s.gossip_seeds:
            res = run(gossip_config(rule, seed, s))
            for key in curves:
                pts = [(r["round"], r[key]) for r in res.history if key in r and r[key] == r[key]]
                x, y = [p[0] for p in pts], [p[1] for p in pts]
                curves[key].setdefault(label, (x, []))[1].append(y)
                finals[key].append(y[-1])
        acc = finals["nodes_acc"]
        rows.append({"rule": label, "node_acc_mean": _mean(acc), "node_acc_min": min(acc), "node_acc_max": max(acc),
                     "weight_var_ratio": _mean(finals["weight_var_ratio"]), "seeds": len(acc)})
    setting = (f"digits, {s.gossip_clients} nodes on a random {s.gossip_degree}-regular graph, Dirichlet(0.5) split, "
               f"MLP 64-{'-'.join(map(str, s.gossip_hidden))}-10 from each node's own Xavier init, "
               f"{s.gossip_rounds} rounds, seeds {', '.join(map(str, s.gossip_seeds))}")
    plot_seed_bands(
        [("nodes_acc", "mean node test accuracy (fraction)", "node accuracy (band: min-max over seeds)", False),
         ("weight_var_ratio", "weight variance / Xavier variance", "weight variance (band: min-max over seeds)",
          True)],
        curves, out / "gossip.png", x_label="round",
        title=f"plain vs variance-corrected gossip: {s.gossip_clients} nodes, {s.gossip_degree}-regular, digits")
    lines = ["rule,seed,node_acc_final,weight_var_ratio_final"]
    for label in GOSSIP_RULES.values():
        for seed, acc, var in zip(s.gossip_seeds, (y[-1] for y in curves["nodes_acc"][label][1]),
                                  (y[-1] for y in curves["weight_var_ratio"][label][1])):
            lines.append(f"{label},{seed},{acc!r},{var!r}")
    atomic_write_text(out / "gossip.csv", "\n".join(lines) + "\n")
    return Part("gossip", "Variance-corrected vs plain gossip", setting,
                ["rule", "node_acc_mean", "node_acc_min", "node_acc_max", "weight_var_ratio", "seeds"], rows,
                ["gossip.png", "gossip.csv"], seconds=time.perf_counter() - start)


def _mean(xs) -> float:
    return float(sum(xs) / len(xs))


# --------------------------------------------------------------------------- federated PCA on NSL-KDD


def fedpca_part(out: Path, s: TourSettings, data_dir=None) -> Part:
    """FedPG and friends on NSL-KDD (KDDTest+), honest train-quantile threshold; writes roc.png."""
    from fedsim import anomaly
    from fedsim.data import DataNotFoundError
    from fedsim.pipelines import fedpca_nslkdd as pipeline
    from fedsim.plots import plot_roc

    title = "Federated PCA anomaly detection on NSL-KDD"
    start = time.perf_counter()
    try:
        data = pipeline.prepare(data_dir, n_clients=s.fedpca_clients, seed=s.seed)
    except DataNotFoundError:
        return Part("fedpca", title, note=f"skipped federated PCA: NSL-KDD is not in {_folder(data_dir)}/nsl-kdd/ and "
                                          f"could not be downloaded (offline?); {NSLKDD_HINT}")
    rows, rocs = [], {}
    for name in s.fedpca_methods:
        res = pipeline.train_method(name, data, s.fedpca_k, seed=s.seed)
        ev = pipeline.evaluate_method(res, data, "train-quantile", alpha=s.fedpca_alpha)
        rows.append({"method": name, "auc": ev["auc"], "f1": ev["f1"], "fpr": ev["fpr"], "accuracy": ev["accuracy"],
                     "rounds": res.extra.get("rounds"), "MB_sent": res.bytes_sent / 1e6})   # None: one shot
        scores = pipeline.scores_on(res, data)
        if scores is not None:
            rocs[name] = anomaly.roc_points(scores, data.test().is_attack)
    setting = (f"{data.test().describe()}; {s.fedpca_clients} clients (the paper's split by dst_bytes), k = "
               f"{s.fedpca_k}; threshold: the {100 * (1 - s.fedpca_alpha):g}% quantile of the normal training rows' "
               f"residuals (honest: no test statistics); metrics in %")
    plot_roc(rocs, out / "roc.png", title=f"NSL-KDD KDDTest+, {s.fedpca_clients} clients, k = {s.fedpca_k}: ROC")
    return Part("fedpca", title, setting, ["method", "auc", "f1", "fpr", "accuracy", "rounds", "MB_sent"], rows,
                ["roc.png"], seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------- gradient leakage: DIA


def attack_part(out: Path, s: TourSettings, data_dir=None) -> Part:
    """IG and DIA on ``s.attack_victims`` MNIST victims (the DIA paper's MLP, dropout p); writes reconstructions.png.

    Victims: the DIA victim set (mnist/dia_mnist_128.npz), else the first MNIST test images."""
    import torch

    from attacks.experiment import run_attacks, save_grid
    from attacks.inversion import InversionConfig
    from attacks.victims import load_victims
    from fedsim.data import DataNotFoundError

    title = "Dropout Inversion Attack on MNIST"
    start = time.perf_counter()
    try:
        load_victims("mnist", data_dir)
        images, source = None, "MNIST victims (dia_mnist_128)"
    except DataNotFoundError:
        from fedsim.data import load_mnist_test

        try:   # the MNIST test set instead: downloaded on first use when online
            test = load_mnist_test(data_dir)
        except DataNotFoundError:
            return Part("attack", title, note=f"skipped the attack: no MNIST victims or test set in {_folder(data_dir)}"
                                              f"/mnist/, and the test set could not be downloaded (offline?); "
                                              f"{VICTIMS_HINT}")
        n = s.attack_victims
        images = (np.rint(test.x[:n, 0] * 255).astype(np.uint8), test.y[:n])
        source = "MNIST test images (dia_mnist_128.npz not found)"
    threads = torch.get_num_threads()
    try:
        rows, recon = run_attacks(list(range(s.attack_victims)), ("ig", "dia"), "mlp", "mnist", s.attack_dropout,
                                  InversionConfig(max_iterations=s.attack_iterations), data_dir, s.seed,
                                  images=images)
    finally:
        torch.set_num_threads(threads)
    summary = []
    for attack, label in (("ig", "IG (ignores dropout)"), ("dia", "DIA")):
        mine = [r for r in rows if r["attack"] == attack]
        summary.append({"attack": label, "ssim": _mean([r["ssim"] for r in mine]),
                        "psnr": _mean([r["psnr"] for r in mine]), "label_ok": _mean([r["label_ok"] for r in mine]),
                        "victims": len(mine)})
    setting = (f"{s.attack_victims} {source}, each sharing the gradient of one image on the DIA "
               f"paper's MLP (784-512x3-10) in train mode with dropout p = {s.attack_dropout}; labels by iDLG; "
               f"{s.attack_iterations} iterations (official: 20,000); SSIM/PSNR in [0, 1] pixels, mean over victims")
    save_grid(recon, out / "reconstructions.png",
              title=f"IG vs DIA on MNIST, DIA MLP, dropout p = {s.attack_dropout}, {s.attack_iterations} iterations")
    return Part("attack", title, setting, ["attack", "ssim", "psnr", "label_ok", "victims"], summary,
                ["reconstructions.png"], seconds=time.perf_counter() - start)


def _folder(data_dir) -> str:
    """The data folder that was searched (``--data-dir``, else $FEDSIM_DATA_DIR, else the cache)."""
    from fedsim.data.paths import data_dir as resolve

    return str(resolve(data_dir))


# --------------------------------------------------------------------------- the report


def run_tour(out: str | Path, settings: TourSettings = TourSettings(), data_dir=None, parts=("gossip", "fedpca",
             "attack"), on_part=None) -> list[Part]:
    """Run the named parts in order (``on_part(name)`` before each); returns them (skipped ones carry a note)."""
    out = Path(out)
    funcs = {"gossip": lambda: gossip_part(out, settings),
             "fedpca": lambda: fedpca_part(out, settings, data_dir),
             "attack": lambda: attack_part(out, settings, data_dir)}
    done = []
    for name in parts:
        if on_part:
            on_part(name)
        done.append(funcs[name]())
    return done


def runs_part(rows: list[dict], seconds: float) -> Part:
    """The quickstart's three digits runs (FedAvg, D-PSGD on a ring, on a 4-regular graph with a Dirichlet split)."""
    return Part("runs", "FedAvg vs decentralized SGD on digits",
                "scikit-learn digits (1,437 train / 360 test), MLP 64-32-10, 10 clients; test accuracy of the global "
                "(FedAvg) or network-average (gossip) model after the last round",
                ["run", "algorithm", "topology", "rounds", "test_acc", "worst_node_acc", "MB_sent"],
                [{k: r[k] for k in ("run", "algorithm", "topology", "rounds", "test_acc", "worst_node_acc",
                                    "MB_sent")} for r in rows], ["accuracy.png", "diagnostics.png"], seconds=seconds)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """The rows as a Markdown table, each column written as in the terminal (``fedsim.cli.format_column``)."""
    from fedsim.cli import format_column

    head = "| " + " | ".join(columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    by_column = [format_column([r.get(c) for r in rows]) for c in columns]
    return "\n".join([head, sep, *("| " + " | ".join(col[i] for col in by_column) + " |" for i in range(len(rows)))])


def report_text(parts: list[Part]) -> str:
    """report.md: a headline table per part, its setting, its figures; a skipped part's note."""
    lines = ["# fedsim quickstart tour", "",
             "Each section: what ran, the headline numbers, the figures. Regenerate with `fedsim quickstart`. "
             "These are small settings; the full reproductions, next to the papers' numbers, are in the repository's "
             "docs/REPRODUCTION.md.", ""]
    for p in parts:
        lines += [f"## {p.title}", ""]
        if p.earlier:
            lines += ["*Not run this time (`--parts`): from an earlier `fedsim quickstart` in this folder, whose "
                      "figures these are.*", ""]
        if p.skipped:
            lines += [f"**Skipped.** {p.note}", ""]
            continue
        lines += [f"Setting: {p.setting}. ({p.seconds:.1f} s)", "", markdown_table(p.rows, p.columns), ""]
        lines += [f"![{f}]({f})" if f.endswith(".png") else f"Data: [{f}]({f})" for f in p.figures] + [""]
    return "\n".join(lines)


def earlier_parts(out: str | Path, names: list[str]) -> list[Part]:
    """The parts ``names`` as the folder's last tour.json recorded them (marked ``earlier``), for a report that
    describes every figure in the folder when only some parts ran; none if there is no readable tour.json."""
    try:
        recorded = json.loads((Path(out) / "tour.json").read_text())
        known = {f.name for f in fields(Part)}
        parts = {d["name"]: Part(**{k: v for k, v in d.items() if k in known}) for d in recorded}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
    return [replace(parts[n], earlier=True) for n in names if n in parts and not parts[n].skipped]


def write_report(out: str | Path, parts: list[Part]) -> Path:
    """Write report.md and tour.json (every part, its rows and notes) into ``out``; returns report.md's path."""
    out = Path(out)
    parts_json = [asdict(p) for p in parts]
    for p in parts_json:   # strict JSON: NaN / inf -> null
        p["rows"] = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()}
                     for r in p["rows"]]
    atomic_write_text(out / "tour.json", json.dumps(parts_json, indent=1, default=str, allow_nan=False) + "\n")
    return atomic_write_text(out / "report.md", report_text(parts) + "\n")


# --------------------------------------------------------------------------- studies, for the notebooks

NOTEBOOK_TINY = {
    "gossip_clients": {"nodes": [16, 32], "seeds": [0, 1], "rounds": 12, "eval_every": 2},
    "topologies": {"graphs": ["ring", "torus", "regular", "exponential"], "nodes": [16], "seeds": [0, 1],
                   "consensus_rounds": 60, "rounds": 10},
    "fedpca_clients": {"clients": [5, 10], "methods": ["fedpg", "exact-federated", "local-only"],
                       "seeds": [0, 1]},
    "leakage_defences": {"seeds": [0, 1], "sweeps": ["dropout", "noise", "topk"], "victims": 1, "iterations": 30,
                         "rounds": 2, "clients": 4, "clients_per_round": 2},
}
"""Tiny configs of the studies the notebooks show when no results exist (seconds each on one thread)."""


def study_results(name: str, results: str | Path = "results", run: str = "cpu", data_dir=None) -> dict:
    """The metrics of ``results/<name>/<run>`` (what ``fedsim experiment NAME`` writes); where there are none, the
    study's tiny config (``NOTEBOOK_TINY``) is run first into ``results/<name>/notebook-tiny`` and returned.

    The dict is the study's metrics.json plus ``"run"``: the run id whose results these are.
    """
    import experiments
    from fedsim import studies

    results = Path(results)
    if not (results / name / run / "metrics.json").is_file():
        run = "notebook-tiny"
        overrides = {**NOTEBOOK_TINY[name], "name": run}
        if name in ("fedpca_clients", "leakage_defences") and data_dir is not None:
            overrides["data_dir"] = str(data_dir)
        if not (results / name / run / "metrics.json").is_file():
            studies.run_study(experiments.study(name), overrides=overrides, results=results, progress=False)
    return {**studies.load_results(name, run, results), "run": run}


def study_figures(name: str, metrics: dict) -> dict:
    """The study's own figures (``{name: Figure}``) drawn from its metrics (``study_results``)."""
    import experiments

    return experiments.study(name).figures(metrics["config"], metrics["groups"], metrics["curves"])
