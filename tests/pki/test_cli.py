"""``flwrmtls ca`` as a user runs it: a fresh interpreter, real files, exit codes and output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flwrmtls.pki import CertificateAuthority, describe_certificate

from .openssl_tools import openssl, openssl_verify, run_flwrmtls


def _ok(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The stdout lines of a successful command (and no colour codes or stderr)."""
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "\x1b[" not in result.stdout
    return result.stdout.splitlines()


def _written(lines: list[str], cwd: Path) -> list[Path]:
    paths = [cwd / line.split()[1] for line in lines if line.startswith("wrote ")]
    assert paths
    assert all(path.is_file() for path in paths)
    return paths


def _show(cwd: Path, *arguments: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        "\n".join(_ok(run_flwrmtls("ca", "show", *arguments, "--format", "json", cwd=cwd)))
    )
    return document


def test_init_issue_show_revoke(tmp_path: Path) -> None:
    init_lines = _ok(run_flwrmtls("ca", "init", "--name", "demo", cwd=tmp_path))
    assert _written(init_lines, tmp_path) == [
        tmp_path / "certs" / "ca.crt",
        tmp_path / "certs" / "ca" / "root.key",
        tmp_path / "certs" / "ca" / "issuing.crt",
        tmp_path / "certs" / "ca" / "issuing.key",
        tmp_path / "certs" / "ca" / "revoked.json",
        tmp_path / "certs" / "crl.pem",
    ]
    certs = tmp_path / "certs"
    server_lines = _ok(
        run_flwrmtls(
            "ca", "issue", "server", "link", "--dns", "link.test", "--ip", "10.0.0.5", cwd=tmp_path
        )
    )
    assert _written(server_lines, tmp_path) == [certs / "link.pem", certs / "link.key"]
    node_arguments = ["--org", "Hospital A", "--spiffe-id", "spiffe://demo.test/node-1"]
    _ok(run_flwrmtls("ca", "issue", "node", "node-1", *node_arguments, cwd=tmp_path))
    alice_lines = _ok(
        run_flwrmtls("ca", "issue", "cli", "alice", "--role", "operator", cwd=tmp_path)
    )
    alice_serial = alice_lines[0].split("serial ")[1].rstrip(")")

    issuing = certs / "ca" / "issuing.crt"
    for name, purpose in [("link", "sslserver"), ("node-1", "sslclient"), ("alice", "sslclient")]:
        verified = openssl_verify(certs / "ca.crt", issuing, certs / f"{name}.pem", purpose=purpose)
        assert verified.returncode == 0, verified.stderr

    server = _show(tmp_path, "certs/link.pem")
    assert server["subject"] == "CN=link"
    assert server["issuer"] == "CN=demo Issuing CA"
    assert server["extended_key_usages"] == ["serverAuth"]
    assert server["subject_alternative_names"] == ["DNS:link.test", "IP:10.0.0.5"]
    assert server["issued_by_ca"] is True

    node = _show(tmp_path, "certs/node-1.pem", "--spiffe")
    assert node["subject"] == "CN=node-1,O=Hospital A"
    assert node["identity"] == "spiffe://demo.test/node-1"
    assert node["kind"] == "node"
    assert isinstance(node["node_id"], int)

    alice_text = _ok(run_flwrmtls("ca", "show", "certs/alice.pem", cwd=tmp_path))
    rows = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in alice_text}
    assert rows["subject"] == "role=operator,CN=alice"
    assert rows["kind"] == "operator"
    assert rows["EKU"] == "clientAuth"
    assert rows["issued by CA in certs"] == "yes"
    assert "PRIVATE KEY" not in "\n".join(alice_text)

    revoke_lines = _ok(
        run_flwrmtls("ca", "revoke", "certs/node-1.pem", "--reason", "keyCompromise", cwd=tmp_path)
    )
    assert revoke_lines[0] == f"revoked serial {node['serial']} (keyCompromise)"
    assert _written(revoke_lines, tmp_path) == [certs / "ca" / "revoked.json", certs / "crl.pem"]
    assert rows["serial"] == alice_serial
    _ok(run_flwrmtls("ca", "revoke", "--serial", alice_serial, cwd=tmp_path))
    _ok(run_flwrmtls("ca", "crl", "--days", "30", cwd=tmp_path))

    crl_text = openssl("crl", "-in", certs / "crl.pem", "-noout", "-text").stdout
    assert "Key Compromise" in crl_text
    for serial in (node["serial"], alice_serial):
        digits = serial.removeprefix("0x").upper()
        assert digits.zfill(len(digits) + len(digits) % 2) in crl_text


def test_reissued_node_keeps_its_node_id(tmp_path: Path) -> None:
    authority = CertificateAuthority.create(tmp_path / "pki")
    authority.issue_node("node-1", organization="Hospital A")
    first = _show(tmp_path, "pki/node-1.pem", "--dir", "pki")
    first_key = (tmp_path / "pki" / "node-1.key").read_bytes()

    issue = ["ca", "issue", "node", "node-1", "--org", "Hospital A", "--dir", "pki"]
    refused = run_flwrmtls(*issue, cwd=tmp_path)
    assert refused.returncode == 1
    assert "pass --force" in refused.stderr
    rotated = run_flwrmtls(*issue, "--force", cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    # a rotation, so a warning (not a refusal) naming the certificate it takes over from
    (warning,) = rotated.stderr.splitlines()
    assert warning.startswith("flwrmtls: warning: Subject CN=node-1,O=Hospital A is also")
    assert f"--serial {int(first['serial'].replace(':', ''), 16):#x} --reason superseded" in (
        warning
    )

    second = _show(tmp_path, "pki/node-1.pem", "--dir", "pki")
    assert second["serial"] != first["serial"]
    assert second["sha256_fingerprint"] != first["sha256_fingerprint"]
    assert (tmp_path / "pki" / "node-1.key").read_bytes() != first_key
    assert second["node_id"] == first["node_id"]
    assert second["identity"] == first["identity"] == "CN=node-1,O=Hospital A"
    # negative control: the same CN in another organisation is another node
    other = authority.issue_node("node-1b", common_name="node-1", organization="Hospital B")
    assert describe_certificate(other.certificate).node_id != first["node_id"]


def test_show_without_a_ca_and_for_an_unmappable_certificate(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "pki").issue_server("server")
    shown = _show(tmp_path, "pki/server.pem", "--spiffe")  # default --dir certs: no CA there
    assert shown["issued_by_ca"] is None
    assert shown["identity"] is None
    assert shown["node_id"] is None
    assert "URI SAN" in shown["identity_error"]
    text = _ok(run_flwrmtls("ca", "show", "pki/server.pem", "--spiffe", cwd=tmp_path))
    assert any(line.startswith("identity (spiffe):") and "refused" in line for line in text)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["ca", "issue", "node", "node-1"], "holds no CA"),
        (["ca", "show", "garbage.pem"], "garbage.pem is not a PEM or DER certificate"),
        (["ca", "revoke", "--dir", "pki", "--serial", "xyz"], "--serial 'xyz' is not a serial"),
        (["ca", "issue", "cli", "bob", "--role", "admin", "--dir", "pki"], "--role 'admin'"),
    ],
)
def test_errors_are_one_line_and_exit_1(tmp_path: Path, arguments: list[str], message: str) -> None:
    CertificateAuthority.create(tmp_path / "pki")
    (tmp_path / "garbage.pem").write_text("this is not a certificate\n")
    result = run_flwrmtls(*arguments, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flwrmtls: error: ")
    assert message in lines[0]


def test_cross_sign_links_a_successor_root_to_the_old_one(tmp_path: Path) -> None:
    """A CA rollover: the old root signs the new root's key; openssl verifies the result with
    the old root alone. A successor that is no CA is refused with one line."""
    _ok(run_flwrmtls("ca", "init", "--dir", "old", cwd=tmp_path))
    _ok(run_flwrmtls("ca", "init", "--dir", "new", cwd=tmp_path))
    [cross] = _written(
        _ok(run_flwrmtls("ca", "cross-sign", "new/ca.crt", "--dir", "old", cwd=tmp_path)),
        tmp_path,
    )
    verified = openssl("verify", "-CAfile", tmp_path / "old" / "ca.crt", cross)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    new_key = openssl("x509", "-in", tmp_path / "new" / "ca.crt", "-noout", "-pubkey")
    assert openssl("x509", "-in", cross, "-noout", "-pubkey").stdout == new_key.stdout

    _ok(run_flwrmtls("ca", "issue", "node", "node-1", "--dir", "old", cwd=tmp_path))
    refused = run_flwrmtls("ca", "cross-sign", "old/node-1.pem", "--dir", "old", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "flwrmtls: error: the successor must be a self-signed CA certificate (the ca.crt of the "
        "new CA)"
    ]
