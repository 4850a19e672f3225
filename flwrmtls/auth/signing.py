"""What an EC-key node signs: the one definition the node (signer) and the link (verifier) share.

Flower's node signature covers only a timestamp, so a captured call can be replayed, with any
body, for as long as the timestamp is accepted. Here each call's signature binds:

* the full method name (``/flwrmtls.proto.Fleet/PullMessages``): a signature for one RPC is
  useless for another;
* a timestamp, milliseconds since the epoch: the link accepts it only within a window;
* a nonce, 128 random bits as 32 lowercase hex digits: the link refuses one it has seen;
* the SHA-256 of the serialized request body: the body cannot be swapped.

The signed bytes are a domain-separated, NUL-separated encoding (:func:`signed_bytes`); the
first three fields cannot contain NUL and the digest comes last, so no two calls share an
encoding. The signature is ECDSA with the hash matching the key's curve (P-256/SHA-256,
P-384/SHA-384, P-521/SHA-512), DER-encoded. Four metadata entries carry it all.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.authenticator import KeySignature

__all__ = [
    "NONCE_METADATA_KEY",
    "PUBLIC_KEY_METADATA_KEY",
    "SIGNATURE_METADATA_KEY",
    "SIGNATURE_METADATA_KEYS",
    "SIGNING_DOMAIN",
    "TIMESTAMP_METADATA_KEY",
    "CallSigner",
    "body_digest",
    "encode_public_key",
    "hash_for_curve",
    "is_valid_nonce",
    "key_signature_from_metadata",
    "new_nonce",
    "sign_call",
    "signed_bytes",
    "timestamp_ms",
]

PUBLIC_KEY_METADATA_KEY = "flwrmtls-key"
"""Base64 of the node's SubjectPublicKeyInfo (DER)."""
TIMESTAMP_METADATA_KEY = "flwrmtls-timestamp"
"""Milliseconds since the epoch, decimal, no leading zeros."""
NONCE_METADATA_KEY = "flwrmtls-nonce"
"""32 lowercase hex digits: 128 random bits, fresh for each call."""
SIGNATURE_METADATA_KEY = "flwrmtls-signature"
"""Base64 of the DER ECDSA signature over :func:`signed_bytes`."""
SIGNATURE_METADATA_KEYS = (
    PUBLIC_KEY_METADATA_KEY,
    TIMESTAMP_METADATA_KEY,
    NONCE_METADATA_KEY,
    SIGNATURE_METADATA_KEY,
)

SIGNING_DOMAIN = b"flwrmtls-call-v1\x00"
"""Prefix of every signed message: a signature made for anything else never verifies here."""

_NONCE = re.compile(r"[0-9a-f]{32}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_DIGEST_SIZES = (0, hashlib.sha256().digest_size)
"""A SHA-256 of the request body, or empty for client-streaming calls."""


def body_digest(serialized_request: bytes) -> bytes:
    """SHA-256 of the request exactly as serialized on the wire."""
    return hashlib.sha256(serialized_request).digest()


def new_nonce() -> str:
    return secrets.token_hex(16)


def is_valid_nonce(nonce: str) -> bool:
    return _NONCE.fullmatch(nonce) is not None


def timestamp_ms(now: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    if now.tzinfo is None:
        raise ValueError("timestamp_ms needs an aware datetime (UTC)")
    return (now - _EPOCH) // _MILLISECOND


def signed_bytes(method: str, timestamp_ms: int, nonce: str, body_digest: bytes) -> bytes:
    """The message a node signs for one call, and the link verifies.

    ``SIGNING_DOMAIN || method || NUL || decimal timestamp || NUL || nonce || NUL || digest``.
    Raises ValueError for inputs that would make the encoding ambiguous.
    """
    if "\x00" in method or not method.startswith("/"):
        raise ValueError("method must be a full gRPC method name (/package.Service/Method)")
    if timestamp_ms < 0:
        raise ValueError("timestamp must not be negative")
    if not is_valid_nonce(nonce):
        raise ValueError("nonce must be 32 lowercase hex digits")
    if len(body_digest) not in _DIGEST_SIZES:
        raise ValueError("body digest must be a SHA-256 digest (or empty)")
    return b"".join(
        (
            SIGNING_DOMAIN,
            method.encode("utf-8"),
            b"\x00",
            str(timestamp_ms).encode("ascii"),
            b"\x00",
            nonce.encode("ascii"),
            b"\x00",
            body_digest,
        )
    )


def hash_for_curve(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    """ECDSA's hash for each supported curve: the one matching the curve's size."""
    if isinstance(curve, ec.SECP256R1):
        return hashes.SHA256()
    if isinstance(curve, ec.SECP384R1):
        return hashes.SHA384()
    if isinstance(curve, ec.SECP521R1):
        return hashes.SHA512()
    raise ValueError(f"unsupported curve {curve.name}: use P-256, P-384 or P-521")


def encode_public_key(key: ec.EllipticCurvePublicKey) -> str:
    """The ``flwrmtls-key`` value: base64 of the SubjectPublicKeyInfo, DER."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


class CallSigner:
    """A node's signer: encodes its public key once, then signs each call."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._algorithm = ec.ECDSA(hash_for_curve(key.curve))
        self._encoded_public_key = encode_public_key(key.public_key())

    @property
    def encoded_public_key(self) -> str:
        return self._encoded_public_key

    def metadata(
        self, method: str, body_digest: bytes, now: datetime, nonce: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        """The four metadata entries for one call (a fresh nonce unless one is given)."""
        nonce = new_nonce() if nonce is None else nonce
        timestamp = timestamp_ms(now)
        message = signed_bytes(method, timestamp, nonce, body_digest)
        signature = self._key.sign(message, self._algorithm)
        return (
            (PUBLIC_KEY_METADATA_KEY, self._encoded_public_key),
            (TIMESTAMP_METADATA_KEY, str(timestamp)),
            (NONCE_METADATA_KEY, nonce),
            (SIGNATURE_METADATA_KEY, base64.b64encode(signature).decode("ascii")),
        )


def sign_call(
    key: ec.EllipticCurvePrivateKey,
    method: str,
    body_digest: bytes,
    now: datetime,
    nonce: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The metadata signing one call. A node signing many calls should keep a CallSigner."""
    return CallSigner(key).metadata(method, body_digest, now, nonce)


def key_signature_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]], body_digest: bytes
) -> KeySignature | None:
    """What the link hands the authenticator: None if the call carries none of the four
    entries. A missing, repeated or binary entry becomes "", which the authenticator refuses.
    """
    values: dict[str, list[str | bytes]] = {}
    for name, value in metadata:
        if name in SIGNATURE_METADATA_KEYS:
            values.setdefault(name, []).append(value)
    if not values:
        return None

    def single(name: str) -> str:
        found = values.get(name, [])
        return found[0] if len(found) == 1 and isinstance(found[0], str) else ""

    return KeySignature(
        public_key=single(PUBLIC_KEY_METADATA_KEY),
        timestamp=single(TIMESTAMP_METADATA_KEY),
        nonce=single(NONCE_METADATA_KEY),
        signature=single(SIGNATURE_METADATA_KEY),
        body_digest=body_digest,
    )
