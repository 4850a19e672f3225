"""One small message to every node, then wait for every reply; print monotonic stamps.

The ``BENCH-SERVER`` line (JSON): ``entered``, ``online`` (wait_for_nodes returned),
``sent``/``done`` (around send_and_receive), how many messages, replies and checked answers,
and the error replies by code.
"""

from __future__ import annotations

import json
import time

import numpy as np

from flwrmtls.app import ArrayRecord, ConfigRecord, Context, Grid, RecordDict, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> dict[str, int]:
    nodes = int(context.run_config["nodes"])
    timeout = float(context.run_config["timeout"])
    skip = str(context.run_config["skip"])
    identities: dict[int, str] = getattr(grid, "identities", {})
    entered = time.monotonic()
    # Every online node but the benchmark's probe (it only heartbeats; it answers nothing).
    node_ids = [
        n for n in grid.wait_for_nodes(nodes + 1, 120.0) if skip not in identities.get(n, "")
    ]
    online = time.monotonic()
    content = RecordDict(
        {
            "arrays": ArrayRecord({"weights": np.arange(256, dtype=np.float32)}),
            "config": ConfigRecord({"server-round": 1}),
        }
    )
    messages = [grid.create_message(content, "train", n, "scale") for n in node_ids]
    sent = time.monotonic()
    replies = grid.send_and_receive(messages, timeout=timeout)
    done = time.monotonic()
    errors: dict[str, int] = {}
    answered = set()
    for reply in replies:
        if reply.has_error():
            code = reply.error.code_name if reply.error is not None else "unknown"
            errors[code] = errors.get(code, 0) + 1
            continue
        index = reply.content.metric_records["metrics"]["index"]
        expected = np.arange(256, dtype=np.float32) + np.float32(
            index if isinstance(index, int | float) else -1
        )
        if not np.array_equal(reply.content.array_records["arrays"]["weights"], expected):
            errors["wrong reply"] = errors.get("wrong reply", 0) + 1
            continue
        answered.add(reply.metadata.src_node_id)
    stamps = {
        "entered": entered,
        "online": online,
        "sent": sent,
        "done": done,
        "nodes": len(node_ids),
        "messages": len(messages),
        "replies": len(replies),
        "answered": len(answered),
        "errors": errors,
    }
    print("BENCH-SERVER " + json.dumps(stamps), flush=True)
    return {"answered": len(answered)}
