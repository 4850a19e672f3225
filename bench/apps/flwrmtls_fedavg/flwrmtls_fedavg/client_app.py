"""Node K adds 1 + K/1024 to every element (1 with distinct-updates=false); prints stamps.

The ``BENCH-CLIENT`` line (JSON): the round, when the handler got its message and when it
returned (``time.monotonic()``, the clock every process on the machine shares). The node whose
index is ``hold-node`` prints ``BENCH-HOLD`` instead in round ``hold-round`` and sleeps: its
reply never comes (bench_rounds kills that node there).
"""

from __future__ import annotations

import json
import time

import numpy as np

from flwrmtls.app import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


def step(context: Context) -> np.float32:
    """What this node adds: each node's reply differs from every other node's by default."""
    if not context.run_config["distinct-updates"]:
        return np.float32(1.0)
    return np.float32(1.0 + int(context.node_config.get("index", 0)) / 1024)


@app.train()
def train(msg: Message, context: Context) -> Message:
    received = time.monotonic()
    server_round = msg.content.config_records["config"]["server-round"]
    hold = int(context.run_config["hold-node"])
    index = int(context.node_config.get("index", 0))
    if hold and hold == index and server_round == int(context.run_config["hold-round"]):
        print("BENCH-HOLD " + json.dumps({"round": server_round}), flush=True)
        time.sleep(3600)
    add = step(context)
    arrays = ArrayRecord(
        {key: value + add for key, value in msg.content.array_records["arrays"].items()}
    )
    reply = msg.create_reply(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 100})})
    )
    stamps = {
        "round": server_round if isinstance(server_round, int) else 0,
        "received": received,
        "replied": time.monotonic(),
    }
    print("BENCH-CLIENT " + json.dumps(stamps), flush=True)
    return reply
