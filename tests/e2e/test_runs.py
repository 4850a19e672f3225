"""Runs end to end: `flwrmtls run` across real nodes over mTLS, and how runs fail.

Every failure case has its control: the same federation completing a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from flwrmtls.testing import federation as shared

from .deployment import Deployment
from .probe_app import write_probe_app


def runs(deployment: Deployment) -> list[dict[str, object]]:
    result = deployment.cli("ls", "--format", "json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = json.loads(result.stdout)
    return listed


def wait_for_status(deployment: Deployment, run_id: int, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["run_id"] == run_id and r["status"] == status for r in runs(deployment)):
            return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} never became {status}: {runs(deployment)}")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_run_streams_its_logs_and_survives_a_link_restart(
    deployment: Deployment, tmp_path: Path
) -> None:
    link, _ = deployment.federation()
    app = write_probe_app(tmp_path / "app")
    result = deployment.cli("run", str(app), "--stream")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run 1 started: probe 0.1.0" in result.stdout
    assert "round 2/2: train" in result.stdout
    assert "final model sum" in result.stdout
    [record] = runs(deployment)
    assert record["status"] == "completed"
    assert record["owner"] == "role=operator,CN=cli-operator"
    deployment.assert_tmp_intact()
    # The run, its status and its logs survive a link restart.
    assert link.stop() == 0
    restarted = deployment.start_link(name="link-2")
    deployment.profile(restarted.control_port)
    assert [r["status"] for r in runs(deployment)] == ["completed"]
    logs = deployment.cli("log", "1")
    assert logs.returncode == 0
    assert "round 2/2: train" in logs.stdout


def test_run_config_overrides_and_unknown_keys(deployment: Deployment, tmp_path: Path) -> None:
    deployment.federation()
    app = write_probe_app(tmp_path / "app")
    refused = deployment.cli("run", str(app), "--run-config", "no-such-key=1")
    assert refused.returncode == 1
    assert "no-such-key" in refused.stderr
    assert "Traceback" not in refused.stderr
    ok = deployment.cli("run", str(app), "--run-config", "rounds=1", "--stream")
    assert ok.returncode == 0, ok.stderr
    assert "round 1/1" in ok.stdout
    assert "round 2/" not in ok.stdout


def test_clientapp_exception_reaches_the_logs_and_the_node_keeps_serving(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.federation({"node-1": "name=a", "node-2": "name=b"})
    app = write_probe_app(tmp_path / "app")
    result = deployment.cli(
        "run", str(app), "--stream", "--run-config", "raise-on=b min-train=1 rounds=1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node CN=node-2,O=Hospital B: ClientApp on node" in result.stdout
    assert "Traceback" in result.stdout
    assert "ZeroDivisionError" in result.stdout
    # Not enough replies when both must answer: the run fails with the reason.
    failed = deployment.cli("run", str(app), "--stream", "--run-config", "raise-on=b rounds=1")
    assert failed.returncode == 1
    assert "run 2 failed" in failed.stderr
    assert "CN=node-2,O=Hospital B" in failed.stdout
    # The node that raised still serves the next run (control).
    again = deployment.cli("run", str(app), "--stream", "--run-config", "rounds=1")
    assert again.returncode == 0, again.stderr


def test_a_node_dying_mid_round_is_reported_within_the_heartbeat_grace(
    deployment: Deployment, tmp_path: Path
) -> None:
    _, nodes = deployment.federation({"node-1": "name=a", "node-2": "name=b"})
    app = write_probe_app(tmp_path / "app")
    start = deployment.cli(
        "run", str(app), "--run-config", "sleep-on=b sleep-seconds=60 min-train=1 rounds=1"
    )
    assert start.returncode == 0, start.stderr
    wait_for_status(deployment, 1, "running")
    nodes[1].wait_for("ClientApp process")
    assert nodes[1].process is not None
    nodes[1].process.send_signal(signal.SIGKILL)  # the node dies; its ClientApp sleeps on
    logs = deployment.cli("log", "1", "--stream", timeout=60)
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "went offline" in logs.stdout
    assert "CN=node-2,O=Hospital B" in logs.stdout
    assert "round 1/1: train" in logs.stdout


def test_a_node_killed_mid_round_is_offline_at_once_and_the_run_goes_on(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The kernel closes a dead process's connection at once: the link marks the node offline
    and answers its awaited reply, well before any heartbeat could lapse (ten minutes here)."""
    link_args = shared.link_args(deployment.pki, tmp_path / "link.db", heartbeat_interval=600)
    link = deployment.start_link(link_args)
    deployment.pki.ca.issue_node("node-3", organization="Hospital C")
    nodes = [
        deployment.node(name, link.fleet_port, "--node-config", config)
        for name, config in (("node-1", "name=a"), ("node-2", "name=b"), ("node-3", "name=c"))
    ]
    for node in nodes:
        node.wait_active()
    deployment.profile(link.control_port)
    app = write_probe_app(tmp_path / "app")
    start = deployment.cli(
        "run", str(app), "--run-config",
        "sleep-on=b sleep-seconds=300 min-train=2 min-available=3 rounds=1",
    )  # fmt: skip
    assert start.returncode == 0, start.stderr
    wait_for_status(deployment, 1, "running")
    victim = nodes[1]
    victim.wait_for("ClientApp of b sleeps", timeout=60)  # mid-round: its reply is awaited
    assert victim.process is not None
    clientapps = children(victim.process.pid)
    victim.process.send_signal(signal.SIGKILL)  # no goodbye: the kernel closes its connection
    try:
        logs = deployment.cli("log", "1", "--stream", timeout=120)
        assert logs.returncode == 0, logs.stdout + logs.stderr
        assert "CN=node-2,O=Hospital B" in logs.stdout
        assert "NODE_UNAVAILABLE" in logs.stdout
        assert "went offline (its connection closed at " in logs.stdout
        assert "round 1/1: train" in logs.stdout
        assert "(2 nodes)" in logs.stdout  # the run went on with the other two
        [record] = runs(deployment)
        assert record["status"] == "completed"
        listed = {n["identity"]: n["status"] for n in deployment.list_nodes()}
        assert listed["CN=node-2,O=Hospital B"] == "offline"
        assert listed["CN=node-1,O=Hospital A"] == "online"  # control: the others stay
    finally:
        for pid in clientapps:  # its ClientApp outlived it, asleep
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_waiting_for_nodes_gives_up_with_a_clear_reason(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.federation()
    app = write_probe_app(tmp_path / "app")
    result = deployment.cli(
        "run", str(app), "--stream", "--run-config", "min-available=3 min-train=3 wait-timeout=2"
    )
    assert result.returncode == 1
    assert "run 1 failed" in result.stderr
    assert "3" in result.stderr
    [record] = runs(deployment)
    assert record["status"] == "failed"


def test_stopping_a_run_stops_and_reaps_its_app_processes(
    deployment: Deployment, tmp_path: Path
) -> None:
    link, nodes = deployment.federation({"node-1": "name=a", "node-2": "name=b"})
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli("run", str(app), "--run-config", "sleep-on=all sleep-seconds=60")
    assert started.returncode == 0, started.stderr
    wait_for_status(deployment, 1, "running")
    clientapps = [
        int(node.wait_for(r"run 1: ClientApp process (\d+) started").group(1)) for node in nodes
    ]
    assert link.process is not None
    [serverapp] = children(link.process.pid)
    # The token went on stdin: the command line and environment carry none.
    cmdline = Path(f"/proc/{serverapp}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:6] == [
        b"-I",  # isolated: nothing from the link's working directory on sys.path
        b"-u",
        b"-m",
        b"flwrmtls.appio.serverapp_process",
        b"--serverappio-api-address",
    ]
    # It works in its own unpacked bundle, not in the link's working directory.
    assert Path(f"/proc/{serverapp}/cwd").resolve().name.startswith("flwrmtls-app-")
    assert b"TOKEN" not in Path(f"/proc/{serverapp}/environ").read_bytes().upper()
    # Besides its run's ClientApp, each node keeps one spare process waiting for a run.
    for node, clientapp in zip(nodes, clientapps, strict=True):
        assert node.process is not None
        assert clientapp in children(node.process.pid)
    stopped = deployment.cli("stop", "1")
    assert stopped.returncode == 0, stopped.stderr
    assert "run 1 stopped" in stopped.stdout
    assert runs(deployment)[0]["status"] == "stopped"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
        process_state(pid) not in ("gone",) for pid in [serverapp, *clientapps]
    ):
        time.sleep(0.2)
    assert [process_state(pid) for pid in [serverapp, *clientapps]] == ["gone"] * 3
    # No zombies were left behind on the way; stopping a node stops its spare ClientApp too.
    for node in nodes:
        assert node.process is not None
        assert all(process_state(pid) != "Z" for pid in children(node.process.pid))
        deadline = time.monotonic() + 15  # a spare starts once the node has been idle 1 s
        while time.monotonic() < deadline and len(children(node.process.pid)) != 1:
            time.sleep(0.2)
        spares = children(node.process.pid)
        assert len(spares) == 1
        assert node.stop() == 0
        assert [process_state(pid) for pid in spares] == ["gone"]
    # The link, idle again, keeps a spare ServerApp (not the run's), and stops it with itself.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(children(link.process.pid)) != 1:
        time.sleep(0.2)
    [spare] = children(link.process.pid)
    assert spare != serverapp
    assert link.stop() == 0
    assert process_state(spare) == "gone"


def test_json_outputs_and_the_stored_result(deployment: Deployment, tmp_path: Path) -> None:
    deployment.federation()
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli("run", str(app), "--format", "json")
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    wait_for_status(deployment, run_id, "completed")
    lines = [json.loads(line) for line in deployment.cli("log", str(run_id), "--format", "json")
             .stdout.splitlines()]  # fmt: skip
    assert lines[-1]["run_status"] == "completed"
    assert any("round 2/2" in line.get("text", "") for line in lines)
    [record] = runs(deployment)
    result = record["result"]
    assert isinstance(result, dict)
    assert sorted(result["train_metrics"]) == ["1", "2"]
    stopped = deployment.cli("stop", str(run_id), "--format", "json")
    assert json.loads(stopped.stdout) == {"run_id": run_id, "status": "completed"}


def test_every_run_ends_in_a_recorded_status_when_the_link_goes_away(
    deployment: Deployment, tmp_path: Path
) -> None:
    link, _ = deployment.federation({"node-1": "name=a", "node-2": "name=b"})
    app = write_probe_app(tmp_path / "app")
    busy = "sleep-on=all sleep-seconds=60"
    assert deployment.cli("run", str(app), "--run-config", busy).returncode == 0
    wait_for_status(deployment, 1, "running")
    assert link.stop() == 0  # a clean stop: its runs fail with the reason
    link = deployment.start_link(name="link-2")
    deployment.profile(link.control_port)
    [first] = runs(deployment)
    assert (first["status"], first["reason"]) == ("failed", "link stopped")
    assert deployment.cli("run", str(app), "--run-config", busy).returncode == 0
    wait_for_status(deployment, 2, "running")
    assert link.process is not None
    link.process.send_signal(signal.SIGKILL)  # no chance to record anything
    link.wait_exit()
    link = deployment.start_link(name="link-3")
    deployment.profile(link.control_port)
    second = runs(deployment)[1]
    assert (second["status"], second["reason"]) == (
        "failed", "link restarted while the run was active",
    )  # fmt: skip


def test_array_bytes_through_shared_directories_and_over_the_apis(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Two runs: first everything shares its object directory (the default); then the link
    and node-2 run with --no-shared-objects while node-1 still shares. Each time the model
    comes out exactly as both nodes adding 1 makes it."""
    app = write_probe_app(tmp_path / "app")
    per_array = 3 * (1 << 20) // 16
    # layer-i starts at i and each of 2 rounds adds 1 on both nodes: i + 2 everywhere.
    expected = f"final model sum {per_array * sum(i + 2 for i in range(4)):.1f}"
    for name, extra in (("shared", []), ("streamed", ["--no-shared-objects"])):
        link = deployment.start_link([*deployment.link_args(), *extra], name=f"link-{name}")
        node_1 = deployment.node("node-1", link.fleet_port)
        node_2 = deployment.node("node-2", link.fleet_port, *extra)
        for node in (node_1, node_2):
            node.wait_active()
        deployment.profile(link.control_port)
        result = deployment.cli(
            "run", str(app), "--stream", "--run-config", "rounds=2 array-mb=3", timeout=180
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert expected in result.stdout
        node_1.wait_for("ClientApp: .*arrays through the node's object directory")
        if extra:
            assert "arrays over ServerAppIo's object calls" in result.stdout
            node_2.wait_for("ClientApp: .*arrays over ClientAppIo's object calls")
            assert "object directory" not in node_2.log
        else:
            assert "arrays through the link's object directory" in result.stdout
            node_2.wait_for("ClientApp: .*arrays through the node's object directory")
        for process in (node_1, node_2, link):
            assert process.stop() == 0
