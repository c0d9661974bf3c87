"""Test fixture: fedsim's ClientApp, except on nodes whose node config says ``fault``: their train replies are
malformed as named (``shape``: the params array loses its last entry; ``nan``: one value becomes NaN;
``client-id``: the reply claims another client's id). tests/flower/test_faults_deploy.py builds an app folder
with fedsim's ServerApp and this ClientApp."""

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedsim.flower import apps

clientapp = ClientApp()


@clientapp.query()
def _query(msg: Message, context: Context) -> Message:
    return apps.clientapp(msg, context)


@clientapp.train()
def _train(msg: Message, context: Context) -> Message:
    reply = apps.clientapp(msg, context)
    fault = str(context.node_config.get("fault", ""))
    if not fault or reply.has_error():
        return reply
    content = reply.content
    params = content["arrays"]["params"].numpy().copy()
    if fault == "shape":
        params = params[:-1]
    elif fault == "nan":
        params[0] = np.nan
    elif fault == "client-id":
        content["config"]["client-id"] = int(content["config"]["client-id"]) + 1
    else:
        raise ValueError(f"unknown fault {fault!r}")
    content["arrays"] = ArrayRecord({"params": Array(np.ascontiguousarray(params))})
    return reply
