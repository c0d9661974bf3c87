"""Privacy-utility curves of update defences against gradient inversion on MNIST (docs/attacks.md).

For each defence strength this script measures
  * attack quality: SSIM / PSNR of Inverting Gradients (IG; for the dropout sweep also DIA) reconstructing MNIST
    victims (``attacks.victims.load_victims``) from ONE defended update, and
  * the accuracy the defence costs: test accuracy of the same MLP trained with FedAvg on MNIST with the
    ``DefendUploads`` tap installed,
and writes ``results.csv`` and ``leakage_defences.png`` (attack SSIM vs strength, and under it the test accuracy).

Sweeps (each in order of increasing strength; the other defences are off, dropout p = 0 outside the dropout sweep):
  dropout  p in {0, 0.1, 0.25, 0.5}: victim and trained model DropoutMLP(p); attacks DIA and IG (ignores dropout)
  noise    sigma in {0, 1e-3, 1e-2, 1e-1}: clip to ``clip = clip_rel x the typical update norm``, then add
           N(0, (sigma clip)^2) per coordinate (``attacks.defences.clip_and_noise``). "Typical" = median L2 norm of
           the undefended updates: of the victims' updates for the attack, of the round-0 client updates for
           training. sigma = 0 is clipping only. The noise norm is ~ sigma sqrt(P) clip with P = 930,816, i.e.
           ~965 sigma times the clipped update: column ``noise_ratio``.
  topk     fraction in {1, 0.5, 0.1, 0.01} of the update's largest-magnitude entries kept (``attacks.defences.top_k``)
  batch    victim batch size B in {1, 2, 4, 8}: one update of a batch of B images. iDLG label inference is for
           single images, so for B > 1 the attacker is GIVEN the true labels (``label_source = true``); the
           reconstructions are matched to the originals by the assignment that maximises SSIM. Its accuracy
           column trains with local batch size B (larger batches cost no accuracy; they are reported all the same).

Threat model of the attack: the victim takes one SGD step (lr 0.1) on its batch in train mode (dropout active) from
the untrained model (seeded like ``fedsim attack``), applies the defence to ``w_new - w_old``, and sends it; the
curious server recovers ``g = (w_old - w_new') / lr`` from the defended update (``attacks.capture``) and attacks
it as if it were undefended. B = 1 labels are inferred from the defended gradient (iDLG; ``label_ok``).
Training: MNIST test set (10,000) split 80/20 into train/test (stratified), iid over ``--clients`` clients,
``--clients-per-round`` per round, ``--local-steps`` SGD steps of ``--train-batch`` images, ``--rounds`` rounds.

Results are keyed by (sweep, strength, attack) and the run settings; a rerun skips keys already in the CSV
(resume). Sweep points that are the same experiment (no defence: p = 0, fraction 1, B = 1) are computed once
(the batch sweep's training differs: it uses local batch B). Only rows of the current settings are plotted.
The attack loop is ``attack_victims`` (one call per setting and attack), to be swapped for a batched engine.

    python experiments/leakage_defences.py --data-dir ../shared/data              # ~10 min on 1 core
    python experiments/leakage_defences.py --data-dir ../shared/data --quick      # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SWEEPS = {
    "dropout": (0.0, 0.1, 0.25, 0.5),
    "noise": (0.0, 1e-3, 1e-2, 1e-1),
    "topk": (1.0, 0.5, 0.1, 0.01),
    "batch": (1, 2, 4, 8),
}
XLABELS = {"dropout": "dropout rate p", "noise": "noise multiplier sigma (std = sigma x clip)",
           "topk": "fraction of entries kept", "batch": "victim batch size B"}
ATTACK_LR = 0.1
DEFAULTS = {"victims": 2, "iterations": 400, "rounds": 20, "clients": 20, "clients_per_round": 10,
            "local_steps": 5, "train_batch": 32}
QUICK = {"victims": 1, "iterations": 40, "rounds": 2, "clients": 10, "clients_per_round": 5,
         "local_steps": 2, "train_batch": 32}
CONFIG_KEYS = ["victims", "iterations", "rounds", "clients", "clients_per_round", "local_steps", "train_batch",
               "lr", "clip_rel", "seed"]
METRIC_KEYS = ["p", "sigma", "fraction", "batch", "clip", "noise_ratio", "label_source", "label_ok", "ssim",
               "ssim_std", "psnr", "mse", "attack_iterations", "attack_seconds", "train_clip", "test_acc",
               "train_seconds"]
COLUMNS = ["sweep", "strength", "attack", *CONFIG_KEYS, *METRIC_KEYS]
TABLE = ["sweep", "strength", "attack", "ssim", "psnr", "label_ok", "noise_ratio", "test_acc"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- one setting ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """The effective defence of one sweep point (what the attack and the training depend on)."""

    sweep: str
    strength: float
    p: float = 0.0
    sigma: float | None = None      # None: no clipping and no noise
    fraction: float = 1.0
    batch: int = 1

    @staticmethod
    def of(sweep: str, strength: float) -> "Setting":
        if sweep == "dropout":
            return Setting(sweep, strength, p=strength)
        if sweep == "noise":
            return Setting(sweep, strength, sigma=strength)
        if sweep == "topk":
            return Setting(sweep, strength, fraction=strength)
        if sweep == "batch":
            return Setting(sweep, strength, batch=int(strength))
        raise ValueError(f"unknown sweep {sweep!r}")

    @property
    def attacks(self) -> tuple[str, ...]:
        return ("ig", "dia") if self.sweep == "dropout" else ("ig",)

    def attack_key(self) -> tuple:
        return (self.p, self.sigma, self.fraction, self.batch)

    def train_key(self, train_batch: int) -> tuple:
        """What the accuracy run depends on (the batch sweep trains with local batch B)."""
        return (self.p, self.sigma, self.fraction, self.batch if self.sweep == "batch" else train_batch)

    def defence(self, clip: float):
        from attacks.defences import ClipAndNoise, TopK

        if self.sigma is not None:
            return ClipAndNoise(clip, self.sigma)
        if self.fraction < 1:
            return TopK(self.fraction)
        return None


def attack_victims(model, grads_list, labels_list, shape, box, attack, iterations, seed):
    """Run ``attack`` ("ig", "dia") on each captured gradient; returns one ``InversionResult`` per gradient.

    ``model`` holds the weights the gradients were taken at; ``grads_list[i]`` is a list of tensors in
    ``model.parameters()`` order, ``labels_list[i]`` the labels the attacker uses, ``shape`` the batch shape
    ``[B, 1, 28, 28]`` and ``box`` the valid pixel range in normalised space. All victims run as one batch
    (``attacks.batched``); victim i starts where ``invert(..., seed=seed)`` would.
    """
    from attacks.batched import batched_invert
    from attacks.inversion import InversionConfig, InversionResult

    config = InversionConfig(max_iterations=iterations)
    targets = [torch.stack(col) for col in zip(*grads_list)]
    res = batched_invert(model, targets, torch.stack(list(labels_list)), tuple(shape), box, attack, config=config,
                         seeds=[seed] * len(grads_list))
    return [InversionResult(res.x[i], None, float(res.loss[i]), int(res.iterations[i]), res.seconds / len(grads_list))
            for i in range(len(grads_list))]


def matched_quality(recon01: torch.Tensor, truth01: torch.Tensor) -> tuple[float, float, list[int]]:
    """Mean SSIM and PSNR over a batch, after matching reconstructions to originals (max total SSIM)."""
    from scipy.optimize import linear_sum_assignment

    from attacks.metrics import psnr, ssim

    b = len(truth01)
    if b == 1:
        order = [0]
    else:
        sim = torch.stack([ssim(recon01[i:i + 1].expand_as(truth01), truth01) for i in range(b)])  # [recon, truth]
        rows, cols = linear_sum_assignment(-sim.numpy())
        order = [int(r) for _, r in sorted(zip(cols, rows))]          # order[j]: reconstruction of original j
    matched = recon01[order]
    return float(ssim(matched, truth01).mean()), float(psnr(matched, truth01).mean()), order


def run_attacks(setting: Setting, args, images, labels) -> list[dict]:
    """Attack quality of ``setting``: one row per attack (means over victims)."""
    from attacks.capture import update_to_gradient
    from attacks.defences import defence_generator
    from attacks.experiment import victim_gradient
    from attacks.labels import idlg_label
    from attacks.metrics import mse
    from attacks.models import DropoutMLP
    from attacks.victims import MNIST_MEAN, MNIST_STD, normalize_mnist

    box = ((0 - MNIST_MEAN) / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)
    back = lambda z: (z * MNIST_STD + MNIST_MEAN).clamp(0, 1)  # noqa: E731
    torch.manual_seed(args.seed)
    model = DropoutMLP(p=setting.p)
    w_old = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    b, n_img = setting.batch, len(images)
    xs, ys, updates = [], [], []
    for v in range(args.victims):
        idx = [(v * b + j) % n_img for j in range(b)]
        x, y = torch.tensor(normalize_mnist(images[idx])), torch.tensor(labels[idx])
        torch.manual_seed(args.seed * 100_003 + v)                      # the victim's dropout masks
        grads, _ = victim_gradient(model, x, y)
        xs.append(x)
        ys.append(y)
        updates.append(-ATTACK_LR * torch.cat([g.flatten() for g in grads]))
    clip = args.clip_rel * statistics.median(float(u.double().norm()) for u in updates)
    defence = setting.defence(clip)
    grads_list, labels_list, ratios, label_ok = [], [], [], []
    for v, u in enumerate(updates):
        sent = u if defence is None else defence(u, defence_generator(args.seed, 0, v))
        g = update_to_gradient(model, w_old, w_old + sent, ATTACK_LR)   # what the curious server computes
        grads_list.append(g)
        if b == 1:
            guess = torch.tensor([idlg_label(g[-1])])
            label_ok.append(float((guess == ys[v]).float().mean()))
        else:
            guess = ys[v]
        labels_list.append(guess)
        if setting.sigma is not None:
            clipped = min(clip, float(u.double().norm()))
            ratios.append(setting.sigma * clip * math.sqrt(u.numel()) / clipped)
    rows = []
    for attack in setting.attacks:
        t0 = time.perf_counter()
        results = attack_victims(model, grads_list, labels_list, (b, 1, 28, 28), box, attack, args.iterations,
                                 args.seed)
        ssims, psnrs, mses = [], [], []
        for res, x in zip(results, xs):
            s, p, order = matched_quality(back(res.x), back(x))
            ssims.append(s)
            psnrs.append(p)
            mses.append(float(mse(res.x[order], x).mean()))
        rows.append({"attack": attack, "p": setting.p, "sigma": "" if setting.sigma is None else setting.sigma,
                     "fraction": setting.fraction, "batch": b,
                     "clip": clip if setting.sigma is not None else "",
                     "noise_ratio": statistics.mean(ratios) if ratios else "",
                     "label_source": "idlg" if b == 1 else "true",
                     "label_ok": statistics.mean(label_ok) if label_ok else 1.0,
                     "ssim": statistics.mean(ssims), "ssim_std": statistics.pstdev(ssims),
                     "psnr": statistics.mean(psnrs), "mse": statistics.mean(mses),
                     "attack_iterations": statistics.mean(r.iterations for r in results),
                     "attack_seconds": time.perf_counter() - t0})
        log(f"    {attack}: ssim {rows[-1]['ssim']:.3f}, psnr {rows[-1]['psnr']:.1f} dB "
            f"({rows[-1]['attack_seconds']:.1f} s)")
    return rows


# --- accuracy cost ----------------------------------------------------------------------------------------------

class Trainer:
    """FedAvg on the MNIST test set split into train/test parts, with the DefendUploads tap."""

    def __init__(self, args):
        from fedsim import data as fdata
        from fedsim.engine import Federation
        from fedsim.rng import Streams
        from fedsim.training import ClientData
        from attacks.victims import MNIST_MEAN, MNIST_STD

        self.args = args
        ds = fdata.load("mnist", args.data_dir)
        train, test = fdata.train_test_split(ds, 0.2, seed=args.seed)
        norm = lambda a: (a - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)  # noqa: E731
        parts = fdata.partition("iid", train.y, args.clients, seed=args.seed)
        self.fed = Federation(ClientData.from_parts(norm(train.x), train.y, parts), torch.as_tensor(norm(test.x)),
                              torch.as_tensor(test.y), Streams(args.seed))
        self._typical: dict[tuple, float] = {}

    def algorithm(self, p: float, batch: int):
        from attacks.models import DropoutMLP
        from fedsim.algorithms import FedAvg
        from fedsim.training import LocalSGD

        torch.manual_seed(self.args.seed)
        model = DropoutMLP(p=p)
        # vectorized=False: the batched trainer runs under vmap, where dropout's random masks are not allowed
        return FedAvg(LocalSGD(model, lr=self.args.lr, steps=self.args.local_steps, batch_size=batch),
                      self.args.clients_per_round, vectorized=False)

    def typical_update_norm(self, p: float, batch: int) -> float:
        """Median L2 norm of the undefended round-0 client updates (the clip reference for training)."""
        from fedsim.engine import simulate
        from fedsim.messages import SERVER, Capture

        if (p, batch) not in self._typical:
            alg = self.algorithm(p, batch)
            spy = Capture(receivers=[SERVER], rounds=[0])
            torch.manual_seed(self.args.seed)
            simulate(alg, self.fed, 1, taps=[spy], eval_every=0)
            start = alg.init(self.fed).params
            self._typical[(p, batch)] = statistics.median(float((r.payload - start).double().norm())
                                                          for r in spy.records)
        return self._typical[(p, batch)]

    def accuracy(self, setting: Setting) -> dict:
        from attacks.defences import DefendUploads
        from fedsim.engine import simulate
        from fedsim.training import evaluate

        batch = setting.train_key(self.args.train_batch)[-1]
        clip = self.args.clip_rel * self.typical_update_norm(setting.p, batch) if setting.sigma is not None else None
        defence = setting.defence(clip)
        alg = self.algorithm(setting.p, batch)
        taps = [] if defence is None else [DefendUploads(defence, seed=self.args.seed)]
        t0 = time.perf_counter()
        torch.manual_seed(self.args.seed)                     # the clients' dropout masks (per-client loop)
        res = simulate(alg, self.fed, self.args.rounds, taps=taps, eval_every=0)
        model = alg.trainer.model
        model.eval()
        acc, _ = evaluate(model, res.state.params[None], self.fed.test_x, self.fed.test_y)
        model.train()
        return {"train_clip": "" if clip is None else clip, "test_acc": float(acc[0]),
                "train_seconds": time.perf_counter() - t0}


# --- files ------------------------------------------------------------------------------------------------------

class ResultsFileError(ValueError):
    """--out's results.csv is not one this script wrote (or was damaged)."""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier run's results.csv ([] if there is none); ``ResultsFileError`` if it is not one."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    broken = next((i for i, r in enumerate(rows, 2) if None in r or None in r.values()), None)
    numeric = ("strength", *(k for k in METRIC_KEYS if k != "label_source"))
    bad = None if missing or broken is not None else next(
        (k for r in rows for k in numeric if (r[k] != "" or k == "strength") and not _is_number(r[k])), None)
    if missing or broken is not None or bad:
        what = f"no column {missing[0]!r}" if missing else \
            f"line {broken} is malformed" if broken else f"a {bad} that is not a number"
        raise ResultsFileError(f"{path} is not a results file of this script ({what}); move it away or choose "
                               "another --out")
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    from fedsim.engine import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def config_of(args) -> dict:
    return {k: str(getattr(args, k)) for k in CONFIG_KEYS}


def row_key(row: dict) -> tuple:
    return (row["sweep"], str(float(row["strength"])), row["attack"], *(str(row[k]) for k in CONFIG_KEYS))


def plot(rows: list[dict], path: Path, sweeps: list[str]) -> Path:
    """Attack SSIM (top) and test accuracy (bottom) vs defence strength, one column per sweep (atomic PNG)."""
    from fedsim.files import save_figure_atomically
    from fedsim.plots import plt

    fig, axes = plt.subplots(2, len(sweeps), figsize=(4 * len(sweeps), 6.5), squeeze=False)
    for j, sweep in enumerate(sweeps):
        values = SWEEPS[sweep]
        ax_s, ax_a = axes[0, j], axes[1, j]
        mine = [r for r in rows if r["sweep"] == sweep]
        pos = {float(v): i for i, v in enumerate(values)}
        for attack in ("ig", "dia"):
            pts = sorted((pos[float(r["strength"])], float(r["ssim"]), float(r["ssim_std"]))
                         for r in mine if r["attack"] == attack and float(r["strength"]) in pos)
            if pts:
                x, y, e = zip(*pts)
                ax_s.errorbar(x, y, yerr=e, marker="o", capsize=3,
                              label={"ig": "IG (ignores the defence)", "dia": "DIA"}[attack])
        acc = sorted({(pos[float(r["strength"])], float(r["test_acc"])) for r in mine if float(r["strength"]) in pos})
        if acc:
            ax_a.plot(*zip(*acc), marker="s", color="tab:green")
        for ax in (ax_s, ax_a):
            ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
            ax.grid(alpha=0.3)
        ax_s.set(ylim=(-0.05, 1.05), ylabel="attack SSIM" if j == 0 else None, title=f"{sweep} (stronger ->)")
        if ax_s.lines:
            ax_s.legend(fontsize=8)
        ax_a.set(xlabel=XLABELS[sweep], ylabel="FedAvg test accuracy" if j == 0 else None, ylim=(0, 1))
        if sweep == "batch":
            ax_a.set_title("trained with local batch B", fontsize=9)
    fig.tight_layout()
    try:
        return save_figure_atomically(fig, path, dpi=110)
    finally:
        plt.close(fig)


# --- main -------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    from fedsim.data import data_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None,
                   help=f"folder with mnist/ (default: $FEDSIM_DATA_DIR or the fedsim cache, now {data_dir()})")
    p.add_argument("--victims", type=int, help=f"victim updates per setting (default {DEFAULTS['victims']}, "
                                               f"quick {QUICK['victims']})")
    p.add_argument("--iterations", type=int, help=f"attack iterations per victim (default {DEFAULTS['iterations']}, "
                                                  f"quick {QUICK['iterations']}; official cap 20,000)")
    p.add_argument("--rounds", type=int, help=f"FedAvg rounds for the accuracy cost (default {DEFAULTS['rounds']})")
    p.add_argument("--clients", type=int, help=f"FedAvg clients (default {DEFAULTS['clients']})")
    p.add_argument("--clients-per-round", type=int, help=f"(default {DEFAULTS['clients_per_round']})")
    p.add_argument("--local-steps", type=int, help=f"local SGD steps per round (default {DEFAULTS['local_steps']})")
    p.add_argument("--train-batch", type=int, help=f"local batch size (default {DEFAULTS['train_batch']}; "
                                                   "the batch sweep trains with B)")
    p.add_argument("--lr", type=float, default=0.1, help="local SGD learning rate for training (default 0.1)")
    p.add_argument("--clip-rel", type=float, default=1.0,
                   help="noise sweep: clip = CLIP_REL x median undefended update norm (default 1.0)")
    p.add_argument("--sweeps", default=",".join(SWEEPS), help=f"comma-separated subset of {','.join(SWEEPS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None,
                   help="output folder (default results/leakage_defences; with --quick results/leakage_defences_quick)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (< 1 min): 1 victim, 40 iterations, 2 rounds")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = "results/leakage_defences_quick" if args.quick else "results/leakage_defences"
    args.sweeps = [s.strip() for s in args.sweeps.split(",") if s.strip()]
    bad = [s for s in args.sweeps if s not in SWEEPS]
    checks = [(not bad, f"--sweeps: unknown {bad}; known {list(SWEEPS)}"),
              (args.victims >= 1, "--victims must be >= 1"), (args.iterations >= 1, "--iterations must be >= 1"),
              (args.rounds >= 1, "--rounds must be >= 1"), (args.clients >= 1, "--clients must be >= 1"),
              (1 <= args.clients_per_round <= args.clients, "--clients-per-round must be in [1, clients]"),
              (args.local_steps >= 1, "--local-steps must be >= 1"),
              (args.train_batch >= 1, "--train-batch must be >= 1"),
              (args.lr > 0, "--lr must be > 0"), (args.clip_rel > 0, "--clip-rel must be > 0"),
              (args.threads >= 1, "--threads must be >= 1")]
    for ok, msg in checks:
        if not ok:
            p.error(msg)
    return args


def main(argv=None) -> int:
    """Run the sweeps (rows already in --out's results.csv are skipped), then print the table and draw the plot."""
    from fedsim.runs import folder_lock

    args = parse_args(argv)
    with folder_lock(args.out):   # a second process writing this results.csv meanwhile is refused
        return sweep_and_report(args)


def sweep_and_report(args) -> int:
    torch.set_num_threads(args.threads)
    from attacks.victims import load_victims
    from fedsim.cli import format_table

    t_start = time.perf_counter()
    out = Path(args.out)
    csv_path, png_path = out / "results.csv", out / "leakage_defences.png"
    rows = read_rows(csv_path)
    done = {row_key(r) for r in rows}
    config = config_of(args)
    images, labels = load_victims("mnist", args.data_dir)
    trainer = None
    attack_memo: dict[tuple, list[dict]] = {}
    train_memo: dict[tuple, dict] = {}
    for r in rows:                                    # coinciding settings from an earlier run are reused too
        if all(r[k] == v for k, v in config.items()):
            s = Setting.of(r["sweep"], float(r["strength"]))
            attack_memo.setdefault(s.attack_key(), []).append(r)
            if r["test_acc"] != "":
                train_memo[s.train_key(args.train_batch)] = {k: r[k] for k in ("train_clip", "test_acc",
                                                                                "train_seconds")}
    for sweep in args.sweeps:
        for strength in SWEEPS[sweep]:
            setting = Setting.of(sweep, float(strength))
            keys = [row_key({"sweep": sweep, "strength": strength, "attack": a, **config}) for a in setting.attacks]
            if all(k in done for k in keys):
                log(f"  {sweep} = {strength:g}: in {csv_path}, skipped")
                continue
            log(f"  {sweep} = {strength:g}: attacking {args.victims} victim(s), {args.iterations} iterations ...")
            memo = attack_memo.get(setting.attack_key())
            by_attack = {m["attack"]: m for m in memo} if memo else {}
            if all(a in by_attack for a in setting.attacks):
                log("    same effective setting as an earlier one: reused")
                new = [{k: by_attack[a][k] for k in METRIC_KEYS if k in by_attack[a]} | {"attack": a}
                       for a in setting.attacks]
            else:
                new = run_attacks(setting, args, images, labels)
            tkey = setting.train_key(args.train_batch)
            if tkey not in train_memo:
                trainer = trainer or Trainer(args)
                log(f"    training FedAvg {args.rounds} rounds ...")
                train_memo[tkey] = trainer.accuracy(setting)
                log(f"    test accuracy {train_memo[tkey]['test_acc']:.3f} ({train_memo[tkey]['train_seconds']:.1f} s)")
            new = [{"sweep": sweep, "strength": strength, **config, **r, **train_memo[tkey]} for r in new]
            attack_memo[setting.attack_key()] = new
            rows = [r for r in rows if row_key(r) not in {row_key(n) for n in new}] + new
            done |= {row_key(n) for n in new}
            write_rows(csv_path, rows)
    current = [r for r in read_rows(csv_path) if all(r[k] == v for k, v in config.items())
               and r["sweep"] in args.sweeps]
    plot(current, png_path, args.sweeps)
    table_rows = []
    for r in current:
        t = {k: r[k] for k in ("sweep", "attack")} | {"strength": f"{float(r['strength']):g}"}
        for k in ("ssim", "psnr", "label_ok", "noise_ratio", "test_acc"):
            t[k] = float(r[k]) if r[k] != "" else float("nan")
        table_rows.append(t)
    print(f"\nMNIST, DropoutMLP 784-512x3, {args.victims} victim(s) x {args.iterations} IG/DIA iterations; "
          f"FedAvg {args.rounds} rounds, {args.clients_per_round}/{args.clients} clients, "
          f"{args.local_steps} local steps\n")
    print(format_table(table_rows, TABLE))
    print("\nssim/psnr: attack on the defended update (mean over victims); label_ok: iDLG labels (B = 1; true labels "
          "given for B > 1); noise_ratio: noise norm / clipped update norm; test_acc: FedAvg with the defence.")
    print(f"results: {csv_path}\nplot:    {png_path}\ntime:    {time.perf_counter() - t_start:.1f} s")
    return 0


def cli(argv=None) -> int:
    """``main`` with missing data, a results.csv it did not write or an --out in use by another process reported as
    one line (exit status 2) instead of a traceback."""
    from fedsim.data import DataNotFoundError
    from fedsim.runs import RunFolderError

    try:
        return main(argv)
    except (DataNotFoundError, ResultsFileError, RunFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
