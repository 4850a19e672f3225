"""What a newcomer trips over, through the real command lines: each wrong input beside the right
one. Wrong doors, swapped files, revocation and expiry shown as a node's status, nothing asked
for dropped, output scripts can parse, help that reads well.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flwrmtls.pki import LeafOptions, RevocationReason
from flwrmtls.testing.processes import CliResult, run_cli

from .deployment import Deployment
from .probe_app import write_probe_app


def one_error(result: CliResult, code: int = 1) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def nodes(deployment: Deployment) -> dict[str, dict[str, object]]:
    return {str(n["identity"]): n for n in deployment.list_nodes()}


# -- 1. Which door ---------------------------------------------------------------------------


def test_the_cli_at_the_fleet_port_and_a_node_at_the_control_port_are_told_the_right_door(
    deployment: Deployment,
) -> None:
    link, _ = deployment.federation({"node-1": ""})
    deployment.profile(link.fleet_port, name="wrong")
    line = one_error(deployment.cli("supernode", "list", "wrong"))
    assert "this address is the link's Fleet API" in line, line
    assert "ListNodes belongs to the link's Control API" in line
    assert "default port 9093" in line
    assert "UNIMPLEMENTED" not in line
    node = deployment.node("node-2", link.control_port, "--max-retries", "1")
    assert node.wait_exit() == 1
    assert "this address is the link's Control API" in node.log
    assert "belongs to the link's Fleet API" in node.log
    # Control: the right doors.
    assert deployment.cli("supernode", "list", "test").returncode == 0
    assert "CN=node-1,O=Hospital A" in nodes(deployment)


def test_swapped_certificate_and_key_are_named_as_swapped(
    deployment: Deployment, tmp_path: Path
) -> None:
    chain, key = deployment.pki.paths("node-1")
    swapped = subprocess.run(
        [sys.executable, "-m", "flwrmtls.node.main", "--superlink", "127.0.0.1:1",
         "--root-certificates", str(deployment.pki.trust_bundle_path),
         "--ssl-client-certfile", str(key), "--ssl-client-keyfile", str(chain)],
        capture_output=True, text=True, timeout=60, check=False, env=deployment.env | {
            "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert swapped.returncode == 1
    assert "did you swap --ssl-client-certfile and --ssl-client-keyfile?" in swapped.stderr
    server_chain, server_key = deployment.pki.paths("server")
    args = deployment.link_args()
    args[args.index("--ssl-certfile") + 1] = str(server_key)
    args[args.index("--ssl-keyfile") + 1] = str(server_chain)
    link = subprocess.run(
        [sys.executable, "-m", "flwrmtls.link.main", *args],
        capture_output=True, text=True, timeout=60, check=False,
        env=deployment.env | {"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert link.returncode == 1
    assert "did you swap --ssl-certfile and --ssl-keyfile?" in link.stderr
    # Control: the same files the right way round.
    deployment.federation({"node-1": ""})


# -- 2. Revocation you can see -----------------------------------------------------------------


def test_a_revoked_node_and_an_expired_one_show_as_such_at_once(
    deployment: Deployment,
) -> None:
    ca = deployment.pki.ca
    soon = datetime.now(UTC) + timedelta(seconds=6)
    ca.issue_node("node-3", organization="Hospital C", options=LeafOptions(not_after=soon))
    deployment.federation({"node-1": "", "node-2": "", "node-3": ""})
    revoked_serial = ca.revoke(
        certificate_file=deployment.pki.paths("node-1")[0],
        serial=None,
        reason=RevocationReason.KEY_COMPROMISE,
    )
    deadline = time.monotonic() + 40
    listed = nodes(deployment)
    while time.monotonic() < deadline and (
        listed["CN=node-1,O=Hospital A"]["status"] != "revoked"
        or listed["CN=node-3,O=Hospital C"]["status"] != "expired"
    ):
        time.sleep(0.3)
        listed = nodes(deployment)
    revoked = listed["CN=node-1,O=Hospital A"]
    assert revoked["status"] == "revoked", listed
    assert f"serial {revoked_serial:x}" in str(revoked["status_detail"])
    assert "keyCompromise" in str(revoked["status_detail"])
    expired = listed["CN=node-3,O=Hospital C"]
    assert expired["status"] == "expired", listed
    assert "certificate expired on" in str(expired["status_detail"])
    # Control: node-2 stays online, and the table shows why the others were refused.
    assert listed["CN=node-2,O=Hospital B"]["status"] == "online"
    table = deployment.cli("supernode", "list").stdout
    assert "REFUSED" in table
    assert re.search(r"CN=node-1,O=Hospital A .* revoked .*certificate revoked", table)


def test_readmit_of_a_node_that_does_not_exist_says_so(deployment: Deployment) -> None:
    deployment.federation({"node-1": ""})
    assert one_error(deployment.cli("supernode", "readmit", "12345")).endswith("no node 12345")
    assert one_error(deployment.cli("supernode", "unregister", "12345")).endswith("no node 12345")
    node_id = str(nodes(deployment)["CN=node-1,O=Hospital A"]["node_id"])
    line = one_error(deployment.cli("supernode", "readmit", node_id))  # exists, not unregistered
    assert f"node {node_id} is not unregistered" in line


# -- 3. Nothing asked for is dropped -------------------------------------------------------------


def test_run_config_given_twice_is_merged_later_keys_winning(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.federation({"node-1": "", "node-2": ""})
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli(
        "run", str(app), "--run-config", "rounds=1 array-mb=0.002", "--run-config", "rounds=3",
        "--format", "json",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    [run] = json.loads(deployment.cli("ls", "--run-id", str(run_id), "--format", "json").stdout)
    assert run["run_config"]["rounds"] == 3
    assert run["run_config"]["array-mb"] == 0.002


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ("probe.missing:app", "the app has no module probe.missing"),
        ("probe.server_app:nothing", "module probe.server_app defines no 'nothing'"),
    ],
)
def test_a_component_that_does_not_exist_stops_the_run_before_it_starts(
    tmp_path: Path, component: str, expected: str
) -> None:
    app = write_probe_app(tmp_path / "app")
    pyproject = app / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('serverapp = "probe.server_app:app"',
                                      f'serverapp = "{component}"')
    )  # fmt: skip
    line = one_error(run_cli(["run", str(app), "--dry-run"], env={"FLWRMTLS_HOME": str(tmp_path)}))
    assert "[tool.flwrmtls.app.components] serverapp" in line
    assert expected in line
    # Control: the app as written.
    write_probe_app(app)
    good = run_cli(["run", str(app), "--dry-run"], env={"FLWRMTLS_HOME": str(tmp_path)})
    assert good.returncode == 0, good.stderr


def test_run_names_a_missing_directory_and_a_pyproject_given_for_its_directory(
    tmp_path: Path,
) -> None:
    app = write_probe_app(tmp_path / "my-app")
    env = {"FLWRMTLS_HOME": str(tmp_path)}
    typo = one_error(run_cli(["run", str(tmp_path / "my-ap"), "--dry-run"], env=env))
    assert f"no directory {tmp_path / 'my-ap'}" in typo
    pyproject = one_error(run_cli(["run", str(app / "pyproject.toml"), "--dry-run"], env=env))
    assert "give the app's directory, not its pyproject.toml" in pyproject
    assert run_cli(["run", str(app), "--dry-run"], env=env).returncode == 0


def test_revoke_reasons_are_rfc_5280_names_in_any_case(tmp_path: Path) -> None:
    env = {"FLWRMTLS_HOME": str(tmp_path)}
    assert run_cli(["ca", "init", "--dir", str(tmp_path / "ca")], env=env).returncode == 0
    for name in ("a", "b"):
        issued = run_cli(["ca", "issue", "node", name, "--dir", str(tmp_path / "ca")], env=env)
        assert issued.returncode == 0, issued.stderr
    bad = run_cli(
        ["ca", "revoke", str(tmp_path / "ca" / "a.pem"), "--reason", "compromised", "--dir",
         str(tmp_path / "ca")],
        env=env,
    )  # fmt: skip
    line = one_error(bad)
    assert "--reason 'compromised' is not an RFC 5280 revocation reason" in line
    assert "keyCompromise" in line
    for name, reason in (("a", "keyCompromise"), ("b", "KEYCOMPROMISE")):
        revoked = run_cli(
            ["ca", "revoke", str(tmp_path / "ca" / f"{name}.pem"), "--reason", reason, "--dir",
             str(tmp_path / "ca")],
            env=env,
        )  # fmt: skip
        assert revoked.returncode == 0, revoked.stderr
        assert "(keyCompromise)" in revoked.stdout


def test_an_unknown_flag_is_one_line_naming_the_help(tmp_path: Path) -> None:
    line = one_error(run_cli(["ls", "--bogus"], env={"FLWRMTLS_HOME": str(tmp_path)}), code=2)
    assert line == "flwrmtls: error: No such option: --bogus (see flwrmtls ls --help)"
    missing = one_error(run_cli(["log"], env={"FLWRMTLS_HOME": str(tmp_path)}), code=2)
    assert "Missing argument 'RUN_ID'" in missing


# -- 4. Output scripts can trust -----------------------------------------------------------------


def test_json_output_is_json_all_the_way_down_and_fingerprints_match(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.federation({"node-1": "", "node-2": ""})
    app = write_probe_app(tmp_path / "app")
    started = deployment.cli("run", str(app), "--stream", "--format", "json")
    assert started.returncode == 0, started.stderr
    [run] = json.loads(deployment.cli("ls", "--format", "json").stdout)
    metrics = run["result"]["train_metrics"]
    assert all(isinstance(value, int | float) for m in metrics.values() for value in m.values())
    logged = deployment.cli("log", str(run["run_id"]), "--format", "json").stdout
    entries = [json.loads(line) for line in logged.splitlines()]
    final = entries[-1]
    assert final["run_status"] == "completed"
    assert final["timestamp"] > 0
    # One fingerprint format: ca show, supernode list and the link's log name node-1 alike.
    shown = json.loads(
        run_cli(
            ["ca", "show", str(deployment.pki.paths("node-1")[0]), "--format", "json"],
            env=deployment.env,
        ).stdout
    )["sha256_fingerprint"]
    listed = nodes(deployment)["CN=node-1,O=Hospital A"]["cert_fingerprint"]
    assert shown == listed
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", shown)


# -- 5. Help that reads well ---------------------------------------------------------------------


COMMANDS = [
    [], ["run"], ["ls"], ["log"], ["stop"], ["audit"], ["new"], ["supernode"],
    ["supernode", "list"], ["supernode", "revocation"], ["supernode", "register"],
    ["supernode", "unregister"], ["supernode", "readmit"], ["config"], ["config", "add"],
    ["config", "use"], ["config", "list"], ["ca"], ["ca", "init"], ["ca", "issue"],
    ["ca", "issue", "server"], ["ca", "issue", "node"], ["ca", "issue", "cli"], ["ca", "revoke"],
    ["ca", "cross-sign"], ["ca", "crl"], ["ca", "show"], ["enroll"], ["enroll", "token"],
    ["enroll", "token", "create"], ["enroll", "token", "ls"], ["enroll", "token", "revoke"],
    ["enroll", "ls"], ["enroll", "approve"], ["enroll", "deny"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "flwrmtls")
def test_help_reads_well(command: list[str], tmp_path: Path) -> None:
    result = run_cli([*command, "--help"], env={"FLWRMTLS_HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "<bool>" not in text  # flags show no type
    assert "[default: 0]" not in text
    lines = text.splitlines()
    usage = lines[0]
    assert usage.startswith("Usage: flwrmtls")
    assert not re.search(r"\[[a-z_]+\]|\{[a-z_]+\}", usage), usage  # metavars in upper case
    # The description's paragraphs are filled to the width: no line broken mid-sentence.
    end = next((i for i, line in enumerate(lines) if line.endswith(":")), len(lines))
    paragraph: list[str] = []
    for line in [*lines[1:end], ""]:
        if line.strip():
            paragraph.append(line.strip())
            continue
        for short in paragraph[:-1]:
            assert len(short) > 55, f"{short!r} in {paragraph}"
        paragraph = []
    # The command list shows whole first sentences, not cut ones.
    assert not [line for line in lines[end:] if line.rstrip().endswith("...")], text
    if command in (["supernode"],):
        assert "unregister and readmit any node" in text


def test_every_command_has_a_version() -> None:
    from flwrmtls import __version__

    for module, name in (
        ("flwrmtls.cli.main", "flwrmtls"),
        ("flwrmtls.link.main", "flwrmtls-superlink"),
        ("flwrmtls.node.main", "flwrmtls-supernode"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{name} {__version__}"


def test_superlink_help_shows_defaults_and_no_unusable_choice() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flwrmtls.link.main", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    text = " ".join(result.stdout.split())
    assert "(default: 0.0.0.0:9092)" in text
    assert "(default: 0.0.0.0:9093)" in text
    assert "(default: 127.0.0.1:9091)" in text
    assert "{subject,spiffe}" in text
    assert "spiffe,key" not in text


def test_ca_show_says_what_a_certificate_is_for(deployment: Deployment) -> None:
    def show(name: str) -> dict[str, object]:
        result = run_cli(
            ["ca", "show", str(deployment.pki.paths(name)[0]), "--format", "json"],
            env=deployment.env,
        )
        assert result.returncode == 0, result.stderr
        document: dict[str, object] = json.loads(result.stdout)
        return document

    server = show("server")
    assert (server["kind"], server["node_id"]) == ("server", None)
    assert "cannot be a node's or the CLI's" in str(server["use"])
    node = show("node-1")
    assert node["kind"] == "node"
    assert node["node_id"] is not None
    assert "cannot be the link's" in str(node["use"])


def test_a_link_given_a_node_certificate_as_its_own_warns(deployment: Deployment) -> None:
    chain, key = deployment.pki.paths("node-1")
    args = deployment.link_args()
    args[args.index("--ssl-certfile") + 1] = str(chain)
    args[args.index("--ssl-keyfile") + 1] = str(key)
    link = deployment.start_link(args)
    assert "is not a server certificate: its extended key usage lacks serverAuth" in link.log
    assert link.stop() == 0
    good = deployment.start_link(name="good")  # control: the server certificate, no warning
    assert "is not a server certificate" not in good.log
