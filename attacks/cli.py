"""``fedsim attack``: gradient inversion on victims' gradients or on a Flower capture (found by ``fedsim.cli``
through the ``fedsim.commands`` entry point; fedsim never imports attacks/)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from fedsim.cli import DATA_DIR_DEFAULT, format_table, settings_of
from fedsim.runs import claim_results_folder


FRESH_DEFAULTS = {"model": "mlp", "dataset": "mnist", "dropout": 0.25, "victims": 1}
"""What ``fedsim attack`` attacks when neither the options nor a ``--capture`` say."""


def register(subparsers) -> None:
    """Add ``fedsim attack`` to the ``fedsim`` command line (the sub-parsers action of ``fedsim.cli.build_parser``)."""
    p = subparsers.add_parser(
        "attack", help="gradient inversion (IG vs DIA vs informed IG) on victims' gradients",
        description="Reconstruct victims' images from the gradient they share (train mode, dropout "
                    "active); labels inferred with iDLG. Prints a table; saves an image grid.")
    # (the defaults of --model, --dataset, --dropout and --victims are FRESH_DEFAULTS: with --capture the file's)
    p.add_argument("--model", help="mlp (the DIA paper's 3 x 512 MLP), vit (its small ViT), lenet, resnet "
                                   "(default: mlp)")
    p.add_argument("--dataset", help="mnist or cifar10 (the 128-image DIA victim sets) (default: mnist)")
    p.add_argument("--dropout", type=float, help="dropout rate p of the model, in [0, 1) (default: 0.25)")
    p.add_argument("--attack", default="all", help="all, or a comma list of ig, dia, informed")
    p.add_argument("--victims", type=int, help="number of victims (images 0..N-1), 1..128 (default: 1)")
    p.add_argument("--capture", metavar="FILE", help="attack the uploads a Flower ServerApp captured (capture.pt of "
                                                     "experiments/flower_leakage.py); model, data set, dropout and "
                                                     "victims come from the file (default: none, attack fresh "
                                                     "victims)")
    p.add_argument("--iterations", type=int, default=3000, help="iteration cap per attack (official: 20,000)")
    p.add_argument("--data-dir", help="folder holding mnist/dia_mnist_128.npz and cifar10-sample/dia_cifar10_128.npz, "
                                      "downloaded there from the DIA authors' repository when missing "
                                      f"{DATA_DIR_DEFAULT}")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and the attacks (>= 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (>= 1)")
    p.add_argument("--out", default="results/attack", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace other results in the output folder (removes only fedsim's files; without it a "
                        "folder holding results of other settings is refused, the same settings are re-run)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=cmd_attack, locks_out=True)


def cmd_attack(args) -> int:
    """``fedsim attack``: IG, DIA and informed IG on fresh victims or a capture; table, results.json, image grid."""
    import json

    import torch

    from attacks.experiment import ATTACKS, VICTIM_SETS, run_attacks, save_grid
    from attacks.inversion import InversionConfig
    from attacks.vision import ATTACK_MODELS
    from fedsim.config import ConfigError
    from fedsim.engine import atomic_write_text

    attacks = list(ATTACKS) if args.attack.strip() == "all" else \
        list(dict.fromkeys(a.strip() for a in args.attack.split(",") if a.strip()))
    bad = [a for a in attacks if a not in ATTACKS] or ([] if attacks else [args.attack])
    if bad:
        raise ConfigError(f"unknown attack {bad[0]!r}; known: all, {', '.join(ATTACKS)}")
    if args.capture and "informed" in attacks:   # the baseline replays the victims' true masks: not in a capture
        if args.attack.strip() != "all":
            raise ConfigError("--attack informed needs the victims' true dropout masks, which a --capture does not "
                              "hold; use ig and/or dia")
        attacks.remove("informed")
    if args.capture:   # a Flower run's capture: the model, dropout, victim set and victims come from it
        from attacks.flower_capture import capture_model, read_capture

        try:
            header, records = read_capture(args.capture)
            capture_model(header)
        except ValueError as e:
            raise ConfigError(f"--capture {e}") from None
        held = {"model": header["model"], "dataset": header["dataset"], "dropout": float(header["dropout"]),
                "victims": len({r["sender"] for r in records if r["kind"] == "uplink" and r["round"] == 0})}
        for key, value in held.items():   # an explicit option the capture contradicts would be silently ignored
            given = getattr(args, key)
            if given is not None and given != value:
                raise ConfigError(f"--{key} {given} disagrees with --capture {args.capture}, which holds {key} "
                                  f"{value}; leave --{key} out (the capture's is used)")
            setattr(args, key, value)
    for key, value in FRESH_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model not in ATTACK_MODELS:
        raise ConfigError(f"unknown --model {args.model!r}; known: {', '.join(ATTACK_MODELS)}")
    if args.dataset not in VICTIM_SETS:
        raise ConfigError(f"unknown --dataset {args.dataset!r}; known: {', '.join(VICTIM_SETS)}")
    checks = [(1 <= args.victims <= 128, "1 <= --victims <= 128", args.victims),
              (args.iterations >= 1, "--iterations >= 1", args.iterations),
              (0 <= args.dropout < 1, "0 <= --dropout < 1", args.dropout),  # also refuses NaN
              (args.threads >= 1, "--threads >= 1", args.threads)]
    for ok, rule, value in checks:
        if not ok:
            raise ConfigError(f"need {rule}, got {value}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: torch sees no CUDA device here")
    from attacks.victims import load_victims

    load_victims(args.dataset, args.data_dir)  # a missing victim set is one error line, before any output
    settings = settings_of(args)
    claim_results_folder(args.out, "attack", settings, args.overwrite)
    torch.set_num_threads(args.threads)
    print(f"  attacking {args.victims} victim(s) of {args.dataset} on {args.model} (p = {args.dropout}) with "
          f"{', '.join(attacks)}, all victims batched ...", file=sys.stderr, flush=True)
    bars = {}

    def progress(attack, it, active):
        if attack not in bars:
            for bar in bars.values():
                bar.close()
            from fedsim.progress import progress_bar

            bars[attack] = progress_bar(args.iterations, f"{attack:>8}", "it", not args.no_progress, leave=False)
        bars[attack].update(1)
        bars[attack].set_postfix_str(f"{active} running", refresh=False)

    try:
        if args.capture:
            from attacks.flower_capture import attack_capture

            rows, recon = attack_capture(args.capture, tuple(attacks), InversionConfig(max_iterations=args.iterations),
                                         args.data_dir, args.seed, progress, args.device)
        else:
            rows, recon = run_attacks(list(range(args.victims)), tuple(attacks), args.model, args.dataset,
                                      args.dropout, InversionConfig(max_iterations=args.iterations), args.data_dir,
                                      args.seed, progress, args.device)
    finally:  # also on Ctrl-C, so that the interruption message starts its own line
        for bar in bars.values():
            bar.close()
    summary = []
    for attack in attacks:
        mine = [r for r in rows if r["attack"] == attack]
        if mine:
            summary.append({"attack": attack, **{k: float(sum(r[k] for r in mine) / len(mine)) for k in
                                                 ("ssim", "psnr", "mse", "mse_01", "label_ok", "iterations",
                                                  "victim_it_per_s")}})
    out = Path(args.out)
    print(f"\n{args.dataset}, {args.model}, dropout p = {args.dropout}, {args.victims} victim(s), mean over victims; "
          f"at most {args.iterations} iterations (official: 20,000), on {args.device}\n")
    table = format_table(summary, ["attack", "ssim", "psnr", "mse", "mse_01", "label_ok", "iterations",
                                   "victim_it_per_s"])
    print(table)
    atomic_write_text(out / "summary.txt", table + "\n")
    atomic_write_text(out / "results.json", json.dumps({"command": "attack", "args": settings, "rows": rows},
                                                       indent=1, default=str))
    png = save_grid(recon, out / "reconstructions.png",
                    title=f"{', '.join(attacks)} on {args.dataset} victims, {args.model}, dropout p = {args.dropout}, "
                          f"at most {args.iterations} iterations")
    print(f"\nresults: {out}/  (summary.txt, results.json, reconstructions.png)\nimages:  {png}")
    return 0
