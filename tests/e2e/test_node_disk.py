"""A node's disk is bounded and kept clean, through a real link, node, CLI and app processes.

Each attack beside its control: a message over ``--max-object-storage`` gets an error reply
while the messages around it are answered; an object corrupted on the node's disk is deleted
and fetched again (the same object, read again, is answered); an ended run's objects go while
another run's stay; a second node on the same ``--state-dir`` is refused while the first goes
on, and what an earlier node left there is deleted at start.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from flwrmtls.objects.store import ObjectStore

from .deployment import Deployment
from .disk_app import array_bytes, write_disk_app
from .test_processes import one_error_line


def object_file(state: Path, data: bytes) -> Path:
    object_id = hashlib.sha256(data).hexdigest()
    return state / "objects" / object_id[:2] / object_id


def start(deployment: Deployment, state: Path, *flags: str) -> None:
    link = deployment.start_link()
    node = deployment.node("node-1", link.fleet_port, "--state-dir", str(state), *flags)
    node.wait_active()
    deployment.profile(link.control_port)


def test_a_message_over_max_object_storage_gets_an_error_reply_and_the_node_goes_on(
    deployment: Deployment, tmp_path: Path
) -> None:
    start(deployment, tmp_path / "state", "--max-object-storage", "1M")
    app = write_disk_app(tmp_path / "app")
    # 64 bytes, then 2 MiB (over the node's 1 MiB), then 64 bytes again.
    result = deployment.cli(
        "run", str(app), "--stream", "--run-config", "sizes='16 524288 16' timeout=60"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "reply 0: ok sum 32.0" in result.stdout  # control: before
    [refused] = re.findall(r"reply 1: .*", result.stdout)
    assert refused.startswith("reply 1: LINK_ERROR: node ")
    assert "of 2097152 bytes would exceed --max-object-storage of 1 MiB on this node" in refused
    assert "reply 2: ok sum 32.0" in result.stdout  # control: after, the same node
    [node] = [p for p in deployment.processes if p.module == "flwrmtls.node.main"]
    assert node.process is not None
    assert node.process.poll() is None
    assert "Traceback" not in node.log


def test_a_run_whose_bundle_is_over_max_object_storage_is_answered_with_an_error(
    deployment: Deployment, tmp_path: Path
) -> None:
    start(deployment, tmp_path / "state", "--max-object-storage", "64K")
    small = write_disk_app(tmp_path / "small")
    result = deployment.cli("run", str(small), "--stream", "--run-config", "timeout=60")
    assert "reply 0: ok sum 32.0" in result.stdout, result.stdout[-3000:]  # control: it fits
    large = write_disk_app(tmp_path / "large")
    (large / "disk" / "table.py").write_text(f"TABLE = {os.urandom(100_000).hex()!r}\n")
    result = deployment.cli("run", str(large), "--stream", "--run-config", "timeout=60")
    [refused] = re.findall(r"reply 0: .*", result.stdout)
    assert refused.startswith("reply 0: LINK_ERROR: node ")
    assert ": cannot start the run's ClientApp: object " in refused
    assert "would exceed --max-object-storage of 64 KiB on this node" in refused
    [node] = [p for p in deployment.processes if p.module == "flwrmtls.node.main"]
    assert node.process is not None
    assert node.process.poll() is None
    result = deployment.cli("run", str(small), "--stream", "--run-config", "timeout=60")
    assert "reply 0: ok sum 32.0" in result.stdout  # control: the node goes on


@pytest.mark.parametrize("shared", [True, False], ids=["shared-directory", "over-clientappio"])
def test_an_object_corrupted_on_the_nodes_disk_is_deleted_and_fetched_again(
    deployment: Deployment, tmp_path: Path, shared: bool
) -> None:
    state = tmp_path / "state"
    start(deployment, state, *([] if shared else ["--no-shared-objects"]))
    app = write_disk_app(tmp_path / "app")
    gate = tmp_path / "gate"
    run = deployment.cli_process(
        "run", str(app), "--stream", "--run-config",
        f"sizes='4096 4096' gate='{gate}' timeout=30",
    )  # fmt: skip
    run.wait_for("reply 0: ok sum 8192.0", timeout=60)  # control: the object as fetched
    model = array_bytes(4096, 1.0)
    stored = object_file(state, model)
    assert stored.read_bytes() == model  # the node keeps it while the run is active
    stored.write_bytes(b"\xff" * len(model))  # a disk fault, or a stray writer
    Path(f"{gate}.1").touch()  # the same object, in the next message
    run.wait_for("done", timeout=90)
    assert "reply 1: ok sum 8192.0" in run.log  # read again: fetched again, and right
    [node] = [p for p in deployment.processes if p.module == "flwrmtls.node.main"]
    if shared:  # the ClientApp found it, deleted it and asked for it again
        assert "stored bytes do not match their SHA-256: asking the node to fetch it" in node.log
    else:  # the node checks what it serves
        assert "does not match its SHA-256: deleted, fetching it again" in node.log


def test_an_ended_runs_objects_go_while_another_runs_stay(
    deployment: Deployment, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    start(deployment, state)
    app = write_disk_app(tmp_path / "app")
    runs = []
    for seed in (1, 2):
        config = f"sizes='1000 16' seed={seed} gate='{tmp_path / f'gate-{seed}'}' timeout=60"
        runs.append(
            deployment.cli_process(
                "run", str(app), "--stream", "--run-config", config, name=f"run-{seed}"
            )
        )
        runs[-1].wait_for(f"reply 0: ok sum {1000 * (seed + 1)}.0", timeout=60)
    first = [object_file(state, array_bytes(1000, s)) for s in (1.0, 2.0)]  # model, reply
    second = [object_file(state, array_bytes(1000, s)) for s in (2.0, 3.0)]
    # Run 1's reply holds the bytes of run 2's model: one file, which run 2 still holds.
    assert first[1] == second[0]
    bundle_dir = state / "objects"
    before = {path.name for path in bundle_dir.glob("??/*")}
    assert {path.name for path in first + second} <= before
    assert deployment.cli("stop", "1").returncode == 0
    [node] = [p for p in deployment.processes if p.module == "flwrmtls.node.main"]
    node.wait_for(r"run 1 ended", timeout=60)
    after = {path.name for path in bundle_dir.glob("??/*")}
    assert after == before - {first[0].name}  # run 2's model, reply and the shared bundle stay
    assert "run 1 ended; 1 of its objects deleted" in node.log
    Path(f"{tmp_path / 'gate-2'}.1").touch()
    runs[1].wait_for("done", timeout=60)
    node.wait_for(r"run 2 ended", timeout=60)
    assert list(bundle_dir.glob("??/*")) == []  # control: no run left, nothing kept


def test_a_state_dir_serves_one_node_and_what_an_earlier_one_left_is_deleted(
    deployment: Deployment, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "objects").mkdir(mode=0o700)
    leftover = ObjectStore(state / "objects")
    stale = leftover.put(b"an ended run's model" * 100)
    (state / "objects" / ".incoming-cut-short").write_bytes(b"x" * 1000)
    link = deployment.start_link()
    first = deployment.node("node-1", link.fleet_port, "--state-dir", str(state))
    first.wait_active()
    assert not leftover.has(stale)
    assert list((state / "objects").iterdir()) == []  # the partial download too
    assert "(1 objects, 3000 bytes, left from before deleted)" in first.log
    second = deployment.node("node-2", link.fleet_port, "--state-dir", str(state))
    assert second.wait_exit() == 1
    assert first.process is not None
    line = one_error_line(second.log)
    assert line.endswith(
        f"--state-dir {state} is in use by another flwrmtls-supernode "
        f"(pid {first.process.pid}): give each node its own --state-dir"
    )
    assert first.process.poll() is None  # control: the first goes on
    third = deployment.node("node-2", link.fleet_port, "--state-dir", str(tmp_path / "other"))
    third.wait_active()  # control: its own directory
