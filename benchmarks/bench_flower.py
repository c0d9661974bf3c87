"""The fedsim engine vs fedsim's apps on Flower, one workload, one run.

Workload (issue 11): FedAvg, digits MLP 64-32-10, 100 clients (all of them every round), one local step of batch 32,
5 rounds. Drivers: the fedsim engine (batched), the in-process Flower runner (``fedsim.flower.inprocess``: the apps
without Ray), Flower's simulation engine (Ray, ``flwr run``, 100 simulated SuperNodes) and, with ``--deployment``,
Flower's deployment engine (``fedsim.flower.deploy``: a SuperLink and 10 SuperNodes as processes, so 10 clients).

Reported per driver: time to first round (from the start of the driver's run: data, model and, on Flower, node
discovery, Ray start-up and the first round) and the median time per round over rounds 2..5 (the engine: over 3
runs of 50 rounds, the first round of each left out, as a cold 5-round run is dominated by first-call costs), and the
ratios to the engine; for the engine and the in-process runner also the CPU time per round of this process (steadier than wall
time on a busy machine). Targets: engine >= 100x Flower's simulation engine per round; in-process runner within 3x
of the engine.

    python benchmarks/bench_flower.py                    # engine, in-process, simulation
    python benchmarks/bench_flower.py --deployment       # ... and the 10-node deployment run
    python benchmarks/bench_flower.py --skip simulation  # quick: engine and in-process only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _machine import cpu_description  # noqa: E402


def workload(clients: int, rounds: int, vectorized: bool, out: str = ""):
    from fedsim.flower.spec import make_spec

    return make_spec("fedavg", clients=clients, rounds=rounds, hidden="32", local_steps=1, batch_size=32,
                     vectorized=vectorized, out=out)


def _clear_caches():
    from fedsim.flower import spec as fspec

    for f in (fspec._split, fspec._trainer, fspec._node_data, fspec._parse):
        f.cache_clear()


def engine(spec, rounds: int = 50, repeats: int = 3) -> dict:
    """The engine on the same workload: time to its first round from a cold start (the first repeat), and the
    median round over ``repeats`` runs of ``rounds`` rounds (at least the workload's), the first round of each
    left out: a few rounds of a cold process are dominated by first-call costs (a 5-round run read 1.9-3.9 ms a
    round where the steady state is 1.1-2.0 ms)."""
    from fedsim.engine import simulate
    from fedsim.experiment import build

    first, per_round, per_round_cpu = None, [], []
    for _ in range(repeats):
        _clear_caches()
        t0 = time.perf_counter()
        stamps, cpu = [], []
        setup = build(dataclasses.replace(spec.run, vectorized=True))
        simulate(setup.algorithm, setup.fed, max(rounds, spec.run.rounds), eval_every=0,
                 on_round=lambda t, st, hist: (stamps.append(time.perf_counter()), cpu.append(time.process_time())))
        first = stamps[0] - t0 if first is None else first
        per_round += [b - a for a, b in zip(stamps, stamps[1:])]
        per_round_cpu += [b - a for a, b in zip(cpu, cpu[1:])]
    return {"first": first, "round": statistics.median(per_round), "clients": spec.run.clients,
            "cpu": statistics.median(per_round_cpu)}


def inprocess(spec) -> dict:
    from fedsim.flower.inprocess import run_spec

    _clear_caches()
    t0 = time.perf_counter()
    result, _ = run_spec(spec)
    hist = result["history"]
    start_to_first = (time.perf_counter() - t0) - sum(r["seconds"] for r in hist[1:]) - _eval_time(result)
    return {"first": start_to_first, "round": statistics.median(r["seconds"] for r in hist[1:]),
            "clients": spec.run.clients, "cpu": statistics.median(r["cpu_seconds"] for r in hist[1:])}


def _eval_time(result) -> float:
    # the ServerApp's final evaluation and file writes happen after the last round; they are part of neither number
    return max(0.0, result["seconds"] - result["first_round_s"] - sum(r["seconds"] for r in result["history"][1:]))


def simulation(spec, cpus: float) -> dict:
    import json

    from fedsim.flower.simulation import run_simulation

    with tempfile.TemporaryDirectory() as out:
        s = dataclasses.replace(spec, out=out)
        t0 = time.perf_counter()
        run_simulation(s.to_run_config(), s.run.clients, cpus_per_node=cpus, timeout=1800)
        result = json.loads((Path(out) / "result.json").read_text())
    hist = result["history"]
    # flwr run's own start (SuperLink, Ray) comes before the ServerApp starts: time to first round counts it
    total = time.perf_counter() - t0
    after_first = sum(r["seconds"] for r in hist[1:]) + _eval_time(result)
    return {"first": total - after_first, "round": statistics.median(r["seconds"] for r in hist[1:]),
            "clients": spec.run.clients, "approx": True}


def deployment(spec, nodes: int) -> dict:
    import json

    from fedsim.flower.deploy import Deployment, deploy
    from fedsim.flower.simulation import APP_DIR

    with tempfile.TemporaryDirectory() as out:
        s = workload(nodes, spec.run.rounds, spec.run.vectorized, out=str(Path(out) / "run"))
        t0 = time.perf_counter()
        deploy(Deployment(APP_DIR, Path(out), nodes, run_config=s.to_run_config(), run_timeout=1800))
        result = json.loads((Path(out) / "run" / "result.json").read_text())
    hist = result["history"]
    total = time.perf_counter() - t0
    after_first = sum(r["seconds"] for r in hist[1:]) + _eval_time(result)
    return {"first": total - after_first, "round": statistics.median(r["seconds"] for r in hist[1:]),
            "clients": nodes, "approx": True}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--node-path", choices=["batched", "loop"], default="batched",
                        help="the Flower nodes' local step: the batched kernel on their one row, or the per-client "
                             "reference loop (the engine always runs batched)")
    parser.add_argument("--cpus-per-node", type=float, default=1.0, help="simulation: Ray CPUs per simulated node")
    parser.add_argument("--skip", nargs="*", default=[], choices=["inprocess", "simulation"])
    parser.add_argument("--deployment", action="store_true",
                        help="also the deployment engine with --deployment-nodes SuperNodes (fedsim.flower.deploy)")
    parser.add_argument("--deployment-nodes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    spec = workload(args.clients, args.rounds, args.node_path == "batched")
    print(f"machine: {cpu_description()}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"workload: FedAvg, digits MLP 64-32-10, {args.clients} clients, 1 local step (batch 32), {args.rounds} "
          f"rounds; Flower nodes: {args.node_path} local step\n", flush=True)
    rows = {"fedsim engine": engine(spec)}
    if "inprocess" not in args.skip:
        rows["Flower in-process runner"] = inprocess(spec)
    if "simulation" not in args.skip:
        rows["Flower simulation engine (Ray)"] = simulation(spec, args.cpus_per_node)
    if args.deployment:
        try:
            rows[f"Flower deployment ({args.deployment_nodes} nodes)"] = deployment(spec, args.deployment_nodes)
        except ImportError as exc:
            print(f"deployment skipped: {exc}")
    base = rows["fedsim engine"]["round"]
    base_cpu = rows["fedsim engine"]["cpu"]
    print("driver | clients | time to first round s | per round ms | per round / engine | CPU ms per round "
          "(this process) | CPU / engine")
    print("--- | --- | --- | --- | --- | --- | ---")
    for name, r in rows.items():
        cpu = f"{1000 * r['cpu']:.1f} | {r['cpu'] / base_cpu:.1f}x" if "cpu" in r else "- (other processes) | -"
        print(f"{name} | {r['clients']} | {r['first']:.2f} | {1000 * r['round']:.1f} | {r['round'] / base:.1f}x | {cpu}")
    print(f"\nafter: {load()}")
    print("targets: engine >= 100x the simulation engine per round; in-process runner <= 3x the engine")


if __name__ == "__main__":
    main()
