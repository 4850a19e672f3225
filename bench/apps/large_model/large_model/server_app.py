"""Send every node a large model, take a model-sized update back; print monotonic stamps.

A small round first, so that every node's ClientApp process is running before the timed one:
the timed round moves the model, it does not start processes. The ``BENCH-SERVER`` line
(JSON): ``warm_start``/``warm_end``, ``sent`` (before send_and_receive), ``done`` (after it,
every reply decoded and checked), the model's and the replies' bytes.
"""

from __future__ import annotations

import json
import time

import numpy as np

from flwrmtls.app import ArrayRecord, ConfigRecord, Context, Grid, RecordDict, ServerApp

app = ServerApp()


def _index(value: object) -> int:
    return value if isinstance(value, int) else -1


@app.main()
def main(grid: Grid, context: Context) -> dict[str, int]:
    config = context.run_config
    nodes = int(config["nodes"])
    timeout = float(config["timeout"])
    skip = str(config["skip"])
    identities: dict[int, str] = getattr(grid, "identities", {})
    # The nodes, not the benchmark's probe (it only heartbeats; it answers nothing).
    online = grid.wait_for_nodes(nodes + 1, 120.0)
    node_ids = sorted(n for n in online if skip not in identities.get(n, ""))[:nodes]

    warm = [
        grid.create_message(RecordDict({"config": ConfigRecord({"warm-up": 1})}), "query", n, "w")
        for n in node_ids
    ]
    warm_start = time.monotonic()
    for reply in grid.send_and_receive(warm, timeout=300.0):
        if reply.has_error():
            raise RuntimeError(f"warm-up: {reply.error}")
    warm_end = time.monotonic()

    arrays = int(config["arrays"])
    per_array = int(config["model-bytes"]) // 4 // arrays
    rng = np.random.default_rng()
    model = ArrayRecord(
        {f"layer-{i}": rng.random(per_array, dtype=np.float32) for i in range(arrays)}
    )
    model_bytes = sum(a.nbytes for a in model.values())
    messages = [
        grid.create_message(RecordDict({"arrays": model}), "train", n, "large") for n in node_ids
    ]
    sent = time.monotonic()
    replies = grid.send_and_receive(messages, timeout=timeout)
    done = time.monotonic()

    # Every byte travelled: each node's update is the model plus its index.
    checked = 0
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
        index = _index(reply.content.metric_records["metrics"]["index"])
        for name, array in reply.content.array_records["arrays"].items():
            expected = model[name][[0, -1]] + np.float32(index)
            if array.nbytes != model[name].nbytes or not np.array_equal(array[[0, -1]], expected):
                raise RuntimeError(f"node {reply.metadata.src_node_id}: {name} is wrong")
            checked += array.nbytes
    stamps = {
        "nodes": len(node_ids),
        "model_bytes": model_bytes,
        "reply_bytes": checked,
        "warm_start": warm_start,
        "warm_end": warm_end,
        "sent": sent,
        "done": done,
    }
    print("BENCH-SERVER " + json.dumps(stamps), flush=True)
    return {"nodes": len(node_ids), "model_bytes": model_bytes}
