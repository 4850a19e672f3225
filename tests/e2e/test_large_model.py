"""A 200 MB model makes a round trip with default settings (objects move in 1 MiB chunks), and
neither the node nor its ClientApp keeps what a message's transfers used once it is answered.
Measured: the node's anonymous memory within 1 MiB after the 200 MB round trip of what it was
after a first small run (three runs), 26 MiB more without flwrmtls.heap.release_free_memory;
a ClientApp's no more at a later message, and on the code before (its reply loop kept the last
array bound, which pinned the rest in the heap) one array more at the second of 3 messages
of 64 MiB and a whole reply (63 MiB) more at the third."""

from __future__ import annotations

import re
import time
from pathlib import Path

from .deployment import Deployment
from .probe_app import write_probe_app

KIB_PER_MIB = 1024


def anonymous_kib(pid: int) -> int:
    """The process's anonymous resident memory (``RssAnon``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError(f"no RssAnon for process {pid}")


def run_probe(deployment: Deployment, app: Path, run_config: str) -> str:
    """``flwrmtls run`` of the probe app on one node (``run_config`` added); its output."""
    result = deployment.cli(
        "run", str(app), "--stream", "--run-config",
        f"min-train=1 min-available=1 {run_config}", timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return result.stdout


def test_a_200_mb_model_round_trips(deployment: Deployment, tmp_path: Path) -> None:
    _, (node,) = deployment.federation({"node-1": "name=a"})
    assert node.process is not None
    app = write_probe_app(tmp_path / "app")
    run_probe(deployment, app, "array-mb=1 rounds=1")  # the node's first run
    before = anonymous_kib(node.process.pid)  # after what a first run loads and keeps
    output = run_probe(deployment, app, "array-mb=200 rounds=1")
    # 4 arrays of 50 MiB of float32, started at 0, 1, 2, 3 and each increased by one.
    per_array = 200 * (1 << 20) // 16
    expected_sum = sum((i + 1) * per_array for i in range(4))
    assert f"final model sum {expected_sum:.1f}, {200 * (1 << 20)} bytes" in output
    grown = anonymous_kib(node.process.pid) - before
    assert grown < 16 * KIB_PER_MIB, f"the node kept {grown // KIB_PER_MIB} MiB after the run"
    # Once the run has ended, neither the link nor the node keeps any of its objects (its
    # bundle included: no other run holds it).
    assert list((deployment.tmp / "link.db.objects").glob("??/*")) == []
    node_stores = list((Path(deployment.env["FLWRMTLS_HOME"]) / "supernode").glob("*/objects"))
    assert len(node_stores) == 1
    deadline = time.monotonic() + 10
    while list(node_stores[0].glob("??/*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(node_stores[0].glob("??/*")) == []


def test_a_clientapp_keeps_nothing_of_a_message_once_it_is_answered(
    deployment: Deployment, tmp_path: Path
) -> None:
    _, (node,) = deployment.federation({"node-1": "name=a"})
    app = write_probe_app(tmp_path / "app")
    run_probe(deployment, app, "array-mb=64 rounds=3 report-memory=true")
    held = [int(kib) for kib in re.findall(r"ClientApp of a holds (\d+) KiB", node.log)]
    assert len(held) == 3  # as each round's message arrived
    kept = max(held[1:]) - held[0]  # what rounds 1 and 2 left behind
    assert kept < 8 * KIB_PER_MIB, f"the ClientApp kept {kept // KIB_PER_MIB} MiB: {held}"
