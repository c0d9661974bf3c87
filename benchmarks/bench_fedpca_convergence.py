"""Federated PCA convergence (issue 10): rounds, bytes and time to 1e-3 rad on NSL-KDD.

Two parts (``--part rounds|timing|all``), printed as markdown tables:

1. ``rounds``: paper split, 20 clients, seed 0, both scalers (the clients' own z-scoring; the federated global
   scaler's ``global_blocks``), k in 5, 10, 15, 17, 20, 25, 30. Rounds and bytes sent until the largest principal
   angle to the pooled top-k eigenspace (numpy eigh) is below 1e-3 rad, for: exact one-round federated PCA; the
   federated power method, plain and accelerated; clean FedPG with its defaults (full participation and 10 %);
   the pre-issue-10 clean schedule (eta 0.05, rho 1, 30 local steps: angle after 300 rounds); FedPE (clean
   variant, its defaults: angle after 300 rounds); decentralized FedPG with its defaults on a ring of 20 and a
   random 4-regular graph of 20 (every node below 1e-3 rad), the plain (non-accelerated) decentralized power
   method, and the decentralized ADMM with the pipeline's previous settings (eta 0.05, rho 1, 30 local steps:
   angle after 500 rounds).
3. ``ablation``: plain consensus ADMM (no acceleration) with other local solves and penalties, in NumPy, on the
   clients' own scaling: linearized, exact with an unconstrained U, exact on the Stiefel manifold; rounds to
   1e-3 rad (docs/fedpca.md, "Convergence").
2. ``timing``: time to 1e-3 rad at 1 thread (``simulate(eval_every=0)`` for exactly the rounds the method needs,
   found in an untimed run), clean FedPG against the same schedule run per client with pymanopt
   (``baselines.fedpg_with_pymanopt``): 20 clients, and 1,000 clients (the paper split into 1,000 blocks of 67
   rows), full participation, float64 and float32 (the angle measured against the float64 optimum).

    python benchmarks/bench_fedpca_convergence.py                  # both parts, 1 thread
    python benchmarks/bench_fedpca_convergence.py --part timing --ks 10 30
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KS = (5, 10, 15, 17, 20, 25, 30)
TOL = 1e-3


def default_data_dir() -> Path:
    env = os.environ.get("FEDSIM_DATA_DIR", "")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def reference(clients, k):
    import numpy as np
    import torch

    S = clients.C.double().numpy().sum(0) / clients.n.double().numpy().sum()
    return torch.tensor(np.linalg.eigh(S)[1][:, ::-1][:, :k].copy())


def to_tol(alg, fed, max_rounds, key="angle_to_reference", every=1, chunk=100):
    """(rounds, bytes sent until then, last value of ``key``); rounds None when not reached."""
    from fedsim.engine import simulate

    state, t, sent, last = None, 0, 0, float("nan")
    while t < max_rounds:
        stop = min(t + chunk, max_rounds)
        res = simulate(alg, fed, stop, state=state, start_round=t, eval_every=every)
        for row in res.history:
            sent += row["bytes_sent"]
            if key in row:
                last = row[key]
                if last < TOL:
                    return row["round"], sent, last
        state, t = res.state, stop
    return None, sent, last


def fmt_rounds(r, sent, last, cap, coarse=False):
    """``coarse``: evaluated every 100 rounds only, so the rounds are an upper bound."""
    if r is None:
        return f"> {cap:,} ({last:.2g} rad)"
    return f"{'<= ' if coarse else ''}{r:,} / {sent / 1e6:.2f} MB"


def part_rounds(args) -> str:
    import torch

    import topologies
    from fedsim.pipelines import fedpca_nslkdd as nslkdd
    from fedsim.fedpca.baselines import exact_federated_pca
    from fedsim.fedpca.decentralized import DecentralizedFedPG
    from fedsim.fedpca.fedpg import FedPE, FedPG, PCAFederation
    from fedsim.fedpca.power import DecentralizedPower, FederatedPower
    from fedsim.fedpca.problem import PCAClients, pooled_matrix
    from fedsim.rng import Streams

    data = nslkdd.prepare(args.data_dir)
    scalers = {"own": data.clients, "global": PCAClients.from_blocks(data.global_blocks)}
    graphs = {"ring": topologies.Static(topologies.metropolis_hastings(topologies.ring(20))),
              "4-regular": topologies.Static(topologies.metropolis_hastings(topologies.random_regular(20, 4, seed=0)))}
    out = []
    for scaler, clients in scalers.items():
        lam = torch.linalg.eigvalsh(pooled_matrix(clients)).flip(0)
        head = ["method"] + [f"k = {k} ({float(lam[k] / lam[k - 1]):.3f})" for k in args.ks]
        rows = {}

        def add(label, k, cell, rows=rows, scaler=scaler):
            rows.setdefault(label, {})[k] = cell
            print(f"  [{scaler}] k={k} {label}: {cell}", flush=True)

        for k in args.ks:
            fed = PCAFederation(clients, Streams(0), reference=reference(clients, k))
            add("exact federated PCA (one round: n_i, sums, C_i)", k,
                f"1 / {exact_federated_pca(clients, k).bytes_sent / 1e6:.2f} MB")
            add("power method, plain", k, fmt_rounds(*to_tol(FederatedPower(k, momentum="none"), fed, 5000), 5000))
            add("power method, accelerated", k, fmt_rounds(*to_tol(FederatedPower(k), fed, 2000), 2000))
            add("**FedPG clean, defaults**", k, fmt_rounds(*to_tol(FedPG(k, client_fraction=1.0), fed, 2000), 2000))
            add("FedPG clean, defaults, 10 % of clients", k,
                fmt_rounds(*to_tol(FedPG(k, client_fraction=0.1), fed, 30000, chunk=1000), 30000))
            r = to_tol(FedPG(k, eta=0.05, rho=1.0, local_steps=30, client_fraction=1.0), fed, 300, every=300)
            add("FedPG clean, old schedule (eta 0.05, rho 1, 30 steps; checked every 100 rounds)", k,
                fmt_rounds(*r, 300, coarse=True))
            r = to_tol(FedPE(k, client_fraction=1.0), fed, 300, every=300)
            add("FedPE clean (its defaults: eta 1e-4, rho 0.01, 30 steps)", k, fmt_rounds(*r, 300, coarse=True))
            for gname, sched in graphs.items():
                gfed = PCAFederation(clients, Streams(0), reference=reference(clients, k), schedule=sched)
                alg = DecentralizedFedPG(k)
                K = alg.tracking.gossip_steps_for(gfed)
                r = to_tol(alg, gfed, 3000, key="max_node_angle_to_reference", every=K, chunk=20 * K)
                add(f"**decentralized FedPG, defaults, {gname}** ({K} exchanges / power step)", k, fmt_rounds(*r, 3000))
                plain = DecentralizedPower(k, momentum="none")
                K = plain.gossip_steps_for(gfed)
                r = to_tol(plain, gfed, 6000, key="max_node_angle_to_reference", every=K, chunk=50 * K)
                add(f"decentralized power method, plain, {gname}", k, fmt_rounds(*r, 6000))
                r = to_tol(DecentralizedFedPG(k, eta=0.05, rho=1.0, local_steps=30), gfed, 500, every=500)
                add(f"decentralized ADMM, the pipeline's old settings (eta 0.05, rho 1, 30 steps), {gname}", k,
                    fmt_rounds(*r, 500, coarse=True))
        lines = [f"Scaler: {scaler} (lambda_(k+1) / lambda_k in the header). Cells: rounds / MB sent to 1e-3 rad.",
                 "", " | ".join(head), " | ".join("---" for _ in head)]
        lines += [" | ".join([label] + [rows[label][k] for k in args.ks]) for label in rows]
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _polar(M):
    import numpy as np

    u, _, vt = np.linalg.svd(M, full_matrices=False)
    return u @ vt


def _angle(Z, V):
    import numpy as np

    return float(np.arcsin(min(1.0, np.linalg.svd(V - Z @ (Z.T @ V), compute_uv=False).max())))


def admm_rounds(A, V, Z0, rho, local, max_rounds, mm_iters=300):
    """Rounds to 1e-3 rad of plain consensus ADMM (Z-step polar(sum_i rho_i U_i + Y_i), no acceleration) with the
    local solve ``local``: "linearized" (U = Z + (2 A_i Z - Y_i) / rho_i), "exact" (unconstrained U:
    (rho_i I - 2 A_i) U = rho_i Z - Y_i) or "stiefel" (U on the Stiefel manifold: max tr(U^T A_i U) + <rho_i Z - Y_i, U>
    by ``mm_iters`` minorize-maximize steps U <- polar(2 A_i U + rho_i Z - Y_i), warm-started). A_i = C_i / n."""
    import numpy as np

    N, d, _ = A.shape
    rho = np.broadcast_to(np.asarray(rho, dtype=float), (N,))[:, None, None]
    Z = Z0.copy()
    U, Y = np.repeat(Z[None], N, 0), np.zeros((N,) + Z.shape)
    with np.errstate(all="ignore"):
        for t in range(max_rounds):
            if local == "linearized":
                U = Z + (2 * A @ Z - Y) / rho
            elif local == "exact":
                U = np.linalg.solve(rho * np.eye(d) - 2 * A, rho * Z - Y)
            else:
                for _ in range(mm_iters):
                    U_new = _polar(2 * A @ U + rho * Z - Y)
                    done = np.abs(U_new - U).max() < 1e-12
                    U = U_new
                    if done:
                        break
            M = (rho * U + Y).sum(0)
            if not np.isfinite(M).all():
                return None, "diverged"
            Z = _polar(M)
            Y = Y + rho * (U - Z)
            a = _angle(Z, V)
            if a < TOL:
                return t + 1, ""
    return None, f"{a:.2g} rad"


def part_ablation(args) -> str:
    """Plain consensus ADMM with other local solves and penalties (NumPy), own scaler, k in ``args.ablation_ks``."""
    import numpy as np

    from fedsim.pipelines import fedpca_nslkdd as nslkdd
    from fedsim.fedpca.fedpg import FedPG, PCAFederation
    from fedsim.rng import Streams

    data = nslkdd.prepare(args.data_dir)
    clients = data.clients
    C, n = clients.C.numpy(), clients.n.numpy()
    A = C / n.sum()
    L = 2 * np.linalg.eigvalsh(A)[:, -1]                  # local Lipschitz constants of grad(w_i f_i)
    cases = [("linearized", "rho_i -> 0 (1e-6 L_i)", 1e-6 * L), ("linearized", "rho_i = L_i", L),
             ("linearized", "rho_i = 2 L_i", 2 * L), ("exact", "rho_i = 1.5 L_i", 1.5 * L),
             ("exact", "rho_i = 2 L_i", 2 * L), ("exact", "rho_i = 4 L_i", 4 * L),
             ("stiefel", "rho_i = 0.03 (uniform)", 0.03), ("stiefel", "rho_i = 0.1 (uniform)", 0.1),
             ("stiefel", "rho_i = 0.3 (uniform)", 0.3), ("stiefel", "rho_i = L_i / 2", 0.5 * L)]
    head = ["local solve", "penalty"] + [f"k = {k}" for k in args.ablation_ks]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    cells = {}
    for k in args.ablation_ks:
        V = np.linalg.eigh(A.sum(0))[1][:, ::-1][:, :k]
        Z0 = FedPG(k).init(PCAFederation(clients, Streams(0))).Z.numpy()
        for local, label, rho in cases:
            cap = args.ablation_rounds if local != "stiefel" else min(args.ablation_rounds, 600)
            r, why = admm_rounds(A, V, Z0, rho, local, cap)
            cells[(local, label, k)] = f"{r:,}" if r is not None else f"> {cap:,} ({why})"
            print(f"  k={k} {local} {label}: {cells[(local, label, k)]}", flush=True)
    for local, label, _ in cases:
        lines.append(" | ".join([local, label] + [cells[(local, label, k)] for k in args.ablation_ks]))
    return "\n".join(lines)


def part_timing(args) -> str:
    import torch

    from fedsim.engine import simulate
    from fedsim.pipelines import fedpca_nslkdd as nslkdd
    from fedsim.fedpca.baselines import fedpg_with_pymanopt
    from fedsim.fedpca.fedpg import FedPG, PCAFederation
    from fedsim.fedpca.grassmann import largest_principal_angle
    from fedsim.fedpca.problem import PCAClients
    from fedsim.rng import Streams

    head = ("clients", "k", "method", "dtype", "rounds to 1e-3", "seconds", "angle reached (rad)")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for n_clients in args.clients:
        data = nslkdd.prepare(args.data_dir, n_clients=n_clients)
        for k in args.ks:
            for dtype in (torch.float64, torch.float32):
                clients = PCAClients.from_blocks(data.blocks, dtype=dtype)
                ref = reference(PCAClients.from_blocks(data.blocks), k).to(dtype)
                alg = FedPG(k, client_fraction=1.0)
                rounds = to_tol(alg, PCAFederation(clients, Streams(0), reference=ref), 2000)[0]
                if rounds is None:
                    lines.append(f"{n_clients:,} | {k} | FedPG clean | {dtype} | > 2000 | - | -")
                    continue
                simulate(alg, PCAFederation(clients, Streams(0)), 2, eval_every=0)          # warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    res = simulate(alg, PCAFederation(clients, Streams(0)), rounds, eval_every=0)
                    times.append(time.perf_counter() - start)
                angle = float(largest_principal_angle(res.state.Z.double(), ref.double()))
                lines.append(f"{n_clients:,} | {k} | FedPG clean (batched engine) | {str(dtype)[6:]} | {rounds} | "
                             f"{min(times):.3f} | {angle:.2g}")
                print("  " + lines[-1], flush=True)
                if dtype != torch.float64:
                    continue
                probe = min(rounds, args.pymanopt_rounds)
                start = time.perf_counter()
                Zp = fedpg_with_pymanopt(clients, k, probe, client_fraction=1.0)
                secs = time.perf_counter() - start
                note = ""
                if probe < rounds:
                    secs, note = secs * rounds / probe, f" (extrapolated from {probe} rounds)"
                    angle_p = "-"
                else:
                    angle_p = f"{float(largest_principal_angle(torch.tensor(Zp), ref)):.2g}"
                lines.append(f"{n_clients:,} | {k} | pymanopt per-client schedule | float64 | {rounds} | "
                             f"{secs:.2f}{note} | {angle_p}")
                print("  " + lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("rounds", "timing", "ablation", "all"), default="all")
    parser.add_argument("--ablation-ks", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--ablation-rounds", type=int, default=3000)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS))
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 1000], help="timing: numbers of clients")
    parser.add_argument("--repeats", type=int, default=3, help="timing: runs per point (minimum reported)")
    parser.add_argument("--pymanopt-rounds", type=int, default=5,
                        help="timing: pymanopt rounds at most (extrapolated linearly to the rounds needed)")
    args = parser.parse_args()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    import torch
    from _machine import cpu_description

    start = time.perf_counter()
    parts = ("rounds", "timing", "ablation") if args.part == "all" else (args.part,)
    out = []
    for part in parts:
        print(f"[{part}]", flush=True)
        t = time.perf_counter()
        body = {"rounds": part_rounds, "timing": part_timing, "ablation": part_ablation}[part](args)
        out.append(f"### {part} ({time.perf_counter() - t:.0f} s)\n\n{body}")
    print(f"\nmachine: {cpu_description()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("\n\n".join(out))
    print(f"\ntotal: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
