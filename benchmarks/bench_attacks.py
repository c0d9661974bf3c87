"""Gradient-inversion throughput: one DIA at a time versus many victims batched (issue 4's speed targets).

For the DIA paper's MLP (MNIST, p = 0.25) and small ViT (CIFAR-10, p = 0.5), on random targets of the right
shapes (speed does not depend on the image):

* ``invert``: the one-victim reference loop (torch.optim.Adam, autograd, one victim at a time) - the same
  per-iteration work as the official code - measured in this run as the baseline;
* ``batched``: ``attacks.batched.batched_invert`` with 1, 8 and 64 victims (gram backend for the MLP,
  vmap + closed-form Linear gradients for the ViT).

Reported: victim-iterations per second (victims x iterations / wall time, early stopping off) and the ratio
to the one-victim baseline (measured in this run) and to the official code's rates, an external figure (not
measured in this run: 37-51 DIA it/s on the MLP and 8-11 on the small ViT, timed by an earlier session on a project
machine, its log not kept; the spec gives no rates; the H200 figures 157 and 23 are the official notebook's).

    python benchmarks/bench_attacks.py                       # CPU, 1 thread
    python benchmarks/bench_attacks.py --device cuda --victims 1 8 64 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attacks.batched import batched_invert
from attacks.inversion import InversionConfig, invert
from attacks.vision import build_attack_model

try:
    from _machine import cpu_description
except ImportError:                                     # run from the repo root as a module
    from benchmarks._machine import cpu_description

MODELS = {"mlp": ((1, 28, 28), 0.25, (37, 51), 157), "vit": ((3, 32, 32), 0.5, (8, 11), 23)}


def _targets(model, victims: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((victims, *p.shape), generator=g).to(p) for p in model.parameters()]


def measure(name: str, victims: list[int], iterations: int, device: str) -> list[dict]:
    shape, p, official_cpu, official_h200 = MODELS[name]
    torch.manual_seed(0)
    model = build_attack_model(name, shape, p=p).to(device)
    box = (-3.0, 3.0)
    cfg = InversionConfig(max_iterations=iterations, patience=10 ** 9)
    rows = []
    targets = _targets(model, 1, 0)

    def run_invert(n):
        res = invert(model, [t[0] for t in targets], torch.tensor([3], device=device), (1, *shape), box, "dia",
                     config=InversionConfig(max_iterations=n, patience=10 ** 9))
        return res.seconds

    run_invert(2)                                            # warm-up
    # per iteration, set-up cancelled out: the difference of a 10- and a 110-iteration run, median of 3 (one
    # short difference swung 2x between back-to-back runs on a shared machine)
    base = statistics.median(100 / (run_invert(110) - run_invert(10)) for _ in range(3))
    rows.append({"model": name, "engine": "invert (one victim)", "victims": 1, "victim_it_s": base})
    for v in victims:
        targets = _targets(model, v, v)
        labels = torch.randint(0, 10, (v, 1), generator=torch.Generator().manual_seed(v)).to(device)
        stamps = []

        def stamp(it, n):
            if device == "cuda":
                torch.cuda.synchronize()            # time finished work, not queued kernels
            stamps.append(time.perf_counter())

        batched_invert(model, targets, labels, (1, *shape), box, "dia", config=cfg, progress=stamp)
        steps = sorted(b - a for a, b in zip(stamps, stamps[1:]))   # per-iteration times after the first
        rows.append({"model": name, "engine": "batched", "victims": v, "victim_it_s": v / steps[len(steps) // 2]})
    for r in rows:
        r["vs_invert"] = r["victim_it_s"] / base
        lo, hi = official_cpu if device == "cpu" else (official_h200, official_h200)
        r["vs_official"] = f"{r['victim_it_s'] / hi:.1f}-{r['victim_it_s'] / lo:.1f}x" if lo != hi else \
            f"{r['victim_it_s'] / lo:.1f}x"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mlp", "vit"], choices=sorted(MODELS))
    ap.add_argument("--victims", nargs="+", type=int, default=[1, 8, 64])
    ap.add_argument("--iterations", type=int, default=12, help="iterations per measurement (median step time)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.iterations < 3:
        ap.error("--iterations must be >= 3 (the median is taken over the iterations after the first)")
    torch.set_num_threads(args.threads)
    dev = torch.cuda.get_device_name() if args.device == "cuda" else cpu_description()
    print(f"machine: {dev}; torch {torch.__version__}, {args.threads} thread(s), device {args.device}\n")
    print("model | engine | victims | victim-iterations/s | vs invert (this run) | vs official code (external figure)")
    print("--- | --- | --- | --- | --- | ---")
    for name in args.models:
        for r in measure(name, args.victims, args.iterations, args.device):
            print(f"{r['model']} | {r['engine']} | {r['victims']} | {r['victim_it_s']:.1f} | {r['vs_invert']:.1f}x | "
                  f"{r['vs_official']}", flush=True)


if __name__ == "__main__":
    main()
