"""Variance correction and asynchronous gossip: speed and memory (issue 9, "Measure and report").

One table per item, the target next to the measurement:

1. the LeNet (Caffe's 20-50-500-10, MNIST-shaped 1x28x28 inputs) gossip round of 100 nodes, batch 64, one
   local step: batched (``Gossip(vectorized=True)``) vs the per-node loop (target >= 20x), with the digits MLP
   64-32-10 for contrast, and the compute floor: the step's multiply-adds against this machine's sgemm rate;
2. asynchronous gossip's node-updates/s (training events / s) next to the synchronous round's (N x rounds / s),
   digits MLP on a random 8-regular graph, N = 100 and 1,000, clocks U{8..12} and U{1..1} (target >= 1/2), with
   ``AsyncGossip(in_place=True)`` as ``fedsim run`` runs it (judged) and with the copying default of the class;
   and LeNet at N = 100, U{8..12} (the vanishing-variance study's model: training outweighs a tick's fixed costs);
3. the combine step of one synchronous round, ``variance_corrected`` (and ``beta``) vs ``plain`` W mixing,
   digits MLP at N = 1,000 and 10,000, LeNet at N = 100 (target < 2x);
4. peak resident memory of a fresh process at 1,000 LeNet nodes: one synchronous round and a few asynchronous
   ticks (also ``AsyncGossip(in_place=True)``), next to the size of one population tensor; with the library's
   ``init_population`` and with the same state drawn a chunk of nodes at a time (the round's own peak).

    python benchmarks/bench_vv.py                          # everything, CPU, threads 1 and 2 (item 4: 1 thread)
    python benchmarks/bench_vv.py --items 2 3 --threads 1
    python benchmarks/bench_vv.py --device cuda --threads 0 --items 1 2 3 --lenet-nodes 100 1000

Every point runs in a fresh subprocess (its peak memory is its own). Within a point the two things compared
are measured alternately, several repeats, and the medians reported, so a load change on a shared machine
hits both. LeNet inputs are synthetic (a pool of 10,000 random 1x28x28 images, random labels): the speed of a
dense CNN step does not depend on the pixel values. The MLP runs on scikit-learn's digits, 64 samples per node.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time

DEGREE = 8


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


class _Timer:
    """Wall-clock and CPU time (this process, all threads) of a block, appended to ``wall`` and ``cpu``."""

    def __init__(self, sync):
        self.sync, self.wall, self.cpu = sync, [], []

    def __enter__(self):
        self.sync()
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.wall.append(time.perf_counter() - self._w)
        self.cpu.append(time.process_time() - self._c)


def _setup(threads: int, device: str):
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    return torch, dev, sync


def _federation(model_name: str, n: int, dev, per_client: int = 64):
    """Data, 8-regular Metropolis-Hastings topology and the model of one workload."""
    import numpy as np
    import torch

    import topologies
    from fedsim import data as fdata
    from fedsim.engine import Federation
    from fedsim.models import build_model
    from fedsim.rng import Streams
    from fedsim.training import ClientData

    if model_name == "mlp":
        train, test = fdata.train_test_split(fdata.load_digits(), 0.2, seed=0)
        x, y, tx, ty = train.x, train.y, test.x, test.y
        model = build_model("mlp", (1, 8, 8), 10, (32,))
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((10_000, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, 10_000)
        tx, ty = x[:256], y[:256]
        model = build_model(model_name, (1, 28, 28), 10)
    parts = fdata.sampled(len(x), n, per_client=per_client, seed=0)
    data = ClientData.from_parts(x, y, parts, device=dev)
    schedule = topologies.Static(topologies.metropolis_hastings(topologies.random_regular(n, DEGREE, seed=0)))
    fed = Federation(data, torch.as_tensor(tx, device=dev), torch.as_tensor(ty, device=dev), Streams(0), schedule,
                     dev)
    return fed, model.to(dev)


def _chunk(model_name: str, dev) -> int | None:
    """Nodes per batched training call: the MLP's working set is tiny, so all of them on CPU; else the library's
    default (``LocalSGD.chunk_for``: a CNN node's gradient on its own on CPU, 256 on an accelerator)."""
    if model_name != "mlp":
        return None
    return 1024 if dev.type == "cpu" else 1 << 30


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KiB -> MiB on Linux


# -- item 1: batched vs per-node loop --------------------------------------------------------------------

def step_macs(model, in_shape) -> tuple[int, int]:
    """Multiply-adds of one image's forward pass, and of forward + backward (weight gradients of every layer,
    input gradients of every layer but the first)."""
    import torch
    from torch import nn

    counts = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            counts.append(output[0].numel() * k)
        elif isinstance(module, nn.Linear):
            counts.append(module.in_features * module.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    forward = sum(counts)
    return forward, 3 * forward - counts[0]


def gemm_gflops(torch, dev, sync, size: int = 1024, repeats: int = 7) -> float:
    """This machine's float32 matmul rate (the best a compute-bound step can hope for)."""
    a, b = torch.randn(size, size, device=dev), torch.randn(size, size, device=dev)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / _median(times) / 1e9


def measure_round(model_name: str, n: int, threads: int, device: str, repeats: int, batch: int) -> dict:
    """Item 1: one gossip round, batched vs the per-node loop, measured alternately."""
    torch, dev, sync = _setup(threads, device)
    from fedsim.algorithms import Gossip
    from fedsim.engine import simulate
    from fedsim.training import LocalSGD

    fed, model = _federation(model_name, n, dev)
    trainer = LocalSGD(model, lr=0.01, steps=1, batch_size=batch, chunk=_chunk(model_name, dev))
    fast, slow = Gossip(trainer), Gossip(trainer, vectorized=False)
    state = fast.init(fed)
    timers = {"batched": _Timer(sync), "loop": _Timer(sync)}
    for alg in (fast, slow):   # warm-up
        simulate(alg, fed, 1, state=state, eval_every=0)
    for _ in range(repeats):
        for name, alg in (("batched", fast), ("loop", slow)):
            with timers[name]:
                simulate(alg, fed, 1, state=state, eval_every=0)
    in_shape = (1, 8, 8) if model_name == "mlp" else (1, 28, 28)
    forward, train_macs = step_macs(model, in_shape)
    batched, loop = _median(timers["batched"].wall), _median(timers["loop"].wall)
    cpu_ratio = _median(timers["loop"].cpu) / _median(timers["batched"].cpu)
    step_flop = 2 * train_macs * batch
    gemm = gemm_gflops(torch, dev, sync)
    return {"model": model_name, "n": n, "threads": torch.get_num_threads(), "device": device, "batch": batch,
            "params": sum(p.numel() for p in model.parameters()), "batched_s": batched, "loop_s": loop,
            "speedup": loop / batched, "cpu_speedup": cpu_ratio, "forward_macs": forward, "step_gflop": step_flop / 1e9,
            "gemm_gflops": gemm, "floor_ms": 1e3 * step_flop / (gemm * 1e9),
            "batched_node_ms": 1e3 * batched / n, "loop_node_ms": 1e3 * loop / n, "peak_rss_mb": _rss_mb()}


def table_round(rows: list[dict]) -> str:
    head = ("model", "N", "threads", "batched round s", "loop round s", "speed-up (target >= 20x)", "CPU time",
            "ms per node-step batched / loop", "GFLOP per node-step", "sgemm GFLOP/s", "floor ms per node-step",
            "met")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            r["model"], f"{r['n']:,}", str(r["threads"]), f"{r['batched_s']:.3f}", f"{r['loop_s']:.3f}",
            f"{r['speedup']:.2f}x", f"{r['cpu_speedup']:.2f}x", f"{r['batched_node_ms']:.2f} / {r['loop_node_ms']:.2f}",
            f"{r['step_gflop']:.3f}", f"{r['gemm_gflops']:.0f}", f"{r['floor_ms']:.2f}",
            "yes" if r["speedup"] >= 20 else "no"]))
    return "\n".join(lines)


# -- item 2: asynchronous vs synchronous node-updates/s ------------------------------------------------------

def measure_async(n: int, interval: tuple[int, int], rule: str, threads: int, device: str, repeats: int,
                  sync_rounds: int, ticks: int, model_name: str = "mlp") -> dict:
    """Item 2: blocks of synchronous rounds and asynchronous ticks (copying the state, and ``in_place``),
    alternately, each from its own steady state."""
    torch, dev, sync = _setup(threads, device)
    from fedsim.algorithms import AsyncGossip, Gossip
    from fedsim.averaging import Averaging
    from fedsim.engine import simulate
    from fedsim.training import LocalSGD

    fed, model = _federation(model_name, n, dev)
    trainer = LocalSGD(model, lr=0.1 if model_name == "mlp" else 0.01, steps=1, batch_size=32,
                       chunk=_chunk(model_name, dev))
    avg = Averaging(rule)
    sync_alg = Gossip(trainer, averaging=avg)
    modes = {"async": AsyncGossip(trainer, averaging=avg, interval=interval)}
    if "in_place" in {f.name for f in dataclasses.fields(AsyncGossip)}:
        modes["in_place"] = AsyncGossip(trainer, averaging=avg, interval=interval, in_place=True)
    s_state = simulate(sync_alg, fed, 2, eval_every=0).state
    warm = 3 * interval[1] + 2   # past tick 0 (every clock fires) into the steady state
    states = {name: [simulate(alg, fed, warm, eval_every=0).state, warm] for name, alg in modes.items()}
    rates = {k: [] for k in ("sync", "sync_cpu", *modes, *(f"{m}_cpu" for m in modes))}
    tick_ms, per_tick = [], []
    for _ in range(repeats):
        timer = _Timer(sync)
        with timer:
            s_state = simulate(sync_alg, fed, sync_rounds, state=s_state, eval_every=0).state
        rates["sync"].append(n * sync_rounds / timer.wall[-1])
        rates["sync_cpu"].append(n * sync_rounds / timer.cpu[-1])
        for name, alg in modes.items():
            state, t = states[name]
            states[name] = None   # the in-place mode consumes it
            with timer:
                res = simulate(alg, fed, t + ticks, state=state, start_round=t, eval_every=0)
            del state
            states[name] = [res.state, t + ticks]
            updates = sum(r["participants"] for r in res.history)
            rates[name].append(updates / timer.wall[-1])
            rates[f"{name}_cpu"].append(updates / timer.cpu[-1])
            if name == "async":
                tick_ms.append(1e3 * timer.wall[-1] / ticks)
                per_tick.append(updates / ticks)
    med = {k: _median(v) for k, v in rates.items()}
    s, a = med["sync"], med["async"]
    return {"model": model_name, "n": n, "interval": list(interval), "rule": rule, "threads": torch.get_num_threads(),
            "device": device,
            "sync_updates_per_s": s, "async_updates_per_s": a, "ratio": a / s,
            "cpu_ratio": med["async_cpu"] / med["sync_cpu"],
            "in_place_updates_per_s": med.get("in_place", float("nan")),
            "in_place_ratio": med.get("in_place", float("nan")) / s,
            "tick_ms": _median(tick_ms), "trainers_per_tick": _median(per_tick), "peak_rss_mb": _rss_mb()}


def table_async(rows: list[dict]) -> str:
    head = ("model", "N", "clock", "rule", "threads", "sync upd/s", "async in place upd/s (fedsim run)",
            "in place / sync (target >= 0.5)", "met", "async copying upd/s", "copying / sync", "same, CPU time",
            "copying tick ms", "trainers per tick")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lo, hi = r["interval"]
        lines.append(" | ".join([
            r.get("model", "mlp"), f"{r['n']:,}", f"U{{{lo}..{hi}}}", r["rule"], str(r["threads"]),
            f"{r['sync_updates_per_s']:,.0f}",
            f"{r['in_place_updates_per_s']:,.0f}", f"{r['in_place_ratio']:.2f}",
            "yes" if r["in_place_ratio"] >= 0.5 else "no", f"{r['async_updates_per_s']:,.0f}", f"{r['ratio']:.2f}",
            f"{r['cpu_ratio']:.2f}", f"{r['tick_ms']:.2f}", f"{r['trainers_per_tick']:.0f}"]))
    return "\n".join(lines)


# -- item 3: the combine step ---------------------------------------------------------------------------------

def measure_combine(model_name: str, n: int, threads: int, device: str, repeats: int) -> dict:
    """Item 3: one synchronous combine step, plain W mix vs the buffer rules, alternately."""
    torch, dev, sync = _setup(threads, device)
    from fedsim.algorithms import Gossip
    from fedsim.averaging import Averaging
    from fedsim.mixing import SparseW
    from fedsim.training import LocalSGD

    fed, model = _federation(model_name, n, dev, per_client=8)
    trainer = LocalSGD(model, lr=0.1, steps=1, batch_size=8)
    algs = {rule: Gossip(trainer, averaging=Averaging(rule), same_init=False)
            for rule in ("beta", "variance_corrected")}
    x = algs["beta"].init(fed).x   # every node its own Xavier-like model
    W = SparseW.from_scipy(fed.schedule.at(0), device=dev)
    senders, receivers = W.edges()
    delivered = torch.ones(len(senders), dtype=torch.bool, device=dev)
    steps = {"plain": lambda: W.mix(x, x, senders, delivered),
             "beta": lambda: algs["beta"]._buffer_rule(x, x, senders, delivered, receivers),
             "variance_corrected": lambda: algs["variance_corrected"]._buffer_rule(x, x, senders, delivered,
                                                                                   receivers),
             "copy": lambda: x.clone()}
    timers = {k: _Timer(sync) for k in steps}
    for fn in steps.values():   # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in steps.items():
            with timers[name]:
                fn()
    med = {k: _median(v.wall) for k, v in timers.items()}
    cpu = {k: _median(v.cpu) for k, v in timers.items()}
    return {"model": model_name, "n": n, "threads": torch.get_num_threads(), "device": device,
            "population_mb": x.numel() * x.element_size() / 2**20, **{f"{k}_s": v for k, v in med.items()},
            "vc_over_plain": med["variance_corrected"] / med["plain"], "beta_over_plain": med["beta"] / med["plain"],
            "cpu_vc_over_plain": cpu["variance_corrected"] / cpu["plain"], **{f"{k}_cpu_s": v for k, v in cpu.items()},
            "peak_rss_mb": _rss_mb()}


def table_combine(rows: list[dict]) -> str:
    head = ("model", "N", "threads", "population MB", "plain mix ms", "beta ms", "variance_corrected ms",
            "copy ms", "beta / plain", "corrected / plain (target < 2x)", "same, CPU time", "met")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            r["model"], f"{r['n']:,}", str(r["threads"]), f"{r['population_mb']:,.0f}", f"{1e3 * r['plain_s']:.1f}",
            f"{1e3 * r['beta_s']:.1f}", f"{1e3 * r['variance_corrected_s']:.1f}", f"{1e3 * r['copy_s']:.1f}",
            f"{r['beta_over_plain']:.2f}x", f"{r['vc_over_plain']:.2f}x", f"{r['cpu_vc_over_plain']:.2f}x",
            "yes" if r["vc_over_plain"] < 2 else "no"]))
    return "\n".join(lines)


# -- item 4: peak memory -----------------------------------------------------------------------------------

def _chunked_init(chunk: int = 16):
    """``fedsim.state.init_population`` drawn ``chunk`` nodes at a time into one preallocated tensor (the same
    values: every node's draws come from its own streams), so that the round's own peak shows."""
    import torch

    from fedsim import state as fstate

    whole = fstate.init_population

    def init_population(model, clients, streams, shared=True, dtype=torch.float32, device="cpu", init="default"):
        clients = torch.as_tensor(clients, dtype=torch.int64)
        first = whole(model, clients[:1], streams, shared, dtype, device, init)
        out = first.new_empty(len(clients), first.shape[1])
        for lo in range(0, len(clients), chunk):
            out[lo:lo + chunk] = whole(model, clients[lo:lo + chunk], streams, shared, dtype, device, init)
        return out

    return init_population


def measure_memory(mode: str, n: int, threads: int, device: str, momentum: float, ticks: int,
                   chunked_init: bool, in_place: bool = False) -> dict:
    """Item 4: peak RSS of this (fresh) process after one synchronous round or ``ticks`` asynchronous ticks."""
    torch, dev, sync = _setup(threads, device)
    from fedsim.algorithms import AsyncGossip, Gossip, async_gossip, gossip
    from fedsim.averaging import Averaging
    from fedsim.engine import simulate
    from fedsim.training import LocalSGD

    if chunked_init:
        gossip.init_population = async_gossip.init_population = _chunked_init()
    fed, model = _federation("lenet_caffe", n, dev)
    trainer = LocalSGD(model, lr=0.01, steps=1, batch_size=64, momentum=momentum, chunk=_chunk("lenet_caffe", dev))
    before = _rss_mb()
    avg = Averaging("variance_corrected")
    if mode == "sync":
        alg, rounds = Gossip(trainer, averaging=avg), 1
    else:
        extra = {"in_place": True} if in_place else {}   # (an option older versions do not have)
        alg, rounds = AsyncGossip(trainer, averaging=avg, interval=(8, 12), **extra), ticks
    held = [alg.init(fed)]
    after_init = _rss_mb()
    start = time.perf_counter()
    # hand the initial state over without keeping a reference: held here, it would stay alive all run long
    res = simulate(alg, fed, rounds, state=held.pop(), eval_every=0)
    sync()
    elapsed = time.perf_counter() - start
    x = res.state.x
    population = x.numel() * x.element_size() / 2**20
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
    return {"mode": mode + (" in place" if in_place else ""), "n": n, "threads": torch.get_num_threads(),
            "device": device, "momentum": momentum, "chunked_init": chunked_init, "rounds": rounds,
            "updates": sum(r["participants"] for r in res.history), "seconds": elapsed, "population_mb": population,
            "before_mb": before, "init_peak_mb": after_init, "peak_rss_mb": _rss_mb(), "gpu_peak_mb": gpu_peak}


def table_memory(rows: list[dict]) -> str:
    head = ("mode", "N", "momentum", "init", "rounds / ticks", "node-updates", "s", "population MB (one N x P)",
            "RSS before init MB", "peak after init MB", "peak RSS MB", "round's peak above the init peak MB",
            "(peak - before) / population", "GPU peak MB")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            r["mode"], f"{r['n']:,}", str(r["momentum"]), "chunked" if r["chunked_init"] else "library",
            str(r["rounds"]), f"{r['updates']:,}", f"{r['seconds']:.0f}", f"{r['population_mb']:,.0f}",
            f"{r['before_mb']:,.0f}", f"{r['init_peak_mb']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
            f"{r['peak_rss_mb'] - r['init_peak_mb']:,.0f}",
            f"{(r['peak_rss_mb'] - r['before_mb']) / r['population_mb']:.1f}",
            "-" if r["gpu_peak_mb"] != r["gpu_peak_mb"] else f"{r['gpu_peak_mb']:,.0f}"]))
    return "\n".join(lines)


# -- driver ------------------------------------------------------------------------------------------------

def machine() -> str:
    from _machine import cpu_description

    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_description()}, torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}){gpu}"


def _run(point: dict) -> dict:
    cmd = [sys.executable, __file__, "--single", json.dumps(point)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"point {point} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _single(point: dict) -> dict:
    kind = point.pop("kind")
    return {"round": measure_round, "async": measure_async, "combine": measure_combine,
            "memory": measure_memory}[kind](**point)


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="0 = torch default")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per point (medians)")
    parser.add_argument("--lenet-nodes", type=int, nargs="+", default=[100], help="item 1's LeNet population")
    parser.add_argument("--mlp-nodes", type=int, nargs="+", default=[100], help="item 1's MLP population")
    parser.add_argument("--async-nodes", type=int, nargs="+", default=[100, 1000], help="item 2 (digits MLP)")
    parser.add_argument("--async-lenet-nodes", type=int, nargs="*", default=[100],
                        help="item 2: LeNet (lenet_caffe) populations, U{8..12} clocks, first thread count only")
    parser.add_argument("--combine-mlp-nodes", type=int, nargs="+", default=[1000, 10000], help="item 3")
    parser.add_argument("--combine-lenet-nodes", type=int, nargs="+", default=[100], help="item 3")
    parser.add_argument("--memory-nodes", type=int, default=1000, help="item 4")
    parser.add_argument("--memory-ticks", type=int, default=10, help="item 4: asynchronous ticks (tick 0: all)")
    parser.add_argument("--single", type=str, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print(json.dumps(_single(json.loads(args.single))))
        return

    def points(kind, **fixed):
        return {"kind": kind, "device": args.device, **fixed}

    tables = []
    if 1 in args.items:
        rows = []
        for threads in args.threads:
            for model, sizes in (("lenet_caffe", args.lenet_nodes), ("mlp", args.mlp_nodes)):
                for n in sizes:
                    rows.append(_run(points("round", model_name=model, n=n, threads=threads,
                                            repeats=max(3, args.repeats // 2) if model != "mlp" else args.repeats,
                                            batch=64)))
                    print(f"  item 1 {model} N={n} threads={threads}: {rows[-1]['speedup']:.2f}x  ({_load()})",
                          flush=True)
        tables.append(("1. Gossip round, batched vs per-node loop (batch 64, 1 local step, 8-regular)",
                       table_round(rows)))
    if 2 in args.items:
        rows = []
        for threads in args.threads:
            for n in args.async_nodes:
                for interval in ((8, 12), (1, 1)):
                    for rule in ("beta", "variance_corrected"):
                        ticks = 4 * 10 if interval == (8, 12) else 4
                        rounds = 2 if n >= 1000 else 8
                        ticks = ticks if n >= 1000 else 4 * ticks
                        rows.append(_run(points("async", n=n, interval=interval, rule=rule, threads=threads,
                                                repeats=args.repeats, sync_rounds=rounds, ticks=ticks)))
                        print(f"  item 2 N={n} {interval} {rule} threads={threads}: {rows[-1]['ratio']:.2f}  "
                              f"({_load()})", flush=True)
        for n in args.async_lenet_nodes:   # training dominates: the tick's fixed costs matter little
            for rule in ("beta", "variance_corrected"):
                rows.append(_run(points("async", n=n, interval=(8, 12), rule=rule, threads=args.threads[0],
                                        repeats=max(3, args.repeats // 2), sync_rounds=1, ticks=10,
                                        model_name="lenet_caffe")))
                print(f"  item 2 lenet_caffe N={n} {rule}: {rows[-1]['in_place_ratio']:.2f}  ({_load()})", flush=True)
        tables.append(("2. Asynchronous vs synchronous node-updates/s (batch 32, 1 step, 8-regular)",
                       table_async(rows)))
    if 3 in args.items:
        rows = []
        for threads in args.threads:
            for model, sizes in (("mlp", args.combine_mlp_nodes), ("lenet_caffe", args.combine_lenet_nodes)):
                for n in sizes:
                    rows.append(_run(points("combine", model_name=model, n=n, threads=threads,
                                            repeats=max(args.repeats, 7))))
                    print(f"  item 3 {model} N={n} threads={threads}: {rows[-1]['vc_over_plain']:.2f}x  "
                          f"({_load()})", flush=True)
        tables.append(("3. Combine step of one synchronous round (8-regular, no losses)", table_combine(rows)))
    if 4 in args.items:
        rows = []
        threads = args.threads[0]
        for mode, momentum, chunked, in_place in (
                ("sync", 0.9, False, False), ("sync", 0.0, True, False), ("sync", 0.9, True, False),
                ("async", 0.9, False, False), ("async", 0.0, True, False), ("async", 0.9, True, False),
                ("async", 0.9, True, True)):
            rows.append(_run(points("memory", mode=mode, n=args.memory_nodes, threads=threads, momentum=momentum,
                                    ticks=args.memory_ticks, chunked_init=chunked, in_place=in_place)))
            print(f"  item 4 {rows[-1]['mode']} momentum={momentum} chunked init={chunked}: peak "
                  f"{rows[-1]['peak_rss_mb']:,.0f} MB  ({_load()})", flush=True)
        tables.append(("4. Peak memory, LeNet (lenet_caffe), variance_corrected, batch 64, 1 step, async U{8..12}",
                       table_memory(rows)))
    print(f"\nmachine: {machine()}; {_load()}\n")
    for title, text in tables:
        print(f"{title}\n\n{text}\n")


if __name__ == "__main__":
    main()
