"""No message is lost when a run ends at the wrong moment: real link, node and app processes.

The aim (issue 11): a ServerApp pushes one message per node and ends its run while that message
is on its way to the node, in the same batch as another run's message. The node, finding the
first run gone, must still hand the other run's message to its ClientApp, and that run (a
FedAvg without a round timeout, which would wait for ever) must complete.

The moment is picked, not raced for: the node reaches the link through a relay
(:mod:`tests.e2e.relay`) that can hold its calls and the link's answers, and the test reads
the link's database (read only) to know when both messages were handed out.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

from .deployment import Deployment
from .hold_app import write_hold_app
from .probe_app import write_probe_app
from .relay import relay_to
from .test_runs import wait_for_status

WAIT = 60.0
"""Generous bound for anything a loaded machine does in a few seconds."""


def handed_out(database: Path) -> dict[int, bool]:
    """Run id -> whether its message to a node was handed out (once at least), from the
    link's database, opened read only."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT run_id, delivered_at IS NOT NULL FROM messages "
            "WHERE dst_node_id != 0 AND reply_to_message_id = ''"
        ).fetchall()
    return {int(run_id): bool(out) for run_id, out in rows}


def wait_until(what: str, check: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.1)


def start(deployment: Deployment, app: Path, config: str) -> int:
    started = deployment.cli("run", str(app), "--run-config", config, "--format", "json")
    assert started.returncode == 0, started.stderr
    return int(json.loads(started.stdout)["run_id"])


def test_a_run_ending_with_its_message_in_flight_loses_no_other_runs_message(
    deployment: Deployment, tmp_path: Path
) -> None:
    args = deployment.link_args()
    # Heartbeats every 300 s: none falls inside the seconds the relay holds the node's calls.
    args[args.index("--heartbeat-interval") + 1] = "300"
    link = deployment.start_link(args)
    database = tmp_path / "link.db"
    hold = write_hold_app(tmp_path / "hold")
    probe = write_probe_app(tmp_path / "probe")
    release = tmp_path / "release-run-2"
    with relay_to(link.fleet_port) as relay:
        node = deployment.node("node-1", relay.port)
        node.wait_active()
        deployment.profile(link.control_port)
        # Run 1 gives the node a run to end: its ClientApp answers, then the run holds.
        assert start(deployment, hold, "wait-replies=1") == 1
        wait_until("run 1 answered", lambda: "answered 1" in deployment.cli("log", "1").stdout)
        # The node's long poll is open on the link. Its next call is held in the relay; ending
        # run 1 answers the open poll, so no poll is open while the two messages are stored.
        relay.hold("up")
        assert deployment.cli("stop", "1").returncode == 0
        # Run 2 pushes one message to the node, then waits for the release file and ends.
        assert start(deployment, hold, f"wait-replies=0 release-file={release}") == 2
        wait_until("run 2's message stored", lambda: 2 in handed_out(database))
        # Run 3, a FedAvg without a round timeout, sends the node its round's message.
        assert start(deployment, probe, "rounds=1 min-train=1 min-available=1") == 3
        wait_until("run 3's message stored", lambda: 3 in handed_out(database))
        assert handed_out(database) == {2: False, 3: False}
        # The node's held poll reaches the link and takes both messages in one batch; the
        # answer is held on its way to the node while run 2 ends.
        relay.hold("down")
        relay.release("up")
        wait_until("both handed out", lambda: handed_out(database) == {2: True, 3: True})
        release.touch()
        wait_for_status(deployment, 2, "completed", timeout=WAIT)
        relay.release("down")
        # Run 2 is gone by the time the node asks for it; run 3's message still reaches its
        # ClientApp, whose reply completes the run.
        wait_for_status(deployment, 3, "completed", timeout=WAIT)
        assert "activating again" not in node.log


def test_a_node_killed_with_a_message_on_its_way_gets_it_again_when_it_returns(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The machine: the link has handed the node its round's message, and the node dies
    before any ClientApp has it. Unacknowledged, the message is handed out again when the
    node activates again, and the run (a FedAvg without a round timeout) completes."""
    args = deployment.link_args()
    args[args.index("--heartbeat-interval") + 1] = "300"
    link = deployment.start_link(args)
    database = tmp_path / "link.db"
    probe = write_probe_app(tmp_path / "probe")
    with relay_to(link.fleet_port) as relay:
        node = deployment.node("node-1", relay.port)
        node_id = node.wait_active()
        deployment.profile(link.control_port)
        relay.hold("down")
        assert start(deployment, probe, "rounds=1 min-train=1 min-available=1") == 1
        wait_until("the message handed out", lambda: handed_out(database) == {1: True})
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)  # the answer never reaches it
        node.wait_exit()
        relay.release("down")
        again = deployment.node("node-1-again", relay.port, cert="node-1")
        assert again.wait_active() == node_id
        wait_for_status(deployment, 1, "completed", timeout=WAIT)
        again.wait_for("run 1: ClientApp process")
