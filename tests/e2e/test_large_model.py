"""A 200 MB model makes a round trip with default settings (objects move in 1 MiB chunks)."""

from __future__ import annotations

import time
from pathlib import Path

from .deployment import Deployment
from .probe_app import write_probe_app


def test_a_200_mb_model_round_trips(deployment: Deployment, tmp_path: Path) -> None:
    deployment.federation({"node-1": "name=a"})
    app = write_probe_app(tmp_path / "app")
    result = deployment.cli(
        "run", str(app), "--stream", "--run-config",
        "array-mb=200 rounds=1 min-train=1 min-available=1",
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    # 4 arrays of 50 MiB of float32, started at 0, 1, 2, 3 and each increased by one.
    per_array = 200 * (1 << 20) // 16
    expected_sum = sum((i + 1) * per_array for i in range(4))
    assert f"final model sum {expected_sum:.1f}, {200 * (1 << 20)} bytes" in result.stdout
    # Once the run has ended, neither the link nor the node keeps any of its objects (its
    # bundle included: no other run holds it).
    assert list((deployment.tmp / "link.db.objects").glob("??/*")) == []
    node_stores = list((Path(deployment.env["FLWRMTLS_HOME"]) / "supernode").glob("*/objects"))
    assert len(node_stores) == 1
    deadline = time.monotonic() + 10
    while list(node_stores[0].glob("??/*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(node_stores[0].glob("??/*")) == []
