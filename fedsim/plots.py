"""Figures from run histories (matplotlib, Agg backend; no simulation logic here)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedsim.engine import Result  # noqa: E402
from fedsim.files import save_figure_atomically  # noqa: E402

def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, save (format from the suffix; atomically, creating the folder) and close a figure."""
    fig.tight_layout()
    try:
        return save_figure_atomically(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


ACCURACY_KEYS = ("global_acc", "average_acc", "nodes_acc")


def accuracy_key(result: Result) -> str:
    """The headline accuracy metric of a run (global model for FedAvg, average model for gossip)."""
    for key in ACCURACY_KEYS:
        if key in result.keys():
            return key
    raise KeyError(f"no accuracy metric recorded; recorded: {result.keys()}")


def plot_runs(results: dict[str, Result], path: str | Path, title: str = "") -> Path:
    """Test accuracy and training loss versus round for each named run, saved as a PNG."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    for label, res in results.items():
        rows = [r for r in res.history if accuracy_key(res) in r]
        (line,) = ax_acc.plot([r["round"] for r in rows], [r[accuracy_key(res)] for r in rows], marker=".",
                              label=label)
        if "nodes_acc_min" in res.keys():
            ax_acc.fill_between([r["round"] for r in rows], [r["nodes_acc_min"] for r in rows],
                                [r[accuracy_key(res)] for r in rows], alpha=0.15, color=line.get_color())
        ax_loss.plot(res.column("round"), res.column("train_loss"), label=label)
    ax_acc.set(xlabel="round", ylabel="test accuracy", title="test accuracy (shaded: worst sampled node)")
    ax_loss.set(xlabel="round", ylabel="training loss", yscale="log", title="local training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_roc(curves: dict, path: str | Path, title: str = "") -> Path:
    """ROC curves ``{label: (fpr, tpr)}`` on one axis, saved as a PNG."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title or "ROC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
