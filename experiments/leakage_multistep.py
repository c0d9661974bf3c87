"""How much IG loses when the victim takes several local SGD steps and the attacker treats the update as one gradient.

A victim holding ONE MNIST image starts from the public model w0 (DropoutMLP(p=0), seeded init), takes S steps
of plain SGD (fedsim's ``LocalSGD``, batch = that image) at learning rate lr and sends w_S. The attacker knows
w0, lr and S, forms the pseudo-gradient (w0 - w_S) / (S lr) = mean of the S step gradients (taken at
w0, w1, ..., w_{S-1}), infers the label from it (iDLG) and runs IG at w0 for a fixed iteration budget. With
S = 1 this is exact. Per (lr, S, victim) we report SSIM / PSNR of the reconstruction, whether the label was
right, and how far the pseudo-gradient is from the true gradient at w0 (cosine), next to the victim's loss
after its S steps (how far it trained). For contrast, ``ssim_rank1``: the image read off the first layer's
update in closed form (``rank1_input``), which is exact for any S when all steps use the same single image.

    python experiments/leakage_multistep.py                        # lr 0.1, 0.01; S 1 2 5 10; victims 0 1 2
    python experiments/leakage_multistep.py --iterations 300 --steps 1 5

All attacks run in one batched IG (``attacks.batched``: same losses, schedule and stop rules as ``invert``,
per victim), since every target is inverted at the same w0. ``--loop`` uses ``invert`` one at a time instead.
Writes results/leakage_multistep/multistep.csv (one row per run), summary.csv (mean over victims), grid.png
(originals, then one row of reconstructions per (lr, S)) and results.json (the settings, rows and summary). A folder
holding results of other settings is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attacks.batched import batched_invert
from attacks.capture import update_to_gradient
from attacks.inversion import InversionConfig, cosine_distance, invert
from attacks.labels import idlg_label
from attacks.metrics import mse, psnr, ssim
from attacks.models import DropoutMLP
from attacks.victims import MNIST_MEAN, MNIST_STD, load_victims, normalize_mnist
from fedsim.data import DataNotFoundError
from fedsim.engine import atomic_write_text
from fedsim.runs import RunFolderError, claim_results_folder, folder_lock
from fedsim.rng import Streams
from fedsim.state import ParamSpec
from fedsim.training import ClientData, LocalSGD

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"    # the workspace's data folder, if any
BOX = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)


def back(z: torch.Tensor) -> torch.Tensor:
    return (z * MNIST_STD + MNIST_MEAN).clamp(0, 1)


def rank1_input(first_layer_grad: torch.Tensor, low: float) -> torch.Tensor:
    """The input read off the first layer's update when every step saw the same single image (no attack loop).

    Each step adds delta_s x^T to the first Linear layer's weight (no bias here), so the summed update is
    (sum_s delta_s) x^T: rank 1 with right singular vector +-x / ||x||, for ANY number of steps. The scale and
    sign come from an MNIST prior: the background (most pixels) is black, i.e. at the box minimum ``low``.
    """
    v = torch.linalg.svd(first_layer_grad.double(), full_matrices=False)[2][0]
    if (v > 0).sum() > (v < 0).sum():
        v = -v
    return (v * (low / v.min())).to(first_layer_grad.dtype)


def victim_updates(model, w0, x, y, lr, steps):
    """Every victim's upload after ``steps`` SGD steps on its own image (one client per image), [V, P]."""
    data = ClientData.from_parts(x, y, [np.array([v]) for v in range(len(x))])
    trainer = LocalSGD(model, lr=lr, steps=steps, batch_size=1)
    clients = torch.arange(len(x))
    w_s = trainer.train(w0.expand(len(x), -1), clients, 0, data, Streams(0)).params
    return w_s


def run(victims, lrs, step_counts, iterations, data_dir=None, seed=0, loop=False, verbose=True):
    images, labels = load_victims("mnist", data_dir)
    x = normalize_mnist(images[victims])
    y = labels[victims]
    torch.manual_seed(seed)
    model = DropoutMLP(p=0.0)
    spec = ParamSpec.of(model)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    xt = torch.tensor(x)
    true_grads = []                                    # the one-step gradient at w0, per victim
    for v in range(len(victims)):
        model.eval()
        true_grads.append([g.detach() for g in torch.autograd.grad(
            F.cross_entropy(model(xt[v:v + 1]), torch.tensor(y[v:v + 1])), list(model.parameters()))])

    runs = []                                          # (lr, S, victim index, pseudo-gradient, victim loss)
    for lr in lrs:
        for S in step_counts:
            w_s = victim_updates(model, w0, x, y, lr, S)
            for v in range(len(victims)):
                g = update_to_gradient(model, w0, w_s[v], lr * S)
                torch.nn.utils.vector_to_parameters(w_s[v], model.parameters())
                with torch.no_grad():
                    loss_after = float(F.cross_entropy(model(xt[v:v + 1]), torch.tensor(y[v:v + 1])))
                runs.append((lr, S, v, g, loss_after))
    torch.nn.utils.vector_to_parameters(w0, model.parameters())

    config = InversionConfig(max_iterations=iterations)
    labels_hat = torch.tensor([[idlg_label(g[-1])] for _, _, _, g, _ in runs])
    start = time.perf_counter()
    if loop:
        recon, losses, its = [], [], []
        for (lr, S, v, g, _), lab in zip(runs, labels_hat):
            res = invert(model, g, lab, (1, 1, 28, 28), BOX, "ig", config=config, seed=seed)
            recon.append(res.x)
            losses.append(res.loss)
            its.append(res.iterations)
        recon = torch.stack(recon)
    else:
        targets = [torch.stack([g[k] for *_, g, _ in runs]) for k in range(len(spec.names))]
        res = batched_invert(model, targets, labels_hat, (1, 1, 28, 28), BOX, "ig", config=config,
                             seeds=[seed] * len(runs))
        recon, losses, its = res.x, res.loss.tolist(), res.iterations.tolist()
    seconds = time.perf_counter() - start

    rows, grid = [], {"truth": [back(xt[v:v + 1])[0, 0] for v in range(len(victims))]}
    for k, ((lr, S, v, g, loss_after), lab) in enumerate(zip(runs, labels_hat)):
        truth = xt[v:v + 1]
        r = recon[k]
        rows.append({
            "lr": lr, "steps": S, "victim": victims[v], "label_ok": int(int(lab) == int(y[v])),
            "cos_to_true_grad": round(1 - float(cosine_distance(g, true_grads[v])), 6),
            "victim_loss_after": round(loss_after, 6),
            "ssim": round(float(ssim(back(r), back(truth))), 4), "psnr": round(float(psnr(back(r), back(truth))), 2),
            "mse": round(float(mse(r, truth)), 5),
            "ssim_rank1": round(float(ssim(back(rank1_input(g[0], BOX[0]).reshape(truth.shape)), back(truth))), 4),
            "attack_loss": float(losses[k]), "iterations": int(its[k]),
        })
        grid.setdefault(f"lr {lr}, S {S}", []).append(back(r)[0, 0])
    return rows, seconds, grid


def summarise(rows):
    keys = sorted({(r["lr"], r["steps"]) for r in rows}, key=lambda k: (-k[0], k[1]))
    out = []
    for lr, S in keys:
        sel = [r for r in rows if r["lr"] == lr and r["steps"] == S]
        out.append({"lr": lr, "steps": S, "victims": len(sel),
                    "ssim_mean": round(float(np.mean([r["ssim"] for r in sel])), 4),
                    "ssim_min": round(float(np.min([r["ssim"] for r in sel])), 4),
                    "ssim_per_victim": " ".join(f"{r['ssim']:.3f}" for r in sel),
                    "ssim_rank1_mean": round(float(np.mean([r["ssim_rank1"] for r in sel])), 4),
                    "label_acc": round(float(np.mean([r["label_ok"] for r in sel])), 3),
                    "cos_to_true_grad": round(float(np.mean([r["cos_to_true_grad"] for r in sel])), 4),
                    "victim_loss_after": round(float(np.mean([r["victim_loss_after"] for r in sel])), 4)})
    return out


def write_csv(rows, path):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def table(summary) -> str:
    head = ("| lr | S | IG SSIM mean | IG SSIM min | IG SSIM per victim | rank-1 SSIM mean | label acc "
            "| cos(pseudo, true g) | victim loss after |")
    lines = [head, "|" + "---|" * 9]
    for s in summary:
        lines.append(f"| {s['lr']} | {s['steps']} | {s['ssim_mean']:.3f} | {s['ssim_min']:.3f} "
                     f"| {s['ssim_per_victim']} | {s['ssim_rank1_mean']:.4f} | {s['label_acc']:.2f} "
                     f"| {s['cos_to_true_grad']:.4f} | {s['victim_loss_after']:.3g} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victims", type=int, nargs="+", default=[0, 1, 2], help="indices into dia_mnist_128")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.1, 0.01], help="victim learning rates")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10], help="local SGD steps S")
    parser.add_argument("--iterations", type=int, default=1000, help="IG iteration budget (fixed)")
    parser.add_argument("--seed", type=int, default=0, help="model init and attacker init seed")
    parser.add_argument("--data-dir", default=str(SHARED) if SHARED.is_dir() else None,
                        help="folder holding mnist/dia_mnist_128.npz (default ../shared/data, else FEDSIM_DATA_DIR)")
    parser.add_argument("--out", default="results/leakage_multistep", help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--loop", action="store_true", help="invert one run at a time (attacks.inversion.invert)")
    parser.add_argument("--no-grid", action="store_true", help="do not write grid.png (originals + reconstructions)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of other settings in --out")
    args = parser.parse_args(argv)
    checks = [("--victims", args.victims, all(0 <= v <= 127 for v in args.victims), "in 0..127"),
              ("--steps", args.steps, all(v >= 1 for v in args.steps), ">= 1"),
              ("--lr", args.lr, all(math.isfinite(v) and v > 0 for v in args.lr), "> 0 and finite"),
              ("--iterations", args.iterations, args.iterations >= 1, ">= 1"),
              ("--threads", args.threads, args.threads >= 1, ">= 1")]
    for flag, value, ok, rule in checks:
        if not ok:
            parser.error(f"{flag} must be {rule}, got {value}")
    out = Path(args.out)
    settings = {k: getattr(args, k) for k in ("victims", "lr", "steps", "iterations", "seed")}
    try:
        with folder_lock(out):   # a second process writing here meanwhile is refused
            claim_results_folder(out, "leakage_multistep", settings, args.overwrite)
            study(args, out, settings)
    except RunFolderError as e:
        print(f"leakage_multistep: error: {e}", file=sys.stderr)
        return 2
    except DataNotFoundError as e:
        print(f"leakage_multistep: error: {e.describe('--data-dir')}", file=sys.stderr)
        return 2
    return 0


def study(args, out: Path, settings: dict) -> None:
    """Run every (lr, S, victim), write the CSVs, results.json and the grid into ``out`` and print the table."""
    torch.set_num_threads(args.threads)
    rows, seconds, grid = run(args.victims, args.lr, args.steps, args.iterations, args.data_dir, args.seed, args.loop)
    summary = summarise(rows)
    write_csv(rows, out / "multistep.csv")
    write_csv(summary, out / "summary.csv")
    if not args.no_grid:
        from attacks.experiment import save_grid

        save_grid(grid, out / "grid.png")
    elif args.overwrite and (out / "grid.png").is_file():   # another run's grid must not sit beside these results
        (out / "grid.png").unlink()
    print(f"IG, DropoutMLP(p=0), MNIST victims {args.victims}, {args.iterations} iterations, seed {args.seed}; "
          f"attack time {seconds:.0f} s ({'loop' if args.loop else 'batched'}, {args.threads} thread(s))")
    print(table(summary))
    grid_note = "" if args.no_grid else f", {out / 'grid.png'}"
    atomic_write_text(out / "results.json", json.dumps({"command": "leakage_multistep", "args": settings,
                                                        "rows": rows, "summary": summary}, indent=1, default=str))
    print(f"wrote {out / 'multistep.csv'}, {out / 'summary.csv'}, {out / 'results.json'}{grid_note}")


if __name__ == "__main__":
    sys.exit(main())
