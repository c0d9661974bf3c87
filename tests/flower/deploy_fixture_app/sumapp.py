"""A minimal real Flower app for testing fedsim's deployment launcher (process management, TLS, faults).

Each round the ServerApp asks every connected node for ``partition-id + 1`` and sums the replies; it
writes ``result.json`` (sums per round, which partitions answered) into run_config["result-dir"].
A node started with node-config ``fault="slow"`` sleeps before replying (so a test can kill it mid-run).
"""

import json
import os
import time

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


@client.query()
def answer(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    if context.node_config.get("fault", "") == "slow":
        time.sleep(float(msg.content["config"]["sleep"]))
    return Message(RecordDict({"m": MetricRecord({"value": pid + 1, "pid": pid})}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    want = int(cfg["min-nodes"])
    deadline = time.monotonic() + 60
    while len(ids := list(grid.get_node_ids())) < want and time.monotonic() < deadline:
        time.sleep(0.5)
    rounds = []
    for r in range(int(cfg["rounds"])):
        content = RecordDict({"config": ConfigRecord({"round": r, "sleep": 2.0})})
        msgs = [Message(content, dst_node_id=n, message_type="query") for n in ids]
        replies = grid.send_and_receive(msgs, timeout=float(cfg["round-timeout"]))
        got = [m.content["m"] for m in replies if m.has_content()]
        rounds.append({"round": r, "sum": sum(int(m["value"]) for m in got),
                       "pids": sorted(int(m["pid"]) for m in got), "t": time.time()})
    out = str(cfg["result-dir"])
    if out:
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"nodes": len(ids), "rounds": rounds}, f)
