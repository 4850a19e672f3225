"""A run's storage quota end to end: real link, nodes, ServerApp and ClientApps over mTLS.

The control is a run that fits in ``--max-run-storage``; the run whose replies do not fit
fails at once with the link's reason (the nodes send LINK_ERROR replies in their place), and
the federation goes on serving.
"""

from __future__ import annotations

import json
from pathlib import Path

from .deployment import Deployment
from .probe_app import write_probe_app
from .test_runs import runs


def test_a_run_over_max_run_storage_fails_with_the_reason_beside_one_that_fits(
    deployment: Deployment, tmp_path: Path
) -> None:
    link = deployment.start_link([*deployment.link_args(), "--max-run-storage", "1200K"])
    nodes = [deployment.node(name, link.fleet_port) for name in ("node-1", "node-2")]
    for node in nodes:
        node.wait_active()
    deployment.profile(link.control_port)
    link.wait_for(r"objects in .*: at most 1200 KiB per run, 4 GiB of uploads")
    app = write_probe_app(tmp_path / "app")
    # The probe's model is 4 arrays filled with 0, 1, 2, 3; each round adds 1, so each round
    # adds one new array (1/4 of the model) to the run. 256 KiB models: 384 KiB in 2 rounds.
    fits = deployment.cli("run", str(app), "--stream", "--run-config", "array-mb=0.25")
    assert fits.returncode == 0, fits.stdout + fits.stderr
    # 1 MiB models: the initial one fits, the replies would take the run to 1280 KiB.
    over = deployment.cli("run", str(app), "--stream", "--run-config", "rounds=1 array-mb=1")
    assert over.returncode == 1, over.stdout + over.stderr
    second = runs(deployment)[1]
    assert second["status"] == "failed"
    reason = str(second["reason"])
    assert reason.startswith("round 1: 0 of 2 nodes replied to train"), reason
    assert "LINK_ERROR: the link refused the reply: run 2 would hold" in reason
    assert f"over the link's --max-run-storage of {1200 * 1024} bytes" in reason
    for node in nodes:
        node.wait_for("run 2: the link refused reply .*--max-run-storage")
        node.wait_for("ClientApp: .*reply refused: .*--max-run-storage")
    again = deployment.cli("run", str(app), "--format", "json", "--run-config", "array-mb=0.25")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["run_id"] == 3  # the link goes on taking runs
