"""What an app process can do to others, through real link, node and CLI processes (issue 11,
part 5): a ServerApp's result cannot break `flwrmtls ls`; text from ServerApps, ClientApps and
certificates cannot drive anyone's terminal; a module planted in the link's or node's working
directory is not imported by the app processes. Each attack beside its control.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from .deployment import Deployment
from .probe_app import write_probe_app

# -- a ServerApp sending results of its own -------------------------------------------------

_RESULT_PYPROJECT = """\
[project]
name = "rogue"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "rogue.server_app:app"
clientapp = "rogue.client_app:app"

[tool.flwrmtls.app.config]
attack = "good"
"""

_RESULT_SERVER = """\
import os

from flwrmtls.app import ServerApp
from flwrmtls.proto import appio_pb2

app = ServerApp()

RESULTS = {
    "good": '{"train_metrics": {"1": {"loss": 0.5, "acc": "NaN"}}}',
    "malformed": "{bad",
    "nan": '{"train_metrics": {"1": {"loss": NaN}}}',
    "huge": '{"train_metrics": {"1": {"x": "' + "a" * (2 << 20) + '"}}}',
    "deep": "[" * 100000 + "]" * 100000,
    "shape": '{"owned": [1, 2, 3]}',
}


@app.main()
def main(grid, context):
    # As the ServerApp's code: its own run token, straight to the link's ServerAppIo.
    attack = context.run_config["attack"]
    if attack == "reason":  # a failure reason of 100,000 characters
        request = appio_pb2.SetRunResultRequest(failed=True, reason="r" * 100_000)
    else:
        request = appio_pb2.SetRunResultRequest(result_json=RESULTS[attack])
    try:
        grid._stub.SetRunResult(request, metadata=grid._metadata, timeout=60)
    except Exception as error:
        print(f"{attack}: result refused: {error.code().name}: {error.details()[:60]}")
    else:
        print(f"{attack}: result accepted")
    if attack == "reason":
        os._exit(3)  # end before the process reports again
"""

_CLIENT = """\
from flwrmtls.app import ClientApp

app = ClientApp()
"""


def write_app(directory: Path, package: str, pyproject: str, server: str, client: str) -> Path:
    (directory / package).mkdir(parents=True)
    (directory / "pyproject.toml").write_text(pyproject)
    (directory / package / "__init__.py").write_text("")
    (directory / package / "server_app.py").write_text(server)
    (directory / package / "client_app.py").write_text(client)
    return directory


def strict_json(text: str) -> Any:
    """JSON as any other program reads it: no NaN, no Infinity."""

    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_a_serverapps_bad_result_is_refused_and_ls_keeps_working(
    deployment: Deployment, tmp_path: Path
) -> None:
    link = deployment.start_link()
    deployment.profile(link.control_port)
    app = write_app(tmp_path / "rogue", "rogue", _RESULT_PYPROJECT, _RESULT_SERVER, _CLIENT)
    attacks = ["good", "malformed", "nan", "huge", "deep", "shape"]
    for run_id, attack in enumerate(attacks, start=1):
        result = deployment.cli("run", str(app), "--stream", "--run-config", f'attack="{attack}"')
        assert result.returncode == 0, result.stdout + result.stderr
        expected = "result accepted" if attack == "good" else "result refused: INVALID_ARGUMENT"
        assert f"{attack}: {expected}" in result.stdout, result.stdout
        assert f"run {run_id} completed" in result.stdout
    table = deployment.cli("ls")
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.splitlines()) == 1 + len(attacks)
    listed = deployment.cli("ls", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    runs = strict_json(listed.stdout)
    assert isinstance(runs, list)
    results = {r["run_id"]: r["result"] for r in runs}
    assert results == {
        1: {"train_metrics": {"1": {"acc": "NaN", "loss": 0.5}}},  # control: the good one
        **{run_id: None for run_id in range(2, len(attacks) + 1)},
    }
    # A ServerApp's failure reason is kept up to 4,000 characters.
    failed = deployment.cli("run", str(app), "--stream", "--run-config", 'attack="reason"')
    assert failed.returncode == 1
    [record] = strict_json(deployment.cli("ls", "--run-id", "7", "--format", "json").stdout)
    assert record["status"] == "failed"
    assert record["reason"] == "r" * 4000 + "..."
    assert len(failed.stderr) < 4200


def test_ls_shows_the_runs_of_an_old_database_holding_bad_results(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A link from before results were checked kept whatever a ServerApp sent."""
    link = deployment.start_link()
    deployment.profile(link.control_port)
    app = write_app(tmp_path / "rogue", "rogue", _RESULT_PYPROJECT, _RESULT_SERVER, _CLIENT)
    for _ in range(3):
        assert deployment.cli("run", str(app), "--stream").returncode == 0
    with sqlite3.connect(deployment.tmp / "link.db") as db:
        db.execute("UPDATE runs SET result_json = ? WHERE run_id = 1", ("{bad",))
        db.execute(
            "UPDATE runs SET result_json = ? WHERE run_id = 2",
            ('{"train_metrics": {"1": {"loss": NaN}}}',),
        )
    table = deployment.cli("ls")
    assert table.returncode == 0, table.stderr
    assert "Traceback" not in table.stderr
    listed = deployment.cli("ls", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    runs = {r["run_id"]: r for r in strict_json(listed.stdout)}
    assert runs[1]["result"] is None
    assert "the stored result is not shown: the result is not JSON" in runs[1]["result_error"]
    assert runs[2]["result"] is None
    assert "bare NaN" in runs[2]["result_error"]
    assert runs[3]["result"] == {"train_metrics": {"1": {"acc": "NaN", "loss": 0.5}}}  # control
    assert "result_error" not in runs[3]


# -- text from apps and certificates --------------------------------------------------------

ATTACK = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202eevil\u2066x"
ATTACK_SHOWN = "\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\\u202eevil\\u2066x"
NICE = "Zo\u00eb \u5b66\u4e60 caf\u00e9"
RAW = ["\x1b", "\x07", "\x9b", "\u202e", "\u2066"]
CN_ATTACK = "\x1b[2J\x07\x9b31m\u202eevil\u2066x"  # no ";": RFC 4514 would escape it
CN_SHOWN = "\\x1b[2J\\x07\\x9b31m\\u202eevil\\u2066x"

_SHOUT_SERVER = f"""\
import numpy as np

from flwrmtls.app import ArrayRecord, FedAvg, ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    print("serverapp says {ATTACK.encode("unicode_escape").decode()} {NICE}")
    strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    strategy.start(grid=grid, initial_arrays=ArrayRecord({{"w": np.zeros(2)}}), num_rounds=1)
    raise RuntimeError("{ATTACK.encode("unicode_escape").decode()} {NICE}")
"""

_SHOUT_CLIENT = f"""\
from flwrmtls.app import ClientApp, MetricRecord, RecordDict

app = ClientApp()


@app.train()
def train(msg, context):
    print("clientapp says {ATTACK.encode("unicode_escape").decode()} {NICE}", flush=True)
    metrics = MetricRecord({{"num-examples": 1}})
    return msg.create_reply(RecordDict({{"arrays": msg.content["arrays"], "metrics": metrics}}))
"""

_SHOUT_PYPROJECT = """\
[project]
name = "shout"
version = "0.1.0"

[tool.flwrmtls.app.components]
serverapp = "shout.server_app:app"
clientapp = "shout.client_app:app"
"""


def assert_escaped(text: str, where: str) -> None:
    for raw in RAW:
        assert raw not in text, f"{where} holds {raw!r}: {text!r}"


def test_text_from_apps_and_certificates_cannot_drive_a_terminal(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.pki.ca.issue_node("evil", common_name=f"node{CN_ATTACK}", organization=NICE)
    link = deployment.start_link()
    evil = deployment.node("evil", link.fleet_port)
    evil_id = evil.wait_active()
    deployment.profile(link.control_port)
    app = write_app(tmp_path / "shout", "shout", _SHOUT_PYPROJECT, _SHOUT_SERVER, _SHOUT_CLIENT)

    # The ServerApp's output and its failure reason: `run --stream` and the one error line.
    result = deployment.cli("run", str(app), "--stream")
    assert result.returncode == 1
    assert f"serverapp says {ATTACK_SHOWN} {NICE}" in result.stdout  # NICE passes unchanged
    assert_escaped(result.stdout, "run --stream")
    [error_line] = result.stderr.splitlines()
    assert error_line.startswith("flwrmtls: error: run 1 failed: the ServerApp raised ")
    assert f"RuntimeError: {ATTACK_SHOWN} {NICE}" in error_line
    assert_escaped(result.stderr, "the error line")
    for args in (["log", "1"], ["ls"], ["log", "1", "--stream"]):
        shown = deployment.cli(*args)
        assert_escaped(shown.stdout + shown.stderr, " ".join(args))
        assert NICE in shown.stdout + shown.stderr or args == ["ls"]
    # The ClientApp's output, in the node's log.
    evil.wait_for("clientapp says")
    assert f"clientapp says {ATTACK_SHOWN} {NICE}" in evil.log
    # The node's identity (a certificate Subject): the table, unregister, readmit, the link's log.
    listed = deployment.cli("supernode", "list")
    assert f"CN=node{CN_SHOWN},O={NICE}" in listed.stdout
    assert_escaped(listed.stdout, "supernode list")
    unregistered = deployment.cli("supernode", "unregister", str(evil_id))
    assert unregistered.returncode == 0, unregistered.stderr
    assert unregistered.stdout == (f"node {evil_id} (CN=node{CN_SHOWN},O={NICE}) unregistered\n")
    link.wait_for("refused .* node-unregistered")  # the node's next call
    assert evil.wait_exit() != 0
    readmitted = deployment.cli("supernode", "readmit", str(evil_id))
    assert readmitted.stdout == f"node {evil_id} (CN=node{CN_SHOWN},O={NICE}) readmitted\n"
    assert f"CN=node{CN_SHOWN}" in link.log
    assert_escaped(link.log, "the link's log")
    assert_escaped(evil.log, "the node's log")


# -- isolated app processes -----------------------------------------------------------------

_PLANTED = """\
from pathlib import Path

Path({marker!r}).write_text("imported from the working directory")
raise ImportError("a planted grpc.py ran")
"""


@pytest.mark.parametrize("planted_in", ["link", "node"])
def test_a_module_planted_in_the_working_directory_is_not_imported_by_apps(
    deployment: Deployment, tmp_path: Path, planted_in: str
) -> None:
    marker = tmp_path / "planted-module-ran"
    planted = tmp_path / "working-directory"
    planted.mkdir()
    (planted / "grpc.py").write_text(_PLANTED.format(marker=str(marker)))
    link = deployment.start_link(cwd=planted if planted_in == "link" else None)
    for name in ("node-1", "node-2"):
        node = deployment.node(name, link.fleet_port, cwd=planted if planted_in == "node" else None)
        node.wait_active()
    deployment.profile(link.control_port)
    app = write_probe_app(tmp_path / "app")
    result = deployment.cli("run", str(app), "--stream", "--run-config", "rounds=1")
    assert not marker.exists(), f"a {planted_in}'s app process imported the planted grpc.py"
    assert result.returncode == 0, result.stdout + result.stderr  # control: the run completes
    assert "final model sum" in result.stdout
