"""Flower apps that run fedsim's algorithms: ``clientapp`` and ``serverapp`` (for ``flwr run``:
``fedsim.flower.apps:clientapp`` / ``fedsim.flower.apps:serverapp``; the app folder is ``fedsim/flower/app``).

Both dispatch on ``context.run_config["algorithm"]``: ``fedavg`` (torch model on a star), ``fedpg`` (clean
linearized FedPG on the NSL-KDD paper split; a custom ServerApp loop holding Z) or ``gossip`` (D-PSGD with plain or
variance-corrected averaging; Flower has no peer-to-peer transport, so the ServerApp relays each node's neighbours'
models over the networkx topology). A node calls the same node-step functions as the fedsim engine
(``training.local_step``, ``gossip.neighbourhood_step``, ``fedpg.linearized_client_step``) on its own partition,
keyed by its global client id (= its ``partition-id``), so it draws the random numbers it draws in the engine.

Run-config keys (``[tool.flwr.app.config]`` or ``flwr run --run-config``; defaults in ``spec.KEYS``):

* ``algorithm`` fedavg | fedpg | gossip; ``rounds``; ``seed``; ``clients`` (number of partitions = nodes);
* data: ``dataset`` (digits | mnist), ``partition`` (iid | dirichlet | sorted), ``alpha``, ``data-dir`` (each
  node's own data folder; "" = $FEDSIM_DATA_DIR);
* model and training: ``model`` (mlp | lenet ...), ``hidden`` ("64,32"), ``init``, ``lr``, ``batch-size``,
  ``local-steps``, ``vectorized`` (false: the per-client reference path; true: the batched kernel on one row);
* FedAvg: ``clients-per-round`` (0 = all), ``weighted``; gossip: ``topology`` (any ``topologies`` generator),
  ``topology-k``, ``topology-p``, ``topology-m`` (the generator's k, p and m), ``mixing``, ``averaging`` (plain |
  beta | variance_corrected), ``beta``, ``active-fraction``; a key the run's algorithm does not read, set to
  anything but its default, is refused (``spec.ONLY_FOR``);
* FedPG: ``k`` (subspace dimension), ``client-fraction``;
* ServerApp: ``out`` (folder for ``result.json``, ``final.pt`` and, with ``capture = true``, ``capture.pt``),
  ``min-nodes`` (fewest nodes that may remain; fewer: the run fails with a clear error), ``round-timeout``
  (seconds to wait for replies; 0 = forever), ``node-wait`` (seconds to wait for ``clients`` nodes to connect).

Nodes need ``partition-id`` in their node config (the simulation engine sets it; a SuperNode gets it from
``--node-config "partition-id=i num-partitions=N"``). Replies that are errors, lack the expected record, have the
wrong shape or dtype, hold NaN/inf or claim another client id are rejected with a logged reason (``rejected`` in the
result), never averaged; a node that stops answering is dropped (``dropped``: which client, node and round, and
when) and the run goes on with the rest while at least ``min-nodes`` remain.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedsim import rng
from fedsim.files import atomic_write_bytes, atomic_write_text
from fedsim.flower import spec as fspec
from fedsim.messages import SERVER

log = logging.getLogger("fedsim.flower")

RESULT_KEY = "fedsim-result"     # server context.state: the result JSON (ConfigRecord) ...
FINAL_KEY = "fedsim-final"       # ... and the final tensors (ArrayRecord)
CAPTURE_FORMAT = "fedsim-flower-capture-1"


class FlowerRunError(RuntimeError):
    """A Flower run that cannot go on (e.g. fewer nodes than ``min-nodes`` remain)."""


# -- records <-> tensors ----------------------------------------------------------------------------------------

def _arrays(**tensors) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v.detach().cpu().numpy())) for k, v in tensors.items()})


def _tensor(record: ArrayRecord, key: str) -> torch.Tensor:
    return torch.from_numpy(record[key].numpy().copy())


def _content(arrays: dict | ArrayRecord | None = None, config: dict | None = None) -> RecordDict:
    """A message's content: an ArrayRecord "arrays" (tensors, or one ArrayRecord shared by a broadcast) and a
    ConfigRecord "config"."""
    rd = RecordDict()
    if isinstance(arrays, ArrayRecord):
        rd["arrays"] = arrays
    elif arrays:
        rd["arrays"] = _arrays(**arrays)
    if config is not None:
        rd["config"] = ConfigRecord(config)
    return rd


# -- the ClientApp ----------------------------------------------------------------------------------------------

clientapp = ClientApp()


def _client_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("this node has no 'partition-id' in its node config; start it with "
                         "--node-config \"partition-id=I num-partitions=N\"")
    return int(context.node_config["partition-id"])


@clientapp.query()
def _query(msg: Message, context: Context) -> Message:
    """Who am I: the node's client id (its partition id); for FedPG also n_i and lambda_max(C_i) of its block."""
    spec = fspec.parse(dict(context.run_config))
    cid = _client_id(context)
    reply = {"client-id": cid}
    if spec.algorithm == "fedpg":
        C, n = _pca_block(spec, cid)
        reply.update({"n": n, "lam-max": float(torch.linalg.eigvalsh(C)[-1]), "d": C.shape[0]})
    return Message(_content(config=reply), reply_to=msg)


def _pca_block(spec: fspec.FlowerSpec, cid: int) -> tuple[torch.Tensor, int]:
    return fspec.pca_statistics(fspec.nslkdd_block(spec.run.data.dir, spec.run.clients, cid, spec.run.seed))


@clientapp.train()
def _train(msg: Message, context: Context) -> Message:
    """FedAvg: train from the global model; gossip: train own model (or pass it on when inactive); FedPG: the
    linearized node step with the Z that arrived."""
    spec = fspec.parse(dict(context.run_config))
    cid = _client_id(context)
    cfg = msg.content["config"]
    t = int(cfg["round"])
    if spec.algorithm == "fedpg":
        return _train_fedpg(spec, cid, t, msg, context)
    from fedsim.training import local_step

    run = spec.run
    trainer = fspec.trainer_of(run)
    data = fspec.node_data(run, cid)
    streams = rng.Streams(run.seed)
    if spec.algorithm == "fedavg":
        start = _tensor(msg.content["arrays"], "params")
    else:
        start = _own_model(spec, cid, context)
    if spec.algorithm == "gossip" and not bool(cfg["active"]):
        trained, loss = start, float("nan")
    else:
        out = local_step(trainer, start[None], torch.zeros(1, dtype=torch.int64), t, data, streams,
                         vectorized=run.vectorized)
        trained, loss = out.params[0], float(out.losses[0])
    if spec.algorithm == "gossip":
        context.state["trained"] = _arrays(x=trained)
    return Message(_content({"params": trained}, {"client-id": cid, "loss": loss, "num-examples": int(data.counts[0])}),
                   reply_to=msg)


def _own_model(spec: fspec.FlowerSpec, cid: int, context: Context) -> torch.Tensor:
    """A gossip node's current model: from its state, or its initial model (the engine's ``Gossip.init`` row)."""
    if "x" in context.state:
        return _tensor(context.state["x"], "x")
    from fedsim.state import init_population

    run = spec.run
    return init_population(fspec.trainer_of(run).model, torch.tensor([cid]), rng.Streams(run.seed),
                           shared=run.algorithm.same_init, init=run.model.init)[0]


@clientapp.train("mix")
def _mix(msg: Message, context: Context) -> Message:
    """Gossip: combine the model trained this round with the neighbours' models the ServerApp relayed."""
    from fedsim.algorithms.gossip import neighbourhood_step
    from fedsim.averaging import Averaging
    from fedsim.state import ParamSpec

    spec = fspec.parse(dict(context.run_config))
    cid = _client_id(context)
    a = spec.run.algorithm
    averaging = Averaging(a.averaging, a.beta, a.correction_target, a.correction_tensors, a.correction_eps,
                          a.correction_unbiased)
    own = _tensor(context.state["trained"], "x")
    arrays = msg.content["arrays"]
    received = _tensor(arrays, "received")
    new = neighbourhood_step(own, received, averaging, ParamSpec.of(fspec.trainer_of(spec.run).model),
                             _tensor(arrays, "own-weight"), _tensor(arrays, "weights"))
    context.state["x"] = _arrays(x=new)
    final = bool(msg.content["config"]["final"])
    return Message(_content({"params": new} if final else None, {"client-id": cid}), reply_to=msg)


def _train_fedpg(spec: fspec.FlowerSpec, cid: int, t: int, msg: Message, context: Context) -> Message:
    from fedsim.fedpca.fedpg import linearized_client_step

    C, _ = _pca_block(spec, cid)
    cfg = msg.content["config"]
    Z = _tensor(msg.content["arrays"], "Z")
    d, k = Z.shape
    if "U" in context.state:
        U, Y = _tensor(context.state["U"], "U"), _tensor(context.state["U"], "Y")
        seen = True
    else:
        U, Y, seen = torch.zeros(d, k, dtype=torch.float64), torch.zeros(d, k, dtype=torch.float64), False
    U, Y, upload = linearized_client_step(torch.bmm(C[None], Z[None]), Z[None], U[None], Y[None],
                                          torch.tensor([seen]), torch.tensor([float(cfg["rho"])], dtype=torch.float64),
                                          torch.tensor(float(cfg["n-total"]), dtype=torch.float64))
    context.state["U"] = _arrays(U=U[0], Y=Y[0])
    return Message(_content({"upload": upload[0]}, {"client-id": cid}), reply_to=msg)


# -- the ServerApp ----------------------------------------------------------------------------------------------

serverapp = ServerApp()


@dataclass
class Log:
    """What the ServerApp reports besides the model: per-round history, rejected replies, dropped nodes, capture."""

    start: float = field(default_factory=time.perf_counter)
    history: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    captured: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)     # client id -> what its node answered to the query
    first_round_s: float = math.nan

    def reject(self, t: int, client, node: int, reason: str) -> None:
        log.warning("round %d: rejected the reply of client %s (node %d): %s", t + 1, client, node, reason)
        self.rejected.append({"round": t + 1, "client": client, "node": node, "reason": reason})

    def drop(self, t: int, client: int, node: int) -> None:
        at = time.perf_counter() - self.start
        log.warning("round %d: client %d (node %d) stopped answering (%.1f s into the run); going on without it",
                    t + 1, client, node, at)
        self.dropped.append({"round": t + 1, "client": client, "node": node, "seconds": round(at, 3)})


@serverapp.main()
def _main(grid: Grid, context: Context) -> None:
    """Run the configured algorithm; results go to ``context.state`` and, with ``out``, to files."""
    spec = fspec.parse(dict(context.run_config))
    result, final = run_server(grid, spec)
    context.state[RESULT_KEY] = ConfigRecord({"json": json.dumps(result, allow_nan=True)})
    context.state[FINAL_KEY] = _arrays(**final)


def run_server(grid: Grid, spec: fspec.FlowerSpec) -> tuple[dict, dict[str, torch.Tensor]]:
    """The ServerApp's loop for ``spec`` over ``grid``: returns (result dict, final tensors) and, when ``spec.out``
    is set, writes ``result.json`` and ``final.pt`` there (and ``capture.pt`` with ``capture``), atomically."""
    logbook = Log()
    nodes = _discover(grid, spec, logbook)
    loop = {"fedavg": _serve_fedavg, "fedpg": _serve_fedpg, "gossip": _serve_gossip}[spec.algorithm]
    error = None
    final = {}
    try:
        final = loop(grid, spec, nodes, logbook)
    except FlowerRunError as exc:
        error = str(exc)
    result = {"algorithm": spec.algorithm, "config": spec.to_run_config(), "history": logbook.history,
              "rejected": logbook.rejected, "dropped": logbook.dropped, "error": error,
              "first_round_s": logbook.first_round_s, "seconds": time.perf_counter() - logbook.start}
    if spec.out:
        from pathlib import Path

        out = Path(spec.out)
        atomic_write_text(out / "result.json", json.dumps(_finite(result), indent=1, allow_nan=False))
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in final.items()}, buf)
        atomic_write_bytes(out / "final.pt", buf.getvalue())
        if spec.capture:
            write_capture(out / "capture.pt", spec, logbook.captured)
    if error is not None:
        raise FlowerRunError(error)
    return result, final


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _send(grid: Grid, spec: fspec.FlowerSpec, t: int, kind: str, contents: dict[int, RecordDict],
          nodes: dict[int, int], logbook: Log) -> dict[int, Message]:
    """Send ``contents`` (client -> content) to the clients' nodes, wait (``round-timeout``), drop the nodes that
    did not answer (fail below ``min-nodes``) and return client -> reply (errors included, for the checks)."""
    msgs = [Message(c, dst_node_id=nodes[cid], message_type=kind, group_id=str(t + 1)) for cid, c in contents.items()]
    replies = grid.send_and_receive(msgs, timeout=spec.round_timeout or None)
    by_node = {m.metadata.src_node_id: m for m in replies}
    out = {}
    for cid in contents:
        node = nodes[cid]
        if node in by_node:
            out[cid] = by_node[node]
        else:
            logbook.drop(t, cid, node)
            del nodes[cid]
    if len(nodes) < spec.min_nodes:
        raise FlowerRunError(f"only {len(nodes)} node(s) remain after round {t + 1} (clients "
                             f"{', '.join(str(d['client']) for d in logbook.dropped)} stopped answering); "
                             f"min-nodes = {spec.min_nodes}")
    return out


def _number(value) -> float | None:
    """A config value as a float (None if it is not a number: a string, a list, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def check_reply(reply: Message, cid: int, key: str, shape: tuple[int, ...], dtype: torch.dtype,
                needs: tuple[str, ...] = ()) -> str | None:
    """Why a reply cannot be used (None: it can): an error reply, a missing record, another client id, a config
    value the server reads (``needs``) missing or not a number, a wrong shape or dtype, NaN/inf."""
    if reply.has_error():
        return f"the node replied with an error: {reply.error.reason}"
    content = reply.content
    if "config" not in content or content["config"].get("client-id") != cid:
        claimed = content["config"].get("client-id") if "config" in content else None
        return f"the reply claims client id {claimed!r}, expected {cid}"
    for name in needs:
        value = _number(content["config"].get(name))
        if value is None:
            return f"the reply's config has no number {name!r}"
        if name == "num-examples" and not (1 <= value <= 2 ** 53 and value == int(value)):   # a FedAvg weight
            return f"the reply's 'num-examples' is {value}, not a count of 1 or more"
    if "arrays" not in content or key not in content["arrays"]:
        return f"the reply has no {key!r} array"
    try:
        value = content["arrays"][key].numpy()
    except Exception as exc:   # a corrupt Array
        return f"the {key!r} array cannot be read: {exc}"
    if tuple(value.shape) != tuple(shape):
        return f"{key!r} has shape {tuple(value.shape)}, expected {tuple(shape)}"
    if value.dtype != torch.empty(0, dtype=dtype).numpy().dtype:
        return f"{key!r} has dtype {value.dtype}, expected {dtype}"
    if not np.isfinite(value).all():
        return f"{key!r} holds {int((~np.isfinite(value)).sum())} NaN/inf value(s)"
    return None


def _valid(replies: dict[int, Message], t: int, key: str, shape, dtype, nodes, logbook: Log,
           needs: tuple[str, ...] = ()) -> dict[int, Message]:
    good = {}
    for cid, reply in sorted(replies.items()):
        reason = check_reply(reply, cid, key, shape, dtype, needs)
        if reason is None:
            good[cid] = reply
        else:
            logbook.reject(t, cid, reply.metadata.src_node_id, reason)
    return good


def _discover(grid: Grid, spec: fspec.FlowerSpec, logbook: Log) -> dict[int, int]:
    """client id -> node id: wait (``node-wait``) for ``clients`` nodes and ask each for its partition id."""
    n = spec.run.clients
    deadline = time.monotonic() + spec.node_wait
    ids = list(grid.get_node_ids())
    while len(ids) < n and time.monotonic() < deadline:
        time.sleep(0.5)
        ids = list(grid.get_node_ids())
    if len(ids) < spec.min_nodes:
        raise FlowerRunError(f"{len(ids)} node(s) connected within node-wait = {spec.node_wait} s; need clients = {n} "
                             f"(min-nodes = {spec.min_nodes})")
    msgs = [Message(RecordDict(), dst_node_id=node, message_type="query", group_id="0") for node in ids]
    nodes, meta = {}, {}
    for reply in grid.send_and_receive(msgs, timeout=spec.round_timeout or None):
        node = reply.metadata.src_node_id
        if reply.has_error() or "config" not in reply.content:
            logbook.reject(-1, None, node, f"no answer to the query: {reply.error.reason if reply.has_error() else ''}")
            continue
        cfg = reply.content["config"]
        cid = cfg.get("client-id")
        if isinstance(cid, bool) or not isinstance(cid, (int, np.integer)):
            logbook.reject(-1, None, node, f"the query reply has no integer client-id (got {cid!r})")
            continue
        cid = int(cid)
        if not 0 <= cid < n or cid in nodes:
            logbook.reject(-1, cid, node, f"partition id {cid} is outside [0, {n}) or taken")
            continue
        nodes[cid] = node
        meta[cid] = dict(cfg)
    if len(nodes) < spec.min_nodes:
        raise FlowerRunError(f"{len(nodes)} node(s) answered the query; min-nodes = {spec.min_nodes}")
    logbook.meta = meta
    return dict(sorted(nodes.items()))


def _round_done(logbook: Log, row: dict, t0: float, c0: float) -> None:
    row["seconds"] = time.perf_counter() - t0
    row["cpu_seconds"] = time.process_time() - c0     # this process only (in process: the nodes' work too)
    logbook.history.append(row)
    if len(logbook.history) == 1:
        logbook.first_round_s = time.perf_counter() - logbook.start


def _serve_fedavg(grid: Grid, spec: fspec.FlowerSpec, nodes: dict[int, int], logbook: Log) -> dict:
    from fedsim.algorithms.fedavg import server_step
    from fedsim.state import init_population

    run = spec.run
    model = fspec.trainer_of(run).model
    streams = rng.Streams(run.seed)
    params = init_population(model, torch.zeros(1, dtype=torch.int64), streams, init=run.model.init)[0]
    k = run.algorithm.clients_per_round or run.clients
    for t in range(run.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        sampled = [c for c in rng.sample_clients(streams, t, run.clients, k).tolist() if c in nodes]
        broadcast = _arrays(params=params)    # serialized once: every sampled client gets the same model
        content = {cid: _content(broadcast, {"round": t}) for cid in sampled}
        replies = _valid(_send(grid, spec, t, "train", content, nodes, logbook), t, "params", params.shape,
                         params.dtype, nodes, logbook, needs=("num-examples", "loss"))
        if spec.capture:
            logbook.captured += [dict(round=t, kind="downlink", sender=SERVER, receiver=c, payload=params,
                                      delivered=True) for c in sampled]
            logbook.captured += [dict(round=t, kind="uplink", sender=c, receiver=SERVER,
                                      payload=_tensor(r.content["arrays"], "params"), delivered=True)
                                 for c, r in replies.items()]
        row = {"round": t + 1, "participants": len(replies)}
        if replies:
            payload = torch.stack([_tensor(r.content["arrays"], "params") for r in replies.values()])
            counts = [int(r.content["config"]["num-examples"]) for r in replies.values()]
            weights = torch.tensor(counts) if run.algorithm.weighted else torch.ones(len(replies))
            params = server_step(payload, weights)
            row["train_loss"] = float(torch.tensor([float(r.content["config"]["loss"]) for r in replies.values()],
                                                   dtype=params.dtype).mean())
        _round_done(logbook, row, t0, c0)
    _evaluate(run, params[None], logbook, "global")
    return {"params": params}


def _evaluate(run, rows: torch.Tensor, logbook: Log, name: str) -> None:
    """The server's own evaluation of the final model(s) on the run's test split (as the engine evaluates)."""
    from fedsim.metrics import held_out_metrics

    _, _, test, _ = fspec.split_of(run)
    got = held_out_metrics(fspec.trainer_of(run).model, {name: rows}, torch.as_tensor(test.x), torch.as_tensor(test.y))
    logbook.history[-1].update({f"{name}_acc": got[f"{name}_acc"], f"{name}_loss": got[f"{name}_loss"]})


def _serve_gossip(grid: Grid, spec: fspec.FlowerSpec, nodes: dict[int, int], logbook: Log) -> dict:
    """Gossip with the ServerApp as the relay: every node trains, the ServerApp forwards each node's delivered
    in-neighbours' models (with the round's weights, ``SparseW.inbox``), every node combines."""
    from fedsim.experiment import build_schedule
    from fedsim.mixing import SparseW

    run = spec.run
    n = run.clients
    streams = rng.Streams(run.seed)
    W = SparseW.from_scipy(build_schedule(run).at(0), dtype=torch.float32)
    senders, _ = W.edges()
    P = sum(p.numel() for p in fspec.trainer_of(run).model.parameters())
    active_k = max(1, round(run.algorithm.active_fraction * n))
    models = {}
    for t in range(run.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        active = set(rng.sample_clients(streams, t, n, active_k, "active").tolist())
        content = {cid: _content(None, {"round": t, "active": cid in active}) for cid in nodes}
        trained = _valid(_send(grid, spec, t, "train", content, nodes, logbook), t, "params", (P,), torch.float32,
                         nodes, logbook, needs=("loss",))
        sent = {c: _tensor(r.content["arrays"], "params") for c, r in trained.items()}
        delivered = torch.tensor([int(s) in sent for s in senders.tolist()], dtype=torch.bool)
        final = t == run.rounds - 1
        content = {}
        for cid in trained:   # a node whose model did not arrive keeps it out of this round's combine
            own_weight, frm, weights = W.inbox(cid, delivered)
            received = torch.stack([sent[j] for j in frm.tolist()]) if len(frm) else torch.zeros(0, P)
            content[cid] = _content({"received": received, "weights": weights, "own-weight": own_weight},
                                    {"round": t, "final": final})
            if spec.capture:
                logbook.captured += [dict(round=t, kind="gossip", sender=j, receiver=cid, payload=sent[j],
                                          delivered=True) for j in frm.tolist()]
        mixed = _send(grid, spec, t, "train.mix", content, nodes, logbook)
        if final:
            mixed = _valid(mixed, t, "params", (P,), torch.float32, nodes, logbook)
            models = {c: _tensor(r.content["arrays"], "params") for c, r in mixed.items()}
        losses = [float(r.content["config"]["loss"]) for r in trained.values()
                  if not math.isnan(float(r.content["config"]["loss"]))]
        row = {"round": t + 1, "participants": len(losses)}
        if losses:
            row["train_loss"] = float(torch.tensor(losses).mean())
        _round_done(logbook, row, t0, c0)
    ids = sorted(models)
    x = torch.stack([models[c] for c in ids]) if ids else torch.zeros(0, P)
    if ids:
        _evaluate(run, x.mean(0, keepdim=True), logbook, "average")
    return {"x": x, "clients": torch.tensor(ids, dtype=torch.int64)}


def _serve_fedpg(grid: Grid, spec: fspec.FlowerSpec, nodes: dict[int, int], logbook: Log) -> dict:
    """Clean linearized FedPG: the ServerApp holds Z and the server's state; nodes hold their U_i and duals Y_i."""
    from fedsim.fedpca.fedpg import FedPG, LinearizedState, sample_clients
    from fedsim.fedpca.grassmann import qr_retract

    run = spec.run
    N, k = run.clients, spec.k
    meta = logbook.meta
    if len(meta) < N:
        missing = sorted(set(range(N)) - set(meta))
        raise FlowerRunError(f"FedPG needs every client's statistics to set the penalties; clients {missing} did not "
                             "answer the query")
    for c in range(N):   # a node that answered without usable statistics would stop the run with a KeyError
        values = {key: _number(meta[c].get(key)) for key in ("n", "lam-max", "d")}
        if (None in values.values() or not values["n"] > 0 or not 0 <= values["lam-max"] < math.inf
                or values["d"] != meta[0].get("d") or not values["d"] >= 1):
            raise FlowerRunError(f"FedPG needs every client's statistics; client {c}'s query reply has n, lam-max, d "
                                 f"= {meta[c].get('n')!r}, {meta[c].get('lam-max')!r}, {meta[c].get('d')!r}")
    d = int(meta[0]["d"])
    alg = FedPG(k, client_fraction=spec.client_fraction, vectorized=False)
    n = torch.tensor([float(meta[c]["n"]) for c in range(N)], dtype=torch.float64)
    rho = alg.penalties(torch.tensor([float(meta[c]["lam-max"]) for c in range(N)], dtype=torch.float64), n)
    n_total = float(n.sum())
    streams = rng.Streams(run.seed)
    u = streams.uniform("init", torch.zeros(1, dtype=torch.int64), None, (d, k), dtype=torch.float64)[0]
    Z = qr_retract(u - 0.5)            # = power.initial_subspace, FedPG's Z0
    zero, none, flag = torch.zeros_like(Z), torch.zeros(N, dtype=torch.bool), torch.zeros((), dtype=torch.bool)
    empty = torch.zeros(0)
    state = LinearizedState(Z, zero, Z.clone(), zero.clone(), torch.zeros((), dtype=Z.dtype),
                            torch.zeros(N, d, k, dtype=Z.dtype), none, flag, flag.clone(), empty, empty, empty, empty)
    for t in range(run.rounds):
        if bool(state.stopped):
            break
        t0, c0 = time.perf_counter(), time.process_time()
        S = [c for c in sample_clients(streams, t, N, spec.client_fraction).tolist() if c in nodes]
        broadcast = _arrays(Z=state.Z)
        content = {c: _content(broadcast, {"round": t, "rho": float(rho[c]), "n-total": n_total}) for c in S}
        replies = _valid(_send(grid, spec, t, "train", content, nodes, logbook), t, "upload", (d * k + 1,),
                         torch.float64, nodes, logbook)
        if spec.capture:
            logbook.captured += [dict(round=t, kind="uplink", sender=c, receiver=SERVER,
                                      payload=_tensor(r.content["arrays"], "upload"), delivered=True)
                                 for c, r in replies.items()]
        senders = torch.tensor(sorted(replies), dtype=torch.int64)
        arrived = (torch.stack([_tensor(replies[c].content["arrays"], "upload") for c in sorted(replies)])
                   if replies else torch.zeros(0, d * k + 1, dtype=torch.float64))
        state, metrics = alg.server_step(state, senders, arrived)
        _round_done(logbook, {"round": t + 1, **metrics}, t0, c0)
    return {"Z": state.Z}


# -- capture ----------------------------------------------------------------------------------------------------

def write_capture(path, spec: fspec.FlowerSpec, records: list[dict]) -> None:
    """Write what the ServerApp saw (``records``: round, kind, sender, receiver, payload, delivered; client ids,
    ``SERVER`` = -1) with the model description an attack needs (``load_capture`` reads it back). The header also
    holds the whole run config (``run_config``: partition, topology, mixing, averaging, ...) and, for gossip, the
    graph's directed edges ``[sender, receiver]`` (``edges``), so that a capture describes its run on its own."""
    run = spec.run
    header = {"format": CAPTURE_FORMAT, "algorithm": spec.algorithm, "model": run.model.name,
              "hidden": list(run.model.hidden), "dataset": run.data.dataset, "lr": run.algorithm.lr,
              "local_steps": run.algorithm.local_steps, "batch_size": run.algorithm.batch_size, "seed": run.seed,
              "run_config": spec.to_run_config()}
    if spec.algorithm == "gossip":
        from fedsim.experiment import build_schedule

        W = build_schedule(run).at(0).tocoo()   # W[i, j] > 0: i receives j's model (the relay's SparseW.inbox)
        header["edges"] = sorted([int(j), int(i)] for i, j in zip(W.row, W.col) if i != j)
    buf = io.BytesIO()
    torch.save({"header": header, "records": [{**r, "payload": r["payload"].detach().cpu()} for r in records]}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_capture(path):
    """(header dict, list of ``fedsim.messages.Captured``) from ``write_capture``'s file (``weights_only`` load)."""
    from fedsim.messages import Captured

    body = torch.load(path, weights_only=True)
    if not isinstance(body, dict) or body.get("header", {}).get("format") != CAPTURE_FORMAT:
        raise ValueError(f"{path}: not a fedsim Flower capture ({CAPTURE_FORMAT})")
    return body["header"], [Captured(**r) for r in body["records"]]
