"""End-to-end leakage on a real Flower deployment: a curious FedAvg server attacks what its clients uploaded.

1. A local deployment (``fedsim.flower.deploy``: SuperLink + one SuperNode per victim, real processes; ``--tls``
   for TLS) runs FedAvg of the DIA paper's dropout MLP (784-512x3-10, GELU, no bias, dropout p) for one round:
   node i takes one SGD step (lr 0.1) on MNIST victim image i of its own ``mnist/dia_mnist_128.npz``, in train mode
   (the app: experiments/flower_leakage_app/). The ServerApp saves every downlink and uplink in ``capture.pt``.
2. From the saved capture alone (plus the public architecture, dropout rate and lr) the server recovers each
   client's gradient g = (w - w_i) / lr, infers the label (iDLG) and inverts it with IG and DIA
   (``attacks.flower_capture``; the same as ``fedsim attack --capture OUT/deployment/capture.pt``).
3. SSIM/PSNR against the victims' images (ground truth, read by the metrics only): table, results.json,
   reconstructions.png in ``--out``.

    python experiments/flower_leakage.py --data-dir ../shared/data                    # 3 victims, ~5 min on 1 core
    python experiments/flower_leakage.py --data-dir ../shared/data --iterations 300   # quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

APP = Path(__file__).resolve().parent / "flower_leakage_app"


def run(out: Path, nodes: int = 3, dropout: float = 0.25, lr: float = 0.1, seed: int = 0, iterations: int = 3000,
        attacks: tuple[str, ...] = ("ig", "dia"), data_dir: str | None = None, tls: bool = False,
        progress=None) -> dict:
    """Deploy, capture, attack; returns {"deployment": launcher report, "rows": per client and attack, "recon"}."""
    from attacks.flower_capture import attack_capture
    from attacks.inversion import InversionConfig
    from fedsim.flower.deploy import Deployment, deploy
    from fedsim.flower.tls import make_certificates

    run_dir = out / "deployment"
    run_config = {"rounds": 1, "seed": seed, "lr": lr, "dropout": dropout,
                  "victims": ",".join(str(i) for i in range(nodes)),
                  "data-dir": str(Path(data_dir).resolve()) if data_dir else "", "out": str(run_dir.resolve())}
    files = make_certificates(out / "tls") if tls else None
    report = deploy(Deployment(APP, run_dir, nodes, run_config=run_config, tls=files, run_timeout=900),
                    overwrite=True)
    t0 = time.perf_counter()
    rows, recon = attack_capture(run_dir / "capture.pt", attacks, InversionConfig(max_iterations=iterations),
                                 data_dir, seed, progress)
    return {"deployment": report, "rows": rows, "recon": recon, "attack_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="SuperNodes = victims (images 0..nodes-1), 1..16")
    p.add_argument("--dropout", type=float, default=0.25, help="dropout rate p of the MLP, in [0, 1)")
    p.add_argument("--iterations", type=int, default=3000, help="iteration cap per attack (official: 20,000)")
    p.add_argument("--attack", default="ig,dia", help="comma list of ig, dia")
    p.add_argument("--seed", type=int, default=0, help="seed of the public init, the dropout streams and the attacks")
    p.add_argument("--data-dir", help="folder holding mnist/dia_mnist_128.npz (default: $FEDSIM_DATA_DIR)")
    p.add_argument("--tls", action="store_true", help="run the deployment with TLS (fresh certificates in OUT/tls)")
    p.add_argument("--out", default="results/flower_leakage", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace this study's files in --out")
    args = p.parse_args(argv)
    attacks = tuple(a.strip() for a in args.attack.split(",") if a.strip())
    if not 1 <= args.nodes <= 16 or not 0 <= args.dropout < 1 or args.iterations < 1 \
            or not attacks or set(attacks) - {"ig", "dia"}:
        p.error("need 1 <= --nodes <= 16, 0 <= --dropout < 1, --iterations >= 1, --attack from ig, dia")
    import torch

    from fedsim.runs import RunFolderError, claim_results_folder, folder_lock

    torch.set_num_threads(1)
    out = Path(args.out)
    settings = {k: getattr(args, k) for k in ("nodes", "dropout", "iterations", "attack", "seed", "tls")}
    try:
        with folder_lock(out):   # a second process writing here meanwhile is refused
            claim_results_folder(out, "flower_leakage", settings, args.overwrite)
            return deploy_and_attack(args, attacks, out, settings)
    except RunFolderError as e:
        print(f"flower_leakage: error: {e}", file=sys.stderr)
        return 2


def deploy_and_attack(args, attacks: tuple[str, ...], out: Path, settings: dict) -> int:
    """Deploy, capture and attack (``run``), then write summary.txt, results.json and the image grid."""
    from attacks.experiment import save_grid
    from fedsim.cli import format_table
    from fedsim.files import atomic_write_text
    from fedsim.flower.deploy import DeploymentError

    print(f"deploying {args.nodes} SuperNodes (FedAvg, dropout MLP p = {args.dropout}, one round) ...",
          file=sys.stderr, flush=True)
    try:
        res = run(out, args.nodes, args.dropout, seed=args.seed, iterations=args.iterations, attacks=attacks,
                  data_dir=args.data_dir, tls=args.tls)
    except DeploymentError as e:
        print(f"flower_leakage: error: {e}", file=sys.stderr)
        return 1
    dep = res["deployment"]
    table = format_table(res["rows"], ["client", "victim", "attack", "ssim", "psnr", "label_ok", "iterations"])
    text = (f"FedAvg on a Flower deployment ({args.nodes} SuperNodes{', TLS' if args.tls else ''}): start-up "
            f"{dep['startup_s']:.1f} s, run {dep['run_s']:.1f} s; attacks from the saved capture "
            f"({res['attack_s']:.0f} s, at most {args.iterations} iterations)\n\n{table}\n")
    for attack in attacks:
        mine = [r["ssim"] for r in res["rows"] if r["attack"] == attack]
        text += f"mean SSIM {attack}: {sum(mine) / len(mine):.3f}\n"
    print("\n" + text)
    atomic_write_text(out / "summary.txt", text)
    atomic_write_text(out / "results.json", json.dumps({"command": "flower_leakage", "args": settings,
                                                       "rows": res["rows"], "deployment": dep}, indent=1))
    save_grid(res["recon"], out / "reconstructions.png",
              f"Flower capture, dropout p = {args.dropout}: IG vs DIA")
    print(f"results: {out}/ (summary.txt, results.json, reconstructions.png, deployment/capture.pt, deployment/logs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
