"""Reply to the warm-up at once; reply to the model with model + index (new bytes).

The ``BENCH-CLIENT`` line (JSON): the node's index, the reply's bytes, when the handler got
its message (arrays decoded) and when it returned.
"""

from __future__ import annotations

import json
import time

import numpy as np

from flwrmtls.app import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

app = ClientApp()


@app.query()
def warm(msg: Message, context: Context) -> Message:
    return msg.create_reply(RecordDict({"metrics": MetricRecord({"ok": 1})}))


@app.train()
def train(msg: Message, context: Context) -> Message:
    received = time.monotonic()
    index = int(str(context.node_config.get("index", 0)))
    arrays = ArrayRecord(
        {
            key: value + np.float32(index)
            for key, value in msg.content.array_records["arrays"].items()
        }
    )
    nbytes = sum(a.nbytes for a in arrays.values())
    reply = msg.create_reply(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"index": index})})
    )
    stamps = {"index": index, "bytes": nbytes, "received": received, "replied": time.monotonic()}
    print("BENCH-CLIENT " + json.dumps(stamps), flush=True)
    return reply
