"""Enrollment through the real CLI and a real link process: join tokens (docs/enrollment.md).

Each attack beside its control, through the same link: a user's CLI certificate asking for a
token beside an operator's; a token revoked, then revoked again; identities and lifetimes the
CA would not issue beside one it would. The secret is printed once and never kept.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import time

from .deployment import Deployment

TOKEN = re.compile(r"([0-9a-f]{8})\.([A-Za-z0-9_-]{43})")


def one_line_error(result: object, *words: str) -> str:
    """A refusal as the CLI prints it: exit 1, one line on stderr, no traceback."""
    returncode, stderr = result.returncode, result.stderr  # type: ignore[attr-defined]
    assert returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1, stderr
    for word in words:
        assert word in stderr, stderr
    return str(stderr)


def tokens(deployment: Deployment, *extra: str) -> list[dict[str, object]]:
    listing = deployment.cli("enroll", "token", "ls", "--format", "json", *extra)
    assert listing.returncode == 0, listing.stderr
    result: list[dict[str, object]] = json.loads(listing.stdout)
    return result


def test_an_operator_makes_lists_and_revokes_join_tokens_and_the_link_keeps_no_secret(
    deployment: Deployment,
) -> None:
    link = deployment.start_link()
    deployment.profile(link.control_port)
    created = deployment.cli("enroll", "token", "create", "site-1", "--org", "Hospital C")
    assert created.returncode == 0, created.stderr
    match = TOKEN.fullmatch(created.stdout.strip())
    assert match is not None, created.stdout  # the token, alone on standard output
    token_id, secret = match.groups()
    assert f"join token {token_id} for CN=site-1,O=Hospital C, single use" in created.stderr
    assert secret not in created.stderr
    # Listed by id and identity, never with its secret.
    listing = deployment.cli("enroll", "token", "ls")
    assert token_id in listing.stdout
    assert secret not in listing.stdout
    (listed,) = tokens(deployment)
    assert listed["token_id"] == token_id
    assert listed["subject"] == "CN=site-1,O=Hospital C"
    assert listed["state"] == "active"
    assert listed["created_by"] == "role=operator,CN=cli-operator"
    # The link keeps the secret's SHA-256, never the secret.
    kept = b"".join(p.read_bytes() for p in deployment.tmp.glob("link.db*") if p.is_file())
    assert hashlib.sha256(secret.encode()).digest() in kept
    assert secret.encode() not in kept
    # Into a file instead: 0600, and not on standard output either.
    path = deployment.tmp / "site-2.token"
    to_file = deployment.cli("enroll", "token", "create", "site-2", "--output", str(path))
    assert to_file.returncode == 0, to_file.stderr
    written = TOKEN.fullmatch(path.read_text().strip())
    assert written is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert written.group(2) not in to_file.stdout + to_file.stderr
    assert f"wrote {path}" in to_file.stdout
    again = deployment.cli("enroll", "token", "create", "site-2", "--output", str(path))
    one_line_error(again, "exists")  # never overwritten
    # Revoked: no longer listed as usable; a second revoke says what it is.
    revoked = deployment.cli("enroll", "token", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    assert f"join token {token_id} (CN=site-1,O=Hospital C) revoked" in revoked.stdout
    assert [t["token_id"] for t in tokens(deployment)] == [written.group(1)]
    states = {t["token_id"]: t["state"] for t in tokens(deployment, "--all")}
    assert states[token_id] == "revoked"
    one_line_error(deployment.cli("enroll", "token", "revoke", token_id), "revoked already")
    one_line_error(deployment.cli("enroll", "token", "revoke", "0badc0de"), "no join token")
    # Control calls in the audit trail, by the operator.
    audit = deployment.cli("audit", "--format", "json")
    methods = [entry["method"] for entry in json.loads(audit.stdout)]
    assert "/flwrmtls.proto.Control/CreateEnrollToken" in methods
    assert "/flwrmtls.proto.Control/RevokeEnrollToken" in methods


def test_a_token_expires_by_itself(deployment: Deployment) -> None:
    link = deployment.start_link()
    deployment.profile(link.control_port)
    created = deployment.cli("enroll", "token", "create", "site-1", "--ttl", "1s")
    assert created.returncode == 0, created.stderr
    token_id = created.stdout.strip().split(".")[0]
    deadline = time.monotonic() + 30
    while {t["token_id"]: t["state"] for t in tokens(deployment, "--all")}[token_id] != "expired":
        assert time.monotonic() < deadline, "the token did not expire"
        time.sleep(0.2)
    assert tokens(deployment) == []
    one_line_error(deployment.cli("enroll", "token", "revoke", token_id), "expired already")


def test_only_operators_make_tokens(deployment: Deployment) -> None:
    """As a CLI user (role user): refused, one line; the operator beside it is served."""
    deployment.pki.ca.issue_cli("cli-user", role="user")
    link = deployment.start_link()
    deployment.profile(link.control_port, cert="cli-user", name="user")
    deployment.profile(link.control_port)  # the operator's, the default
    refused = deployment.cli("enroll", "token", "create", "site-1", "user")
    one_line_error(refused, "refused this client", "operator")
    assert TOKEN.search(refused.stdout + refused.stderr) is None
    one_line_error(deployment.cli("enroll", "token", "ls", "user"), "operator")
    assert deployment.cli("enroll", "token", "create", "site-1").returncode == 0
    assert len(tokens(deployment)) == 1


def test_a_token_for_an_identity_the_ca_would_not_issue_is_refused(
    deployment: Deployment,
) -> None:
    """Each refused with one line before anything is stored; the good one beside them passes."""
    link = deployment.start_link()
    deployment.profile(link.control_port)
    create = ("enroll", "token", "create")
    one_line_error(deployment.cli(*create, "site-1", "--ou", "operator"), "CLI role")
    one_line_error(deployment.cli(*create, "x" * 65), "invalid certificate Subject")
    one_line_error(deployment.cli(*create, " "), "common name")
    one_line_error(deployment.cli(*create, "site-1", "--spiffe-id", "spiffe://td/a/"), "SPIFFE")
    one_line_error(deployment.cli(*create, "site-1", "--ttl", "8d"), "at most 7d")
    one_line_error(deployment.cli(*create, "site-1", "--ttl", "soon"), "not a duration")
    assert tokens(deployment, "--all") == []
    good = deployment.cli(*create, "site-1", "--ou", "radiology", "--spiffe-id", "spiffe://td/a")
    assert good.returncode == 0, good.stderr
    (token,) = tokens(deployment)
    assert token["subject"] == "CN=site-1,OU=radiology"
    assert token["spiffe_id"] == "spiffe://td/a"
