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
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from flwrmtls.enroll.client import spki_sha256
from flwrmtls.enroll.csrcheck import key_fingerprint
from flwrmtls.testing.processes import LinkProcess, NodeProcess

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


# --- a site enrolls: the real link, node and CLI ------------------------------------------------


def enrolling_link(
    deployment: Deployment, *extra: str, database: str = "", name: str = "link"
) -> tuple[LinkProcess, int]:
    """A link process in ``--enroll-mode sign`` (on ``database``, a PostgreSQL URL, if
    given, with an object directory every such link shares) and the CLI profile to it."""
    files = deployment.pki.ca.files
    args = deployment.link_args()
    if database:
        args[args.index("--database") + 1] = database
        args += ["--objects-dir", str(deployment.tmp / "shared-objects")]
    link = deployment.start_link(
        [
            *args, "--enroll-mode", "sign",
            "--enroll-ca-certfile", str(files.issuing_certificate),
            "--enroll-ca-keyfile", str(files.issuing_key),
            "--enrollment-api-address", "127.0.0.1:0", *extra,
        ],
        name=name,
    )  # fmt: skip
    port = int(link.wait_for(r"enrollment \(sign\) on port (\d+)").group(1))
    deployment.profile(link.control_port)
    return link, port


def new_token_file(deployment: Deployment, name: str, *flags: str) -> Path:
    path = deployment.tmp / f"{name}.token"
    created = deployment.cli("enroll", "token", "create", name, *flags, "--output", str(path))
    assert created.returncode == 0, created.stderr
    return path


def site(deployment: Deployment, name: str) -> tuple[Path, Path]:
    """Where a site's node keeps its certificate and key (neither exists yet)."""
    directory = deployment.tmp / "sites" / name
    directory.mkdir(parents=True)
    return directory / "node.pem", directory / "node.key"


def enrolling_node(
    deployment: Deployment, name: str, fleet_port: int, enroll_port: int, token: Path,
    *extra: str,
) -> tuple[NodeProcess, Path, Path]:  # fmt: skip
    chain, key = site(deployment, name)
    node = deployment.node(
        name, fleet_port, "--enroll-token-file", str(token),
        "--enrollment-address", f"127.0.0.1:{enroll_port}",
        "--ssl-client-certfile", str(chain), "--ssl-client-keyfile", str(key), *extra, cert="",
    )  # fmt: skip
    return node, chain, key


def test_a_site_enrolls_with_its_token_and_its_own_key_and_joins_as_any_node(
    deployment: Deployment,
) -> None:
    link, enroll_port = enrolling_link(deployment)
    token = new_token_file(deployment, "site-3", "--org", "Hospital C")
    node, chain, key = enrolling_node(deployment, "site-3", link.fleet_port, enroll_port, token)
    node.wait_active()
    # Its key: made on the site, 0600, never sent (the link has only its public half).
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key_pem = key.read_bytes()
    secret = token.read_text().strip().split(".")[1]
    kept = b"".join(p.read_bytes() for p in deployment.tmp.glob("link.db*") if p.is_file())
    for text in (key_pem.split(b"\n")[1], secret.encode()):
        assert text not in kept
        assert text.decode() not in link.log + node.log
    leaf = x509.load_pem_x509_certificate(chain.read_bytes())
    assert leaf.subject.rfc4514_string() == "CN=site-3,O=Hospital C"
    assert leaf.issuer == deployment.pki.ca.issuing_certificate.subject
    statuses = {n["identity"]: n["status"] for n in deployment.list_nodes()}
    assert statuses["CN=site-3,O=Hospital C"] == "online"
    states = {t["token_id"]: t["state"] for t in tokens(deployment, "--all")}
    assert set(states.values()) == {"used"}
    assert "enrolled CN=site-3,O=Hospital C with join token" in link.log
    # Restarted with the same flags: it is enrolled, and needs no second token.
    node.stop()
    again = deployment.node(
        "site-3-again", link.fleet_port, "--enroll-token-file", str(token),
        "--ssl-client-certfile", str(chain), "--ssl-client-keyfile", str(key), cert="",
    )  # fmt: skip
    again.wait_active()
    assert "this node enrolled before" in again.log
    # Another node with the used token: refused, one line, exit 1.
    thief, thief_chain, _ = enrolling_node(deployment, "thief", link.fleet_port, enroll_port, token)
    assert thief.wait_exit() == 1
    assert "refused enrollment: join token" in thief.log
    assert "used already" in thief.log
    assert not thief_chain.exists()
    audit = json.loads(deployment.cli("audit", "--format", "json").stdout)
    attempts = [
        (e["method"].rsplit("/", 1)[1], e["outcome"])
        for e in audit
        if e["method"].startswith("/flwrmtls.proto.Enrollment/")
    ]
    assert attempts == [("DescribeToken", "token-refused"), ("RequestCertificate", "ok")]


def test_a_site_enrolls_at_one_link_replica_and_its_token_is_spent_at_the_other(
    deployment: Deployment, postgres_url: str
) -> None:
    """Two real link processes on one PostgreSQL database: a token made through the CLI at
    one replica enrolls a site at the other, which then joins through the first; the same
    token sent by another node to the first replica is refused, "used already"."""
    first, first_port = enrolling_link(deployment, database=postgres_url, name="link-0")
    second, second_port = enrolling_link(deployment, database=postgres_url, name="link-1")
    deployment.profile(first.control_port)
    token = new_token_file(deployment, "site-3", "--org", "Hospital C")
    node, chain, _ = enrolling_node(deployment, "site-3", first.fleet_port, second_port, token)
    node.wait_active()
    assert "enrolled CN=site-3,O=Hospital C with join token" in second.log
    statuses = {n["identity"]: n["status"] for n in deployment.list_nodes()}
    assert statuses["CN=site-3,O=Hospital C"] == "online"
    thief, thief_chain, _ = enrolling_node(deployment, "thief", first.fleet_port, first_port, token)
    assert thief.wait_exit() == 1
    assert "used already" in thief.log
    assert not thief_chain.exists()
    assert chain.exists()
    deployment.profile(second.control_port)  # what one replica did, the other lists
    assert {t["state"] for t in tokens(deployment, "--all")} == {"used"}


def test_a_site_given_only_the_cas_hash_finds_it_and_a_wrong_hash_sends_nothing(
    deployment: Deployment,
) -> None:
    """kubeadm's --discovery-token-ca-cert-hash: the site pins the CA by its key's hash. A
    link (or anyone in the middle) offering no CA with that hash gets nothing: the token is
    not sent, and stays usable."""
    link, enroll_port = enrolling_link(deployment)
    ca_hash = next(
        line.split("--ca-cert-hash ")[1].split()[0]
        for line in deployment.cli(
            "enroll", "token", "create", "probe", "--output", str(deployment.tmp / "probe.token")
        ).stderr.splitlines()
        if "--ca-cert-hash" in line
    )
    assert ca_hash == spki_sha256(deployment.pki.ca.root_certificate)
    wrong = "sha256:" + "0" * 64
    token = new_token_file(deployment, "site-4")
    roots = deployment.tmp / "sites-ca" / "ca.pem"
    roots.parent.mkdir()
    fooled, _, _ = enrolling_node(
        deployment, "fooled", link.fleet_port, enroll_port, token,
        "--ca-cert-hash", wrong, "--root-certificates", str(roots),
    )  # fmt: skip
    assert fooled.wait_exit() == 1
    assert f"offers no CA with the public key hash {wrong}" in fooled.log
    assert "nothing was sent to it" in fooled.log
    assert not roots.exists()
    states = {t["subject"]: t["state"] for t in tokens(deployment)}
    assert states["CN=site-4"] == "active"  # the token never left the site
    node, _, _ = enrolling_node(
        deployment, "site-4", link.fleet_port, enroll_port, token,
        "--ca-cert-hash", ca_hash, "--root-certificates", str(roots),
    )  # fmt: skip
    node.wait_active()
    assert roots.read_bytes() == deployment.pki.ca.root_certificate.public_bytes(
        serialization.Encoding.PEM
    )


# --- the operator approves or denies --------------------------------------------------------------


def approving_link(deployment: Deployment) -> tuple[LinkProcess, int]:
    files = deployment.pki.ca.files
    link = deployment.start_link(
        [
            *deployment.link_args(), "--enroll-mode", "approve",
            "--enroll-ca-certfile", str(files.issuing_certificate),
            "--enroll-ca-keyfile", str(files.issuing_key),
            "--enrollment-api-address", "127.0.0.1:0",
        ]
    )  # fmt: skip
    port = int(link.wait_for(r"enrollment \(approve\) on port (\d+)").group(1))
    deployment.profile(link.control_port)
    return link, port


def requests(deployment: Deployment, *extra: str) -> list[dict[str, object]]:
    listing = deployment.cli("enroll", "ls", "--format", "json", *extra)
    assert listing.returncode == 0, listing.stderr
    result: list[dict[str, object]] = json.loads(listing.stdout)
    return result


def test_a_request_waits_for_the_operator_who_sees_its_key_and_approves_or_denies_it(
    deployment: Deployment,
) -> None:
    """--enroll-mode approve: the site's node says which request and key wait; the operator
    compares the key's hash with it and approves (the node joins), or denies (the node stops
    with the reason). A request is decided once; a user's certificate cannot decide."""
    deployment.pki.ca.issue_cli("cli-user", role="user")
    link, enroll_port = approving_link(deployment)
    deployment.profile(link.control_port, cert="cli-user", name="user")
    deployment.profile(link.control_port)  # the operator's again the default
    token = new_token_file(deployment, "site-5", "--org", "Hospital E")
    node, chain, key = enrolling_node(deployment, "site-5", link.fleet_port, enroll_port, token)
    waiting = node.wait_for(
        r"waiting for an operator to approve certificate request (\d+) for (.*), key "
        r"(sha256:[0-9a-f]{64})"
    )
    request_id, identity, fingerprint = waiting.groups()
    assert identity == "CN=site-5,O=Hospital E"
    assert not chain.exists()
    own = load_pem_private_key(key.read_bytes(), None)
    assert isinstance(own, ec.EllipticCurvePrivateKey)
    assert fingerprint == key_fingerprint(own.public_key())  # what the site reads off its own key
    (pending,) = requests(deployment)
    assert pending["request_id"] == int(request_id)
    assert pending["subject"] == "CN=site-5,O=Hospital E"
    assert pending["key_fingerprint"] == fingerprint
    assert pending["state"] == "pending"
    table = deployment.cli("enroll", "ls")
    assert fingerprint in table.stdout
    # A user's certificate cannot decide; the operator's can, once.
    one_line_error(deployment.cli("enroll", "approve", request_id, "user"), "operator")
    approved = deployment.cli("enroll", "approve", request_id)
    assert approved.returncode == 0, approved.stderr
    assert f"certificate request {request_id} approved: CN=site-5,O=Hospital E" in approved.stdout
    node.wait_active(timeout=60)
    assert chain.exists()
    one_line_error(deployment.cli("enroll", "deny", request_id), "issued already")
    assert requests(deployment) == []
    (issued,) = requests(deployment, "--all")
    assert issued["state"] == "issued"
    assert issued["decided_by"] == "role=operator,CN=cli-operator"
    # Denied: the node stops with the operator's reason, one line.
    token = new_token_file(deployment, "site-6")
    denied_node, denied_chain, _ = enrolling_node(
        deployment, "site-6", link.fleet_port, enroll_port, token
    )
    request_id = denied_node.wait_for(r"certificate request (\d+) for").group(1)
    denied = deployment.cli("enroll", "deny", request_id, "--reason", "not a site we know")
    assert denied.returncode == 0, denied.stderr
    assert denied_node.wait_exit(timeout=60) == 1
    assert (
        f"certificate request {request_id} was denied by role=operator,CN=cli-operator: "
        "not a site we know" in denied_node.log
    )
    assert not denied_chain.exists()
    one_line_error(deployment.cli("enroll", "approve", request_id), "denied already")
    one_line_error(deployment.cli("enroll", "approve", "99"), "no certificate request 99")
    audit = json.loads(deployment.cli("audit", "--format", "json").stdout)
    decided = [e["outcome"] for e in audit if e["method"].endswith("/DecideEnrollRequest")]
    assert decided.count("ok") == 2


def test_a_node_stopped_while_it_waits_asks_about_the_same_request_when_started_again(
    deployment: Deployment,
) -> None:
    """A site's node stopped (SIGTERM: a reboot, its supervisor) while its request waits for
    an operator stops cleanly, and started again with the same flags asks about the same
    request with the same key: the operator's approval reaches it. Beside it, another node
    with the same token but its own key is refused, "used already", and the request stays
    the site's."""
    link, enroll_port = approving_link(deployment)
    token = new_token_file(deployment, "site-7")
    node, chain, key = enrolling_node(deployment, "site-7", link.fleet_port, enroll_port, token)
    request_id = node.wait_for(r"approve certificate request (\d+) for").group(1)
    key_pem = key.read_bytes()
    assert node.stop() == 0
    assert "Traceback" not in node.log
    assert "error" not in node.log.lower()
    assert not chain.exists()
    kept = key.with_name(key.name + ".request")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    thief, thief_chain, _ = enrolling_node(deployment, "thief", link.fleet_port, enroll_port, token)
    assert thief.wait_exit() == 1
    assert "used already" in thief.log
    again = deployment.node(
        "site-7-again", link.fleet_port, "--enroll-token-file", str(token),
        "--enrollment-address", f"127.0.0.1:{enroll_port}",
        "--ssl-client-certfile", str(chain), "--ssl-client-keyfile", str(key), cert="",
    )  # fmt: skip
    again.wait_for(f"asking 127.0.0.1:{enroll_port} again about certificate request {request_id}")
    (pending,) = requests(deployment)
    assert pending["request_id"] == int(request_id)
    approved = deployment.cli("enroll", "approve", request_id)
    assert approved.returncode == 0, approved.stderr
    again.wait_active(timeout=60)
    assert key.read_bytes() == key_pem  # the same key, made once
    leaf = x509.load_pem_x509_certificate(chain.read_bytes())
    assert leaf.subject.rfc4514_string() == "CN=site-7"
    assert not kept.exists()
    assert not thief_chain.exists()


# --- renewal ------------------------------------------------------------------------------------


def test_an_enrolled_node_renews_its_certificate_itself_and_keeps_serving(
    deployment: Deployment,
) -> None:
    """The node renews over its own mTLS connection, with a new key, and goes on with the new
    certificate (rotated in as any reissue); renewing again at once is refused by the link,
    and the node keeps serving with the certificate it has."""
    link, enroll_port = enrolling_link(deployment, "--enroll-certificate-days", "1")
    token = new_token_file(deployment, "site-7", "--org", "Hospital G")
    node, chain, key = enrolling_node(
        deployment, "site-7", link.fleet_port, enroll_port, token, "--renew-before", "2d"
    )  # a day's certificate, renewed two days ahead: at once
    node.wait_active()
    first = node.wait_for(r"enrolled as .*: certificate serial ([0-9a-f]+)").group(1)
    renewed = node.wait_for(r"renewed this node's certificate: serial ([0-9a-f]+), .*was serial "
                            r"([0-9a-f]+)", timeout=60)  # fmt: skip
    assert renewed.group(2) == first
    wait_until(lambda: x509.load_pem_x509_certificate(chain.read_bytes()).serial_number
               == int(renewed.group(1), 16))  # fmt: skip
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    node.wait_for(r"node active: .*[\s\S]*node active:", timeout=60)  # rotated, active again
    refused_again = node.wait_for(r"renewing this node's certificate failed .*", timeout=60)
    assert "once per 10 minutes" in refused_again.group(0)
    assert node.process is not None
    assert node.process.poll() is None
    statuses = {n["identity"]: n["status"] for n in deployment.list_nodes()}
    assert statuses["CN=site-7,O=Hospital G"] == "online"
    audit = json.loads(deployment.cli("audit", "--format", "json").stdout)
    renewals = [e["outcome"] for e in audit if e["method"].endswith("/RenewCertificate")]
    assert "ok" in renewals


def wait_until(condition: Callable[[], bool], bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.2)
