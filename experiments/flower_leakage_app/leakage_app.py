"""FedAvg of the DIA paper's dropout MLP (``attacks.vision.build_attack_model("mlp")``) on MNIST victims, as a
Flower app, with a curious ServerApp that saves what it sees.

Node ``i`` (``partition-id`` i) holds one image, victim ``victims[i]`` of its own copy of
``mnist/dia_mnist_128.npz``, and each round takes one plain SGD step on it from the global model, in train mode
(dropout masks from its (seed, client, round) stream). The ServerApp starts from the seeded public init, averages
the valid replies (``fedsim.flower.apps.check_reply``) and writes ``OUT/capture.pt`` in the format of
``fedsim.flower.apps.write_capture`` (every downlink and uplink, client ids, ``SERVER`` = -1) with a header that
names the model, dropout rate, learning rate and victim set; ``fedsim attack --capture OUT/capture.pt`` attacks it.
"""

import io
import json
import os
import time

import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from attacks.victims import load_victims, normalize_mnist
from attacks.vision import build_attack_model
from fedsim.files import atomic_write_bytes, atomic_write_text
from fedsim.flower.apps import CAPTURE_FORMAT, check_reply
from fedsim.messages import SERVER
from fedsim.rng import Streams

SHAPE = (1, 28, 28)


def victims_of(cfg) -> list[int]:
    return [int(v) for v in str(cfg["victims"]).split(",") if v.strip()]


def public_model(cfg) -> torch.nn.Module:
    """The architecture everyone knows, with the seeded public initialisation."""
    torch.manual_seed(int(cfg["seed"]))
    return build_attack_model("mlp", SHAPE, p=float(cfg["dropout"]))


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def load_flat(model, vector: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(vector.to(torch.float32), model.parameters())


def arrays(**tensors) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in tensors.items()})


clientapp = ClientApp()


@clientapp.train()
def train(msg: Message, context: Context) -> Message:
    """One SGD step of the global model on this node's victim image, dropout active."""
    cfg = context.run_config
    cid = int(context.node_config["partition-id"])
    t = int(msg.content["config"]["round"])
    images, labels = load_victims("mnist", str(cfg["data-dir"]) or None)
    v = victims_of(cfg)[cid]
    x, y = torch.tensor(normalize_mnist(images[v:v + 1])), torch.tensor(labels[v:v + 1])
    model = public_model(cfg)
    w = torch.from_numpy(msg.content["arrays"]["params"].numpy().copy())
    load_flat(model, w)
    model.train()
    torch.manual_seed(Streams(int(cfg["seed"])).key("dropout", cid, t) >> 1)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    new = w - float(cfg["lr"]) * torch.cat([g.reshape(-1) for g in grads])
    content = RecordDict({"arrays": arrays(params=new),
                          "config": ConfigRecord({"client-id": cid, "num-examples": 1})})
    return Message(content, reply_to=msg)


serverapp = ServerApp()


@serverapp.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    victims = victims_of(cfg)
    deadline = time.monotonic() + 120
    while len(ids := list(grid.get_node_ids())) < len(victims) and time.monotonic() < deadline:
        time.sleep(0.5)
    if len(ids) < len(victims):
        raise RuntimeError(f"{len(ids)} node(s) connected; the run needs one per victim ({len(victims)})")
    params = flat(public_model(cfg))
    records, rejected, history = [], [], []
    for t in range(int(cfg["rounds"])):
        msgs = [Message(RecordDict({"arrays": arrays(params=params), "config": ConfigRecord({"round": t})}),
                        dst_node_id=n, message_type="train", group_id=str(t + 1)) for n in ids]
        replies = grid.send_and_receive(msgs, timeout=float(cfg["round-timeout"]))
        good = {}
        for reply in replies:
            try:
                cid = int(reply.content["config"]["client-id"])
            except Exception:        # an error reply, or content without the record: check_reply names it
                cid = -1
            reason = check_reply(reply, cid, "params", tuple(params.shape), params.dtype)
            if reason is None and 0 <= cid < len(victims):
                good[cid] = torch.from_numpy(reply.content["arrays"]["params"].numpy().copy())
            else:
                rejected.append({"round": t + 1, "node": reply.metadata.src_node_id, "reason": reason or "bad id"})
        records += [dict(round=t, kind="downlink", sender=SERVER, receiver=c, payload=params, delivered=True)
                    for c in sorted(good)]
        records += [dict(round=t, kind="uplink", sender=c, receiver=SERVER, payload=good[c], delivered=True)
                    for c in sorted(good)]
        if good:
            params = torch.stack([good[c] for c in sorted(good)]).mean(0)
        history.append({"round": t + 1, "participants": len(good)})
    out = str(cfg["out"])
    if out:
        header = {"format": CAPTURE_FORMAT, "algorithm": "fedavg", "model": "mlp", "attack_model": True,
                  "dropout": float(cfg["dropout"]), "input_shape": list(SHAPE), "dataset": "mnist",
                  "lr": float(cfg["lr"]), "local_steps": 1, "batch_size": 1, "seed": int(cfg["seed"]),
                  "victims": victims}
        buf = io.BytesIO()
        torch.save({"header": header, "records": records}, buf)
        atomic_write_bytes(os.path.join(out, "capture.pt"), buf.getvalue())
        atomic_write_text(os.path.join(out, "result.json"),
                          json.dumps({"history": history, "rejected": rejected}, indent=1))
