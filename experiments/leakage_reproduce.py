"""Reproduce the Dropout Inversion Attack comparisons (Scheliga et al., AAAI 2023; docs/attacks.md) with the
official hyper-parameters.

    python experiments/leakage_reproduce.py mnist      # MLP, p = 0.25, victims 0..9 of dia_mnist_128
    python experiments/leakage_reproduce.py cifar10    # small ViT, p = 0.5, victims 80, 33, 77 of dia_cifar10_128

IG (ignores dropout), DIA and well-informed IG, each run to its stop rule (loss < 1e-5, 4,000 iterations
without improvement, or 20,000 iterations), all victims of an attack batched. Results are written after each
attack (results/leakage_<set>/results.json, atomically); a rerun skips attacks already done. A folder holding
results of another data set, --max-iterations or --seed is refused unless --overwrite (the rows would mix).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from attacks.experiment import ATTACKS, run_attacks, save_grid
from attacks.inversion import InversionConfig
from fedsim.data import DataNotFoundError
from fedsim.engine import atomic_write_text
from fedsim.runs import RunFolderError, claim_results_folder, folder_lock

SETTINGS = {
    "mnist": dict(model="mlp", dropout=0.25, victims=list(range(10)),
                  reference={"ig": "SSIM 0.63, 18 dB, early stop after ~6,000 it", "dia": "SSIM 0.9997, 63 dB, 1,500-2,500 it",
                             "informed": "SSIM 0.999"}),
    "cifar10": dict(model="vit", dropout=0.5, victims=[80, 33, 77],
                    reference={"ig": "MSE 3.53 / 3.42 / 3.75, ~5,100-5,700 it", "dia": "MSE 0.0104 / 0.0096 / 0.0144, 5,226-6,980 it",
                               "informed": "MSE 0.0058 / 0.0030 / 0.0067, 93-922 it"}),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(SETTINGS), help="mnist (MLP, dropout 0.25, victims 0-9) or cifar10 "
                    "(ViT, dropout 0.5, victims 80, 33, 77)")
    ap.add_argument("--attacks", default="informed,dia,ig", help="comma-separated attacks, run in this order; one "
                    "already in OUT/results.json is skipped (default: %(default)s)")
    ap.add_argument("--max-iterations", type=int, default=20_000, help="iteration cap per attack; the official "
                    "stop rules usually end earlier (default: %(default)s)")
    ap.add_argument("--data-dir", default=None, help="folder with mnist/ and cifar10-sample/ (default: FEDSIM_DATA_DIR)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--seed", type=int, default=0, help="torch seed: the attacked model's weights, its dropout masks "
                    "and the attacks' initial guesses (default: %(default)s)")
    ap.add_argument("--out", default=None, help="results folder (default: results/leakage_DATASET)")
    ap.add_argument("--overwrite", action="store_true", help="replace the results of other settings in --out")
    args = ap.parse_args(argv)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not attacks or set(attacks) - set(ATTACKS) or args.max_iterations < 1 or args.threads < 1:
        ap.error(f"need --attacks from {', '.join(ATTACKS)}, --max-iterations >= 1, --threads >= 1")
    out = Path(args.out or f"results/leakage_{args.dataset}")
    settings = {"dataset": args.dataset, "max_iterations": args.max_iterations, "seed": args.seed}
    try:
        with folder_lock(out):   # a second process writing here meanwhile is refused
            _refuse_unrecorded_settings(out / "results.json", args.overwrite)
            claim_results_folder(out, "leakage_reproduce", settings, args.overwrite)
            return reproduce(args, attacks, out, settings)
    except RunFolderError as e:
        print(f"leakage_reproduce: error: {e}", file=sys.stderr)
        return 2
    except DataNotFoundError as e:
        print(f"leakage_reproduce: error: {e.describe('--data-dir')}", file=sys.stderr)
        return 2


def _refuse_unrecorded_settings(path: Path, overwrite: bool) -> None:
    """Results this script wrote before it recorded its settings cannot be resumed safely (the seed and iteration
    cap they used are unknown): say so, rather than "other results"."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not overwrite and isinstance(old, dict) and "rows" in old and "command" not in old:
        raise RunFolderError(f"--out {path.parent} holds results of an earlier leakage_reproduce that recorded no "
                             "settings (seed, iteration cap), so they cannot be resumed; pass --overwrite to start "
                             "over, or choose another --out")


def reproduce(args, attacks: list[str], out: Path, settings: dict) -> int:
    """Run the attacks not yet in ``out``/results.json (written after each), then print the table and the grid."""
    torch.set_num_threads(args.threads)
    s = SETTINGS[args.dataset]
    path = out / "results.json"
    done = json.loads(path.read_text()) if path.is_file() else {"rows": [], "recon": {}}
    done.update(command="leakage_reproduce", args=settings)   # what claim_results_folder compares a rerun with
    config = InversionConfig(max_iterations=args.max_iterations)
    for attack in attacks:
        if any(r["attack"] == attack for r in done["rows"]):
            print(f"{attack}: done already, skipped", file=sys.stderr)
            continue
        start = time.time()

        def progress(a, it, n):
            if it % 500 == 0:
                print(f"  {a}: iteration {it}, {n} victim(s) still running, {time.time() - start:.0f} s",
                      file=sys.stderr, flush=True)

        rows, recon = run_attacks(s["victims"], (attack,), s["model"], args.dataset, s["dropout"], config,
                                  args.data_dir, args.seed, progress, args.device)
        done["rows"] += rows
        done["recon"]["truth"] = [t.tolist() for t in recon["truth"]]
        done["recon"][attack] = [t.tolist() for t in recon[attack]]
        atomic_write_text(path, json.dumps(done))
    print(f"\n{args.dataset}, {s['model']}, p = {s['dropout']}, victims {s['victims']}\n")
    print("attack | victim | SSIM | PSNR dB | MSE (normalised) | iterations | label | reference (official code)")
    print("--- | --- | --- | --- | --- | --- | --- | ---")
    for r in done["rows"]:
        print(f"{r['attack']} | {r['victim']} | {r['ssim']:.4f} | {r['psnr']:.1f} | {r['mse']:.4g} | {r['iterations']} | "
              f"{'ok' if r['label_ok'] else 'WRONG'} | {s['reference'][r['attack']]}")
    for a in dict.fromkeys(r["attack"] for r in done["rows"]):
        mine = [r for r in done["rows"] if r["attack"] == a]
        mean = lambda k: sum(r[k] for r in mine) / len(mine)  # noqa: E731
        print(f"mean {a}: SSIM {mean('ssim'):.4f}, PSNR {mean('psnr'):.1f} dB, MSE {mean('mse'):.4g}, "
              f"iterations {mean('iterations'):.0f}, wall {mine[0]['seconds']:.0f} s for {len(mine)} victims batched")
    recon = {k: [torch.tensor(t) for t in v] for k, v in done["recon"].items()}
    print(f"\nimages: {save_grid(recon, out / 'reconstructions.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
