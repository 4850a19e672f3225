"""Identities come from parsed certificate fields; ambiguous certificates are refused."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flwrmtls.auth.authenticator import AuthenticationFailed, CallCredentials, RefusalReason
from flwrmtls.auth.identity import (
    ROLE_OID,
    AmbiguousIdentityError,
    IdentitySource,
    PrincipalKind,
    RoleSource,
    _canonical_subject,
    identity_from_certificate,
    node_id_for,
    validate_spiffe_id,
)
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.policy import is_permitted
from flwrmtls.errors import Refused
from flwrmtls.link.server import Link
from flwrmtls.pki import PROFILES, ProfileName
from flwrmtls.pki.certsigning import sign_certificate
from flwrmtls.testing.link import node_client
from flwrmtls.testing.pki import TestPki

CN, ORG, OU = NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME


def _cert(
    rdns: list[list[tuple[x509.ObjectIdentifier, str]]],
    uris: tuple[str, ...] = (),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> x509.Certificate:
    key = key or ec.generate_private_key(ec.SECP256R1())
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


# --- Multi-valued RDNs in another order -------------------------------------------------
#
# cryptography (and openssl -multivalue-rdn) DER-sort a SET OF when they encode a Subject,
# so two certificates built with the attributes of one RDN in two orders have the same bytes:
# comparing their identities proves nothing. The reordered encoding below is built by hand,
# and each test checks that its bytes really differ.


def _tlv(tag: int, body: bytes) -> bytes:
    """One DER tag-length-value."""
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _attribute_der(attribute: x509.NameAttribute[str]) -> bytes:
    """An AttributeTypeAndValue's DER: a one-attribute Name, its SEQUENCE and SET peeled off."""
    name = x509.Name([x509.RelativeDistinguishedName([attribute])]).public_bytes()
    return name[4:]  # 30 len 31 len: short lengths for these short values


_ECDSA_WITH_SHA256 = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))


def _reordered(
    certificate: x509.Certificate, signing_key: ec.EllipticCurvePrivateKey
) -> tuple[bytes, bytes]:
    """The DER of ``certificate`` with the attributes of its single multi-valued Subject RDN
    in the reverse of DER order, re-signed; and the Subject's DER as cryptography wrote it."""
    [rdn] = certificate.subject.rdns
    attributes = [_attribute_der(a) for a in rdn]  # type: ignore[arg-type]
    written = certificate.subject.public_bytes()
    assert written == _tlv(0x30, _tlv(0x31, b"".join(sorted(attributes))))  # DER: sorted
    reversed_subject = _tlv(0x30, _tlv(0x31, b"".join(sorted(attributes, reverse=True))))
    assert reversed_subject != written
    assert len(reversed_subject) == len(written)
    tbs = certificate.tbs_certificate_bytes
    assert tbs.count(written) == 1
    tbs = tbs.replace(written, reversed_subject)
    signature = signing_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    assert certificate.signature_algorithm_oid.dotted_string == "1.2.840.10045.4.3.2"
    return _tlv(0x30, tbs + _ECDSA_WITH_SHA256 + _tlv(0x03, b"\x00" + signature)), written


def test_a_multi_valued_rdn_in_another_order_cannot_be_parsed_into_another_identity() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _cert([[(OU, "site-a"), (CN, "node-1")]], key=key)
    reordered, written = _reordered(certificate, key)
    assert written not in reordered  # the bytes differ, only in the order of the RDN
    # cryptography refuses the SET OF out of DER order: no identity is ever built from it.
    with pytest.raises(ValueError, match="InvalidSetOrdering"):
        x509.load_der_x509_certificate(reordered)
    # Control: the certificate as written parses and has its identity.
    assert identity_from_certificate(certificate).value == "CN=node-1+OU=site-a"


def test_the_node_id_does_not_depend_on_the_order_of_an_rdns_attributes() -> None:
    """In memory a Name keeps the order it was given (a Name built in code, not parsed from a
    certificate): the canonical encoding, and so the node id, sorts each RDN's attributes."""
    cn, ou = x509.NameAttribute(CN, "node-1"), x509.NameAttribute(OU, "site-a")
    one = x509.Name([x509.RelativeDistinguishedName([cn, ou])])
    other = x509.Name([x509.RelativeDistinguishedName([ou, cn])])
    assert [list(rdn) for rdn in one.rdns] != [list(rdn) for rdn in other.rdns]
    assert _canonical_subject(one) == _canonical_subject(other)
    assert node_id_for(IdentitySource.SUBJECT, _canonical_subject(one)) == node_id_for(
        IdentitySource.SUBJECT, _canonical_subject(other)
    )
    # Control: another value in the RDN is another node.
    third = x509.Name([x509.RelativeDistinguishedName([cn, x509.NameAttribute(OU, "site-b")])])
    assert _canonical_subject(third) != _canonical_subject(one)


def test_the_link_refuses_a_node_certificate_whose_rdn_is_out_of_der_order(
    link: Link, pki: TestPki
) -> None:
    """Through the real link: a CA-signed node certificate whose Subject RDN is reordered
    passes the TLS handshake (BoringSSL parses it) and is refused by the link's own check;
    the same certificate as written is admitted under its identity."""
    issuing_key = serialization.load_pem_private_key(pki.ca.files.issuing_key.read_bytes(), None)
    assert isinstance(issuing_key, ec.EllipticCurvePrivateKey)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    rdn = x509.RelativeDistinguishedName(
        [x509.NameAttribute(OU, "site-a"), x509.NameAttribute(CN, "node-9")]
    )
    leaf = sign_certificate(
        PROFILES[ProfileName.NODE],
        subject=x509.Name([rdn]),
        public_key=leaf_key.public_key(),
        signing_key=issuing_key,
        issuer_certificate=pki.ca.issuing_certificate,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=1),
    )
    reordered, _ = _reordered(leaf, issuing_key)
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    intermediate = pki.ca.issuing_certificate.public_bytes(serialization.Encoding.PEM)

    def activate(leaf_der: bytes) -> int:
        leaf_pem = ssl.DER_cert_to_PEM_cert(leaf_der).encode()
        client, channel = node_client(
            link, root_certificates=pki.trust_bundle_path,
            chain_pem=leaf_pem + intermediate, key_pem=key_pem,
        )  # fmt: skip
        try:
            return client.activate().node_id
        finally:
            channel.close()

    with pytest.raises(Refused, match="certificate cannot be parsed"):
        activate(reordered)
    assert link.state.list_nodes(now=now.timestamp(), verbose=True) == []
    node_id = activate(leaf.public_bytes(serialization.Encoding.DER))  # control
    assert node_id == identity_from_certificate(leaf).node_id


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


# --- Roles from the OU (``RoleSource.OU``, for certificates from other CAs) ----------------


@pytest.mark.parametrize(
    ("rdns", "kind"),
    [
        ([[(CN, "alice")], [(OU, "operator")]], PrincipalKind.OPERATOR),
        ([[(CN, "bob")], [(OU, "user")]], PrincipalKind.USER),
        ([[(CN, "node-1")], [(OU, "site-a")]], PrincipalKind.NODE),
        ([[(CN, "node-1")]], PrincipalKind.NODE),
        ([[(CN, "carol")], [(OU, "Operator")]], PrincipalKind.NODE),  # exact values only
        ([[(CN, "dave")], [(ROLE_OID, "operator")]], PrincipalKind.NODE),  # role ignored
    ],
)
def test_ou_role_source(
    rdns: list[list[tuple[x509.ObjectIdentifier, str]]], kind: PrincipalKind
) -> None:
    identity = identity_from_certificate(_cert(rdns), role_source=RoleSource.OU)
    assert identity.kind is kind


def test_ou_means_nothing_by_default_and_role_nothing_in_ou_mode() -> None:
    by_ou = _cert([[(CN, "alice")], [(OU, "operator")]])
    by_role = _cert([[(CN, "alice")], [(ROLE_OID, "operator")]])
    assert identity_from_certificate(by_ou).kind is PrincipalKind.NODE
    assert identity_from_certificate(by_role).kind is PrincipalKind.OPERATOR
    assert identity_from_certificate(by_ou, role_source=RoleSource.OU).kind is (
        PrincipalKind.OPERATOR
    )
    assert identity_from_certificate(by_role, role_source=RoleSource.OU).kind is (
        PrincipalKind.NODE
    )


def test_ou_mode_keeps_the_identity_and_node_id() -> None:
    cert = _cert([[(ORG, "Hospital A")], [(OU, "site-a")], [(CN, "node-1")]])
    default = identity_from_certificate(cert)
    by_ou = identity_from_certificate(cert, role_source=RoleSource.OU)
    assert (by_ou.value, by_ou.node_id) == (default.value, default.node_id)


@pytest.mark.parametrize(
    "units",
    [("operator", "user"), ("operator", "site-a"), ("site-a", "site-b")],
)
def test_ou_mode_refuses_two_ous(units: tuple[str, str]) -> None:
    cert = _cert([[(CN, "eve")], *([(OU, unit)] for unit in units)])
    with pytest.raises(AmbiguousIdentityError, match="2 OU"):
        identity_from_certificate(cert, role_source=RoleSource.OU)
    # Negative control: one OU is fine, and the default mode does not look at OUs at all.
    identity_from_certificate(_cert([[(CN, "eve")], [(OU, units[0])]]), role_source=RoleSource.OU)
    assert identity_from_certificate(cert).kind is PrincipalKind.NODE


def _foreign_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA that is not flwrmtls's: a corporate root whose CLI certificates carry an OU."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    root = sign_certificate(
        PROFILES[ProfileName.ROOT_CA],
        subject=x509.Name([x509.NameAttribute(ORG, "Corp"), x509.NameAttribute(CN, "Corp CA")]),
        public_key=key.public_key(),
        signing_key=key,
        issuer_certificate=None,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=30),
    )
    return root, key


def _foreign_cli_pem(
    root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey, *units: str
) -> bytes:
    """A CLI certificate of the foreign CA: ``OU=<unit>`` for each unit, then ``CN``."""
    now = datetime.now(UTC)
    attributes = [x509.NameAttribute(OU, unit) for unit in units]
    leaf = sign_certificate(
        PROFILES[ProfileName.CLI],
        subject=x509.Name([*attributes, x509.NameAttribute(CN, "corp-admin")]),
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        signing_key=root_key,
        issuer_certificate=root,
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=1),
    )
    return leaf.public_bytes(serialization.Encoding.PEM)


def _call(method: str, leaf_pem: bytes) -> CallCredentials:
    return CallCredentials(method, "ipv4:127.0.0.1:5000", leaf_pem=leaf_pem, chain_pem=None)


def test_mtls_authenticator_takes_roles_from_the_ou_when_told() -> None:
    root, root_key = _foreign_ca()
    now = datetime.now(UTC)
    list_nodes = "/flwrmtls.proto.Control/ListNodes"

    def kind(role_source: RoleSource, unit: str) -> PrincipalKind:
        authenticator = MtlsAuthenticator([root], role_source=role_source)
        call = _call(list_nodes, _foreign_cli_pem(root, root_key, unit))
        return authenticator.authenticate(call, now).kind

    assert kind(RoleSource.OU, "operator") is PrincipalKind.OPERATOR
    assert is_permitted(list_nodes, PrincipalKind.OPERATOR)
    assert kind(RoleSource.OU, "user") is PrincipalKind.USER
    assert not is_permitted(list_nodes, PrincipalKind.USER)
    # Negative controls: another OU is a node, and the default role source ignores OUs, so the
    # same certificate cannot call the Control API at all.
    assert kind(RoleSource.OU, "engineering") is PrincipalKind.NODE
    assert kind(RoleSource.ROLE, "operator") is PrincipalKind.NODE
    assert not is_permitted(list_nodes, PrincipalKind.NODE)


def test_mtls_authenticator_refuses_two_ous_in_ou_mode() -> None:
    root, root_key = _foreign_ca()
    now = datetime.now(UTC)
    call = _call(
        "/flwrmtls.proto.Control/ListRuns", _foreign_cli_pem(root, root_key, "user", "operator")
    )
    with pytest.raises(AuthenticationFailed) as refused:
        MtlsAuthenticator([root], role_source=RoleSource.OU).authenticate(call, now)
    assert refused.value.reason is RefusalReason.AMBIGUOUS_IDENTITY
    assert "2 OU" in refused.value.message
    # Controls: one OU passes; by default the OUs do not matter and the certificate is a node's.
    single = _call("/flwrmtls.proto.Control/ListRuns", _foreign_cli_pem(root, root_key, "user"))
    ou_mode = MtlsAuthenticator([root], role_source=RoleSource.OU)
    assert ou_mode.authenticate(single, now).kind is PrincipalKind.USER
    assert MtlsAuthenticator([root]).authenticate(call, now).kind is PrincipalKind.NODE
