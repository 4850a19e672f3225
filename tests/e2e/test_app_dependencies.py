"""An app's ``[project] dependencies`` installed where its ServerApp and ClientApps run: real
link, node and CLI processes, real pip into real virtualenvs.

pip is pointed, as an operator would, at a directory of wheels the test writes
(``PIP_NO_INDEX``, ``PIP_FIND_LINKS`` in the link's and node's environment; no pip.conf), so
nothing needs the internet. ``fmtls-dep-a`` exists in versions 1.0 and 2.0; the apps import
it in both their ServerApp and their ClientApp and say which version they see.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flwrmtls.app.bundle import bundle_hash
from flwrmtls.connectionprofiles import ConfigFile
from flwrmtls.control.client import ControlClient
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.fleet.client import OverQuota, RequestRefused, RunUnavailable
from flwrmtls.fleet.servicer import MAX_LOG_LINES_PER_CALL, MAX_NODE_LOG_LINES
from flwrmtls.runs.appenvs import DISABLE_FLAG, AppEnvs
from flwrmtls.testing.link import node_client
from tests.runs.wheels import pip_environment, write_wheel

from .deployment import Deployment
from .hold_app import write_hold_app

DEP = "fmtls-dep-a"

_SERVER = """\
import fmtls_dep_a

from flwrmtls.app import ConfigRecord, MessageType, RecordDict, ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    print(f"serverapp sees fmtls_dep_a {fmtls_dep_a.VERSION}", flush=True)
    nodes = grid.wait_for_nodes(1, 60.0)
    messages = [
        grid.create_message(RecordDict({"config": ConfigRecord({"n": 1})}), MessageType.QUERY,
                            node, "deps")
        for node in nodes
    ]
    for reply in grid.send_and_receive(messages, timeout=300.0):
        if reply.has_error():
            raise SystemExit(f"error reply: {reply.error.reason}")
        print(f"clientapp sees fmtls_dep_a {reply.content['config']['version']}", flush=True)
"""

_CLIENT = """\
import fmtls_dep_a

from flwrmtls.app import ClientApp, ConfigRecord, RecordDict

app = ClientApp()


@app.query()
def query(msg, context):
    return msg.create_reply(RecordDict({"config": ConfigRecord({"version": fmtls_dep_a.VERSION})}))
"""


def write_dep_app(directory: Path, name: str, requirement: str) -> Path:
    package = directory / name
    package.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "1.0"\ndependencies = ["{requirement}"]\n\n'
        f'[tool.flwrmtls.app.components]\nserverapp = "{name}.server_app:app"\n'
        f'clientapp = "{name}.client_app:app"\n'
    )
    (package / "__init__.py").write_text("")
    (package / "server_app.py").write_text(_SERVER)
    (package / "client_app.py").write_text(_CLIENT)
    return directory


@pytest.fixture
def wheelhouse(tmp_path: Path, deployment: Deployment) -> Path:
    """The operator's wheels, and the link's and node's pip pointed at them alone."""
    house = tmp_path / "wheelhouse"
    for version in ("1.0", "2.0"):
        write_wheel(house, DEP, version, {"fmtls_dep_a/__init__.py": f"VERSION = {version!r}\n"})
    deployment.env.update(pip_environment(house))
    return house


def _log(deployment: Deployment, run_id: int) -> list[dict[str, str]]:
    shown = deployment.cli("log", str(run_id), "--format", "json")
    return [json.loads(line) for line in shown.stdout.splitlines() if line.strip()]


def _lines(entries: list[dict[str, str]], source: str) -> list[str]:
    return [entry["text"] for entry in entries if entry.get("source") == source and "text" in entry]


def _node_source(deployment: Deployment) -> str:
    (node,) = deployment.list_nodes()
    return f"node {node['identity']}"


def test_a_run_installs_its_apps_requirements_where_it_runs_once_per_set(
    deployment: Deployment, wheelhouse: Path, tmp_path: Path
) -> None:
    link = deployment.start_link()
    node = deployment.node("node-1", link.fleet_port)
    node.wait_active()
    deployment.profile(link.control_port)
    one = write_dep_app(tmp_path / "one", "one", f"{DEP}==1.0")
    two = write_dep_app(tmp_path / "two", "two", f"{DEP}==2.0")
    source = _node_source(deployment)
    for run_id, app, version in ((1, one, "1.0"), (2, two, "2.0"), (3, one, "1.0")):
        result = deployment.cli("run", str(app), "--stream", timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"serverapp sees fmtls_dep_a {version}" in result.stdout
        assert f"clientapp sees fmtls_dep_a {version}" in result.stdout
        entries = _log(deployment, run_id)
        for where in ("link", source):
            said = " | ".join(_lines(entries, where))
            if run_id < 3:  # each set installed once, where the app runs, into its own
                assert f"app dependencies: installing {DEP}=={version} into environment" in said
                assert re.search(r"environment \w{12} ready in \d+ s", said), said
            else:  # the same set again: nothing installed
                assert "installing" not in said, said
                assert "app dependencies: reusing environment" in said, said
    assert "Traceback" not in node.log + link.log


def test_a_node_that_does_not_install_fails_the_run_at_once_naming_what_it_lacks(
    deployment: Deployment, wheelhouse: Path, tmp_path: Path
) -> None:
    """The control is the test above: the same app, where the node installs."""
    link = deployment.start_link()
    node = deployment.node("node-1", link.fleet_port, DISABLE_FLAG)
    node_id = node.wait_active()
    deployment.profile(link.control_port)
    app = write_dep_app(tmp_path / "one", "one", f"{DEP}==1.0")
    result = deployment.cli("run", str(app), "--stream", timeout=300)
    assert result.returncode == 1
    lacks = (
        f"node {node_id}: cannot run the app: the app needs {DEP}==1.0, which this node "
        f"lacks, and this node does not install app dependencies ({DISABLE_FLAG})"
    )
    assert f"run 1 failed: the ServerApp exited with code 1: error reply: {lacks}" in (
        result.stdout + result.stderr
    )
    node.wait_for("cannot run the app: the app needs")
    assert "Traceback" not in node.log
    assert not list(Path(deployment.env["FLWRMTLS_HOME"]).glob("supernode/*/app-envs"))


def test_a_failed_install_on_a_node_fails_the_run_with_pips_line_in_the_runs_log(
    deployment: Deployment, wheelhouse: Path, tmp_path: Path
) -> None:
    """The node's pip finds no wheel (its operator's index lacks the package): the run fails
    at once with the node's line, and ``flwrmtls log`` has the node's progress and failure
    under its identity. The control is the first test: the same app, the wheel there."""
    link = deployment.start_link()
    empty = tmp_path / "empty-index"
    empty.mkdir()
    deployment.env.update(pip_environment(empty))  # the node's pip: an index without it
    node = deployment.node("node-1", link.fleet_port)
    node_id = node.wait_active()
    deployment.profile(link.control_port)
    app = write_dep_app(tmp_path / "one", "one", f"{DEP}==1.0")
    result = deployment.cli("run", str(app), "--stream", timeout=300)
    assert result.returncode == 1
    failed = (
        f"error reply: node {node_id}: installing the app's dependencies failed: pip could not "
        f"install {DEP}==1.0: ERROR: "
    )
    assert failed in result.stdout + result.stderr
    said = _lines(_log(deployment, 1), _node_source(deployment))
    assert said[0].startswith(f"app dependencies: installing {DEP}==1.0 into environment ")
    assert said[-1].startswith("installing the app's dependencies failed: pip could not install")
    assert "Traceback" not in node.log


def test_a_link_that_does_not_install_refuses_the_run_in_one_line(
    deployment: Deployment, wheelhouse: Path, tmp_path: Path
) -> None:
    link = deployment.start_link([*deployment.link_args(), DISABLE_FLAG])
    deployment.node("node-1", link.fleet_port).wait_active()
    deployment.profile(link.control_port)
    refused = deployment.cli("run", str(write_dep_app(tmp_path / "one", "one", f"{DEP}==1.0")))
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        f"the app needs {DEP}==1.0, which the link lacks, and the link does not install app "
        f"dependencies ({DISABLE_FLAG})"
    )
    assert len(refused.stderr.strip().splitlines()) == 1
    # The control: an app whose requirement the link's environment meets runs there.
    ok = write_dep_app(tmp_path / "ok", "ok", "numpy>=1.26")
    (ok / "ok" / "server_app.py").write_text(
        "from flwrmtls.app import ServerApp\napp = ServerApp()\n\n\n@app.main()\n"
        "def main(grid, context):\n    print('ran', flush=True)\n"
    )
    assert deployment.cli("run", str(ok), "--stream").returncode == 0


def _hand_made_bundle(pyproject: str) -> bytes:
    """A bundle as a hostile client would build it, past the CLI's checks."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in (("pyproject.toml", pyproject), ("one/__init__.py", "")):
            encoded = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(encoded)
            tar.addfile(info, io.BytesIO(encoded))
    return data.getvalue()


def test_a_requirement_that_would_steer_pip_is_refused_by_the_cli_and_by_the_link(
    deployment: Deployment, wheelhouse: Path, tmp_path: Path
) -> None:
    link = deployment.start_link()
    deployment.profile(link.control_port)
    evil = "--index-url=https://evil.example/simple"
    hostile = write_dep_app(tmp_path / "hostile", "hostile", evil)
    refused = deployment.cli("run", str(hostile))
    assert refused.returncode == 1
    assert f"dependency {evil!r} is not a PEP 508 requirement" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    template = (
        '[project]\nname = "one"\nversion = "1.0"\ndependencies = ["{}"]\n\n'
        '[tool.flwrmtls.app.components]\nserverapp = "one.s:app"\nclientapp = "one.c:app"\n'
    )
    config = ConfigFile(Path(deployment.env["FLWRMTLS_HOME"]) / "config.toml")
    client = ControlClient(config.profile("test"), str(config.path))
    try:
        for requirement, why in (
            (evil, "is not a PEP 508 requirement"),
            (f"{DEP} @ file://{wheelhouse}/fmtls_dep_a-2.0-py3-none-any.whl", "names a URL"),
        ):
            bundle = _hand_made_bundle(template.format(requirement))
            with pytest.raises(FlwrmtlsError) as caught:
                client.start_run(bundle, bundle_hash(bundle), {})
            assert "answered INVALID_ARGUMENT: the bundle's pyproject.toml: [project]: " in str(
                caught.value
            )
            assert why in str(caught.value)
        honest = _hand_made_bundle(template.format(f"{DEP}==1.0"))
        assert client.start_run(honest, bundle_hash(honest), {}) == 1  # the control
    finally:
        client.close()
    runs = json.loads(deployment.cli("ls", "--format", "json").stdout)
    assert [r["run_id"] for r in runs] == [1]


def test_a_node_writes_into_a_runs_log_only_its_own_lines_of_a_run_it_works_for(
    deployment: Deployment, tmp_path: Path
) -> None:
    """PushLogs through the real link, from a client holding a node's certificate (an
    attacker who took a node): a forged line, a run it has no work of, a flood; beside the
    lines a node legitimately sends."""
    args = deployment.link_args()
    # Heartbeats every 300 s: these clients do not heartbeat, and stay online meanwhile.
    args[args.index("--heartbeat-interval") + 1] = "300"
    link = deployment.start_link(args)
    deployment.profile(link.control_port)
    roots = deployment.pki.trust_bundle_path

    def client_of(name: str):  # type: ignore[no-untyped-def]
        chain, key = deployment.pki.paths(name)
        return node_client(link, root_certificates=roots, chain=chain, key=key)

    node, channel = client_of("node-1")
    other, other_channel = client_of("node-2")
    try:
        session = node.activate()
        app = write_hold_app(tmp_path / "hold")
        run = deployment.cli("run", str(app), "--run-config", "wait-replies=0", "--format", "json")
        run_id = int(json.loads(run.stdout)["run_id"])
        pulled = None
        for _ in range(10):
            pulled = node.pull(session, wait=10, active_run_ids=[])
            if pulled is not None and pulled.messages:
                break
        assert pulled is not None
        assert pulled.messages  # run 1 has work for node-1 ...
        other_session = other.activate()  # ... and none for node-2, online only now
        with pytest.raises(RunUnavailable, match="has no work for this node"):
            other.push_logs(other_session, run_id, ["from a node the run never asked"])
        node.push_logs(session, run_id, ["app dependencies: installing x==1 into environment e"])
        forged = "ok\n12:00:00 link: run 1 completed"
        with pytest.raises(RequestRefused, match="a log line holds a line break"):
            node.push_logs(session, run_id, [forged])
        with pytest.raises(RequestRefused, match=f"at most {MAX_LOG_LINES_PER_CALL}"):
            node.push_logs(session, run_id, ["x"] * (MAX_LOG_LINES_PER_CALL + 1))
        for _ in range((MAX_NODE_LOG_LINES - 1) // MAX_LOG_LINES_PER_CALL):
            node.push_logs(session, run_id, ["line"] * MAX_LOG_LINES_PER_CALL)
        with pytest.raises(OverQuota, match=f"at most {MAX_NODE_LOG_LINES} per run"):
            node.push_logs(session, run_id, ["line"] * MAX_LOG_LINES_PER_CALL)
        assert deployment.cli("stop", str(run_id)).returncode == 0
        with pytest.raises(RunUnavailable, match="is not active"):
            node.push_logs(session, run_id, ["after the end"])
    finally:
        channel.close()
        other_channel.close()
    entries = _log(deployment, run_id)
    (identity,) = {
        str(n["identity"]) for n in deployment.list_nodes() if "node-1" in str(n["identity"])
    }
    said = _lines(entries, f"node {identity}")
    assert said[0] == "app dependencies: installing x==1 into environment e"
    assert len(said) == 1 + ((MAX_NODE_LOG_LINES - 1) // MAX_LOG_LINES_PER_CALL) * 20
    texts = [entry.get("text", "") for entry in entries]
    assert not any("completed" in text or "never asked" in text for text in texts)


def test_stopping_a_run_whose_environment_is_being_prepared_cancels_it(
    deployment: Deployment, wheelhouse: Path, tmp_path: Path
) -> None:
    """The link's install of run 1's environment waits for the environment's lock, which the
    test holds as a run installing the same environment would. Stopping run 1 then ends it at
    once: no ServerApp starts, nothing is left half built, and the same app runs afterwards."""
    link = deployment.start_link()
    deployment.profile(link.control_port)
    app = write_dep_app(tmp_path / "one", "one", f"{DEP}==1.0")
    envs = AppEnvs(tmp_path / "link.db.app-envs", host="the link")  # the link's directory
    plan = envs.plan([f"{DEP}==1.0"], "pyproject.toml")
    envs.directory.mkdir(mode=0o700)
    lock = os.open(envs.directory / f"{plan.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = deployment.cli("run", str(app), "--format", "json")
        assert started.returncode == 0, started.stderr
        waiting = f"app dependencies: waiting for environment {plan.label}"
        _wait_until(lambda: waiting in " ".join(_lines(_log(deployment, 1), "link")), waiting)
        assert _status(deployment, 1) == "pending"
        assert deployment.cli("stop", "1").returncode == 0
        assert _status(deployment, 1) == "stopped"
    finally:
        os.close(lock)
    assert not (envs.directory / plan.key).exists()
    assert "serverapp" not in {entry.get("source") for entry in _log(deployment, 1)}
    # The control: with the lock free, the same app installs and runs to the end.
    deployment.node("node-1", link.fleet_port).wait_active()
    again = deployment.cli("run", str(app), "--stream", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Traceback" not in link.log


def _status(deployment: Deployment, run_id: int) -> str:
    listed = deployment.cli("ls", "--run-id", str(run_id), "--format", "json")
    [run] = json.loads(listed.stdout)
    return str(run["status"])


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)
