"""Leakage vs defence under ``fedsim experiment leakage_defences`` (fedsim.studies): one point per seed, each running
experiments/leakage_defences.py (whose own command line stays as it is) into the point's folder; the rows of its
results.csv are aggregated over seeds (mean, std, min-max of the attack SSIM / PSNR and the FedAvg test accuracy
at every defence strength) and drawn with spread bands.

    fedsim experiment leakage_defences                    # CPU default: 1 victim x 200 iterations, 3 seeds
    fedsim experiment leakage_defences --config experiments/configs/leakage_defences_full.toml --workers 3
"""

from __future__ import annotations

import io
from pathlib import Path

from experiments.leakage_defences import DEFAULTS as SCRIPT_DEFAULTS
from experiments.leakage_defences import SWEEPS, XLABELS, main, read_rows

NAME = "leakage_defences"
CPU_TIME = "about 3 min (needs MNIST and the MNIST victims in the data folder)"   # README
DEFAULTS = {"name": "cpu", "seeds": (0, 1, 2), "sweeps": tuple(SWEEPS), **SCRIPT_DEFAULTS, "lr": 0.1, "clip_rel": 1.0,
            "data_dir": ""}
GROUP_BY = ("sweep", "level", "strength", "attack")
CURVE_X = "level"
NUMBERS = ("p", "sigma", "fraction", "batch", "clip", "noise_ratio", "label_ok", "ssim", "ssim_std", "psnr", "mse",
           "attack_iterations", "attack_seconds", "test_acc", "train_seconds")


def validate(cfg: dict) -> None:
    from fedsim.config import ConfigError

    bad = [s for s in cfg["sweeps"] if s not in SWEEPS]
    if bad:
        raise ConfigError(f"sweeps: unknown sweep {bad[0]!r}; known: {', '.join(SWEEPS)}")
    for key in ("victims", "iterations", "rounds", "clients", "local_steps", "train_batch"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if not 1 <= cfg["clients_per_round"] <= cfg["clients"]:
        raise ConfigError(f"clients_per_round must be in [1, clients = {cfg['clients']}], got {cfg['clients_per_round']}")
    if cfg["lr"] <= 0 or cfg["clip_rel"] <= 0 or any(s < 0 for s in cfg["seeds"]):
        raise ConfigError("lr and clip_rel must be > 0, seeds >= 0")


def check_inputs(cfg: dict) -> None:
    from attacks.victims import load_victims
    from fedsim import data as fdata

    load_victims("mnist", cfg["data_dir"] or None)
    fdata.load("mnist", cfg["data_dir"] or None)


def points(cfg: dict):
    from fedsim.studies import Point

    return [Point.of(s) for s in cfg["seeds"]]


def run_point(cfg: dict, point, folder) -> list[dict]:
    """This script on one seed into ``folder`` (its own resume: settings already in results.csv are skipped)."""
    import contextlib

    argv = ["--seed", str(point.seed), "--out", str(folder), "--sweeps", ",".join(cfg["sweeps"])]
    for key in ("victims", "iterations", "rounds", "clients", "clients_per_round", "local_steps", "train_batch",
                "lr", "clip_rel"):
        argv += [f"--{key.replace('_', '-')}", str(cfg[key])]
    if cfg["data_dir"]:
        argv += ["--data-dir", cfg["data_dir"]]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(argv)
    rows = []
    for r in read_rows(Path(folder) / "results.csv"):
        if r["sweep"] in cfg["sweeps"]:
            level = [float(v) for v in SWEEPS[r["sweep"]]].index(float(r["strength"]))
            rows.append({"sweep": r["sweep"], "level": level, "strength": float(r["strength"]), "attack": r["attack"],
                         **{k: float(r[k]) if r[k] != "" else None for k in NUMBERS}})
    return rows


def summary(cfg: dict, groups: list[dict]) -> list[str]:
    from fedsim.plots import seeds_text

    lines = [f"attack SSIM and FedAvg test accuracy vs defence: mean +- std over {seeds_text(len(cfg['seeds']))}"]
    for g in groups:
        acc = g["test_acc"]
        lines.append(f"  {g['sweep']:8s} {g['strength']:<7g} {g['attack']:4s} ssim {g['ssim']['mean']:.3f} +- "
                     f"{g['ssim']['std']:.3f}  psnr {g['psnr']['mean']:5.1f} dB  test_acc {acc['mean']:.3f} +- "
                     f"{acc['std']:.3f}")
    return lines


def figures(cfg: dict, groups: list[dict], curves: list[dict]) -> dict:
    from fedsim.plots import plt, seeds_text
    from fedsim.studies import band_plot

    sweeps = list(cfg["sweeps"])
    fig, axes = plt.subplots(2, len(sweeps), figsize=(4 * len(sweeps), 6.8), squeeze=False)
    labels = {"ig": "IG (ignores the defence)", "dia": "DIA"}
    for j, sweep in enumerate(sweeps):
        mine = [g for g in groups if g["sweep"] == sweep]
        band_plot(axes[0, j], mine, "level", "ssim", "attack", labels)
        band_plot(axes[1, j], [g for g in mine if g["attack"] == "ig"], "level", "test_acc", "attack",
                  {"ig": "FedAvg with the defence"})
        for ax in axes[:, j]:
            ax.set_xticks(range(len(SWEEPS[sweep])), [f"{v:g}" for v in SWEEPS[sweep]])
            if ax.lines:
                ax.legend(fontsize=7)
        axes[0, j].set(ylim=(-0.05, 1.05), title=f"{sweep} (stronger ->)", ylabel="attack SSIM (1 = exact)" if j == 0
                       else None)
        axes[1, j].set(ylim=(0, 1), xlabel=XLABELS[sweep], ylabel="test accuracy (fraction)" if j == 0 else None)
    fig.suptitle(f"leakage_defences: MNIST, DropoutMLP 784-512x3; {cfg['victims']} victim(s) x {cfg['iterations']} "
                 f"attack iterations, FedAvg {cfg['rounds']} rounds {cfg['clients_per_round']}/{cfg['clients']} "
                 f"clients\nline: mean over {seeds_text(len(cfg['seeds']))}, band: min-max", fontsize=9)
    return {"leakage_vs_defence": fig}

