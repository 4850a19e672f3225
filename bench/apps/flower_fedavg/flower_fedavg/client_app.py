"""Node K adds 1 + K/1024 to every element (1 with distinct-updates=false)."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def step(context: Context) -> np.float32:
    """What this node adds: each node's reply differs from every other node's by default."""
    if not context.run_config["distinct-updates"]:
        return np.float32(1.0)
    return np.float32(1.0 + int(context.node_config.get("index", 0)) / 1024)


@app.train()
def train(msg: Message, context: Context) -> Message:
    add = step(context)
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    updated = ArrayRecord([array + add for array in arrays])
    content = RecordDict({"arrays": updated, "metrics": MetricRecord({"num-examples": 100})})
    return Message(content=content, reply_to=msg)
