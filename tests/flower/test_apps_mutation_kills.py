"""What the Flower apps (``fedsim.flower.apps``) do, pinned where the mutation run of apps.py found nothing looking:
the ServerApp's log of rejected and dropped replies (round, client, node, time), the timeout it hands the Grid, the
min-nodes boundary, waiting for late nodes and refusing bad partition ids, each reason ``check_reply`` gives, FedAvg
without weights and with another init, the history rows (train loss, final evaluation), gossip and FedPG rounds in
which nothing arrives, and what the capture file holds.

References: the fedsim engine's per-client path (bit for bit, as tests/flower/test_equivalence.py), the replies the
nodes sent (recorded by a ``tamper`` that returns them unchanged) and float64 means of the losses they reported.
"""

from __future__ import annotations

import dataclasses
import pickle
import time
import types

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedsim.engine import simulate  # noqa: E402
from fedsim.flower import apps  # noqa: E402
from fedsim.flower.inprocess import SERVER_NODE_ID, InProcessGrid, run_inprocess, run_spec  # noqa: E402
from fedsim.flower.spec import make_spec, split_of, trainer_of  # noqa: E402
from fedsim.messages import SERVER, Capture  # noqa: E402
from fedsim.metrics import held_out_metrics  # noqa: E402
from test_apps_faults import dropping, engine  # noqa: E402  (the engine's per-client path; a tap dropping messages)

pytestmark = pytest.mark.flower

LOSS_RTOL = 1e-6   # the ServerApp averages float32 copies of the reported losses; the reference is a float64 mean


# -- helpers ------------------------------------------------------------------------------------------------------

class Grid(InProcessGrid):
    """The in-process Grid, recording the timeout of every ``send_and_receive``; ``mute``: (message type, round
    1-based, client) whose message gets no reply; ``late``: that many first ``get_node_ids`` calls miss the last
    node."""

    def __init__(self, spec, *, clientapp=None, mute=(), late=0, **kw):
        super().__init__(clientapp or apps.clientapp, spec.to_run_config(), spec.run.clients, seed=spec.run.seed,
                         **kw)
        self.timeouts, self.mute, self.late = [], set(mute), late

    def get_node_ids(self):
        if self.late:
            self.late -= 1
            return list(self.node_ids[:-1])
        return list(self.node_ids)

    def send_and_receive(self, messages, *, timeout=None):
        self.timeouts.append(timeout)
        kept = [m for m in messages if (m.metadata.message_type, int(m.metadata.group_id),
                                        self.partition[m.metadata.dst_node_id]) not in self.mute]
        return self.pull_messages(self.push_messages(kept))


def serve(grid, spec):
    """``apps.run_server`` over ``grid`` with flwr's TaskIdentity set, as ``run_inprocess`` does."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SERVER_NODE_ID
    try:
        return apps.run_server(grid, spec)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def clock(**overrides):
    """A stand-in for the ``time`` module inside apps.py: the real functions except ``overrides``."""
    return types.SimpleNamespace(**{name: getattr(time, name) for name in
                                    ("perf_counter", "process_time", "monotonic", "sleep")} | overrides)


def fedavg(**kw):
    return make_spec("fedavg", **{"clients": 8, "rounds": 3, "local_steps": 1, "batch_size": 8, "hidden": "8", **kw})


def gossip(**kw):
    return make_spec("gossip", **{"clients": 8, "rounds": 2, "topology": "ring", "local_steps": 1, "batch_size": 8,
                                  "hidden": "8", **kw})


def round_of(reply) -> int:
    return int(reply.metadata.group_id) - 1


def with_array(reply, key: str, value: np.ndarray):
    reply.content["arrays"] = ArrayRecord({key: Array(value)})
    return reply


def poisoned(reply, key: str, count: int = 1):
    value = reply.content["arrays"][key].numpy().copy()
    value[:count] = np.nan
    return with_array(reply, key, value)


def evaluation(run, rows: torch.Tensor, name: str) -> dict:
    _, _, test, _ = split_of(run)
    got = held_out_metrics(trainer_of(run).model, {name: rows}, torch.as_tensor(test.x), torch.as_tensor(test.y))
    return {f"{name}_acc": got[f"{name}_acc"], f"{name}_loss": got[f"{name}_loss"]}


# -- the ServerApp's log ----------------------------------------------------------------------------------------

def test_log_records_round_client_node_reason_and_time(monkeypatch, caplog):
    monkeypatch.setattr(apps, "time", clock(perf_counter=lambda: 11.23456))
    logbook = apps.Log(start=10.0)
    with caplog.at_level("WARNING", logger="fedsim.flower"):
        logbook.reject(2, 5, 77, "a bad shape")
        logbook.drop(3, 4, 88)
    assert logbook.rejected == [{"round": 3, "client": 5, "node": 77, "reason": "a bad shape"}]
    assert logbook.dropped == [{"round": 4, "client": 4, "node": 88, "seconds": 1.235}]
    rejected, dropped = caplog.messages
    assert "round 3:" in rejected and "client 5 " in rejected and "node 77" in rejected and "a bad shape" in rejected
    assert "round 4:" in dropped and "client 4 " in dropped and "node 88" in dropped and "1.2 s" in dropped


def test_a_node_without_partition_id_is_told_how_to_start():
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="partition-id") as err:
        apps._client_id(context)
    assert "--node-config" in str(err.value)


# -- sending, dropping, min-nodes, discovery --------------------------------------------------------------------

def test_round_timeout_reaches_the_grid_and_min_nodes_left_is_enough():
    s = fedavg(min_nodes=7, round_timeout=2.5)
    grid = Grid(s, silent={2: 2})                    # client 2 answers round 1 only
    before = time.perf_counter()
    result, _ = serve(grid, s)
    wall = time.perf_counter() - before
    assert grid.timeouts == [2.5] * 4               # the query and three rounds
    assert [(d["round"], d["client"], d["node"]) for d in result["dropped"]] == [(2, 2, grid.node_ids[2])]
    assert result["error"] is None and [row["participants"] for row in result["history"]] == [8, 7, 7]
    assert 0 <= result["dropped"][0]["seconds"] <= result["seconds"] <= wall
    assert 0 < result["first_round_s"] <= result["seconds"]
    grid = Grid(fedavg(rounds=1))
    serve(grid, fedavg(rounds=1))
    assert grid.timeouts == [None, None]            # round-timeout = 0: wait as long as it takes


def test_the_server_waits_for_late_nodes(monkeypatch):
    slept = []
    monkeypatch.setattr(apps, "time", clock(sleep=slept.append))
    s = fedavg(rounds=1, node_wait=60.0)
    result, _ = serve(Grid(s, late=2), s)
    assert slept == [0.5, 0.5] and result["history"][0]["participants"] == 8
    # node-wait = 0: no waiting, even on a clock that has not moved; the 7 nodes there run, 7 = min-nodes is enough
    monkeypatch.setattr(apps, "time", clock(sleep=slept.append, monotonic=lambda: 100.0))
    s = fedavg(rounds=1, node_wait=0.0, min_nodes=7)
    result, _ = serve(Grid(s, late=2), s)
    assert slept == [0.5, 0.5] and result["history"][0]["participants"] == 7
    s = fedavg(rounds=1, node_wait=0.0, min_nodes=8)
    with pytest.raises(apps.FlowerRunError, match=r"7 node\(s\) connected .*min-nodes = 8"):
        serve(Grid(s, late=1), s)


def test_the_query_refuses_bad_and_taken_partition_ids():
    claims = {3: 8, 5: 1}                           # partition -> the id its node claims (8: outside, 1: taken)

    def client(msg, context):
        reply = apps.clientapp(msg, context)
        pid = int(context.node_config["partition-id"])
        if msg.metadata.message_type == "query" and pid in claims:
            reply.content["config"] = ConfigRecord({"client-id": claims[pid]})
        if msg.metadata.message_type == "query" and pid == 7:
            del reply.content["config"]
        if msg.metadata.message_type == "query" and pid == 6:
            raise RuntimeError("no disk")
        return reply

    s = fedavg(rounds=1)
    grid = Grid(s, clientapp=client)
    result, _ = serve(grid, s)
    got = sorted((r["round"], r["client"], r["node"]) for r in result["rejected"] if r["client"] is not None)
    assert got == sorted([(0, 8, grid.node_ids[3]), (0, 1, grid.node_ids[5])])
    assert all("outside [0, 8) or taken" in r["reason"] for r in result["rejected"] if r["client"] is not None)
    unanswered = {r["node"]: r for r in result["rejected"] if r["client"] is None}
    assert unanswered.keys() == {grid.node_ids[6], grid.node_ids[7]}
    assert all(r["round"] == 0 for r in unanswered.values())
    assert "no disk" in unanswered[grid.node_ids[6]]["reason"]
    assert result["history"][0]["participants"] == 4   # clients 3, 5 (claimed ids), 6 (error), 7 (no id): none
    s = fedavg(rounds=1, min_nodes=5)
    with pytest.raises(apps.FlowerRunError, match=r"4 node\(s\) answered the query; min-nodes = 5"):
        serve(Grid(s, clientapp=client), s)


def test_round_times_come_from_the_clock(monkeypatch):
    """A clock that only the replies move: 10 s per train reply (8 a round), nothing else."""
    now = [time.perf_counter()]     # the Log's start is read from the real clock, just after this

    def tamper(client, reply):
        if reply.metadata.message_type == "train":
            now[0] += 10.0
        return reply

    monkeypatch.setattr(apps, "time", clock(perf_counter=lambda: now[0]))
    cpu = time.process_time()
    result, _ = run_spec(fedavg(), tamper=tamper)
    cpu = time.process_time() - cpu
    assert [row["seconds"] for row in result["history"]] == [pytest.approx(80.0, abs=1e-6)] * 3
    assert result["first_round_s"] == pytest.approx(80.0, abs=1.0)
    assert result["seconds"] == pytest.approx(240.0, abs=1.0)
    assert all(0 <= row["cpu_seconds"] <= cpu for row in result["history"])


# -- check_reply's reasons --------------------------------------------------------------------------------------

def test_each_malformed_reply_gets_its_own_reason():
    def tamper(client, reply):
        t = round_of(reply)
        if (t, client) == (0, 2):
            del reply.content["config"]
        elif (t, client) == (0, 3):
            del reply.content["arrays"]
        elif (t, client) == (1, 4):
            reply.content["arrays"] = ArrayRecord({"weights": reply.content["arrays"]["params"]})
        elif (t, client) == (1, 5):
            poisoned(reply, "params", 3)
        return reply

    result, _ = run_spec(fedavg(rounds=2), tamper=tamper)
    reasons = {(r["round"], r["client"]): r["reason"] for r in result["rejected"]}
    assert set(reasons) == {(1, 2), (1, 3), (2, 4), (2, 5)}
    assert "client id None, expected 2" in reasons[(1, 2)]
    assert "no 'params' array" in reasons[(1, 3)] and "no 'params' array" in reasons[(2, 4)]
    assert "holds 3 NaN/inf" in reasons[(2, 5)]


# -- FedAvg -----------------------------------------------------------------------------------------------------

def test_fedavg_unweighted_with_xavier_init_is_the_engines():
    s = fedavg(weighted=False, init="xavier", partition="dirichlet", alpha=0.3)
    _, final = run_spec(s)
    assert torch.equal(final["params"], engine(s.run).params)
    weighted = dataclasses.replace(s.run, algorithm=dataclasses.replace(s.run.algorithm, weighted=True))
    assert not torch.equal(final["params"], engine(weighted).params)    # the counts differ: weights matter


def test_fedavg_history_losses_and_final_evaluation():
    losses = {}

    def tamper(client, reply):
        if reply.metadata.message_type == "train":
            losses.setdefault(round_of(reply), []).append(float(reply.content["config"]["loss"]))
        return reply

    s = fedavg(clients_per_round=5)
    result, final = run_spec(s, tamper=tamper)
    history = result["history"]
    assert [row["round"] for row in history] == [1, 2, 3]
    for t, row in enumerate(history):
        assert row["train_loss"] == pytest.approx(np.mean(losses[t]), rel=LOSS_RTOL)
    assert all("global_acc" not in row for row in history[:-1])
    want = evaluation(s.run, final["params"][None], "global")
    assert history[-1]["global_acc"] == want["global_acc"]
    assert history[-1]["global_loss"] == pytest.approx(want["global_loss"], rel=1e-6)


def test_fedavg_capture_records_both_directions(tmp_path):
    sent = {}

    def tamper(client, reply):
        if reply.metadata.message_type == "train":
            sent[(round_of(reply), client)] = torch.from_numpy(reply.content["arrays"]["params"].numpy().copy())
        return reply

    s = fedavg(rounds=2, clients_per_round=4, hidden="6", lr=0.05, local_steps=2, batch_size=4, seed=3,
               dataset="digits", capture=True, out=str(tmp_path))
    _, final = run_spec(s, tamper=tamper)
    header, records = apps.load_capture(tmp_path / "capture.pt")
    assert header == {"format": apps.CAPTURE_FORMAT, "algorithm": "fedavg", "model": "mlp", "hidden": [6],
                      "dataset": "digits", "lr": 0.05, "local_steps": 2, "batch_size": 4, "seed": 3,
                      "run_config": s.to_run_config()}     # no "edges": FedAvg has no graph
    assert all(r.delivered is True for r in records)
    ups = {(r.round, r.sender): r for r in records if r.kind == "uplink"}
    assert ups.keys() == sent.keys() and all(r.receiver == SERVER for r in ups.values())
    assert all(torch.equal(ups[key].payload, sent[key]) for key in sent)
    downs = [r for r in records if r.kind == "downlink"]
    assert {(r.round, r.receiver) for r in downs} == set(sent) and all(r.sender == SERVER for r in downs)
    # round 2's downlink is the average of round 1's uploads; the final model that of round 2's
    second = [r.payload for r in downs if r.round == 1]
    assert all(torch.equal(p, second[0]) for p in second)
    assert not torch.equal(second[0], next(r.payload for r in downs if r.round == 0))
    assert not torch.equal(final["params"], second[0])


# -- gossip -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("averaging", ["plain", "variance_corrected"])
def test_gossip_node_with_no_neighbour_model_keeps_its_own(averaging):
    """Ring of 8: the last round's models of nodes 2 and 4 are rejected, so node 3 receives nothing that round."""
    s = gossip(averaging=averaging, **({} if averaging == "plain" else {"beta": 0.4}))

    def tamper(client, reply):
        if reply.metadata.message_type == "train" and (round_of(reply), client) in {(1, 2), (1, 4)}:
            return poisoned(reply, "params")
        return reply

    result, final = run_spec(s, tamper=tamper)
    assert [(r["round"], r["client"]) for r in result["rejected"]] == [(2, 2), (2, 4)]
    others = [c for c in range(8) if c not in (2, 4)]
    assert final["clients"].tolist() == others
    ref = engine(s.run, taps=(dropping({(1, 2), (1, 4)}, "gossip"),)).x
    assert torch.equal(final["x"], ref[others])


def test_gossip_with_every_final_model_rejected_returns_none():
    s = gossip(rounds=1)

    def tamper(client, reply):
        return poisoned(reply, "params") if reply.metadata.message_type == "train.mix" else reply

    result, final = run_spec(s, tamper=tamper)
    P = sum(p.numel() for p in trainer_of(s.run).model.parameters())
    assert [(r["round"], r["client"]) for r in result["rejected"]] == [(1, c) for c in range(8)]
    assert final["x"].shape == (0, P) and final["clients"].dtype == torch.int64 and len(final["clients"]) == 0
    assert "average_acc" not in result["history"][-1]


def test_gossip_one_active_node_history_capture_and_evaluation(tmp_path):
    losses = {}

    def tamper(client, reply):
        if reply.metadata.message_type == "train":
            loss = float(reply.content["config"]["loss"])
            if not np.isnan(loss):
                losses.setdefault(round_of(reply), []).append(loss)
        return reply

    s = gossip(rounds=3, active_fraction=0.1, init="xavier", capture=True, out=str(tmp_path))   # round(0.8) = 1
    result, final = run_spec(s, tamper=tamper)
    tap = Capture(kinds=("gossip",))
    ref = engine(s.run, taps=(tap,)).x
    assert torch.equal(final["x"], ref)
    history = result["history"]
    assert [row["round"] for row in history] == [1, 2, 3] and [row["participants"] for row in history] == [1] * 3
    for t, row in enumerate(history):
        assert len(losses[t]) == 1 and row["train_loss"] == pytest.approx(losses[t][0], rel=LOSS_RTOL)
    want = evaluation(s.run, final["x"].mean(0, keepdim=True), "average")
    assert history[-1]["average_acc"] == want["average_acc"]
    assert history[-1]["average_loss"] == pytest.approx(want["average_loss"], rel=1e-6)
    assert all("average_acc" not in row for row in history[:-1])
    header, records = apps.load_capture(tmp_path / "capture.pt")
    assert header["algorithm"] == "gossip"
    mine = {(r.round, r.sender, r.receiver): r for r in records}
    theirs = {(r.round, r.sender, r.receiver): r for r in tap.records if r.sender != r.receiver}
    assert len(mine) == len(records) == 3 * 16 and mine.keys() == theirs.keys()   # ring: 16 messages a round
    assert all(r.kind == "gossip" and r.delivered is True for r in records)
    assert all(torch.equal(mine[key].payload, theirs[key].payload) for key in mine)


def test_gossip_node_silent_in_the_combine_is_dropped():
    s = gossip(rounds=4)
    grid = Grid(s, mute={("train.mix", 2, 5)})
    result, final = serve(grid, s)
    assert [(d["round"], d["client"], d["node"]) for d in result["dropped"]] == [(2, 5, grid.node_ids[5])]
    others = [c for c in range(8) if c != 5]
    assert final["clients"].tolist() == others
    ref = engine(s.run, taps=(dropping({(t, 5) for t in range(2, 4)}, "gossip"),)).x
    assert torch.equal(final["x"], ref[others])


# -- FedPG (NSL-KDD) --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nslkdd(require_data, tmp_path_factory):
    """(a small NSL-KDD folder: the first 3,000 training and 1,000 test rows, the engine's federation on it)."""
    import gzip

    from fedsim.fedpca.fedpg import PCAFederation
    from fedsim.pipelines.fedpca_nslkdd import prepare
    from fedsim.rng import Streams

    root = require_data("nsl-kdd")
    small = tmp_path_factory.mktemp("nslkdd-small")
    (small / "nsl-kdd").mkdir()
    for name, rows in (("KDDTrain+.txt", 3000), ("KDDTest+.txt", 1000)):
        plain = root / "nsl-kdd" / name
        with (open(plain) if plain.is_file() else gzip.open(f"{plain}.gz", "rt")) as f:
            (small / "nsl-kdd" / name).write_text("".join(f.readlines()[:rows]))
    return small, PCAFederation(prepare(small, n_clients=6).clients, Streams(0))


def fedpg(root, **kw):
    return make_spec("fedpg", **{"clients": 6, "rounds": 3, "k": 3, "data_dir": str(root), **kw})


def test_fedpg_round_with_no_upload_capture_and_history(nslkdd, tmp_path):
    from fedsim.fedpca.fedpg import FedPG

    root, fed = nslkdd
    uploads = {}

    def tamper(client, reply):
        if reply.metadata.message_type != "train":
            return reply
        t = round_of(reply)
        if t == 1:
            return poisoned(reply, "upload")
        uploads[(t, client)] = torch.from_numpy(reply.content["arrays"]["upload"].numpy().copy())
        return reply

    s = fedpg(root, capture=True, out=str(tmp_path))
    result, final = run_spec(s, tamper=tamper)
    assert [row["round"] for row in result["history"]] == [1, 2, 3]
    assert [row["participants"] for row in result["history"]] == [6, 0, 6]
    assert sorted((r["round"], r["client"]) for r in result["rejected"]) == [(2, c) for c in range(6)]
    ref = simulate(FedPG(3, client_fraction=1.0, vectorized=False), fed, 3, eval_every=0,
                   taps=(dropping({(1, c) for c in range(6)}, "uplink"),)).state
    assert torch.equal(final["Z"], ref.Z)
    _, records = apps.load_capture(tmp_path / "capture.pt")
    mine = {(r.round, r.sender): r for r in records}
    assert mine.keys() == uploads.keys() and len(records) == 12
    assert all(r.kind == "uplink" and r.receiver == SERVER and r.delivered is True for r in records)
    assert all(torch.equal(mine[key].payload, uploads[key]) for key in uploads)


def test_fedpg_needs_every_clients_statistics(nslkdd, tmp_path):
    import json

    root, _ = nslkdd

    def client(msg, context):
        if msg.metadata.message_type == "query" and int(context.node_config["partition-id"]) == 3:
            raise RuntimeError("no data here")
        return apps.clientapp(msg, context)

    s = fedpg(root, out=str(tmp_path))
    with pytest.raises(apps.FlowerRunError, match=r"clients \[3\] did not"):
        run_inprocess(apps.serverapp, client, s.to_run_config(), 6)
    assert "clients [3]" in json.loads((tmp_path / "result.json").read_text())["error"]


def test_fedpg_nodes_read_their_data_dir_and_a_silent_node_is_dropped(nslkdd, require_data, monkeypatch):
    """Each node reads ``data-dir`` (the small folder), not $FEDSIM_DATA_DIR (the whole data set)."""
    from fedsim.fedpca.fedpg import FedPG

    small, fed = nslkdd
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(require_data("nsl-kdd")))
    result, final = run_spec(fedpg(small), silent={4: 3})
    assert [(d["round"], d["client"]) for d in result["dropped"]] == [(3, 4)]
    ref = simulate(FedPG(3, client_fraction=1.0, vectorized=False), fed, 3, eval_every=0,
                   taps=(dropping({(2, 4)}, "uplink"),)).state
    assert torch.equal(final["Z"], ref.Z)


# -- the capture file -------------------------------------------------------------------------------------------

def test_load_capture_refuses_what_is_not_a_capture(tmp_path):
    import io

    for name, body in {"list": [1, 2], "no-header": {"records": []}, "other": {"header": {"format": "x"}}}.items():
        buf = io.BytesIO()
        torch.save(body, buf)
        (tmp_path / name).write_bytes(buf.getvalue())
        with pytest.raises(ValueError, match="not a fedsim Flower capture"):
            apps.load_capture(tmp_path / name)
    # a capture holding arbitrary pickled objects is not unpickled (weights-only load)
    buf = io.BytesIO()
    torch.save({"header": {"format": apps.CAPTURE_FORMAT}, "records": [types.SimpleNamespace(a=1)]}, buf)
    (tmp_path / "objects").write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError):
        apps.load_capture(tmp_path / "objects")


# -- replies whose config lacks what the server reads (found while mutation-testing; they crashed the ServerApp) --

def test_replies_without_the_config_values_the_server_reads_are_rejected():
    """A FedAvg train reply without a number in `num-examples` or `loss` (or a negative / fractional count), a gossip
    reply without `loss`, and a query reply without an integer `client-id` are rejected with a reason; the run goes
    on (each raised a KeyError / ValueError in the ServerApp before)."""
    broken = {(0, 1): {"num-examples": None}, (0, 2): {"loss": "low"}, (1, 3): {"num-examples": -2},
              (1, 4): {"num-examples": 2.5}, (0, 5): {"num-examples": float("inf")}, (1, 5): {"num-examples": 1e300},
              (1, 0): {"num-examples": 0}}

    def tamper(client, reply):
        if reply.metadata.message_type == "query" and client in (6, 7):   # no id; a bool is no integer id either
            reply.content["config"] = ConfigRecord({"who": 6} if client == 6 else {"client-id": True})
            return reply
        change = broken.get((round_of(reply), client)) if reply.metadata.message_type == "train" else None
        if change:
            config = dict(reply.content["config"])
            for key, value in change.items():
                config.pop(key) if value is None else config.update({key: value})
            reply.content["config"] = ConfigRecord(config)
        return reply

    s = fedavg(rounds=2)
    result, final = run_spec(s, tamper=tamper)
    reasons = {(r["round"], r["client"]): r["reason"] for r in result["rejected"]}
    assert "no number 'num-examples'" in reasons[(1, 1)] and "no number 'loss'" in reasons[(1, 2)]
    assert "'num-examples' is -2.0, not a count" in reasons[(2, 3)] and "is 2.5, not a count" in reasons[(2, 4)]
    assert "is inf, not a count" in reasons[(1, 5)] and "is 1e+300, not a count" in reasons[(2, 5)]
    assert "is 0.0, not a count of 1 or more" in reasons[(2, 0)]      # all-zero weights would divide by zero
    query = sorted(r["reason"] for r in result["rejected"] if r["round"] == 0)
    assert len(query) == 2 and "no integer client-id (got None)" in query[0] and "(got True)" in query[1]
    lost = set(broken) | {(t, c) for t in range(2) for c in (6, 7)}
    assert torch.equal(final["params"], engine(s.run, taps=(dropping(lost, "uplink"),)).params)

    def no_loss(client, reply):
        if reply.metadata.message_type == "train" and client == 2:
            reply.content["config"] = ConfigRecord({"client-id": 2})
        return reply

    result, _ = run_spec(gossip(rounds=1), tamper=no_loss)
    assert [(r["client"], "no number 'loss'" in r["reason"]) for r in result["rejected"]] == [(2, True)]


def test_fedpg_refuses_statistics_that_are_not_numbers(nslkdd, tmp_path):
    root, _ = nslkdd

    def client(msg, context):
        reply = apps.clientapp(msg, context)
        if msg.metadata.message_type == "query" and int(context.node_config["partition-id"]) == 4:
            reply.content["config"] = ConfigRecord({**dict(reply.content["config"]), "lam-max": "big"})
        return reply

    s = fedpg(root, out=str(tmp_path))
    with pytest.raises(apps.FlowerRunError, match=r"client 4's query reply has n, lam-max, d = \d+, 'big', 34"):
        run_inprocess(apps.serverapp, client, s.to_run_config(), 6)

    def other_d(msg, context):   # every statistic a number, but one node's d differs from the others'
        reply = apps.clientapp(msg, context)
        if msg.metadata.message_type == "query" and int(context.node_config["partition-id"]) == 2:
            reply.content["config"] = ConfigRecord({**dict(reply.content["config"]), "d": 33})
        return reply

    with pytest.raises(apps.FlowerRunError, match=r"client 2's query reply has n, lam-max, d = \d+, [\d.e+-]+, 33"):
        run_inprocess(apps.serverapp, other_d, s.to_run_config(), 6)
