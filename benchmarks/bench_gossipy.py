"""Same-run speed comparison against gossipy 0.0.1 (PyPI ``gossipy-dfl==0.0.1``), node-updates per second.

    pip install gossipy-dfl==0.0.1       # in a separate virtualenv (it pulls rich, pandas, dill)
    python benchmarks/bench_gossipy.py                        # N = 100, 1000; 5 repeats (~3 min on 2 cores)
    python benchmarks/bench_gossipy.py --sizes 100 1000 10000 --repeats 3

Each measurement runs in a fresh subprocess (one torch thread, OMP_NUM_THREADS=1), and the sides are alternated:
for every repeat and N the three runs below go one after the other, their order rotated from repeat to repeat.
Every run builds its simulation, runs a warm-up (gossipy: one round, fedsim: two rounds) and then times a fixed
number of rounds; setup and warm-up are not timed. Reported: the median node-updates/s over the repeats (and
their range), the ratio fedsim / gossipy, and the machine line of ``benchmarks/_machine.py`` with the load
average before and after.

The shared workload: scikit-learn digits (fedsim's ``load_digits``: x / 16, float32, 64 features, 20 % held out),
each node holding the same 64 training samples on both sides (``fedsim.data.sampled(..., per_client=64,
seed=0)``, overlapping across nodes; given to gossipy through ``DataDispatcher.set_assignments``), the MLP
64-32-10 with ReLU (gossipy ``TorchMLP(64, 10, (32,))``, fedsim ``build_model("mlp", (1, 8, 8), 10, (32,))``,
2,410 parameters, float32), cross-entropy, plain SGD lr 0.1 (no momentum, no weight decay), one local SGD step on
a mini-batch of 32 per node-update, the same random 8-regular graph (``topologies.random_regular(N, 8, seed=0)``,
given to gossipy as its adjacency matrix in a ``StaticP2PNetwork``). Evaluation is off on both sides (gossipy:
a data handler without a test set and no per-node test sets, so ``start`` evaluates nothing; fedsim:
``eval_every=0``).

gossipy runs the way its examples do (``main_*.py`` in its repository): ``GossipNode.generate`` with a
``TorchModelHandler`` in ``CreateModelMode.MERGE_UPDATE``, ``GossipSimulator(delta=100, protocol=PUSH)``,
``round_len=100``, ``sync=True`` (each node times out exactly once per round), no message drop, no delay, all
nodes online, a ``SimulationReport`` attached, ``simulator.init_nodes()`` then ``simulator.start(n_rounds)``.
``local_epochs=0, batch_size=32`` is gossipy's setting for one SGD step on one random mini-batch of 32 per update
(``local_epochs=1`` would run a full local epoch: 2 steps on 64 samples).

What each side does per node-update (one local SGD step on 32 samples on both sides):

* gossipy (PUSH gossip learning): per round every node sends its model to ONE random neighbour. Sending is
  ``ModelHandler.caching``: a deep copy of the sender's whole handler (model, optimizer, criterion) into the
  global model cache. The receiver, on receipt, merges (average of its own and the received model over the
  state dicts: 2 models, 2,410 additions + 2,410 divisions, then ``load_state_dict``) and takes one SGD step.
  Node-updates per round = messages received = N (a node may update 0, 1 or several times in a round). The
  simulator also visits every node at each of the ``delta`` = 100 timesteps of a round (``timed_out``).
  So one node-update = 1 model copy + 1 two-model average + 1 SGD step, each through Python/torch per node.
* fedsim D-PSGD (``Gossip`` on ``Static(metropolis_hastings(G))``, the workload of ``bench_gossip.py``): per
  round every node takes one SGD step, then mixes with ALL 8 neighbours (Metropolis-Hastings weights, 1/9 each
  on an 8-regular graph: 9 rows per node, 9 x 2,410 multiply-adds), as one batched step and one sparse matmul
  over the population tensor; the 8N messages go through the engine's byte counter, no model is copied.
  One node-update = 1 SGD step + a 9-model weighted average: MORE averaging arithmetic and more (logical)
  messages per update than gossipy (9 models vs 2, 8 messages vs 1), fewer copies (0 vs 1).
* fedsim random matching (``Gossip`` on ``RandomMatching(G, seed=0)``), the closer equivalent of gossipy's
  one-peer exchange: per round a random maximal matching of the same graph's edges; every node takes one SGD
  step, matched pairs average 1/2-1/2 (2 models, like gossipy's merge), unmatched nodes keep their model. It
  draws the matching with a Python loop over the 4N edges and builds a new sparse W every round.
  One node-update = 1 SGD step + at most a 2-model average (none for the 4-10 % of nodes left unmatched) +
  1/N-th of the matching and W construction.

Which side does more work: per update the arithmetic is dominated by the SGD step on both sides (forward and
backward on 32 samples, ~0.45 M flops); fedsim's D-PSGD adds ~43 k flops of averaging (9 x 2,410 multiply-adds)
against gossipy's ~5 k (2 x 2,410), i.e. ~8 % more arithmetic per update, and 8x the messages; gossipy alone
deep-copies a model (and its optimizer) per update, which is over half of its time (cProfile at N = 200:
``caching`` ~57 % of ``start``, merge + step ~36 %, the timestep loop the rest). So the D-PSGD row is the
harder workload for fedsim; the matching row has about gossipy's arithmetic (2-model averages, one SGD step) and
is the like-for-like number. Mini-batches: fedsim samples 32 of the node's 64 with replacement, gossipy takes
the first 32 of a random permutation (same size, same cost). The protocols also differ in *what* they compute
(synchronous D-PSGD or matching rounds vs asynchronous push-merge on receipt), and gossipy's ``init_nodes``
gives every node its own Xavier initialisation where fedsim's ``Gossip`` starts all nodes from one model
(``same_init``); none of this changes the cost of an update. These are throughput numbers, not a convergence
comparison (both sides do learn: at N = 100 gossipy's nodes reach 79-86 % test accuracy after 200 rounds,
after sitting near chance level at round 40).

gossipy 0.0.1 has no all-neighbour averaging: its ``GossipSimulator`` sends one message per node time-out and a
node merges each message on receipt (``All2AllGossipNode`` / ``All2AllGossipSimulator`` exist only in later
code in its GitHub repository, not in the 0.0.1 release on PyPI).

Two workarounds were needed. (1) ``gossipy.data`` imports torchvision at module level (for its CIFAR-10 /
FashionMNIST loaders, unused here) although gossipy-dfl does not declare it, and PyPI's torchvision wheels are
CUDA builds that fail to load next to a CPU-only torch: where ``import torchvision`` fails, an empty module is
put in its place before gossipy is imported. (2) ``DataDispatcher.__init__`` asserts at least one training
sample per node (it deals the samples out round-robin), so the dispatcher is built for one node and then given
N and fedsim's 64-sample parts through ``set_assignments`` (its documented way to set an assignment); this lets
N exceed the 1,437 training digits, and it gives every gossipy node 64 samples (the default round-robin split
would give each node 1-2 samples at N = 1,000). Also, ``StaticP2PNetwork`` only reads a ``scipy.sparse
.csr_matrix`` or a dense array (given networkx's ``csr_array`` it keeps an empty topology and ``get_peers``
raises KeyError), so the adjacency is passed as a ``csr_matrix``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SIDES = ("gossipy", "fedsim-dpsgd", "fedsim-matching")
LABELS = {"gossipy": "gossipy 0.0.1 PUSH", "fedsim-dpsgd": "fedsim D-PSGD (8 neighbours)",
          "fedsim-matching": "fedsim random matching (1 peer)"}


def _torchvision_stub() -> None:
    """gossipy.data imports torchvision at module level, for its CIFAR-10 / FashionMNIST loaders only, and
    gossipy-dfl does not declare it; where no working torchvision is installed (PyPI's torchvision wheels are CUDA
    builds that do not load next to a CPU-only torch) an empty module stands in for it."""
    import types

    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or present but its C extension does not load
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = types.ModuleType("torchvision")


def _require_gossipy() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("gossipy-dfl")   # not the PyPI "gossipy", an unrelated package with the same import name
    except PackageNotFoundError:
        sys.exit("bench_gossipy.py: gossipy-dfl is not installed: pip install gossipy-dfl==0.0.1")
    _torchvision_stub()
    try:
        import gossipy.simul  # noqa: F401
    except ImportError as e:
        sys.exit(f"bench_gossipy.py: gossipy-dfl {v} is installed but does not import: {e}")
    return v


def _shared(n: int):
    """Data, per-node parts and graph, the same for both sides."""
    import topologies
    from fedsim import data as fdata

    train, test = fdata.train_test_split(fdata.load_digits(), 0.2, seed=0)
    parts = fdata.sampled(len(train), n, per_client=64, seed=0)
    graph = topologies.random_regular(n, 8, seed=0)
    return train, test, parts, graph


def run_gossipy(n: int, rounds: int, warmup: int) -> dict:
    import logging

    import networkx as nx
    import scipy.sparse as sp
    import torch
    from gossipy import set_seed
    from gossipy.core import AntiEntropyProtocol, CreateModelMode, StaticP2PNetwork
    from gossipy.data import DataDispatcher
    from gossipy.data.handler import ClassificationDataHandler
    from gossipy.model.handler import TorchModelHandler
    from gossipy.model.nn import TorchMLP
    from gossipy.node import GossipNode
    from gossipy.simul import GossipSimulator, SimulationReport

    logging.getLogger("rich").setLevel(logging.WARNING)  # gossipy's INFO lines ("Simulation started.")
    set_seed(0)
    train, _, parts, graph = _shared(n)
    x = torch.as_tensor(train.x.reshape(len(train.x), -1))          # float32 [M, 64]
    y = torch.as_tensor(train.y)                                     # int64 [M]
    handler = ClassificationDataHandler(x, y, test_size=0)           # no test set: no evaluation in start()
    dispatcher = DataDispatcher(handler, n=1, eval_on_user=False, auto_assign=False)
    dispatcher.n = n                                                 # workaround: N may exceed the samples
    dispatcher.set_assignments([p.tolist() for p in parts], None)
    adjacency = sp.csr_matrix(nx.to_scipy_sparse_array(graph, nodelist=range(n)))  # StaticP2PNetwork wants csr_matrix
    topology = StaticP2PNetwork(n, topology=adjacency)
    nodes = GossipNode.generate(
        data_dispatcher=dispatcher, p2p_net=topology,
        model_proto=TorchModelHandler(net=TorchMLP(64, 10, (32,)), optimizer=torch.optim.SGD,
                                      optimizer_params={"lr": 0.1}, criterion=torch.nn.CrossEntropyLoss(),
                                      local_epochs=0, batch_size=32,
                                      create_model_mode=CreateModelMode.MERGE_UPDATE),
        round_len=100, sync=True)
    simulator = GossipSimulator(nodes=nodes, data_dispatcher=dispatcher, delta=100,
                                protocol=AntiEntropyProtocol.PUSH)
    report = SimulationReport()
    simulator.add_receiver(report)
    simulator.init_nodes(seed=0)
    assert not dispatcher.has_test() and not any(node.has_test() for node in nodes.values())
    assert all(len(topology.get_peers(i)) == 8 for i in range(n))
    params = sum(p.numel() for p in nodes[0].model_handler.model.parameters())

    simulator.start(n_rounds=warmup)
    sent_before = report._sent_messages
    start = time.perf_counter()
    simulator.start(n_rounds=rounds)
    elapsed = time.perf_counter() - start
    # no drops, no delay, all online: every message sent is received in the same timestep and triggers one
    # merge + one SGD step
    updates = report._sent_messages - sent_before
    assert report._failed_messages == 0 and updates == n * rounds, (report._failed_messages, updates)
    return {"updates": updates, "seconds": elapsed, "params": params}


def run_fedsim(n: int, rounds: int, warmup: int, matching: bool) -> dict:
    import torch

    import topologies
    from fedsim.algorithms import Gossip
    from fedsim.engine import Federation, simulate
    from fedsim.models import build_model
    from fedsim.rng import Streams
    from fedsim.training import ClientData, LocalSGD

    train, test, parts, graph = _shared(n)
    dev = torch.device("cpu")
    data = ClientData.from_parts(train.x, train.y, parts, device=dev)
    schedule = (topologies.RandomMatching(graph, seed=0) if matching
                else topologies.Static(topologies.metropolis_hastings(graph)))
    fed = Federation(data, torch.as_tensor(test.x), torch.as_tensor(test.y), Streams(0), schedule, dev)
    model = build_model("mlp", (1, 8, 8), 10, (32,))
    alg = Gossip(LocalSGD(model, lr=0.1, steps=1, batch_size=32))
    params = sum(p.numel() for p in model.parameters())
    state = alg.init(fed)
    result = simulate(alg, fed, warmup, state=state, eval_every=0)
    start = time.perf_counter()
    out = simulate(alg, fed, warmup + rounds, state=result.state, start_round=warmup, eval_every=0)  # rounds: the end
    assert len(out.history) == rounds
    elapsed = time.perf_counter() - start
    return {"updates": n * rounds, "seconds": elapsed, "params": params}


def single(side: str, n: int, rounds: int, warmup: int) -> dict:
    import torch

    torch.set_num_threads(1)
    if side == "gossipy":
        out = run_gossipy(n, rounds, warmup)
    else:
        out = run_fedsim(n, rounds, warmup, matching=side == "fedsim-matching")
    out.update(side=side, n=n, rounds=rounds, threads=torch.get_num_threads(),
               updates_per_s=out["updates"] / out["seconds"])
    return out


def default_rounds(side: str, n: int, scale: float) -> int:
    """Rounds per measurement: about 2-4 s of timed work per run on a 2-core EPYC (scale multiplies)."""
    target = 4000 if side == "gossipy" else 100_000   # node-updates
    return max(2, round(scale * target / n))


def machine() -> str:
    from _machine import cpu_description
    import torch

    return f"{cpu_description()}, torch {torch.__version__}"


def _median(v: list[float]) -> float:
    s = sorted(v)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def table(results: dict, sizes: list[int], sides: list[str]) -> str:
    head = ["N"]
    for side in sides:
        head.append(f"{LABELS[side]} upd/s, median (range)")
    for side in sides[1:]:
        head.append(f"{LABELS[side]} / gossipy")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for n in sizes:
        med = {s: _median(results[s, n]) for s in sides}
        row = [f"{n:,}"]
        for s in sides:
            v = results[s, n]
            row.append(f"{med[s]:,.0f} ({min(v):,.0f}-{max(v):,.0f})")
        for s in sides[1:]:
            row.append(f"{med[s] / med['gossipy']:.1f}x")
        lines.append(" | ".join(row))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="N (10000 as an option)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the timed rounds of every run")
    parser.add_argument("--no-matching", action="store_true", help="skip the fedsim random-matching row")
    parser.add_argument("--single", type=str, help=argparse.SUPPRESS)   # side,N,rounds,warmup (child process)
    args = parser.parse_args()
    gossipy_version = _require_gossipy()
    if args.single:
        side, n, rounds, warmup = args.single.split(",")
        print("RESULT " + json.dumps(single(side, int(n), int(rounds), int(warmup))), flush=True)
        return

    sides = [s for s in SIDES if not (args.no_matching and s == "fedsim-matching")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    load_before = os.getloadavg()
    wall = time.perf_counter()
    results: dict = {(s, n): [] for s in sides for n in args.sizes}
    for rep in range(args.repeats):
        for n in args.sizes:
            order = sides[rep % len(sides):] + sides[:rep % len(sides)]   # rotate who goes first
            for side in order:
                rounds = default_rounds(side, n, args.scale)
                warmup = 1 if side == "gossipy" else 2
                cmd = [sys.executable, os.path.abspath(__file__), "--single", f"{side},{n},{rounds},{warmup}"]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode or not line:
                    sys.exit(f"bench_gossipy.py: the {side} run at N={n} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(line[-1][len("RESULT "):])
                results[side, n].append(r["updates_per_s"])
                print(f"  repeat {rep + 1}/{args.repeats}  N={n:>6,}  {side:<16} {r['rounds']:>5} rounds "
                      f"{r['seconds']:6.2f} s  {r['updates_per_s']:>10,.0f} node-updates/s", flush=True)
    load_after = os.getloadavg()
    print(f"\nmachine: {machine()}, gossipy-dfl {gossipy_version}; one torch thread per run")
    print(f"load average (1/5/15 min) before: {'/'.join(f'{v:.2f}' for v in load_before)}, after: "
          f"{'/'.join(f'{v:.2f}' for v in load_after)}; wall {time.perf_counter() - wall:.0f} s; "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print(table(results, args.sizes, sides))
    print(f"\nnode-updates/s = local SGD steps (batch 32) per second, median over {args.repeats} fresh-process runs "
          "per cell, sides alternated; setup and warm-up not timed.")


if __name__ == "__main__":
    main()
