"""Bad flags and files: one line naming the flag or file, exit 1, no traceback.

The controls (the same programs with good flags starting and serving) are in
tests/e2e/test_processes.py and, for the link, the last test here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flwrmtls.pki import LeafOptions
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import LinkProcess


def run(
    module: str, args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={"FLWRMTLS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", **(env or {})},
    )  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]


def link_tls(pki: TestPki, tmp_path: Path) -> list[str]:
    chain, key = pki.paths("server")
    return [
        "--ssl-ca-certfile", str(pki.trust_bundle_path), "--ssl-certfile", str(chain),
        "--ssl-keyfile", str(key), "--database", str(tmp_path / "link.db"),
        "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("no-tls", "TLS needs --ssl-certfile and --ssl-keyfile"),
        ("insecure-and-tls", "--insecure cannot be combined with --ssl-* flags"),
        ("missing-key", "--ssl-keyfile: private key file"),
        ("key-mismatch", "does not match the certificate"),
        ("client-auth-without-ca", "needs a CA to verify clients"),
        ("crl-without-client-auth", "add --ssl-require-client-auth"),
        ("crl-not-a-crl", "is not a CRL"),
        ("bad-database", "cannot open database"),
        ("anonymous-control-off-loopback", "give --ssl-cli-ca-certfile"),
        ("insecure-control-off-loopback", "give --ssl-cli-ca-certfile"),
        ("contradicting-opt-out", "--unsafe-anonymous-control-api contradicts"),
        ("serverappio-on-all-ipv4", "--serverappio-api-address 0.0.0.0:0 is not a loopback"),
        ("serverappio-on-all-ipv6", "--serverappio-api-address [::]:0 is not a loopback"),
        ("serverappio-on-a-lan-address", "--serverappio-api-address 192.0.2.2:0 is not a"),
        ("run-storage-not-a-size", "--max-run-storage '12X' is not a size"),
        ("pending-storage-zero", "--max-node-pending-storage '0' is not a size"),
        ("heartbeat-below-a-second", "--heartbeat-interval must be a number of seconds from 1"),
        ("insecure-heartbeat-nan", "--heartbeat-interval must be a number of seconds from 1"),
        ("insecure-max-connections-zero", "--max-connections and --max-calls-per-address must"),
        ("ocsp-file-url", "--ocsp 'file:///etc/passwd': the scheme 'file' is not used"),
        ("ocsp-ldap-url", "--ocsp 'ldap://ca.example/': the scheme 'ldap' is not used"),
        ("ocsp-not-a-mode", "--ocsp 'on': the scheme '(none)' is not used"),
        ("ocsp-without-client-auth", "--ocsp applies to client certificates: add --ssl-require"),
        ("ocsp-timeout-zero", "--ocsp-timeout must be above 0 and at most 60 seconds"),
        ("ocsp-refresh-too-often", "--ocsp-refresh-interval must be 1 to 86400 seconds"),
        ("enroll-with-a-root", "is a self-signed root CA: the link never holds a root's key"),
        ("enroll-with-a-leaf", "is not a CA certificate"),
        ("enroll-key-of-another", "is not the key of the certificate in --enroll-ca-certfile"),
        ("enroll-key-open", "chmod 600"),
        ("enroll-ca-not-trusted", "does not chain to a CA of the link's client CA bundle"),
        ("enroll-without-ca", "signs with a sub-CA: give --enroll-ca-certfile"),
        ("enroll-without-client-auth", "the link must require them"),
        ("enroll-ca-without-mode", "need --enroll-mode"),
        ("enroll-days", "--enroll-certificate-days must be 1 to 825"),
    ],
)
def test_link_refuses_bad_startup_input(
    pki: TestPki, tmp_path: Path, change: str, expected: str
) -> None:
    args = link_tls(pki, tmp_path)
    node_chain, node_key = pki.paths("node-1")
    if change == "no-tls":
        args = ["--database", str(tmp_path / "link.db")]
    elif change == "insecure-and-tls":
        args += ["--insecure"]
    elif change == "missing-key":
        args[args.index("--ssl-keyfile") + 1] = str(tmp_path / "absent.key")
    elif change == "key-mismatch":
        args[args.index("--ssl-keyfile") + 1] = str(node_key)
    elif change == "client-auth-without-ca":
        args = [a for a in args if a != "--ssl-ca-certfile" and a != str(pki.trust_bundle_path)]
        args += ["--ssl-require-client-auth"]
    elif change == "crl-without-client-auth":
        args += ["--ssl-crl-file", str(pki.crl_path)]
    elif change == "crl-not-a-crl":
        args += ["--ssl-require-client-auth", "--ssl-crl-file", str(node_chain)]
    elif change == "bad-database":
        bad = tmp_path / "junk.db"
        bad.write_bytes(b"not sqlite" * 200)
        args[args.index("--database") + 1] = str(bad)
    elif change == "anonymous-control-off-loopback":  # EC-key nodes, so no client certificates
        args[args.index("--control-api-address") + 1] = "0.0.0.0:0"
    elif change == "insecure-control-off-loopback":  # the default address: every interface
        args = ["--insecure", "--database", str(tmp_path / "link.db")]
    elif change == "contradicting-opt-out":
        args += ["--ssl-require-client-auth", "--unsafe-anonymous-control-api"]
    elif change.startswith("serverappio-"):
        args += ["--serverappio-api-address", expected.split()[1]]

    elif change == "run-storage-not-a-size":
        args += ["--max-run-storage", "12X"]
    elif change == "pending-storage-zero":
        args += ["--max-node-pending-storage", "0"]
    elif change == "heartbeat-below-a-second":  # nodes would refuse it (wire/bounds.py)
        args += ["--heartbeat-interval", "0.5"]
    elif change.startswith("insecure-"):  # checked without TLS as with it
        args = ["--insecure", "--database", str(tmp_path / "link.db"),
                "--control-api-address", "127.0.0.1:0"]  # fmt: skip
        if change == "insecure-heartbeat-nan":
            args += ["--heartbeat-interval", "nan"]
        else:
            args += ["--max-connections", "0"]
    elif change.startswith("ocsp-"):
        ocsp = {
            "ocsp-file-url": ["--ocsp", "file:///etc/passwd"],
            "ocsp-ldap-url": ["--ocsp", "ldap://ca.example/"],
            "ocsp-not-a-mode": ["--ocsp", "on"],
            "ocsp-without-client-auth": ["--ocsp", "aia"],
            "ocsp-timeout-zero": ["--ocsp", "aia", "--ocsp-timeout", "0"],
            "ocsp-refresh-too-often": ["--ocsp", "aia", "--ocsp-refresh-interval", "0.5"],
        }[change]
        client_auth = [] if change == "ocsp-without-client-auth" else ["--ssl-require-client-auth"]
        args += [*client_auth, *ocsp]
    elif change.startswith("enroll-"):
        args += _enroll_flags(pki, tmp_path, change)
    assert_one_line(run("flwrmtls.link.main", args, tmp_path), expected)
    if change.startswith("serverappio-"):
        assert not (tmp_path / "link.db").exists()  # refused before anything was created


def _enroll_flags(pki: TestPki, tmp_path: Path, change: str) -> list[str]:
    """``--enroll-*`` flags for one refusal; the control (the issuing CA, which starts) is
    ``tests/e2e/test_enrollment.py``."""
    files = pki.ca.files
    ca, key = files.issuing_certificate, files.issuing_key
    if change == "enroll-with-a-root":
        ca = files.trust_bundle
        key = files.root_key
    elif change == "enroll-with-a-leaf":
        ca, key = pki.paths("node-1")
    elif change == "enroll-key-of-another":
        key = pki.paths("node-1")[1]
    elif change == "enroll-key-open":
        key = tmp_path / "open.key"
        key.write_bytes(files.issuing_key.read_bytes())
        key.chmod(0o644)
    elif change == "enroll-ca-not-trusted":
        from flwrmtls.testing.pki import make_test_pki

        other = make_test_pki(tmp_path / "other").ca.files
        ca, key = other.issuing_certificate, other.issuing_key
    mode = [] if change == "enroll-ca-without-mode" else ["--enroll-mode", "sign"]
    client_auth = [] if change == "enroll-without-client-auth" else ["--ssl-require-client-auth"]
    files_flags = [] if change == "enroll-without-ca" else [
        "--enroll-ca-certfile", str(ca), "--enroll-ca-keyfile", str(key),
    ]  # fmt: skip
    days = ["--enroll-certificate-days", "0"] if change == "enroll-days" else []
    return [*client_auth, *mode, *files_flags, *days]


@pytest.mark.parametrize("host", ["localhost", "[::1]", "127.0.0.2"])
def test_link_serves_serverappio_on_any_loopback_address(
    pki: TestPki, tmp_path: Path, host: str
) -> None:
    """The control for the refusals above: loopback addresses of every form start."""
    args = [*link_tls(pki, tmp_path), "--serverappio-api-address", f"{host}:0"]
    link = LinkProcess(args, tmp_path / "link.log")
    link.start_and_wait()
    assert link.stop() == 0


def test_link_refuses_a_port_in_use_and_starts_with_a_free_one(
    pki: TestPki, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = link_tls(pki, tmp_path)
        args[args.index("--fleet-api-address") + 1] = f"127.0.0.1:{port}"
        assert_one_line(run("flwrmtls.link.main", args, tmp_path), "cannot listen on")
    control = LinkProcess(link_tls(pki, tmp_path), tmp_path / "link.log")
    control.start_and_wait()
    assert control.stop() == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("non-pem", "--ssl-client-certfile: "),
        ("key-mismatch", "does not match the certificate"),
        ("only-cert", "give both --ssl-client-certfile and --ssl-client-keyfile"),
        ("expired", "certificate expired on"),
        ("bad-node-config", "--node-config: 'oops' is not key=value"),
        ("insecure-and-tls", "--insecure cannot be combined"),
        ("clientappio-on-all-ipv4", "--clientappio-api-address 0.0.0.0:0 is not a loopback"),
        ("clientappio-on-all-ipv6", "--clientappio-api-address [::]:0 is not a loopback"),
        ("object-storage-not-a-size", "--max-object-storage '8X' is not a size"),
        ("state-dir-a-file", "is not a directory"),
        ("enroll-token-missing", "--enroll-token-file"),
        ("enroll-token-garbage", "holds no join token"),
        ("enroll-token-twice", "give the join token once"),
        ("enroll-token-without-files", "needs --ssl-client-certfile and --ssl-client-keyfile"),
        ("enroll-token-insecure", "enrollment needs TLS"),
        ("ca-hash-malformed", "as `flwrmtls enroll token create` prints it (or `flwrmtls ca show`"),
        ("ca-hash-without-roots", "--ca-cert-hash needs --root-certificates FILE"),
        ("ca-hash-other-ca", "holds no CA with the public key hash"),
    ],
)
def test_node_refuses_bad_startup_input(
    fresh_pki: TestPki, tmp_path: Path, change: str, expected: str
) -> None:
    chain, key = fresh_pki.paths("node-1")
    args = [
        "--superlink", "127.0.0.1:1", "--root-certificates", str(fresh_pki.trust_bundle_path),
        "--ssl-client-certfile", str(chain), "--ssl-client-keyfile", str(key),
        "--max-retries", "0",
    ]  # fmt: skip
    if change == "non-pem":
        junk = tmp_path / "junk.pem"
        junk.write_bytes(b"\x30\x82\x01\x00binary")
        args[args.index("--ssl-client-certfile") + 1] = str(junk)
    elif change == "key-mismatch":
        args[args.index("--ssl-client-keyfile") + 1] = str(fresh_pki.paths("node-2")[1])
    elif change == "only-cert":
        args = [*args[: args.index("--ssl-client-keyfile")], "--max-retries", "0"]
    elif change == "expired":
        now = datetime.now(UTC)
        old = fresh_pki.ca.issue_node(
            "old",
            options=LeafOptions(
                not_before=now - timedelta(days=9), not_after=now - timedelta(days=1)
            ),
        )
        args[args.index("--ssl-client-certfile") + 1] = str(old.chain_path)
        args[args.index("--ssl-client-keyfile") + 1] = str(old.key_path)
    elif change == "bad-node-config":
        args += ["--node-config", "partition-id=0 oops"]
    elif change == "insecure-and-tls":
        args += ["--insecure"]
    elif change.startswith("clientappio-"):
        args += ["--clientappio-api-address", expected.split()[1]]
    elif change == "object-storage-not-a-size":
        args += ["--max-object-storage", "8X"]
    elif change == "state-dir-a-file":
        (tmp_path / "a-file").write_text("x")
        args += ["--state-dir", str(tmp_path / "a-file")]
    env: dict[str, str] = {}
    if change.startswith(("enroll-", "ca-hash-")):
        args, env = _node_enroll_flags(args, tmp_path, change)
    assert_one_line(run("flwrmtls.node.main", args, tmp_path, env), expected)


def _node_enroll_flags(
    args: list[str], tmp_path: Path, change: str
) -> tuple[list[str], dict[str, str]]:
    """A node given a join token or a CA hash, wrongly; the controls (nodes that enroll) are
    ``tests/e2e/test_enrollment.py``."""
    token = tmp_path / "site.token"
    token.write_text("0123abcd." + "A" * 43 + "\n")
    site = ["--ssl-client-certfile", str(tmp_path / "n.pem"),
            "--ssl-client-keyfile", str(tmp_path / "n.key")]  # fmt: skip
    base = args[:4]  # --superlink, --root-certificates
    env: dict[str, str] = {}
    if change == "enroll-token-missing":
        extra = ["--enroll-token-file", str(tmp_path / "absent.token"), *site]
    elif change == "enroll-token-garbage":
        token.write_text("let me in")
        extra = ["--enroll-token-file", str(token), *site]
    elif change == "enroll-token-twice":
        env = {"FLWRMTLS_ENROLL_TOKEN": token.read_text()}
        extra = ["--enroll-token-file", str(token), *site]
    elif change == "enroll-token-without-files":
        extra = ["--enroll-token-file", str(token)]
    elif change == "enroll-token-insecure":
        return ["--superlink", "127.0.0.1:1", "--insecure"], {
            "FLWRMTLS_ENROLL_TOKEN": token.read_text()
        }
    elif change == "ca-hash-malformed":
        extra = ["--ca-cert-hash", "md5:1234"]
    elif change == "ca-hash-without-roots":
        base = ["--superlink", "127.0.0.1:1"]
        extra = ["--ca-cert-hash", "sha256:" + "a" * 64]
    else:  # ca-hash-other-ca: the file there holds another CA than the hash names
        extra = ["--ca-cert-hash", "sha256:" + "a" * 64]
    return [*base, *extra, "--max-retries", "0"], env
