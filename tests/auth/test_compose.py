"""certificate+key as pure calls: the key must be registered for the certificate's node.

Real authenticators over a test PKI and a generated EC key; the registry and the bindings are
dicts, as the link's key table mirrors them. Through the real link: tests/e2e/test_eckey.py.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.authenticator import AuthenticationFailed, CallCredentials, RefusalReason
from flwrmtls.auth.callsigning import CallSigner, body_digest, key_signature_from_metadata
from flwrmtls.auth.compose import CertificateAndBoundKey
from flwrmtls.auth.eckey import Audiences, EcKeyAuthenticator, KeyStatus, Registration
from flwrmtls.auth.identity import (
    IdentitySource,
    identity_from_certificate,
    node_id_for_identity,
)
from flwrmtls.auth.keyformats import node_id_for_key, public_key_der
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.testing.pki import TestPki, make_test_pki

METHOD = "/flwrmtls.proto.Fleet/ActivateNode"
AUDIENCE = hashlib.sha256(b"the link").digest()
BODY = body_digest(b"")


def presenting(pki: TestPki, name: str, key: ec.EllipticCurvePrivateKey) -> CallCredentials:
    """A call with ``name``'s certificate, signed with ``key``."""
    pem = pki.paths(name)[0].read_bytes()
    marker = b"-----END CERTIFICATE-----\n"
    leaf, _, rest = pem.partition(marker)
    metadata = CallSigner(key).metadata(METHOD, BODY, datetime.now(UTC), AUDIENCE)
    return CallCredentials(
        METHOD, "ipv4:10.0.0.7:1", leaf + marker, rest or None,
        key_signature=key_signature_from_metadata(metadata, BODY),
    )  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestPki, ec.EllipticCurvePrivateKey, dict[int, int]]:
    return make_test_pki(tmp_path), ec.generate_private_key(ec.SECP256R1()), {}


def authenticator(
    pki: TestPki, key: ec.EllipticCurvePrivateKey, bindings: dict[int, int]
) -> CertificateAndBoundKey:
    registered = {public_key_der(key): Registration(KeyStatus.REGISTERED)}
    keys = EcKeyAuthenticator(
        lambda der: registered.get(der, Registration(KeyStatus.UNKNOWN)),
        audiences=Audiences(AUDIENCE),
    )
    return CertificateAndBoundKey(MtlsAuthenticator([pki.ca.root_certificate]), keys, bindings.get)


def test_a_key_is_admitted_only_with_the_certificate_of_its_node(
    setup: tuple[TestPki, ec.EllipticCurvePrivateKey, dict[int, int]],
) -> None:
    pki, key_a, bindings = setup
    node_1 = node_id_for_identity("CN=node-1,O=Hospital A", IdentitySource.SUBJECT)
    bindings[node_id_for_key(key_a)] = node_1
    auth = authenticator(pki, key_a, bindings)
    now = datetime.now(UTC)
    principal = auth.authenticate(presenting(pki, "node-1", key_a), now)  # control
    assert principal.identity == "CN=node-1,O=Hospital A"
    assert principal.node_id == node_1
    with pytest.raises(AuthenticationFailed) as stolen:
        auth.authenticate(presenting(pki, "node-2", key_a), now)  # node B with A's key
    assert stolen.value.reason is RefusalReason.KEY_NOT_BOUND
    assert "CN=node-2,O=Hospital B" in stolen.value.message
    assert "node-1" not in stolen.value.message  # whose key it is stays unsaid


def test_an_unbound_key_is_refused_and_a_new_binding_ends_open_calls(
    setup: tuple[TestPki, ec.EllipticCurvePrivateKey, dict[int, int]],
) -> None:
    pki, key_a, bindings = setup
    auth = authenticator(pki, key_a, bindings)
    now = datetime.now(UTC)
    credentials = presenting(pki, "node-1", key_a)
    with pytest.raises(AuthenticationFailed) as unbound:
        auth.authenticate(credentials, now)
    assert unbound.value.reason is RefusalReason.KEY_NOT_BOUND
    assert "--identity 'CN=node-1,O=Hospital A'" in unbound.value.message
    node_1 = node_id_for_identity("CN=node-1,O=Hospital A", IdentitySource.SUBJECT)
    bindings[node_id_for_key(key_a)] = node_1
    principal = auth.authenticate(presenting(pki, "node-1", key_a), now)
    auth.recheck(credentials, principal, now)  # still bound: the open call goes on
    bindings[node_id_for_key(key_a)] = node_id_for_identity(
        "CN=node-2,O=Hospital B", IdentitySource.SUBJECT
    )
    with pytest.raises(AuthenticationFailed) as rebound:
        auth.recheck(credentials, principal, now)
    assert rebound.value.reason is RefusalReason.KEY_NOT_BOUND


def test_an_identity_names_the_node_id_its_certificate_gets(tmp_path: Path) -> None:
    """What an operator types at registration maps to the node id the link derives from the
    certificate; a string the link would not show is refused, never guessed."""
    pki = make_test_pki(tmp_path)
    odd = pki.ca.issue_node("odd", common_name="node 7", organization="Hospital, Inc.")
    identity = identity_from_certificate(odd.certificate)
    assert identity.value == "CN=node 7,O=Hospital\\, Inc."
    assert node_id_for_identity(identity.value, IdentitySource.SUBJECT) == identity.node_id
    spiffe = "spiffe://example.org/node/1"
    spiffe_node = pki.ca.issue_node("spiffe", spiffe_id=spiffe)
    identity = identity_from_certificate(spiffe_node.certificate, IdentitySource.SPIFFE)
    assert node_id_for_identity(spiffe, IdentitySource.SPIFFE) == identity.node_id
    node_1 = node_id_for_identity("CN=node-1,O=Hospital A", IdentitySource.SUBJECT)
    assert node_id_for_identity("O=Hospital A,CN=node-1", IdentitySource.SUBJECT) != node_1
    for wrong in ("node-1", "CN=node-1, O=Hospital A", "CN=node-1,O=Hospital A,", ""):
        with pytest.raises(ValueError, match="not a certificate Subject as the link shows"):
            node_id_for_identity(wrong, IdentitySource.SUBJECT)
    with pytest.raises(ValueError, match="SPIFFE"):
        node_id_for_identity("CN=node-1", IdentitySource.SPIFFE)
