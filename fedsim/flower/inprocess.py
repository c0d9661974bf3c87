"""Run the Flower apps in one process, without Ray or a SuperLink: a ``Grid`` that calls the ClientApp directly.

Fast and deterministic (for tests and benchmarks). It uses flwr internals that the public API does not expose:
``TaskIdentity`` (which ``Message(...)`` reads for run/node/task ids) and the private ``_message_id`` of a message's
metadata (which a reply's ``reply_to_message_id`` refers to). flwr is pinned exactly (1.42.0) and
tests/flower/test_inprocess.py covers this module.

Faults for tests: ``silent`` (client -> first round, 1-based, from which its node stops answering: no reply) and
``tamper`` (a function (client, reply) -> reply, to send malformed replies).
"""

from __future__ import annotations

import uuid
from typing import Callable, Iterable

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 0   # the ServerApp's node id in its messages (flwr's SUPERLINK_NODE_ID is also 0 in 1.42)


class InProcessGrid(Grid):
    """A Grid over ``n_nodes`` in-process nodes running ``clientapp``; node i has ``partition-id`` i and a random
    64-bit node id (from ``seed``), and keeps its own ``context.state`` across rounds."""

    def __init__(self, clientapp: ClientApp, run_config: dict, n_nodes: int, *, seed: int = 0, run_id: int = 1,
                 silent: dict[int, int] | None = None,
                 tamper: Callable[[int, Message], Message] | None = None):
        ids = np.random.default_rng(seed).choice(2 ** 62, size=n_nodes, replace=False) + 1
        self.clientapp = clientapp
        self.node_ids = [int(i) for i in ids]
        self.partition = {node: i for i, node in enumerate(self.node_ids)}
        self.contexts = {node: Context(run_id, node, {"partition-id": i, "num-partitions": n_nodes}, RecordDict(),
                                       dict(run_config)) for i, node in enumerate(self.node_ids)}
        self.silent = dict(silent or {})
        self.tamper = tamper
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}

    # -- Grid interface -----------------------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg_id = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = msg_id   # flwr internal: the SuperLink sets it
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                raise ValueError(f"no node {node} in this grid")
            client = self.partition[node]
            group = int(msg.metadata.group_id or 0)
            if client in self.silent and group >= self.silent[client]:
                continue                                     # this node has stopped answering
            try:
                reply = self.clientapp(msg, self.contexts[node])
            except Exception as exc:                         # as a SuperNode reports a failing ClientApp
                reply = Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            if self.tamper is not None:
                reply = self.tamper(client, reply)
            self._replies[msg_id] = reply
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_inprocess(serverapp: ServerApp, clientapp: ClientApp, run_config: dict, n_nodes: int, *, seed: int = 0,
                  silent: dict[int, int] | None = None, tamper=None) -> Context:
    """Run ``serverapp`` over an ``InProcessGrid`` of ``n_nodes`` nodes; returns the ServerApp's context (its
    ``state`` holds what the app stored). TaskIdentity is set for the run and restored afterwards."""
    grid = InProcessGrid(clientapp, run_config, n_nodes, seed=seed, silent=silent, tamper=tamper)
    context = Context(run_id=1, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config=dict(run_config))
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SERVER_NODE_ID
    try:
        serverapp(grid, context)
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
    return context


def run_spec(spec, *, silent: dict[int, int] | None = None, tamper=None) -> tuple[dict, dict]:
    """Run a ``fedsim.flower.spec.FlowerSpec`` with fedsim's apps in process: (result dict, final tensors)."""
    import json

    import torch

    from fedsim.flower import apps

    context = run_inprocess(apps.serverapp, apps.clientapp, spec.to_run_config(), spec.run.clients,
                            seed=spec.run.seed, silent=silent, tamper=tamper)
    result = json.loads(context.state[apps.RESULT_KEY]["json"])
    final = {k: torch.from_numpy(v.numpy().copy()) for k, v in context.state[apps.FINAL_KEY].items()}
    return result, final


__all__ = ["InProcessGrid", "run_inprocess", "run_spec", "ConfigRecord"]
