"""TLS material is checked at startup: each problem is one clear InputError naming the flag."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.errors import InputError
from flwrmtls.pki import CertificateAuthority, IssuedCertificate, KeyEncoding, KeyType, LeafOptions
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import (
    TlsIdentity,
    check_client_certificate,
    check_own_certificate,
    load_ca_bundle,
    load_tls_identity,
)


def now() -> datetime:
    """The time of the check (certificates from the fixtures are issued when a test starts,
    so a module-level timestamp would fall before them in a long suite)."""
    return datetime.now(UTC)


def load(chain: Path, key: Path) -> None:
    load_tls_identity(
        chain, key, cert_flag="--ssl-client-certfile", key_flag="--ssl-client-keyfile"
    )


def test_good_pair_loads_and_is_checked(pki: TestPki) -> None:
    chain, key = pki.paths("node-1")
    identity = load_tls_identity(chain, key, cert_flag="c", key_flag="k")
    assert len(identity.chain) == 2
    assert b"BEGIN PRIVATE KEY" in identity.key_pem  # normalised to PKCS#8
    check_client_certificate(identity, now(), cert_flag="c")


@pytest.mark.parametrize(
    ("key_type", "encoding", "marker"),
    [
        (KeyType.EC, KeyEncoding.SEC1, b"BEGIN EC PRIVATE KEY"),
        (KeyType.RSA, KeyEncoding.PKCS1, b"BEGIN RSA PRIVATE KEY"),
        (KeyType.RSA, KeyEncoding.PKCS8, b"BEGIN PRIVATE KEY"),
    ],
)
def test_key_formats_are_accepted(
    fresh_pki: TestPki, key_type: KeyType, encoding: KeyEncoding, marker: bytes
) -> None:
    issued = fresh_pki.ca.issue_node(
        "fmt", options=LeafOptions(key_type=key_type, key_encoding=encoding)
    )
    assert marker in issued.key_path.read_bytes()
    load(issued.chain_path, issued.key_path)


def test_missing_file(pki: TestPki, tmp_path: Path) -> None:
    _, key = pki.paths("node-1")
    with pytest.raises(
        InputError, match=r"--ssl-client-certfile: certificate file .* does not exist"
    ):
        load(tmp_path / "absent.pem", key)


def test_unreadable_file(pki: TestPki) -> None:
    # Reading /proc/self/mem from offset 0 fails with EIO, for root too (unlike chmod 0).
    chain, _ = pki.paths("node-1")
    with pytest.raises(InputError, match="--ssl-client-keyfile: cannot read private key file"):
        load(chain, Path("/proc/self/mem"))


def test_directory_instead_of_file(pki: TestPki, tmp_path: Path) -> None:
    _, key = pki.paths("node-1")
    with pytest.raises(InputError, match="is a directory"):
        load(tmp_path, key)


def test_non_pem_content(pki: TestPki, tmp_path: Path) -> None:
    chain, key = pki.paths("node-1")
    der = tmp_path / "cert.der"
    der.write_bytes(os.urandom(64))
    with pytest.raises(InputError, match="is not PEM"):
        load(der, key)
    with pytest.raises(InputError, match="is not PEM"):
        load(chain, der)


def test_key_that_does_not_match_the_certificate(pki: TestPki) -> None:
    chain, _ = pki.paths("node-1")
    _, other_key = pki.paths("node-2")
    with pytest.raises(InputError, match="does not match the certificate"):
        load(chain, other_key)
    load(chain, pki.paths("node-1")[1])  # control


def test_encrypted_key_is_refused_without_echoing_it(pki: TestPki, tmp_path: Path) -> None:
    chain, key = pki.paths("node-1")
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(InputError, match="is encrypted") as caught:
        load(chain, encrypted)
    assert "BEGIN" not in str(caught.value)


def test_ca_bundle_errors(pki: TestPki, tmp_path: Path) -> None:
    pem, certificates = load_ca_bundle(pki.trust_bundle_path, "--root-certificates")
    assert certificates
    assert pem.startswith(b"-----BEGIN CERTIFICATE")
    bogus = tmp_path / "bogus.crt"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(InputError, match=r"--root-certificates: .* no readable PEM certificate"):
        load_ca_bundle(bogus, "--root-certificates")


def test_client_self_check_names_the_cause(fresh_pki: TestPki) -> None:
    ca = fresh_pki.ca
    expired = ca.issue_node(
        "expired",
        options=LeafOptions(
            not_before=now() - timedelta(days=3), not_after=now() - timedelta(days=1)
        ),
    )
    future = ca.issue_node(
        "future",
        options=LeafOptions(
            not_before=now() + timedelta(days=1), not_after=now() + timedelta(days=3)
        ),
    )
    server_only = ca.issue_node(
        "srv", options=LeafOptions(extended_key_usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    )
    for issued, cause in ((expired, "expired on"), (future, "not valid before"),
                          (server_only, "does not include clientAuth")):  # fmt: skip
        identity = load_tls_identity(
            issued.chain_path, issued.key_path, cert_flag="c", key_flag="k"
        )
        with pytest.raises(InputError, match=cause):
            check_client_certificate(identity, now(), cert_flag="--ssl-client-certfile")
    good = load_tls_identity(*fresh_pki.paths("node-1"), cert_flag="c", key_flag="k")
    check_client_certificate(good, now(), cert_flag="--ssl-client-certfile")


def test_certificate_whose_key_usage_cannot_sign_is_refused_at_startup(
    fresh_pki: TestPki,
) -> None:
    # A CA certificate used as a client leaf: keyCertSign only. BoringSSL cannot use it for
    # TLS client authentication; the node must say so instead of blaming the link.
    ca_files = fresh_pki.ca.files
    identity = load_tls_identity(
        ca_files.issuing_certificate, ca_files.issuing_key, cert_flag="c", key_flag="k"
    )
    with pytest.raises(InputError, match="does not include digitalSignature"):
        check_client_certificate(identity, now(), cert_flag="--ssl-client-certfile")
    good = load_tls_identity(*fresh_pki.paths("node-1"), cert_flag="c", key_flag="k")
    check_client_certificate(good, now(), cert_flag="--ssl-client-certfile")


# --- the client's own check, run again when the link closes a handshake ----------------------


def identity_of(issued: IssuedCertificate) -> TlsIdentity:
    return load_tls_identity(issued.chain_path, issued.key_path, cert_flag="c", key_flag="k")


def test_own_check_definite_causes_are_every_links_refusals(fresh_pki: TestPki) -> None:
    ca = fresh_pki.ca
    roots = [ca.root_certificate]
    good = load_tls_identity(*fresh_pki.paths("node-1"), cert_flag="c", key_flag="k")
    clean = check_own_certificate(good, now(), cert_flag="--cert", roots=roots, roots_flag="ca.crt")
    assert clean.problems == ()
    assert clean.definite is None
    assert clean.checked == "dates, key usage, key, chain to ca.crt"
    # Each certificate checked at a moment it is bad, beside the good one that passes.
    expired = ca.issue_node(
        "expired",
        options=LeafOptions(
            not_before=now() - timedelta(days=3), not_after=now() - timedelta(days=1)
        ),
    )
    server_only = ca.issue_node(
        "srv", options=LeafOptions(extended_key_usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    )
    other_key = dataclasses.replace(good, key_pem=identity_of(server_only).key_pem)
    for identity, moment, cause in [
        (identity_of(expired), now(), "--cert: certificate expired on"),
        (good, now() + timedelta(days=3650), "--cert: certificate expired on"),  # it expired since
        (good, good.leaf.not_valid_before_utc - timedelta(hours=1),
         "--cert: certificate not valid before"),
        (identity_of(server_only), now(),
         "--cert: certificate's extended key usage does not include clientAuth"),
        (other_key, now(), "--cert: the private key in use does not match the certificate"),
    ]:  # fmt: skip
        check = check_own_certificate(identity, moment, cert_flag="--cert", roots=roots)
        assert check.definite is not None, cause
        assert check.definite.message.startswith(cause)


def test_own_check_a_chain_outside_the_roots_is_only_a_likely_cause(
    fresh_pki: TestPki, tmp_path: Path
) -> None:
    stranger_ca = CertificateAuthority.create(tmp_path / "stranger")
    stranger = identity_of(stranger_ca.issue_node("node-1"))
    roots = [fresh_pki.ca.root_certificate]
    check = check_own_certificate(
        stranger, now(), cert_flag="--cert", roots=roots, roots_flag="ca.crt"
    )
    [problem] = check.problems
    assert not problem.definite  # a link may trust another CA for its clients
    assert check.definite is None
    assert problem.message.startswith("--cert: certificate does not chain to a CA in ca.crt")
    assert problem.message.endswith("a link with a separate client CA may trust it all the same")
    # Control: against its own CA it chains; without roots the chain is not judged at all.
    _, stranger_roots = load_ca_bundle(stranger_ca.trust_bundle_path, "--root-certificates")
    assert (
        check_own_certificate(stranger, now(), cert_flag="c", roots=stranger_roots).problems == ()
    )
    unjudged = check_own_certificate(stranger, now(), cert_flag="c", roots=None)
    assert unjudged.problems == ()
    assert unjudged.checked == "dates, key usage, key, not the chain (no --root-certificates)"


def test_own_check_an_intermediate_out_of_its_dates_is_a_likely_cause(
    fresh_pki: TestPki,
) -> None:
    # An intermediate that expired while its leaf has not: built by hand, since the CA tool
    # never issues a leaf that outlives its issuer.
    good = load_tls_identity(*fresh_pki.paths("node-1"), cert_flag="c", key_flag="k")
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    expired_intermediate = (
        x509.CertificateBuilder()
        .subject_name(good.chain[1].subject)
        .issuer_name(good.chain[1].issuer)
        .public_key(issuer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - timedelta(days=30))
        .not_valid_after(now() - timedelta(days=1))
        .sign(issuer_key, hashes.SHA256())
    )
    stale = dataclasses.replace(good, chain=(good.leaf, expired_intermediate))
    [problem] = check_own_certificate(stale, now(), cert_flag="--cert", roots=None).problems
    assert not problem.definite
    assert problem.message.startswith("--cert: the chain's certificate CN=")
    assert "is valid only from" in problem.message
    assert check_own_certificate(good, now(), cert_flag="--cert", roots=None).problems == ()
