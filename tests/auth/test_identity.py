"""Identities come from parsed certificate fields; ambiguous certificates are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flwrmtls.auth.identity import (
    ROLE_OID,
    AmbiguousIdentityError,
    IdentitySource,
    PrincipalKind,
    identity_from_certificate,
    validate_spiffe_id,
)

CN, ORG, OU = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME


def _cert(
    rdns: list[list[tuple[x509.ObjectIdentifier, str]]], uris: tuple[str, ...] = ()
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in r]) for r in rdns]
    )
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(CN, "issuer")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256())


def test_subject_identity_and_organisation() -> None:
    identity = identity_from_certificate(_cert([[(ORG, "Hospital A")], [(CN, "node-1")]]))
    assert identity.value == "CN=node-1,O=Hospital A"
    assert identity.organisation == "Hospital A"
    assert identity.kind is PrincipalKind.NODE
    assert identity.source is IdentitySource.SUBJECT


def test_reissued_certificate_keeps_node_id_and_other_subject_does_not() -> None:
    first = identity_from_certificate(_cert([[(ORG, "Hospital A")], [(CN, "node-1")]]))
    reissued = identity_from_certificate(_cert([[(ORG, "Hospital A")], [(CN, "node-1")]]))
    other = identity_from_certificate(_cert([[(ORG, "Hospital A")], [(CN, "node-2")]]))
    assert first.node_id == reissued.node_id
    assert first.node_id != other.node_id
    assert 0 < first.node_id < 2**63


def test_escaping_in_cn_cannot_forge_another_subject() -> None:
    # grpc's x509_common_name would show the raw ',O=admins'; the parsed Subject keeps one CN.
    tricky = identity_from_certificate(_cert([[(CN, "node-1,O=admins")]]))
    honest = identity_from_certificate(_cert([[(ORG, "admins")], [(CN, "node-1")]]))
    assert tricky.node_id != honest.node_id
    assert tricky.organisation == ""
    assert tricky.value == "CN=node-1\\,O=admins"


def test_multi_valued_rdn_order_does_not_change_identity() -> None:
    a = identity_from_certificate(_cert([[(CN, "node-1"), (OU, "site-a")]]))
    b = identity_from_certificate(_cert([[(OU, "site-a"), (CN, "node-1")]]))
    assert a.node_id == b.node_id


def test_unicode_subject_is_decoded_not_escaped() -> None:
    identity = identity_from_certificate(_cert([[(ORG, "Hôpital Zürich")], [(CN, "nœud-1")]]))
    assert identity.value == "CN=nœud-1,O=Hôpital Zürich"


def test_two_common_names_are_refused() -> None:
    with pytest.raises(AmbiguousIdentityError, match="2 CN"):
        identity_from_certificate(_cert([[(CN, "node-1")], [(CN, "node-2")]]))


def test_empty_subject_is_refused() -> None:
    with pytest.raises(AmbiguousIdentityError, match="empty"):
        identity_from_certificate(_cert([]))


def test_roles() -> None:
    operator = identity_from_certificate(_cert([[(CN, "alice")], [(ROLE_OID, "operator")]]))
    user = identity_from_certificate(_cert([[(CN, "bob")], [(ROLE_OID, "user")]]))
    assert operator.kind is PrincipalKind.OPERATOR
    assert user.kind is PrincipalKind.USER
    with pytest.raises(AmbiguousIdentityError, match="unknown"):
        identity_from_certificate(_cert([[(CN, "eve")], [(ROLE_OID, "admin")]]))
    with pytest.raises(AmbiguousIdentityError, match="2 role"):
        identity_from_certificate(
            _cert([[(CN, "eve")], [(ROLE_OID, "user")], [(ROLE_OID, "operator")]])
        )


def test_spiffe_identity() -> None:
    cert = _cert([[(CN, "node-1")]], uris=("spiffe://example.org/ns/fl/node-1",))
    identity = identity_from_certificate(cert, IdentitySource.SPIFFE)
    assert identity.value == "spiffe://example.org/ns/fl/node-1"
    subject_identity = identity_from_certificate(cert, IdentitySource.SUBJECT)
    assert identity.node_id != subject_identity.node_id


@pytest.mark.parametrize(
    ("uris", "match"),
    [
        ((), "0 URI SANs"),
        (("spiffe://a.org/x", "spiffe://a.org/y"), "2 URI SANs"),
        (("https://a.org/x",), "not a SPIFFE ID"),
        (("spiffe://a.org/x/",), "trailing slash"),
        (("spiffe://A.org/x",), "trust domain"),
        (("spiffe://a.org:443/x",), "trust domain"),
        (("spiffe://a.org/../x",), "invalid path segment"),
    ],
)
def test_spiffe_ambiguous_or_malformed_is_refused(uris: tuple[str, ...], match: str) -> None:
    with pytest.raises(AmbiguousIdentityError, match=match):
        identity_from_certificate(_cert([[(CN, "node-1")]], uris=uris), IdentitySource.SPIFFE)


def test_valid_spiffe_ids() -> None:
    for uri in ("spiffe://example.org", "spiffe://example.org/a/b-c/d_e.f"):
        assert validate_spiffe_id(uri) == uri
