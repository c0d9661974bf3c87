"""In-process Flower == the fedsim engine, 5 rounds, for FedAvg, gossip (plain and variance-corrected) and FedPG.

Bit for bit against the engine's per-client path (``vectorized = False``: both drivers run the same node-step
functions on one client's rows, and the server/neighbourhood steps on the same operands in the same order); within
a stated tolerance against the engine's batched path, which reduces in another order.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("flwr")

from fedsim.engine import simulate  # noqa: E402
from fedsim.experiment import build  # noqa: E402
from fedsim.flower.inprocess import run_spec  # noqa: E402
from fedsim.flower.spec import make_spec  # noqa: E402
from fedsim.messages import SERVER, Capture  # noqa: E402

pytestmark = pytest.mark.flower

ROUNDS = 5


def engine(run, vectorized: bool, taps=()):
    setup = build(dataclasses.replace(run, vectorized=vectorized))
    return simulate(setup.algorithm, setup.fed, run.rounds, taps=taps, eval_every=0)


def fedavg_spec(**kw):
    return make_spec("fedavg", clients=10, rounds=ROUNDS, clients_per_round=6, local_steps=2, batch_size=8,
                     hidden="16", partition="dirichlet", alpha=0.5, **kw)


def test_fedavg_bit_exact_with_engine():
    spec = fedavg_spec()
    _, final = run_spec(spec)
    ref = engine(spec.run, vectorized=False).state.params
    assert torch.equal(final["params"], ref)
    batched = engine(spec.run, vectorized=True).state.params
    assert not torch.equal(final["params"], torch.zeros_like(ref))
    torch.testing.assert_close(final["params"], batched, rtol=0, atol=1e-5)   # float32, 5 rounds x 2 steps


def test_fedavg_capture_matches_engine_curious_server(tmp_path):
    """The ServerApp's capture holds exactly the uploads a curious server taps in the engine."""
    from fedsim.flower.apps import load_capture

    spec = fedavg_spec(out=str(tmp_path), capture=True)
    run_spec(spec)
    header, records = load_capture(tmp_path / "capture.pt")
    assert header["lr"] == spec.run.algorithm.lr and header["model"] == "mlp"
    tap = Capture(receivers=[SERVER])
    engine(spec.run, vectorized=False, taps=(tap,))
    mine = {(r.round, r.sender): r.payload for r in records if r.kind == "uplink"}
    theirs = {(r.round, r.sender): r.payload for r in tap.records}
    assert mine.keys() == theirs.keys() and len(mine) == ROUNDS * 6
    assert all(torch.equal(mine[key], theirs[key]) for key in mine)
    downs = [r for r in records if r.kind == "downlink"]
    assert {(r.round, r.receiver) for r in downs} == set(mine)


def test_gossip_capture_describes_its_run_and_graph(tmp_path):
    """A gossip capture names its topology and holds the graph's edges: every relayed model went along one of them,
    and every edge of the undirected graph is there in both directions."""
    import networkx as nx

    import topologies
    from fedsim.flower.apps import load_capture

    spec = make_spec("gossip", clients=8, rounds=2, topology="regular", topology_k=3, local_steps=1, batch_size=8,
                     hidden="16", out=str(tmp_path), capture=True)
    run_spec(spec)
    header, records = load_capture(tmp_path / "capture.pt")
    config = header["run_config"]
    assert (config["topology"], config["topology-k"], config["clients"], config["averaging"]) == \
        ("regular", 3, 8, "plain")
    graph = topologies.build("regular", 8, seed=spec.run.seed, k=3)
    want = sorted([a, b] for u, v in graph.edges for a, b in ((u, v), (v, u)))
    assert header["edges"] == want and nx.is_connected(graph)
    relayed = {(r.sender, r.receiver) for r in records if r.kind == "gossip"}
    assert relayed and relayed <= {tuple(e) for e in header["edges"]}


@pytest.mark.parametrize("averaging,active", [("plain", 1.0), ("variance_corrected", 1.0), ("plain", 0.5)])
def test_gossip_bit_exact_with_engine(averaging, active):
    spec = make_spec("gossip", clients=8, rounds=ROUNDS, topology="regular", topology_k=3, local_steps=1,
                     batch_size=8, hidden="16", averaging=averaging, active_fraction=active,
                     **({} if averaging == "plain" else {"beta": 0.4}))
    result, final = run_spec(spec)
    assert final["clients"].tolist() == list(range(8))
    ref = engine(spec.run, vectorized=False).state.x
    assert torch.equal(final["x"], ref)
    batched = engine(spec.run, vectorized=True).state.x
    torch.testing.assert_close(final["x"], batched, rtol=0, atol=1e-5)
    assert result["history"][-1]["participants"] == (8 if active == 1 else 4)


@pytest.fixture(scope="module")
def nslkdd_clients(require_data):
    from fedsim.pipelines.fedpca_nslkdd import prepare

    root = require_data("nsl-kdd")
    return root, prepare(root, n_clients=6).clients


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_fedpg_bit_exact_with_engine(nslkdd_clients, fraction):
    from fedsim.fedpca.fedpg import FedPG, PCAFederation
    from fedsim.rng import Streams

    root, clients = nslkdd_clients
    spec = make_spec("fedpg", clients=6, rounds=ROUNDS, k=4, client_fraction=fraction, data_dir=str(root))
    result, final = run_spec(spec)
    fed = PCAFederation(clients, Streams(0))
    ref = simulate(FedPG(4, client_fraction=fraction, vectorized=False), fed, ROUNDS, eval_every=0).state
    assert torch.equal(final["Z"], ref.Z)
    batched = simulate(FedPG(4, client_fraction=fraction), fed, ROUNDS, eval_every=0).state
    torch.testing.assert_close(final["Z"], batched.Z, rtol=0, atol=1e-10)   # float64
    assert [row["participants"] for row in result["history"]] == [6 if fraction == 1 else 3] * ROUNDS
