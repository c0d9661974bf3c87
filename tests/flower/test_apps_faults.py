"""The Flower apps in process: malformed replies are rejected (logged, not averaged), a node that stops answering
is dropped and the run goes on (or fails clearly below min-nodes), and the in-process Grid's flwr internals.

References: the fedsim engine's per-client path with a tap that drops the same messages (a rejected or missing
upload takes no part in the aggregate, exactly as a lost message in the engine).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedsim.config import ConfigError  # noqa: E402
from fedsim.engine import simulate  # noqa: E402
from fedsim.experiment import build  # noqa: E402
from fedsim.flower.apps import FlowerRunError  # noqa: E402
from fedsim.flower.inprocess import InProcessGrid, run_inprocess, run_spec  # noqa: E402
from fedsim.flower.spec import make_spec  # noqa: E402

pytestmark = pytest.mark.flower


def dropping(pairs: set[tuple[int, int]], kind: str):
    """An engine tap that drops the ``kind`` messages sent by (round, sender) in ``pairs`` (round 0-based)."""
    def tap(msgs):
        if msgs.kind != kind:
            return msgs
        lost = torch.tensor([(msgs.round, int(s)) in pairs for s in msgs.edge_senders.tolist()], dtype=torch.bool)
        return msgs.drop(lost) if bool(lost.any()) else msgs
    return tap


def downlinks_to(pairs: set[tuple[int, int]]):
    """An engine tap that drops the FedAvg downlinks to (round, client) in ``pairs``."""
    def tap(msgs):
        if msgs.kind != "downlink":
            return msgs
        lost = torch.tensor([(msgs.round, int(d)) in pairs for d in msgs.dst.tolist()], dtype=torch.bool)
        return msgs.drop(lost) if bool(lost.any()) else msgs
    return tap


def engine(run, taps=()):
    setup = build(dataclasses.replace(run, vectorized=False))
    return simulate(setup.algorithm, setup.fed, run.rounds, taps=taps, eval_every=0).state


def spec(**kw):
    return make_spec("fedavg", **{"clients": 8, "rounds": 4, "local_steps": 1, "batch_size": 8, "hidden": "8", **kw})


def _set(reply: Message, key: str, value: np.ndarray) -> Message:
    reply.content["arrays"] = ArrayRecord({key: Array(value)})
    return reply


def test_malformed_replies_are_rejected_with_a_reason_and_not_averaged(caplog):
    bad = {(1, 3): "shape", (2, 5): "nan", (2, 6): "id", (3, 1): "dtype"}   # (round 0-based, client) -> fault
    rounds = {}

    def tamper(client, reply):
        t = int(reply.metadata.group_id) - 1
        rounds[client] = t
        fault = bad.get((t, client))
        if fault is None or reply.has_error():
            return reply
        p = reply.content["arrays"]["params"].numpy()
        if fault == "shape":
            return _set(reply, "params", p[:-1].copy())
        if fault == "nan":
            p = p.copy()
            p[7] = np.nan
            return _set(reply, "params", p)
        if fault == "dtype":
            return _set(reply, "params", p.astype(np.float64))
        reply.content["config"] = ConfigRecord({**dict(reply.content["config"]), "client-id": 0})
        return reply

    s = spec()
    with caplog.at_level(logging.WARNING, logger="fedsim.flower"):
        result, final = run_spec(s, tamper=tamper)
    reasons = {(r["round"] - 1, r["client"]): r["reason"] for r in result["rejected"]}
    assert set(reasons) == set(bad)
    assert "shape (609,), expected (610,)" in reasons[(1, 3)] and "NaN/inf" in reasons[(2, 5)]
    assert "client id 0" in reasons[(2, 6)] and "dtype float64" in reasons[(3, 1)]
    assert sum("rejected the reply of client" in m for m in caplog.messages) == len(bad)
    ref = engine(s.run, taps=(dropping(set(bad), "uplink"),)).params
    assert torch.equal(final["params"], ref)
    assert not torch.equal(final["params"], engine(s.run).params)   # the faults did change the result
    assert [row["participants"] for row in result["history"]] == [8, 7, 6, 7]


def test_a_node_error_is_rejected():
    from fedsim.flower import apps

    run_config = spec(rounds=2).to_run_config()

    def crashing(msg, context):
        if int(context.node_config["partition-id"]) == 4 and msg.metadata.message_type == "train":
            raise RuntimeError("disk on fire")
        return apps.clientapp(msg, context)

    context = run_inprocess(apps.serverapp, crashing, run_config, 8)
    result = json.loads(context.state[apps.RESULT_KEY]["json"])
    assert [(r["round"], r["client"]) for r in result["rejected"]] == [(1, 4), (2, 4)]
    assert "RuntimeError: disk on fire" in result["rejected"][0]["reason"]


def test_a_silent_node_is_dropped_and_the_run_goes_on(tmp_path):
    s = spec(out=str(tmp_path))
    result, final = run_spec(s, silent={2: 3})          # client 2 answers rounds 1-2, then never again
    assert [(d["round"], d["client"]) for d in result["dropped"]] == [(3, 2)]
    assert result["dropped"][0]["seconds"] >= 0
    lost = {(t, 2) for t in range(2, 4)}
    ref = engine(s.run, taps=(downlinks_to(lost),)).params
    assert torch.equal(final["params"], ref)
    assert [row["participants"] for row in result["history"]] == [8, 8, 7, 7]
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["dropped"] == result["dropped"] and on_disk["error"] is None
    assert torch.equal(torch.load(tmp_path / "final.pt")["params"], final["params"])


def test_gossip_goes_on_without_a_silent_node():
    s = make_spec("gossip", clients=8, rounds=4, topology="regular", topology_k=3, batch_size=8, hidden="8")
    result, final = run_spec(s, silent={3: 2})
    assert [(d["round"], d["client"]) for d in result["dropped"]] == [(2, 3)]
    # the engine: node 3's messages are lost from round 2 on (0-based 1); the others' models do not depend on
    # what node 3 does after that
    ref = engine(s.run, taps=(dropping({(t, 3) for t in range(1, 4)}, "gossip"),)).x
    others = [c for c in range(8) if c != 3]
    assert final["clients"].tolist() == others
    assert torch.equal(final["x"], ref[others])


def test_fewer_nodes_than_min_nodes_fail_with_a_clear_error(tmp_path):
    s = spec(min_nodes=6, out=str(tmp_path))
    with pytest.raises(FlowerRunError, match=r"only 5 node\(s\) remain after round 2 .*clients 0, 1, 2.*min-nodes = 6"):
        run_spec(s, silent={0: 2, 1: 2, 2: 2})
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert "min-nodes = 6" in on_disk["error"] and len(on_disk["dropped"]) == 3


def test_run_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown Flower run-config key.*'no-such-key'"):
        make_spec("fedavg", no_such_key=1)
    with pytest.raises(ConfigError, match="algorithm = 'sgd'.*--algorithm"):
        make_spec("sgd")
    with pytest.raises(ConfigError, match="min-nodes = 9"):
        make_spec("fedavg", clients=8, min_nodes=9)
    with pytest.raises(ConfigError, match="hidden"):
        make_spec("fedavg", hidden="a,b")
    s = make_spec("gossip", clients=6, averaging="variance_corrected", beta=0.3)
    assert make_spec(**s.to_run_config()) == s


def test_inprocess_grid_uses_flwr_internals_as_pinned():
    """Message ids, reply_to links, node ids, partition ids, per-node state and TaskIdentity (flwr 1.42 internals)."""
    seen = []
    app = ClientApp()

    @app.query()
    def who(msg, context):
        context.state["calls"] = ConfigRecord({"n": int(context.state["calls"]["n"]) + 1
                                               if "calls" in context.state else 1})
        return Message(RecordDict({"c": ConfigRecord({"pid": int(context.node_config["partition-id"]),
                                                      "n": int(context.state["calls"]["n"])})}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid, context):
        nodes = list(grid.get_node_ids())
        for _ in range(2):
            msgs = [Message(RecordDict(), dst_node_id=n, message_type="query", group_id="1") for n in nodes]
            replies = list(grid.send_and_receive(msgs))
            by_id = {m.metadata.message_id: m for m in msgs}
            for r in replies:
                sent = by_id[r.metadata.reply_to_message_id]
                assert r.metadata.src_node_id == sent.metadata.dst_node_id
                seen.append((r.metadata.src_node_id, r.content["c"]["pid"], r.content["c"]["n"]))

    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    run_inprocess(server, app, {}, 5, seed=3)
    assert (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id) == before
    grid = InProcessGrid(app, {}, 5, seed=3)
    assert len(set(grid.node_ids)) == 5 and all(0 < n < 2 ** 63 for n in grid.node_ids)
    assert sorted(seen) == sorted([(n, i, 1) for i, n in enumerate(grid.node_ids)]
                                  + [(n, i, 2) for i, n in enumerate(grid.node_ids)])
