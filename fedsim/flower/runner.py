"""``fedsim flower``: run FedAvg, FedPG or gossip on Flower, in process or on Flower's simulation engine.

Imports nothing from flwr at module level (the CLI builds its parser without it). ``MODES`` lists the ways to
run; a new mode adds its name there and a branch in ``run_mode``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

MODES = ("inprocess", "simulation", "deployment")   # deployment: fedsim/flower/deploy.py (real processes)
OWN_FILES = ("result.json", "final.pt", "capture.pt")   # what the ServerApp writes into --out


def add_arguments(p) -> None:
    """The ``fedsim flower`` options (on an argparse parser)."""
    p.add_argument("--mode", default="inprocess", choices=MODES,
                   help="inprocess: the apps in this process, no Ray (fast, deterministic); simulation: Flower's "
                        "simulation engine (Ray), one simulated SuperNode per client; deployment: a SuperLink and one "
                        "SuperNode per client as real processes on localhost (add --tls for TLS)")
    p.add_argument("--algorithm", default="fedavg", choices=["fedavg", "fedpg", "gossip"],
                   help="fedavg (digits MLP), fedpg (clean FedPG on the NSL-KDD paper split) or gossip (D-PSGD "
                        "relayed by the ServerApp)")
    p.add_argument("--clients", type=int, default=10, help="clients = nodes (partition ids 0..clients-1)")
    p.add_argument("--rounds", type=int, default=5, help="rounds")
    p.add_argument("--seed", type=int, default=0, help="root seed")
    p.add_argument("--data-dir", help="folder with the data sets (default: $FEDSIM_DATA_DIR, else ~/.cache/fedsim; "
                                      "digits ship with scikit-learn)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="any other Flower run-config key (fedsim/flower/apps.py), e.g. --set lr=0.05 "
                        "--set topology=regular; repeatable")
    p.add_argument("--capture", action="store_true", help="the ServerApp writes every update it receives to "
                                                          "capture.pt (for the leakage lab)")
    p.add_argument("--cpus-per-node", type=float, default=1.0, help="simulation: Ray CPUs per simulated node")
    p.add_argument("--timeout", type=float, default=600.0, help="simulation: seconds before the run is stopped")
    p.add_argument("--tls", action="store_true", help="deployment: TLS with fresh certificates in OUT/tls "
                                                      "(fedsim/flower/tls.py)")
    p.add_argument("--out", default="results/flower", help="output folder (results.json, summary.txt, final.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace fedsim's files in --out")
    p.add_argument("--no-progress", action="store_true", help="no 'running ...' line on stderr")


def _value(text: str):
    """A --set value as TOML reads it (numbers, booleans, quoted strings), else the bare string."""
    from fedsim.config import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def spec_of(args):
    """The ``FlowerSpec`` of the command line (a ConfigError names the bad key)."""
    from fedsim.config import ConfigError
    from fedsim.flower.spec import parse

    values = {"algorithm": args.algorithm, "clients": args.clients, "rounds": args.rounds, "seed": args.seed,
              "data-dir": args.data_dir or "", "capture": args.capture, "out": str(Path(args.out).resolve())}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        if key.strip() in ("out", "capture"):
            raise ConfigError(f"--set {key.strip()}: use --{key.strip()}")
        values[key.strip()] = _value(text.strip())
    if args.clients < 1 or args.rounds < 1:
        raise ConfigError(f"--clients and --rounds must be >= 1, got {args.clients} and {args.rounds}")
    return parse(values)


def run_mode(spec, mode: str, *, cpus_per_node: float = 1.0, timeout: float = 600.0, tls: bool = False) -> dict:
    """Run ``spec`` in ``mode``; the ServerApp writes its files into ``spec.out``; returns its result dict."""
    if mode == "inprocess":
        from fedsim.flower.inprocess import run_spec

        return run_spec(spec)[0]
    if mode == "simulation":
        from fedsim.flower.simulation import run_simulation

        run_simulation(spec.to_run_config(), spec.run.clients, cpus_per_node=cpus_per_node, timeout=timeout)
        path = Path(spec.out) / "result.json"
        if not path.is_file():
            from fedsim.flower.simulation import SimulationError

            raise SimulationError(f"the simulation finished without writing {path}")
        return json.loads(path.read_text())
    if mode == "deployment":
        from fedsim.flower.deploy import run_deployment

        return run_deployment(spec, timeout=timeout, tls=tls)
    raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")


def summary(result: dict, mode: str) -> str:
    """A plain-text table: one line per round, then timing, drops and rejections."""
    hist = result["history"]
    keys = [k for k in ("participants", "train_loss", "residual", "angle_estimate", "seconds")
            if any(k in row for row in hist)]
    lines = [f"{result['algorithm']} on Flower ({mode}), {result['config']['clients']} clients",
             " | ".join(["round", *keys])]
    for row in hist:
        cells = [str(row["round"])] + [_fmt(row.get(k)) for k in keys]
        lines.append(" | ".join(cells))
    final = {k: v for k, v in (hist[-1].items() if hist else ()) if k.endswith(("_acc", "_loss")) and k != "train_loss"}
    if final:
        lines.append("final: " + ", ".join(f"{k} {_fmt(v)}" for k, v in final.items()))
    per_round = [r["seconds"] for r in hist[1:]] or [r["seconds"] for r in hist]
    lines.append(f"time to first round {_fmt(result['first_round_s'])} s; per round (after the first) "
                 f"{_fmt(sum(per_round) / max(len(per_round), 1))} s; total {_fmt(result['seconds'])} s")
    lines.append(f"dropped nodes: {len(result['dropped'])}; rejected replies: {len(result['rejected'])}")
    for d in result["dropped"]:
        lines.append(f"  dropped: client {d['client']} (node {d['node']}) in round {d['round']}, {d['seconds']} s in")
    for r in result["rejected"]:
        lines.append(f"  rejected: client {r['client']} in round {r['round']}: {r['reason']}")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def cmd_flower(args) -> int:
    """The ``fedsim flower`` command: claim --out, run, write results.json and summary.txt, print the table."""
    from fedsim.config import ConfigError
    from fedsim.files import atomic_write_text, listing
    from fedsim.runs import RunFolderError, claim_results_folder

    try:
        import flwr  # noqa: F401
    except ImportError:
        raise ConfigError("fedsim flower needs Flower: pip install 'fedsim[flower]' (flwr 1.42.0)") from None
    spec = spec_of(args)
    out = Path(args.out)
    settings = {"mode": args.mode, **spec.to_run_config()}
    settings.pop("out")
    claim_results_folder(out, "flower", settings, args.overwrite)
    own = [n for n in OWN_FILES if (out / n).exists()]
    if own and not (out / "results.json").exists():
        if not args.overwrite:
            raise RunFolderError(f"{out} holds {', '.join(own)} of another Flower run; use --overwrite or another --out")
    for n in own if args.overwrite else ():
        (out / n).unlink()
    from fedsim.flower.spec import check_data

    check_data(spec)
    if not args.no_progress:
        print(f"running {spec.algorithm} on Flower ({args.mode}), {spec.run.clients} clients, {spec.run.rounds} "
              "rounds ...", file=sys.stderr, flush=True)
    from fedsim.flower.apps import FlowerRunError
    from fedsim.flower.simulation import SimulationError

    try:   # (a graph that cannot be built was refused by spec.parse, in the run-config keys' words)
        result = run_mode(spec, args.mode, cpus_per_node=args.cpus_per_node, timeout=args.timeout, tls=args.tls)
    except (FlowerRunError, SimulationError) as exc:
        print(f"fedsim: error: the Flower run failed: {exc}", file=sys.stderr)
        return 1
    text = summary(result, args.mode)
    from fedsim.flower.apps import _finite

    atomic_write_text(out / "results.json", json.dumps(_finite({"command": "flower", "args": settings, **result}),
                                                       indent=1, allow_nan=False))
    atomic_write_text(out / "summary.txt", text + "\n")
    print(text)
    print(f"\nresults: {out}/  ({listing(out)}; result.json is the ServerApp's own record, results.json adds the "
          "command's settings)")
    return 0
