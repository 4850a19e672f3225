"""The one definition of what a node signs, checked from both ends with real keys.

The verifying side here is cryptography's own ``verify`` over :func:`signed_bytes`, not the
authenticator (tests/auth/test_eckey.py covers that), so a drift in either would show.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.callsigning import (
    AUDIENCE_METADATA_KEY,
    NONCE_METADATA_KEY,
    PUBLIC_KEY_METADATA_KEY,
    SIGNATURE_METADATA_KEY,
    SIGNATURE_METADATA_KEYS,
    SIGNING_DOMAIN,
    TIMESTAMP_METADATA_KEY,
    CallSigner,
    audience_of,
    audience_text,
    body_digest,
    declared_object_digest,
    encode_public_key,
    hash_for_curve,
    key_signature_from_metadata,
    new_nonce,
    parse_audience,
    parse_object_declaration,
    sign_call,
    signed_bytes,
    timestamp_ms,
)
from flwrmtls.auth.keyformats import load_node_private_key, public_key_der
from flwrmtls.testing.pki import make_test_pki
from flwrmtls.wire.metadata import object_declaration

METHOD = "/flwrmtls.proto.Fleet/PullMessages"
NOW = datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC)
NONCE = "0123456789abcdef0123456789abcdef"
DIGEST = body_digest(b"\x08\x01\x12\x03abc")
AUDIENCE = hashlib.sha256(b"the link's SubjectPublicKeyInfo").digest()
OTHER_LINK = hashlib.sha256(b"another link's SubjectPublicKeyInfo").digest()
OBJECT_ID = hashlib.sha256(b"array bytes").hexdigest()


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[int, ec.EllipticCurvePrivateKey]:
    """One ``ssh-keygen -t ecdsa`` key per supported size, loaded as a node loads it."""
    directory = tmp_path_factory.mktemp("signing-keys")
    loaded = {}
    for bits in (256, 384, 521):
        path = directory / f"node_{bits}"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-b", str(bits), "-N", "", "-f", str(path)],
            check=True,
            capture_output=True,
        )
        loaded[bits] = load_node_private_key(path, "--auth-supernode-private-key")
    return loaded


def verify(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message, ec.ECDSA(hash_for_curve(key.curve)))
    except InvalidSignature:
        return False
    return True


def test_signed_bytes_encoding_is_fixed() -> None:
    """The exact layout: changing it breaks every deployed node, so it is pinned here."""
    assert signed_bytes(METHOD, 1_748_779_200_250, NONCE, AUDIENCE, DIGEST) == (
        b"flwrmtls-call-v2\x00/flwrmtls.proto.Fleet/PullMessages\x00"
        b"1748779200250\x00" + NONCE.encode() + b"\x00" + AUDIENCE + DIGEST
    )
    assert signed_bytes(METHOD, 0, NONCE, AUDIENCE, DIGEST).startswith(SIGNING_DOMAIN)


def test_each_field_changes_the_signed_bytes() -> None:
    base = signed_bytes(METHOD, 1000, NONCE, AUDIENCE, DIGEST)
    assert base == signed_bytes(METHOD, 1000, NONCE, AUDIENCE, DIGEST)  # control
    variants = [
        signed_bytes("/flwrmtls.proto.Fleet/PushMessages", 1000, NONCE, AUDIENCE, DIGEST),
        signed_bytes(METHOD, 1001, NONCE, AUDIENCE, DIGEST),
        signed_bytes(METHOD, 1000, "f" * 32, AUDIENCE, DIGEST),
        signed_bytes(METHOD, 1000, NONCE, OTHER_LINK, DIGEST),
        signed_bytes(METHOD, 1000, NONCE, AUDIENCE, body_digest(b"other body")),
    ]
    assert len({base, *variants}) == 1 + len(variants)


@pytest.mark.parametrize(
    ("method", "timestamp", "nonce", "digest"),
    [
        ("/a/b\x00c", 1, NONCE, DIGEST),  # a NUL would let fields run into each other
        ("PullMessages", 1, NONCE, DIGEST),  # not the full method name
        (METHOD, -1, NONCE, DIGEST),
        (METHOD, 1, NONCE.upper(), DIGEST),
        (METHOD, 1, NONCE[:-1], DIGEST),
        (METHOD, 1, NONCE, DIGEST[:-1]),
        (METHOD, 1, NONCE, b""),  # v1 signed uploads over an empty digest: no longer
    ],
)
def test_ambiguous_inputs_are_refused(
    method: str, timestamp: int, nonce: str, digest: bytes
) -> None:
    signed_bytes(METHOD, 1, NONCE, AUDIENCE, DIGEST)  # control
    with pytest.raises(ValueError, match="must"):
        signed_bytes(method, timestamp, nonce, AUDIENCE, digest)
    with pytest.raises(ValueError, match="audience must"):
        signed_bytes(METHOD, 1, NONCE, AUDIENCE[:-1], DIGEST)


def test_hash_matches_the_curve() -> None:
    assert isinstance(hash_for_curve(ec.SECP256R1()), hashes.SHA256)
    assert isinstance(hash_for_curve(ec.SECP384R1()), hashes.SHA384)
    assert isinstance(hash_for_curve(ec.SECP521R1()), hashes.SHA512)
    with pytest.raises(ValueError, match="P-256, P-384 or P-521"):
        hash_for_curve(ec.SECP224R1())


def test_timestamp_is_milliseconds_since_the_epoch() -> None:
    assert timestamp_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert timestamp_ms(NOW) == 1_748_779_200_250
    plus_two = timezone(timedelta(hours=2))
    assert timestamp_ms(NOW.astimezone(plus_two)) == timestamp_ms(NOW)
    with pytest.raises(ValueError, match="aware"):
        timestamp_ms(datetime(2025, 6, 1, 12))  # naive: refused


def test_body_digest_is_sha256_of_the_serialized_request() -> None:
    assert body_digest(b"abc") == hashlib.sha256(b"abc").digest()
    assert body_digest(b"abc") != body_digest(b"abd")


@pytest.mark.parametrize("bits", [256, 384, 521])
def test_sign_call_metadata_verifies_over_signed_bytes(
    ssh_keys: dict[int, ec.EllipticCurvePrivateKey], bits: int
) -> None:
    key = ssh_keys[bits]
    metadata = dict(sign_call(key, METHOD, DIGEST, NOW, AUDIENCE))
    assert tuple(metadata) == SIGNATURE_METADATA_KEYS
    assert base64.b64decode(metadata[PUBLIC_KEY_METADATA_KEY]) == public_key_der(key)
    assert metadata[TIMESTAMP_METADATA_KEY] == "1748779200250"
    assert metadata[AUDIENCE_METADATA_KEY] == AUDIENCE.hex()
    nonce = metadata[NONCE_METADATA_KEY]
    assert len(nonce) == 32
    assert nonce == nonce.lower()
    int(nonce, 16)
    signature = base64.b64decode(metadata[SIGNATURE_METADATA_KEY])
    stamp = 1_748_779_200_250
    assert verify(key.public_key(), signature, signed_bytes(METHOD, stamp, nonce, AUDIENCE, DIGEST))
    # Negative controls: the same signature over another call's bytes does not verify.
    assert not verify(key.public_key(), signature, signed_bytes(METHOD, 1, nonce, AUDIENCE, DIGEST))
    other_body = signed_bytes(METHOD, stamp, nonce, AUDIENCE, body_digest(b"x"))
    assert not verify(key.public_key(), signature, other_body)
    other_link = signed_bytes(METHOD, stamp, nonce, OTHER_LINK, DIGEST)
    assert not verify(key.public_key(), signature, other_link)


def test_a_signature_over_another_encoding_does_not_verify() -> None:
    """A signer that built its own message (Flower's timestamp-only one, or the same fields
    joined differently) produces signatures the shared definition rejects."""
    key = ec.generate_private_key(ec.SECP384R1())
    algorithm = ec.ECDSA(hashes.SHA384())
    timestamp = timestamp_ms(NOW)
    message = signed_bytes(METHOD, timestamp, NONCE, AUDIENCE, DIGEST)
    assert verify(key.public_key(), key.sign(message, algorithm), message)  # control
    v1 = b"flwrmtls-call-v1\x00" + message[len(SIGNING_DOMAIN) : -2 * len(DIGEST)] + DIGEST
    others = [
        str(timestamp).encode(),  # Flower: the timestamp alone
        b"|".join((METHOD.encode(), str(timestamp).encode(), NONCE.encode(), DIGEST)),
        message[len(SIGNING_DOMAIN) :],  # without the domain
        v1,  # the v1 encoding: no audience
    ]
    for other in others:
        assert not verify(key.public_key(), key.sign(other, algorithm), message)


def test_every_call_gets_a_fresh_nonce() -> None:
    signer = CallSigner(ec.generate_private_key(ec.SECP256R1()))
    nonces = {
        dict(signer.metadata(METHOD, DIGEST, NOW, AUDIENCE))[NONCE_METADATA_KEY] for _ in range(50)
    }
    assert len(nonces) == 50
    assert len(new_nonce()) == 32


def test_call_signer_encodes_its_key_once_and_matches_sign_call(
    ssh_keys: dict[int, ec.EllipticCurvePrivateKey],
) -> None:
    key = ssh_keys[384]
    signer = CallSigner(key)
    assert signer.encoded_public_key == encode_public_key(key.public_key())
    by_signer = signer.metadata(METHOD, DIGEST, NOW, AUDIENCE, nonce=NONCE)
    by_function = sign_call(key, METHOD, DIGEST, NOW, AUDIENCE, nonce=NONCE)
    # ECDSA signatures are randomized: the first four entries agree, both signatures verify.
    assert by_signer[:4] == by_function[:4]
    message = signed_bytes(METHOD, timestamp_ms(NOW), NONCE, AUDIENCE, DIGEST)
    for metadata in (by_signer, by_function):
        assert verify(key.public_key(), base64.b64decode(metadata[4][1]), message)


def test_signer_refuses_an_unsupported_curve() -> None:
    CallSigner(ec.generate_private_key(ec.SECP521R1()))  # control
    with pytest.raises(ValueError, match="unsupported curve"):
        CallSigner(ec.generate_private_key(ec.SECP224R1()))


def test_metadata_round_trips_into_what_the_authenticator_sees() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    metadata = sign_call(key, METHOD, DIGEST, NOW, AUDIENCE, nonce=NONCE)
    unrelated = (("user-agent", "grpc-python"), ("flwrmtls-run-token", "t"))
    found = key_signature_from_metadata((*unrelated, *metadata), DIGEST)
    assert found is not None
    assert found.public_key == encode_public_key(key.public_key())
    assert found.timestamp == str(timestamp_ms(NOW))
    assert found.nonce == NONCE
    assert found.audience == AUDIENCE.hex()
    assert found.signature == dict(metadata)[SIGNATURE_METADATA_KEY]
    assert found.body_digest == DIGEST

    assert key_signature_from_metadata(unrelated, DIGEST) is None
    repeated = key_signature_from_metadata((*metadata, (NONCE_METADATA_KEY, "f" * 32)), DIGEST)
    assert repeated is not None
    assert repeated.nonce == ""
    binary = key_signature_from_metadata((*metadata[:4], (SIGNATURE_METADATA_KEY, b"x")), DIGEST)
    assert binary is not None
    assert binary.signature == ""
    assert binary.nonce == NONCE


def test_key_encoding_is_base64_of_the_der_subject_public_key_info() -> None:
    key = ec.generate_private_key(ec.SECP521R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64decode(encode_public_key(key), validate=True) == der
    assert serialization.load_der_public_key(der) == key


def test_audience_is_sha256_of_the_server_key_not_the_certificate(tmp_path: Path) -> None:
    """A certificate renewed with the same key is the same link; a new key is another."""
    pki = make_test_pki(tmp_path)
    [server] = x509.load_pem_x509_certificates(pki.paths("server")[0].read_bytes())[:1]
    spki = server.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert audience_of(server) == hashlib.sha256(spki).digest()
    key = serialization.load_pem_private_key(pki.paths("server")[1].read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    renewed = (  # a renewal with the same key (self-signed here: only the key matters)
        x509.CertificateBuilder()
        .subject_name(server.subject)
        .issuer_name(server.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(server.not_valid_before_utc)
        .not_valid_after(server.not_valid_after_utc + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    assert renewed.serial_number != server.serial_number
    assert audience_of(renewed) == audience_of(server)
    new_key = pki.ca.issue_server("server-2")
    assert audience_of(new_key.certificate) != audience_of(server)
    assert parse_audience(audience_text(AUDIENCE)) == AUDIENCE
    for malformed in ("", AUDIENCE.hex().upper(), AUDIENCE.hex()[:-1], "g" * 64):
        with pytest.raises(ValueError, match="audience"):
            parse_audience(malformed)


def test_an_uploads_declaration_names_its_object_and_size() -> None:
    declared = object_declaration(OBJECT_ID, 11)
    assert parse_object_declaration(declared) == (OBJECT_ID, 11)
    digest = declared_object_digest(declared)
    assert len(digest) == 32
    others = [
        object_declaration(OBJECT_ID, 12),
        object_declaration(hashlib.sha256(b"other bytes").hexdigest(), 11),
    ]
    assert digest not in {declared_object_digest(other) for other in others}
    assert digest != body_digest(declared.encode())  # domain-separated from a request body
    for malformed in (
        f"{OBJECT_ID}:011", f"{OBJECT_ID}:-1", f"{OBJECT_ID.upper()}:1", OBJECT_ID, f"{OBJECT_ID}:",
        f"{OBJECT_ID[:-1]}:1", f"{OBJECT_ID}:1:2",
    ):  # fmt: skip
        with pytest.raises(ValueError, match="malformed"):
            declared_object_digest(malformed)
