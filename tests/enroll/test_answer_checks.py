"""What a new site does with the link's answer (:func:`flwrmtls.enroll.client.check_chain`):
as a hostile (or broken) link that the site's TLS check let through, answering a certificate
the site did not ask for. Each beside the answer asked for, which is used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flwrmtls.enroll.client import EnrollmentRefused, check_chain
from flwrmtls.enroll.tokens import Binding

SITE = Binding("site-1", organization="Hospital C", spiffe_id="spiffe://c.example/site-1")
_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuing")])


def _answer(
    key: Any,
    *,
    subject: x509.Name | None = None,
    san: str | None = SITE.spiffe_id,
    ca: bool = False,
    cert_sign: bool = False,
    usages: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
) -> bytes:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or SITE.subject())
        .issuer_name(_CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, cert_sign, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False
        )
    leaf = builder.sign(_CA_KEY, hashes.SHA256())
    return leaf.public_bytes(serialization.Encoding.PEM)


_HOSTILE: list[tuple[str, Any, str]] = [
    ("a CA certificate", lambda key: _answer(key, ca=True), "CA certificate"),
    ("a certificate that may sign certificates", lambda key: _answer(key, cert_sign=True),
     "may sign certificates"),
    ("another identity",
     lambda key: _answer(key, subject=Binding("site-2", organization="Hospital C").subject()),
     "CN=site-2"),
    ("another SPIFFE ID", lambda key: _answer(key, san="spiffe://c.example/site-2"), "SANs"),
    ("another key", lambda key: _answer(ec.generate_private_key(ec.SECP256R1())), "another key"),
    ("no clientAuth", lambda key: _answer(key, usages=(ExtendedKeyUsageOID.SERVER_AUTH,)),
     "clientAuth"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "build", "why"), _HOSTILE, ids=[h[0] for h in _HOSTILE])
def test_a_certificate_the_site_did_not_ask_for_is_not_used(
    what: str, build: Any, why: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(EnrollmentRefused, match=why):
        check_chain(build(key), key, SITE)
    # The control: the node certificate asked for, on the same key.
    assert check_chain(_answer(key), key, SITE).subject == SITE.subject()
