"""Gossip round throughput: batched engine vs the per-client loop, mixing vs a copy, memory.

Workload (issue 2): D-PSGD with the digits MLP 64-32-10 on a random 8-regular graph with
Metropolis-Hastings weights, batch 32, one local SGD step per round, N nodes.

    python benchmarks/bench_gossip.py                      # N = 100, 1000, 10000; threads 1 and 2
    python benchmarks/bench_gossip.py --device cuda --sizes 100000 1000000 --threads 0

Each (N, threads) point runs in a fresh subprocess so its peak memory is its own. Reported:
node-updates/s (N x rounds / s) of the batched engine and of the per-client reference loop
(nn.Module + torch.optim.SGD per node, Python-loop mixing) measured in the same run, their ratio,
the mixing step's time next to one copy of the population tensor, and the peak resident memory.

Where a round's time goes (``--breakdown`` table, printed after the main one): the local step
(``LocalSGD.train``) and the mix (``SparseW.mix``) timed inside the engine's rounds, the rest of the round
(messages, byte counter, bookkeeping), and, measured on their own, the mini-batch sampling
(``batch_indices``), the gathers of the mini-batch inputs, and one pass over the population written into
fresh memory of ordinary 4 KiB pages (``x.clone()``), into fresh huge pages (``fedsim.memory.empty``) and
into memory already mapped.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _timed_round_parts(gossip_cls, trainer_cls, sparse_cls):
    """Gossip / LocalSGD / SparseW subclasses whose ``train`` and ``mix`` record their wall time."""
    import dataclasses

    times: dict[str, list[float]] = {"step": [], "mix": []}

    class TimedTrainer(trainer_cls):
        def train(self, *args, **kwargs):
            start = time.perf_counter()
            out = super().train(*args, **kwargs)
            times["step"].append(time.perf_counter() - start)
            return out

    class TimedW(sparse_cls):
        def mix(self, *args, **kwargs):
            start = time.perf_counter()
            out = super().mix(*args, **kwargs)
            times["mix"].append(time.perf_counter() - start)
            return out

    class TimedGossip(gossip_cls):
        def _mixing(self, fed, t):
            w = super()._mixing(fed, t)
            return w if isinstance(w, TimedW) else TimedW(**{f.name: getattr(w, f.name) for f in dataclasses.fields(w)})

    return TimedGossip, TimedTrainer, times


def measure(n: int, threads: int, device: str, rounds: int, loop_rounds: int, loop_max_n: int,
            chunk: int = 0) -> dict:
    """One benchmark point, in this process."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import topologies
    from fedsim import data as fdata
    from fedsim.algorithms import Gossip
    from fedsim.engine import Federation, simulate
    from fedsim.mixing import SparseW
    from fedsim.models import build_model
    from fedsim.rng import Streams
    from fedsim.training import ClientData, LocalSGD

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    train, test = fdata.train_test_split(fdata.load_digits(), 0.2, seed=0)
    parts = fdata.sampled(len(train), n, per_client=64, seed=0)
    data = ClientData.from_parts(train.x, train.y, parts, device=dev)
    graph = topologies.random_regular(n, 8, seed=0)
    schedule = topologies.Static(topologies.metropolis_hastings(graph))
    fed = Federation(data, torch.as_tensor(test.x, device=dev), torch.as_tensor(test.y, device=dev), Streams(0),
                     schedule, dev)
    model = build_model("mlp", (1, 8, 8), 10, (32,)).to(dev)
    chunk = chunk or (256 if dev.type == "cpu" else 1 << 30)
    TimedGossip, TimedTrainer, parts = _timed_round_parts(Gossip, LocalSGD, SparseW)
    trainer = TimedTrainer(model, lr=0.1, steps=1, batch_size=32, chunk=chunk)
    alg = TimedGossip(trainer)
    state = alg.init(fed)

    simulate(alg, fed, 2, state=state, eval_every=0)  # warm-up
    sync()
    parts["step"].clear(), parts["mix"].clear()
    round_times = []

    def one_round(r, st, hist):
        sync()
        round_times.append(time.perf_counter())

    start = time.perf_counter()
    round_times.append(start)
    simulate(alg, fed, rounds, state=state, eval_every=0, on_round=one_round)
    sync()
    batched = (time.perf_counter() - start) / rounds
    per_round = [b - a for a, b in zip(round_times, round_times[1:])]
    mid = len(per_round) // 2
    round_med = sorted(per_round)[mid]
    step_s, mix_in_round, rest_s = float("nan"), float("nan"), float("nan")
    if len(parts["step"]) == len(parts["mix"]) == len(per_round):  # one of each per round
        step_s, mix_in_round = sorted(parts["step"])[mid], sorted(parts["mix"])[mid]
        rest_s = sorted(r - a - b for r, a, b in zip(per_round, parts["step"], parts["mix"]))[mid]

    W = SparseW.from_scipy(schedule.at(0), device=dev)
    x = state.x
    mix = _median(lambda: (W.matmul(x), sync()), 9)  # allocates its output, like the copy
    copy = _median(lambda: (x.clone(), sync()), 9)
    # the combine step when a tap changed the payloads (they are not the senders' own rows): the
    # off-diagonal weights multiply the payload rows, the diagonal the node's own
    payload, src = x.clone(), W.edges()[0]
    everyone = torch.ones(len(src), dtype=torch.bool, device=dev)
    mix_tap = _median(lambda: (W.mix(x, payload, src, everyone), sync()), 9)

    # the pieces of the local step and of the copies, each on its own
    clients = torch.arange(n, device=dev)
    sample = _median(lambda: (data.batch_indices(fed.streams, clients, 0, 1, 32), sync()), 9)
    idx = data.batch_indices(fed.streams, clients, 0, 1, 32)[:, 0]
    flat_x = data.x.reshape(len(data.x), -1)
    gather = _median(lambda: ([torch.index_select(flat_x, 0, idx[c:c + chunk].reshape(-1))
                               for c in range(0, n, chunk)], sync()), 9)
    try:
        from fedsim.memory import empty_like as huge_empty_like
    except ImportError:  # code from before fedsim.memory
        huge_empty_like = None
    copy_huge = float("nan") if huge_empty_like is None else _median(lambda: (huge_empty_like(x).copy_(x), sync()), 9)
    mapped = torch.empty_like(x).copy_(x)
    copy_mapped = _median(lambda: (mapped.copy_(x), sync()), 9)

    loop = float("nan")
    if n <= loop_max_n:
        slow = Gossip(trainer, vectorized=False)
        simulate(slow, fed, 1, state=state, eval_every=0)  # warm-up
        start = time.perf_counter()
        simulate(slow, fed, loop_rounds, state=state, eval_every=0)
        loop = (time.perf_counter() - start) / loop_rounds
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")
    return {"n": n, "threads": torch.get_num_threads(), "device": device, "round_s": batched,
            "updates_per_s": n / batched, "loop_round_s": loop, "loop_updates_per_s": n / loop,
            "speedup": loop / batched, "mix_s": mix, "mix_tap_s": mix_tap, "copy_s": copy, "mix_over_copy": mix / copy,
            "population_mb": x.numel() * x.element_size() / 2**20, "peak_rss_mb": peak, "gpu_peak_mb": gpu_peak,
            "chunk": chunk, "round_median_s": round_med, "step_s": step_s, "mix_in_round_s": mix_in_round,
            "rest_s": rest_s, "sample_s": sample, "gather_s": gather,
            "copy_huge_s": copy_huge, "copy_mapped_s": copy_mapped}


def machine() -> str:
    from _machine import cpu_description

    cpu = cpu_description()
    import torch

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, torch {torch.__version__}{gpu}"


def table(rows: list[dict]) -> str:
    head = ("N", "threads", "batched upd/s", "loop upd/s", "speed-up", "round ms", "mix ms", "tapped mix ms",
            "copy ms", "mix/copy", "peak RSS MB")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            f"{r['n']:,}", str(r["threads"]), f"{r['updates_per_s']:,.0f}",
            "-" if r["loop_round_s"] != r["loop_round_s"] else f"{r['loop_updates_per_s']:,.0f}",
            "-" if r["speedup"] != r["speedup"] else f"{r['speedup']:.1f}x",
            f"{1e3 * r['round_s']:.1f}", f"{1e3 * r['mix_s']:.1f}", f"{1e3 * r.get('mix_tap_s', float('nan')):.1f}",
            f"{1e3 * r['copy_s']:.1f}",
            f"{r['mix_over_copy']:.2f}", f"{r['peak_rss_mb']:,.0f}"]))
    return "\n".join(lines)


def breakdown(rows: list[dict]) -> str:
    """Where a round's time goes (ms): median in-round step / mix / rest, and pieces measured on their own."""
    head = ("N", "threads", "chunk", "round ms", "local step", "mix", "rest", "batch sampling", "input gathers",
            "copy, fresh 4K pages", "copy, fresh huge pages", "copy, mapped memory")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        ms = [r[k] for k in ("round_median_s", "step_s", "mix_in_round_s", "rest_s", "sample_s", "gather_s",
                             "copy_s", "copy_huge_s", "copy_mapped_s")]
        lines.append(" | ".join([f"{r['n']:,}", str(r["threads"]), str(r["chunk"])]
                                + ["-" if v != v else f"{1e3 * v:.1f}" for v in ms]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="0 = torch default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--loop-rounds", type=int, default=1)
    parser.add_argument("--loop-max-n", type=int, default=1000, help="skip the per-client loop above this N")
    parser.add_argument("--chunk", type=int, default=0, help="LocalSGD.chunk (0: 256 on CPU, everything on a GPU)")
    parser.add_argument("--single", type=str, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        n, threads = map(int, args.single.split(","))
        print(json.dumps(measure(n, threads, args.device, args.rounds, args.loop_rounds, args.loop_max_n, args.chunk)))
        return
    rows = []
    for threads in args.threads:
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--single", f"{n},{threads}", "--device", args.device,
                   "--rounds", str(args.rounds), "--loop-rounds", str(args.loop_rounds),
                   "--loop-max-n", str(args.loop_max_n), "--chunk", str(args.chunk)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(f"  N={n:>9,} threads={threads}: {rows[-1]['updates_per_s']:>12,.0f} node-updates/s", flush=True)
    print(f"\nmachine: {machine()}\n")
    print(table(rows))
    print("\nWhere the time goes (ms per round; step, mix, rest: medians inside the rounds):\n")
    print(breakdown(rows))


if __name__ == "__main__":
    main()
