"""The link's own certificate checks (the second gate after the TLS handshake), as pure calls.

Each refusal sits beside its negative control: the same setup with a good certificate passes.
The end-to-end versions through real handshakes are in tests/e2e/.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    CallCredentials,
    Principal,
    RefusalReason,
)
from flwrmtls.auth.identity import IdentitySource, PrincipalKind
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.revocation import RevocationStore
from flwrmtls.pki import CertificateAuthority, LeafOptions, RevocationReason
from flwrmtls.testing.pki import TestPki

METHOD = "/flwrmtls.proto.Fleet/Heartbeat"


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def call_for(chain_file: Path, *, send_intermediates: bool = True) -> CallCredentials:
    """What grpc reports for a peer that sent this chain file: the leaf, and the rest."""
    certificates = x509.load_pem_x509_certificates(chain_file.read_bytes())
    rest = b"".join(_pem(c) for c in certificates[1:]) if send_intermediates else None
    return CallCredentials(METHOD, "ipv4:127.0.0.1:5555", _pem(certificates[0]), rest or None)


def authenticator(pki: TestPki, **kwargs: object) -> MtlsAuthenticator:
    anchors = x509.load_pem_x509_certificates(pki.trust_bundle_path.read_bytes())
    return MtlsAuthenticator(anchors, **kwargs)  # type: ignore[arg-type]


def refusal(auth: MtlsAuthenticator, call: CallCredentials, now: datetime) -> RefusalReason:
    with pytest.raises(AuthenticationFailed) as caught:
        auth.authenticate(call, now)
    assert isinstance(caught.value.reason, RefusalReason)
    return caught.value.reason


NOW = datetime.now(UTC)


def test_good_node_is_admitted_with_its_identity(pki: TestPki) -> None:
    principal = authenticator(pki).authenticate(call_for(pki.paths("node-1")[0]), NOW)
    assert isinstance(principal, Principal)
    assert principal.identity == "CN=node-1,O=Hospital A"
    assert principal.organisation == "Hospital A"
    assert principal.kind is PrincipalKind.NODE
    assert principal.node_id is not None
    assert len(principal.fingerprint) == 64


def test_cli_certificate_carries_its_role(pki: TestPki) -> None:
    principal = authenticator(pki).authenticate(call_for(pki.paths("cli-operator")[0]), NOW)
    assert principal.kind is PrincipalKind.OPERATOR


def test_no_certificate_is_refused(pki: TestPki) -> None:
    call = CallCredentials(METHOD, "ipv4:127.0.0.1:5555", None, None)
    assert refusal(authenticator(pki), call, NOW) is RefusalReason.NO_CERTIFICATE


def test_wrong_ca_and_impersonator_are_refused(pki: TestPki, tmp_path: Path) -> None:
    other = CertificateAuthority.create(tmp_path / "other", name="flwrmtls test")
    # Same CA names and the good node's exact Subject, different keys.
    impostor = other.issue_node("node-1", organization="Hospital A")
    auth = authenticator(pki)
    assert refusal(auth, call_for(impostor.chain_path), NOW) is RefusalReason.UNTRUSTED
    auth.authenticate(call_for(pki.paths("node-1")[0]), NOW)  # control


def test_chain_missing_its_intermediate_is_refused(pki: TestPki) -> None:
    auth = authenticator(pki)
    leaf_only = call_for(pki.paths("node-2")[0], send_intermediates=False)
    assert refusal(auth, leaf_only, NOW) is RefusalReason.UNTRUSTED
    auth.authenticate(call_for(pki.paths("node-2")[0]), NOW)  # control


def test_server_auth_only_certificate_is_refused(fresh_pki: TestPki) -> None:
    wrong = fresh_pki.ca.issue_node(
        "server-usage", options=LeafOptions(extended_key_usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    )
    auth = authenticator(fresh_pki)
    assert refusal(auth, call_for(wrong.chain_path), NOW) is RefusalReason.WRONG_USAGE
    auth.authenticate(call_for(fresh_pki.paths("node-1")[0]), NOW)  # control


def test_expired_and_not_yet_valid_are_refused(fresh_pki: TestPki) -> None:
    expired = fresh_pki.ca.issue_node(
        "expired",
        options=LeafOptions(not_before=NOW - timedelta(days=10), not_after=NOW - timedelta(days=1)),
    )
    future = fresh_pki.ca.issue_node(
        "future",
        options=LeafOptions(not_before=NOW + timedelta(days=1), not_after=NOW + timedelta(days=10)),
    )
    auth = authenticator(fresh_pki)
    assert refusal(auth, call_for(expired.chain_path), NOW) is RefusalReason.EXPIRED
    assert refusal(auth, call_for(future.chain_path), NOW) is RefusalReason.NOT_YET_VALID
    # The same certificate becomes acceptable once its time comes (failures are not cached forever).
    later = NOW + timedelta(days=2)
    assert auth.authenticate(call_for(future.chain_path), later).identity == "CN=future"


def test_expiry_during_a_connection_refuses_the_next_call(fresh_pki: TestPki) -> None:
    short = fresh_pki.ca.issue_node(
        "short", options=LeafOptions(not_before=NOW, not_after=NOW + timedelta(hours=1))
    )
    auth = authenticator(fresh_pki)
    call = call_for(short.chain_path)
    auth.authenticate(call, NOW + timedelta(minutes=30))  # verified and cached
    assert refusal(auth, call, NOW + timedelta(minutes=61)) is RefusalReason.EXPIRED


def test_revocation_takes_effect_on_the_next_call(fresh_pki: TestPki) -> None:
    store = RevocationStore(fresh_pki.crl_path)
    auth = authenticator(fresh_pki, revocations=store)
    node_1, node_2 = call_for(fresh_pki.paths("node-1")[0]), call_for(fresh_pki.paths("node-2")[0])
    auth.authenticate(node_1, NOW)
    fresh_pki.ca.revoke(
        certificate_file=fresh_pki.paths("node-1")[0], reason=RevocationReason.KEY_COMPROMISE
    )
    assert store.refresh()
    with pytest.raises(AuthenticationFailed, match=r"revoked.*keyCompromise") as caught:
        auth.authenticate(node_1, NOW)
    assert caught.value.reason is RefusalReason.REVOKED
    assert caught.value.fingerprint
    auth.authenticate(node_2, NOW)  # control: the other node is untouched


def test_stale_crl_fails_closed(fresh_pki: TestPki) -> None:
    store = RevocationStore(fresh_pki.crl_path)
    auth = authenticator(fresh_pki, revocations=store)
    call = call_for(fresh_pki.paths("node-1")[0])
    auth.authenticate(call, NOW)  # control: a current CRL
    next_update = x509.load_pem_x509_crl(fresh_pki.crl_path.read_bytes()).next_update_utc
    assert next_update is not None
    with pytest.raises(AuthenticationFailed, match="next update passed"):
        auth.authenticate(call, next_update + timedelta(seconds=1))


def test_crl_with_a_foreign_signature_fails_closed(fresh_pki: TestPki, tmp_path: Path) -> None:
    # Another CA with the same names signs a CRL for "our" issuer name: it must not count.
    forger = CertificateAuthority.create(tmp_path / "forger", name="flwrmtls test")
    crl_dir = tmp_path / "crls"
    crl_dir.mkdir()
    (crl_dir / "forged.pem").write_bytes(forger.crl_path.read_bytes())
    auth = authenticator(fresh_pki, revocations=RevocationStore(crl_dir))
    with pytest.raises(AuthenticationFailed, match="invalid signature"):
        auth.authenticate(call_for(fresh_pki.paths("node-1")[0]), NOW)
    (crl_dir / "forged.pem").write_bytes(fresh_pki.crl_path.read_bytes())
    good = authenticator(fresh_pki, revocations=RevocationStore(crl_dir))
    good.authenticate(call_for(fresh_pki.paths("node-1")[0]), NOW)  # control: the real CRL


def test_broken_crl_update_keeps_the_last_good_crl(fresh_pki: TestPki) -> None:
    store = RevocationStore(fresh_pki.crl_path)
    fresh_pki.ca.revoke(certificate_file=fresh_pki.paths("node-2")[0])
    assert store.refresh()
    fresh_pki.crl_path.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    assert not store.refresh()
    auth = authenticator(fresh_pki, revocations=store)
    assert refusal(auth, call_for(fresh_pki.paths("node-2")[0]), NOW) is RefusalReason.REVOKED
    auth.authenticate(call_for(fresh_pki.paths("node-1")[0]), NOW)


def test_max_chain_depth(pki: TestPki) -> None:
    call = call_for(pki.paths("node-1")[0])  # leaf <- issuing CA <- root
    assert refusal(authenticator(pki, max_chain_depth=0), call, NOW) is RefusalReason.UNTRUSTED
    authenticator(pki, max_chain_depth=1).authenticate(call, NOW)


def test_spiffe_identity_source(fresh_pki: TestPki) -> None:
    spiffe = fresh_pki.ca.issue_node("spiffe-node", spiffe_id="spiffe://fl.example/site/a")
    auth = authenticator(fresh_pki, identity_source=IdentitySource.SPIFFE)
    assert auth.authenticate(call_for(spiffe.chain_path), NOW).identity == (
        "spiffe://fl.example/site/a"
    )
    without = call_for(fresh_pki.paths("node-1")[0])
    assert refusal(auth, without, NOW) is RefusalReason.AMBIGUOUS_IDENTITY


def test_reissued_certificate_is_the_same_node(fresh_pki: TestPki) -> None:
    auth = authenticator(fresh_pki)
    before = auth.authenticate(call_for(fresh_pki.paths("node-1")[0]), NOW)
    fresh_pki.ca.issue_node("node-1", organization="Hospital A", options=LeafOptions(force=True))
    after = auth.authenticate(call_for(fresh_pki.paths("node-1")[0]), NOW)
    assert before.fingerprint != after.fingerprint
    assert before.node_id == after.node_id
