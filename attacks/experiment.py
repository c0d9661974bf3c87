"""Run IG, DIA and informed IG against victims' gradients and compare them (used by ``fedsim attack``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attacks.inversion import InversionConfig, invert
from attacks.labels import idlg_label
from attacks.metrics import mse, psnr, ssim
from attacks.models import DropoutMLP, dropout_sites
from attacks.victims import MNIST_MEAN, MNIST_STD, load_victims, normalize_mnist

ATTACKS = ("ig", "dia", "informed")


def victim_gradient(model, x, y):
    """The gradient a victim shares (train mode, dropout active) and the masks it drew (ground truth)."""
    sites = dropout_sites(model)
    for s in sites:
        s.record = True
    model.train()
    grads = [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))]
    masks = [s.last_mask for s in sites] if all(s.last_mask is not None for s in sites) and sites else None
    for s in sites:
        s.record, s.last_mask = False, None
    return grads, masks


def run_mnist_mlp(victims: list[int], attacks: tuple[str, ...], dropout: float, iterations: int, data_dir=None,
                  seed: int = 0) -> tuple[list[dict], dict]:
    """Attack each victim (one image per gradient) with each attack; returns rows and reconstructions."""
    images, labels = load_victims("mnist", data_dir)
    box = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)
    back = lambda z: (z * MNIST_STD + MNIST_MEAN).clamp(0, 1)  # noqa: E731
    rows, recon = [], {"truth": []}
    for v in victims:
        x, y_true = torch.tensor(normalize_mnist(images[v:v + 1])), torch.tensor(labels[v:v + 1])
        torch.manual_seed(seed)
        model = DropoutMLP(p=dropout)
        grads, masks = victim_gradient(model, x, y_true)
        label = torch.tensor([idlg_label(grads[-1])])     # the attacker infers the label
        recon["truth"].append(back(x)[0, 0])
        for attack in attacks:
            if attack == "informed" and masks is None:
                continue
            res = invert(model, grads, label, tuple(x.shape), box, attack, true_masks=masks,
                         config=InversionConfig(max_iterations=iterations), seed=seed)
            r, t = back(res.x), back(x)
            rows.append({"victim": v, "attack": attack, "ssim": float(ssim(r, t)), "psnr": float(psnr(r, t)),
                         "mse": float(mse(res.x, x)), "mse_01": float(mse(r, t)),
                         "label_ok": int(label.item() == y_true.item()), "iterations": res.iterations,
                         "seconds": res.seconds, "it_per_s": res.iterations / max(res.seconds, 1e-9)})
            recon.setdefault(attack, []).append(r[0, 0])
    return rows, recon


def save_grid(recon: dict, path: str | Path) -> Path:
    """Originals (first row) and each attack's reconstructions (one row per attack) as a PNG."""
    from fedsim.plots import plt, save_figure

    names = list(recon)
    cols = len(recon["truth"])
    fig, axes = plt.subplots(len(names), cols, figsize=(1.4 * cols + 1, 1.5 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for j, img in enumerate(recon[name]):
            axes[i, j].imshow(np.asarray(img), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(name, fontsize=9)
    return save_figure(fig, path, dpi=100)
