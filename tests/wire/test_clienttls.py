"""flwrmtls.wire.clienttls: a client's TLS set up and checked in one place, before any call."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from flwrmtls.errors import InputError
from flwrmtls.pki import LeafOptions
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.wire.clienttls import NODE_NAMES, load_client_tls
from flwrmtls.wire.credentials import load_tls_identity

NO_ROOTS = InputError("no --root-certificates: give it")


def test_a_bundle_is_required_and_a_certificate_comes_with_its_key(pki: TestPki) -> None:
    chain, key = pki.paths("node-1")
    with pytest.raises(InputError) as missing:
        load_client_tls("h:1", roots=None, certfile=None, keyfile=None, names=NODE_NAMES,
                        no_roots=NO_ROOTS)  # fmt: skip
    assert missing.value is NO_ROOTS  # never grpc's public CAs
    with pytest.raises(InputError, match="give both --ssl-client-certfile and --ssl-client-"):
        load_client_tls("h:1", roots=pki.trust_bundle_path, certfile=chain, keyfile=None,
                        names=NODE_NAMES, no_roots=NO_ROOTS)  # fmt: skip
    with pytest.raises(InputError, match=r"--root-certificates: .* holds a private key"):
        load_client_tls("h:1", roots=key, certfile=None, keyfile=None, names=NODE_NAMES,
                        no_roots=NO_ROOTS)  # fmt: skip
    # The controls: the bundle alone (server-authenticated TLS), and the bundle with a pair.
    alone = load_client_tls("h:1", roots=pki.trust_bundle_path, certfile=None, keyfile=None,
                            names=NODE_NAMES, no_roots=NO_ROOTS)  # fmt: skip
    assert alone.identity is None
    assert alone.context().check_certificate is None
    assert not alone.context().has_client_certificate
    pair = load_client_tls("h:1", roots=pki.trust_bundle_path, certfile=chain, keyfile=key,
                           names=NODE_NAMES, no_roots=NO_ROOTS)  # fmt: skip
    assert pair.identity is not None
    assert pair.identity.leaf.subject.rfc4514_string() == "CN=node-1,O=Hospital A"
    assert pair.roots_pem == pki.trust_bundle_path.read_bytes()
    assert pair.context().root_certificates == str(pki.trust_bundle_path)
    assert pair.context().client_flags == "--ssl-client-certfile and --ssl-client-keyfile"


def test_an_expired_certificate_is_refused_before_any_call_unless_a_test_asks(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    pki = make_test_pki(tmp_path / "pki", clock=clock)
    now = clock.now()
    expired = pki.ca.issue_node(
        "expired",
        options=LeafOptions(not_before=now - timedelta(days=9), not_after=now - timedelta(days=1)),
    )
    with pytest.raises(InputError, match="--ssl-client-certfile: certificate expired on"):
        load_client_tls("h:1", roots=pki.trust_bundle_path, certfile=expired.chain_path,
                        keyfile=expired.key_path, names=NODE_NAMES, no_roots=NO_ROOTS,
                        clock=clock)  # fmt: skip
    kept = load_client_tls("h:1", roots=pki.trust_bundle_path, certfile=expired.chain_path,
                           keyfile=expired.key_path, names=NODE_NAMES, no_roots=NO_ROOTS,
                           clock=clock, check_at_start=False)  # fmt: skip
    definite = kept.check().definite
    assert definite is not None
    assert "certificate expired on" in definite.message


def test_the_check_judges_the_certificate_in_use_at_the_moment_asked(tmp_path: Path) -> None:
    clock = FakeClock()
    pki = make_test_pki(tmp_path / "pki", clock=clock)
    short = pki.ca.issue_node("short", options=LeafOptions(days=2))
    tls = load_client_tls("h:1", roots=pki.trust_bundle_path, certfile=short.chain_path,
                          keyfile=short.key_path, names=NODE_NAMES, no_roots=NO_ROOTS,
                          clock=clock)  # fmt: skip
    check = tls.context().check_certificate
    assert check is not None
    assert check().definite is None  # valid now
    clock.advance(timedelta(days=3).total_seconds())
    assert check().definite is not None  # it expired since start-up
    chain, key = pki.paths("node-1")  # rotated: the context judges the new one
    tls.identity = load_tls_identity(chain, key, cert_flag="c", key_flag="k")
    assert check().definite is None
