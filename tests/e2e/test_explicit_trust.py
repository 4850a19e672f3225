"""Nodes and the CLI trust only a CA bundle they were given; key files; profile types.

As a link that a node or CLI trusts by mistake: without ``--root-certificates`` grpc verifies
the link against the public CAs it bundles (any of which can certify a link's name) or,
when ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` is set, that file. The tests below stand that
implicit store in with the environment variable pointing at the link's CA: before the fix a
node or CLI given no bundle trusted the link through it; now they refuse to start. Each
refusal sits beside its control (the same process with the bundle given, admitted).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from flwrmtls.testing.processes import NodeProcess, run_cli

from .deployment import Deployment


def one_error_line(text: str) -> str:
    assert "Traceback" not in text
    lines = [line for line in text.strip().splitlines() if "error:" in line]
    assert len(lines) == 1, text
    return lines[0]


def implicit_store(deployment: Deployment) -> dict[str, str]:
    """An environment in which grpc's default roots verify the link (stands in for a public
    CA that certified an impostor's name)."""
    roots = str(deployment.pki.trust_bundle_path)
    return {**deployment.env, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": roots}


@pytest.mark.parametrize("credential", ["certificate", "ec-key", "none"])
def test_node_without_root_certificates_refuses_to_start(
    deployment: Deployment, tmp_path: Path, credential: str
) -> None:
    link = deployment.start_link()
    args = ["--superlink", f"127.0.0.1:{link.fleet_port}", "--clientappio-api-address",
            "127.0.0.1:0", "--max-retries", "0"]  # fmt: skip
    if credential == "certificate":
        chain, key = deployment.pki.paths("node-1")
        args += ["--ssl-client-certfile", str(chain), "--ssl-client-keyfile", str(key)]
    elif credential == "ec-key":
        ec_key = tmp_path / "node_ec"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "256", "-N", "", "-f", str(ec_key)],
            check=True,
        )
        args += ["--auth-supernode-private-key", str(ec_key)]
    node = NodeProcess(args, tmp_path / f"{credential}.log", implicit_store(deployment))
    deployment.processes.append(node)
    node.start()
    assert node.wait_exit() == 1
    line = one_error_line(node.log)
    assert "no --root-certificates: give --root-certificates FILE" in line
    assert "grpc would trust its own bundled public CAs" in line
    assert "node active" not in node.log
    # control: the same node with the CA bundle given is admitted (certificate nodes; the
    # link admits certificates only)
    admitted = deployment.node("node-1", link.fleet_port)
    admitted.wait_active()


def test_cli_profile_without_root_certificates_is_refused(deployment: Deployment) -> None:
    link = deployment.start_link()
    chain, key = deployment.pki.paths("cli-operator")
    env = implicit_store(deployment)
    # config add refuses to write a TLS profile without a CA bundle ...
    added = deployment.cli(
        "config", "add", "nobundle", "--address", f"127.0.0.1:{link.control_port}",
        "--client-certificate", str(chain), "--client-private-key", str(key),
    )  # fmt: skip
    assert added.returncode == 1
    assert "no --root-certificates: give --root-certificates FILE" in one_error_line(added.stderr)
    # ... and a profile written before that rule (by hand, or an older version) is refused
    # when used, with the command that fixes it
    home = Path(deployment.env["FLWRMTLS_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "stale"\n[superlink.stale]\n'
        f'address = "127.0.0.1:{link.control_port}"\n'
        f'client-certificate = "{chain}"\nclient-private-key = "{key}"\n'
    )
    used = run_cli(["supernode", "list", "stale"], env=env)
    assert used.returncode == 1, used.stdout
    line = one_error_line(used.stderr)
    assert "profile 'stale'" in line
    assert "has no root-certificates" in line
    assert "flwrmtls config add stale --address" in line
    listed = run_cli(["config", "list"], env=env)
    assert "unusable: no root-certificates" in listed.stdout
    # control: the same certificate with the bundle given works
    deployment.profile(link.control_port)
    assert deployment.list_nodes() == []


def test_a_quoted_false_is_not_insecure(deployment: Deployment) -> None:
    """``insecure = "false"`` used to count as true: the CLI talked plaintext to whatever
    listened (here a plaintext link) although the file said false."""
    plain = deployment.start_link(
        ["--insecure", "--fleet-api-address", "127.0.0.1:0", "--control-api-address",
         "127.0.0.1:0", "--serverappio-api-address", "127.0.0.1:0",
         "--database", str(deployment.tmp / "plain.db")],
        name="plain-link",
    )  # fmt: skip
    home = Path(deployment.env["FLWRMTLS_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.toml"
    profile = f'[superlink.lab]\naddress = "127.0.0.1:{plain.control_port}"\n'
    config.write_text(profile + 'insecure = "false"\n')
    quoted = deployment.cli("supernode", "list", "lab")
    assert quoted.returncode == 1, quoted.stdout
    assert (
        "profile 'lab': insecure = 'false' is a string; expected true or false (a TOML "
        "boolean, without quotes)"
    ) in one_error_line(quoted.stderr)
    # control: the boolean means what it says
    config.write_text(profile + "insecure = true\n")
    assert deployment.cli("supernode", "list", "lab").returncode == 0


def test_key_files_others_may_read_are_named_once(deployment: Deployment) -> None:
    """As anyone on the link's or node's host: a key file mode 0644 is readable by every user.
    The node and the CLI use it (refusing would break running deployments) but say so, once,
    with the fix; a 0600 key (control) and a Kubernetes-style ``root:<fsGroup> 0440`` key
    owned by another user are used silently."""
    pki = deployment.pki
    pki.ca.issue_node("node-3")
    pki.ca.issue_node("node-4")
    pki.ca.issue_cli("operator-2", role="operator")
    os.chmod(pki.paths("node-3")[1], 0o644)
    os.chown(pki.paths("node-4")[1], 65534, 65534)  # owned by another user, group-readable
    os.chmod(pki.paths("node-4")[1], 0o440)
    os.chmod(pki.paths("operator-2")[1], 0o644)
    link = deployment.start_link()
    exposed = deployment.node("node-3", link.fleet_port)
    handed_over = deployment.node("node-4", link.fleet_port)
    private = deployment.node("node-1", link.fleet_port)
    for node in (exposed, handed_over, private):
        node.wait_active()
    key_3 = pki.paths("node-3")[1]
    warnings = [line for line in exposed.log.splitlines() if "chmod 600" in line]
    assert len(warnings) == 1, exposed.log
    assert (
        f"--ssl-client-keyfile: private key file {key_3} is open to other users (mode 0644): "
        f"chmod 600 {key_3}"
    ) in warnings[0]
    assert "chmod 600" not in handed_over.log
    assert "chmod 600" not in private.log
    deployment.profile(link.control_port, cert="operator-2", name="loose")
    listed = deployment.cli("supernode", "list", "loose")
    assert listed.returncode == 0, listed.stderr
    operator_key = pki.paths("operator-2")[1]
    assert listed.stderr.strip() == (
        f"flwrmtls: warning: client-private-key (profile 'loose' of "
        f"{Path(deployment.env['FLWRMTLS_HOME']) / 'config.toml'}): private key file "
        f"{operator_key} is open to other users (mode 0644): chmod 600 {operator_key} (in "
        "Kubernetes, mount the secret with defaultMode: 0400, or 0440 with an fsGroup)"
    )
    deployment.profile(link.control_port)  # control: the 0600 key, no warning
    quiet = deployment.cli("supernode", "list")
    assert quiet.returncode == 0
    assert quiet.stderr == ""
