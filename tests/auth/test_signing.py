"""The one definition of what a node signs, checked from both ends with real keys.

The verifying side here is cryptography's own ``verify`` over :func:`signed_bytes`, not the
authenticator (tests/auth/test_eckey.py covers that), so a drift in either would show.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.keys import load_node_private_key, public_key_der
from flwrmtls.auth.signing import (
    NONCE_METADATA_KEY,
    PUBLIC_KEY_METADATA_KEY,
    SIGNATURE_METADATA_KEY,
    SIGNATURE_METADATA_KEYS,
    SIGNING_DOMAIN,
    TIMESTAMP_METADATA_KEY,
    CallSigner,
    body_digest,
    encode_public_key,
    hash_for_curve,
    key_signature_from_metadata,
    new_nonce,
    sign_call,
    signed_bytes,
    timestamp_ms,
)

METHOD = "/flwrmtls.proto.Fleet/PullMessages"
NOW = datetime(2025, 6, 1, 12, 0, 0, 250_000, tzinfo=UTC)
NONCE = "0123456789abcdef0123456789abcdef"
DIGEST = body_digest(b"\x08\x01\x12\x03abc")


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
    assert signed_bytes(METHOD, 1_748_779_200_250, NONCE, DIGEST) == (
        b"flwrmtls-call-v1\x00/flwrmtls.proto.Fleet/PullMessages\x00"
        b"1748779200250\x00" + NONCE.encode() + b"\x00" + DIGEST
    )
    assert signed_bytes(METHOD, 0, NONCE, b"").startswith(SIGNING_DOMAIN)
    assert signed_bytes(METHOD, 0, NONCE, b"").endswith(b"\x000\x00" + NONCE.encode() + b"\x00")


def test_each_field_changes_the_signed_bytes() -> None:
    base = signed_bytes(METHOD, 1000, NONCE, DIGEST)
    assert base == signed_bytes(METHOD, 1000, NONCE, DIGEST)  # control: deterministic
    variants = [
        signed_bytes("/flwrmtls.proto.Fleet/PushMessages", 1000, NONCE, DIGEST),
        signed_bytes(METHOD, 1001, NONCE, DIGEST),
        signed_bytes(METHOD, 1000, "f" * 32, DIGEST),
        signed_bytes(METHOD, 1000, NONCE, body_digest(b"other body")),
        signed_bytes(METHOD, 1000, NONCE, b""),
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
    ],
)
def test_ambiguous_inputs_are_refused(
    method: str, timestamp: int, nonce: str, digest: bytes
) -> None:
    signed_bytes(METHOD, 1, NONCE, DIGEST)  # control
    with pytest.raises(ValueError, match="must"):
        signed_bytes(method, timestamp, nonce, digest)


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
    metadata = dict(sign_call(key, METHOD, DIGEST, NOW))
    assert tuple(metadata) == SIGNATURE_METADATA_KEYS
    assert base64.b64decode(metadata[PUBLIC_KEY_METADATA_KEY]) == public_key_der(key)
    assert metadata[TIMESTAMP_METADATA_KEY] == "1748779200250"
    nonce = metadata[NONCE_METADATA_KEY]
    assert len(nonce) == 32
    assert nonce == nonce.lower()
    int(nonce, 16)
    signature = base64.b64decode(metadata[SIGNATURE_METADATA_KEY])
    message = signed_bytes(METHOD, 1_748_779_200_250, nonce, DIGEST)
    assert verify(key.public_key(), signature, message)
    # Negative controls: the same signature over another call's bytes does not verify.
    assert not verify(key.public_key(), signature, signed_bytes(METHOD, 1, nonce, DIGEST))
    other_body = signed_bytes(METHOD, 1_748_779_200_250, nonce, body_digest(b"x"))
    assert not verify(key.public_key(), signature, other_body)


def test_a_signature_over_another_encoding_does_not_verify() -> None:
    """A signer that built its own message (Flower's timestamp-only one, or the same fields
    joined differently) produces signatures the shared definition rejects."""
    key = ec.generate_private_key(ec.SECP384R1())
    algorithm = ec.ECDSA(hashes.SHA384())
    timestamp = timestamp_ms(NOW)
    message = signed_bytes(METHOD, timestamp, NONCE, DIGEST)
    assert verify(key.public_key(), key.sign(message, algorithm), message)  # control
    others = [
        str(timestamp).encode(),  # Flower: the timestamp alone
        b"|".join((METHOD.encode(), str(timestamp).encode(), NONCE.encode(), DIGEST)),
        message[len(SIGNING_DOMAIN) :],  # without the domain
        message.replace(b"v1", b"v2"),
    ]
    for other in others:
        assert not verify(key.public_key(), key.sign(other, algorithm), message)


def test_every_call_gets_a_fresh_nonce() -> None:
    signer = CallSigner(ec.generate_private_key(ec.SECP256R1()))
    nonces = {dict(signer.metadata(METHOD, DIGEST, NOW))[NONCE_METADATA_KEY] for _ in range(50)}
    assert len(nonces) == 50
    assert len(new_nonce()) == 32


def test_call_signer_encodes_its_key_once_and_matches_sign_call(
    ssh_keys: dict[int, ec.EllipticCurvePrivateKey],
) -> None:
    key = ssh_keys[384]
    signer = CallSigner(key)
    assert signer.encoded_public_key == encode_public_key(key.public_key())
    by_signer = signer.metadata(METHOD, DIGEST, NOW, nonce=NONCE)
    by_function = sign_call(key, METHOD, DIGEST, NOW, nonce=NONCE)
    # ECDSA signatures are randomized: the first three entries agree, both signatures verify.
    assert by_signer[:3] == by_function[:3]
    message = signed_bytes(METHOD, timestamp_ms(NOW), NONCE, DIGEST)
    for metadata in (by_signer, by_function):
        assert verify(key.public_key(), base64.b64decode(metadata[3][1]), message)


def test_signer_refuses_an_unsupported_curve() -> None:
    CallSigner(ec.generate_private_key(ec.SECP521R1()))  # control
    with pytest.raises(ValueError, match="unsupported curve"):
        CallSigner(ec.generate_private_key(ec.SECP224R1()))


def test_metadata_round_trips_into_what_the_authenticator_sees() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    metadata = sign_call(key, METHOD, DIGEST, NOW, nonce=NONCE)
    unrelated = (("user-agent", "grpc-python"), ("flwrmtls-run-token", "t"))
    found = key_signature_from_metadata((*unrelated, *metadata), DIGEST)
    assert found is not None
    assert found.public_key == encode_public_key(key.public_key())
    assert found.timestamp == str(timestamp_ms(NOW))
    assert found.nonce == NONCE
    assert found.signature == dict(metadata)[SIGNATURE_METADATA_KEY]
    assert found.body_digest == DIGEST

    assert key_signature_from_metadata(unrelated, DIGEST) is None
    repeated = key_signature_from_metadata((*metadata, (NONCE_METADATA_KEY, "f" * 32)), DIGEST)
    assert repeated is not None
    assert repeated.nonce == ""
    binary = key_signature_from_metadata((*metadata[:3], (SIGNATURE_METADATA_KEY, b"x")), DIGEST)
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
