"""Run IG, DIA and informed IG against victims' gradients and compare them (``fedsim attack``, experiments).

Every victim shares the gradient of ONE image, computed in train mode (dropout active), on one public model
(seeded init). The attacker gets the gradient, the model, the dropout rates, the input shape and the pixel box;
labels come from iDLG. All victims of one attack are reconstructed together (``attacks.batched``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.batched import batched_invert
from attacks.inversion import InversionConfig
from attacks.labels import idlg_label
from attacks.metrics import mse, psnr, ssim
from attacks.models import dropout_sites
from attacks.victims import (CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, load_victims, normalize_cifar10,
                             normalize_mnist)
from attacks.vision import build_attack_model

ATTACKS = ("ig", "dia", "informed")
ATTACK_NAMES = {"truth": "original", "ig": "IG", "dia": "DIA", "informed": "informed IG"}   # rows of the image grid


@dataclass(frozen=True)
class VictimSet:
    """A victim image set: its input shape and per-channel normalisation."""

    name: str
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, images: np.ndarray) -> torch.Tensor:
        return torch.tensor(normalize_mnist(images) if self.name == "mnist" else normalize_cifar10(images))

    def box(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel bounds of valid pixels in normalised space, [C, 1, 1] each."""
        m, s = (torch.tensor(v, device=device)[:, None, None] for v in (self.mean, self.std))
        return (0 - m) / s, (1 - m) / s

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised [..., C, H, W] -> [0, 1] pixels."""
        m, s = (torch.tensor(v, device=x.device, dtype=x.dtype)[:, None, None] for v in (self.mean, self.std))
        return (x * s + m).clamp(0, 1)


VICTIM_SETS = {"mnist": VictimSet("mnist", (1, 28, 28), (MNIST_MEAN,), (MNIST_STD,)),
               "cifar10": VictimSet("cifar10", (3, 32, 32), tuple(CIFAR10_MEAN), tuple(CIFAR10_STD))}


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


def last_linear_weight_index(model: nn.Module) -> int:
    """Position in ``model.parameters()`` of the classifier's weight (the last nn.Linear), for iDLG."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return next(i for i, p in enumerate(model.parameters()) if p is last.weight)


def run_attacks(victims: list[int], attacks: tuple[str, ...] = ATTACKS, model: str = "mlp", dataset: str = "mnist",
                dropout: float = 0.25, config: InversionConfig = InversionConfig(), data_dir=None, seed: int = 0,
                progress=None, device: str = "cpu", images: tuple | None = None) -> tuple[list[dict], dict]:
    """Attack each victim (one image per gradient) with each attack; returns rows and reconstructions (on CPU).

    All victims of an attack run as one batch on ``device``; ``seconds`` of a row is that batch's wall time
    and ``victim_it_per_s`` its throughput. ``progress(attack, iteration, active)`` is called every iteration.
    ``images``: (uint8 images, labels) in the victim set's layout to draw the victims from instead of the
    ``dataset`` victim set (e.g. MNIST test images).
    """
    if dataset not in VICTIM_SETS:
        raise ValueError(f"unknown victim set {dataset!r}; known: {', '.join(VICTIM_SETS)}")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    vs = VICTIM_SETS[dataset]
    images, labels = load_victims(dataset, data_dir) if images is None else images
    if max(victims) >= len(images) or min(victims) < 0:
        raise ValueError(f"victim ids must be in 0..{len(images) - 1}, got {victims}")
    torch.manual_seed(seed)
    net = build_attack_model(model, vs.shape, p=dropout).to(device)
    xs = vs.normalize(images[victims]).to(device)
    ys = torch.tensor(labels[victims]).to(device)
    grads, masks, inferred = [], [], []
    w = last_linear_weight_index(net)
    for i in range(len(victims)):
        g, m = victim_gradient(net, xs[i:i + 1], ys[i:i + 1])
        grads.append(g)
        masks.append(m)
        inferred.append(idlg_label(g[w]))                   # the attacker infers the label
    targets = [torch.stack(col) for col in zip(*grads)]
    true_masks = [torch.stack(col) for col in zip(*masks)] if masks[0] is not None else None
    label_t = torch.tensor(inferred, device=device)[:, None]
    truth = vs.to_pixels(xs)
    rows, recon = [], {"truth": list(truth)}
    for attack in attacks:
        if attack == "informed" and true_masks is None:
            continue
        cb = (lambda it, n, a=attack: progress(a, it, n)) if progress else None
        res = batched_invert(net, targets, label_t, (1, *vs.shape), vs.box(device), attack, true_masks=true_masks,
                             config=config, seeds=[seed] * len(victims), progress=cb)
        r = vs.to_pixels(res.x[:, 0])
        s, p, m01, mn = ssim(r, truth), psnr(r, truth), mse(r, truth), mse(res.x[:, 0], xs)
        throughput = float(res.iterations.sum()) / max(res.seconds, 1e-9)
        for i, v in enumerate(victims):
            rows.append({"victim": v, "attack": attack, "ssim": float(s[i]), "psnr": float(p[i]), "mse": float(mn[i]),
                         "mse_01": float(m01[i]), "label_ok": int(inferred[i] == int(ys[i])),
                         "iterations": int(res.iterations[i]), "loss": float(res.loss[i]),
                         "seconds": res.seconds, "victim_it_per_s": throughput})
        recon[attack] = list(r.cpu())
    recon["truth"] = [t.cpu() for t in recon["truth"]]
    return rows, recon


def grid_figure(recon: dict, title: str = ""):
    """Originals (first row) and each attack's reconstructions (one row per attack, named), SSIM under each image.

    ``title`` names the attack setting (default: the attacks shown). Returns the figure, unsaved.
    """
    from fedsim.plots import plt

    def as_batch(images) -> torch.Tensor:                       # [C, H, W] or [H, W] images -> [B, C, H, W]
        x = torch.stack([torch.as_tensor(np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t))
                         for t in images]).float()
        return x[:, None] if x.ndim == 3 else x

    names = list(recon)
    cols = len(recon["truth"])
    truth = as_batch(recon["truth"])
    fig, axes = plt.subplots(len(names), cols, figsize=(1.4 * cols + 1, 1.7 * len(names) + 0.6), squeeze=False)
    for i, name in enumerate(names):
        scores = None
        if name != "truth":
            scores = ssim(as_batch(recon[name]), truth)
        for j, img in enumerate(recon[name]):
            img = np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
            if img.ndim == 3:                                   # [C, H, W]
                img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            axes[i, j].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if scores is not None:
                axes[i, j].set_xlabel(f"SSIM {float(scores[j]):.3f}", fontsize=8)
        axes[i, 0].set_ylabel(ATTACK_NAMES.get(name, name), fontsize=9)
    shown = [ATTACK_NAMES.get(n, n) for n in names if n != "truth"]
    import textwrap

    text = title or f"gradient inversion: {', '.join(shown)} (SSIM to the original under each image)"
    fig.suptitle(textwrap.fill(text, max(30, int(fig.get_figwidth() * 11))), fontsize=10)  # fits narrow grids
    return fig


def save_grid(recon: dict, path: str | Path, title: str = "") -> Path:
    """``grid_figure`` saved as a PNG."""
    from fedsim.plots import save_figure

    return save_figure(grid_figure(recon, title), path, dpi=100)
