"""What an EC-key node signs: the one definition the node (signer) and the link (verifier) share.

Flower's node signature covers only a timestamp, so a captured call can be replayed, with any
body, for as long as the timestamp is accepted. Here each call's signature binds:

* the full method name (``/flwrmtls.proto.Fleet/PullMessages``): a signature for one RPC is
  useless for another;
* a timestamp, milliseconds since the epoch: the link accepts it only within a window;
* a nonce, 128 random bits as 32 lowercase hex digits: the link refuses one it has seen;
* the **audience**: the SHA-256 of the SubjectPublicKeyInfo of the server certificate of the
  link the node meant to call (:func:`audience_of`), which the node learns from the TLS layer
  itself, never from a message. A link that a node also talks to (or trusts by mistake)
  cannot replay what the node signed for it to another link: the other link's key differs;
* the body: the SHA-256 of the serialized request for calls with one request; for
  client-streaming calls (object uploads) the digest of the object's declaration
  (:func:`declared_object_digest`: its content hash and size, sent as ``flwrmtls-object``
  metadata), which the link holds every chunk of the stream to.

The signed bytes are a domain-separated encoding (:func:`signed_bytes`); the first three fields
are NUL-terminated and cannot contain NUL, the audience and the digest are 32 bytes each and
come last, so no two calls share an encoding. The signature is ECDSA with the hash matching
the key's curve (P-256/SHA-256, P-384/SHA-384, P-521/SHA-512), DER-encoded. Five metadata
entries carry it all.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.auth.authenticator import KeySignature
from flwrmtls.wire.metadata import OBJECT_KEY, object_declaration

__all__ = [
    "AUDIENCE_METADATA_KEY",
    "AUDIENCE_SIZE",
    "NONCE_METADATA_KEY",
    "OBJECT_METADATA_KEY",
    "PUBLIC_KEY_METADATA_KEY",
    "SIGNATURE_METADATA_KEY",
    "SIGNATURE_METADATA_KEYS",
    "SIGNING_DOMAIN",
    "TIMESTAMP_METADATA_KEY",
    "CallSigner",
    "audience_of",
    "audience_text",
    "body_digest",
    "declared_object_digest",
    "encode_public_key",
    "hash_for_curve",
    "is_valid_nonce",
    "key_signature_from_metadata",
    "new_nonce",
    "object_declaration",
    "parse_audience",
    "parse_object_declaration",
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
AUDIENCE_METADATA_KEY = "flwrmtls-audience"
"""64 lowercase hex digits: the audience the node signed for (:func:`audience_of`). Sent so the
link can say ``wrong-audience`` instead of ``bad-signature``; the signature covers it."""
SIGNATURE_METADATA_KEY = "flwrmtls-signature"
"""Base64 of the DER ECDSA signature over :func:`signed_bytes`."""
SIGNATURE_METADATA_KEYS = (
    PUBLIC_KEY_METADATA_KEY,
    TIMESTAMP_METADATA_KEY,
    NONCE_METADATA_KEY,
    AUDIENCE_METADATA_KEY,
    SIGNATURE_METADATA_KEY,
)
OBJECT_METADATA_KEY = OBJECT_KEY
"""A client-streaming upload's declaration: ``<sha256 hex>:<size>`` (:func:`object_declaration`)."""

SIGNING_DOMAIN = b"flwrmtls-call-v2\x00"
"""Prefix of every signed message: a signature made for anything else never verifies here.
(v1 signed no audience and an empty digest for uploads; v2 signatures do not verify as v1.)"""
_OBJECT_DOMAIN = b"flwrmtls-object-v1\x00"

AUDIENCE_SIZE = hashlib.sha256().digest_size
_NONCE = re.compile(r"[0-9a-f]{32}")
_AUDIENCE = re.compile(r"[0-9a-f]{64}")
_DECLARATION = re.compile(r"([0-9a-f]{64}):(0|[1-9][0-9]{0,15})")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_DIGEST_SIZE = hashlib.sha256().digest_size


def body_digest(serialized_request: bytes) -> bytes:
    """SHA-256 of the request exactly as serialized on the wire."""
    return hashlib.sha256(serialized_request).digest()


def audience_of(certificate: x509.Certificate) -> bytes:
    """A link's audience: SHA-256 of its server certificate's SubjectPublicKeyInfo (DER).

    The key, not the certificate: a certificate renewed with the same key is the same link.
    """
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def audience_text(audience: bytes) -> str:
    """How an audience is written in metadata and messages: 64 lowercase hex digits."""
    return audience.hex()


def parse_audience(text: str) -> bytes:
    """The audience a ``flwrmtls-audience`` value names; ValueError if malformed."""
    if not _AUDIENCE.fullmatch(text):
        raise ValueError("malformed audience (expected 64 lowercase hex digits)")
    return bytes.fromhex(text)


def parse_object_declaration(declaration: str) -> tuple[str, int]:
    """(object id, size) of a declaration; ValueError if malformed."""
    match = _DECLARATION.fullmatch(declaration)
    if match is None:
        raise ValueError(
            "malformed object declaration (expected 64 lowercase hex digits, ':', the size)"
        )
    return match.group(1), int(match.group(2))


def declared_object_digest(declaration: str) -> bytes:
    """The digest a client-streaming call signs in place of a body: the object's declaration.

    The object id is the SHA-256 of its bytes (the link's store checks it), so signing the id
    and size signs the bytes. ValueError if the declaration is malformed.
    """
    parse_object_declaration(declaration)
    return hashlib.sha256(_OBJECT_DOMAIN + declaration.encode("ascii")).digest()


def new_nonce() -> str:
    return secrets.token_hex(16)


def is_valid_nonce(nonce: str) -> bool:
    return _NONCE.fullmatch(nonce) is not None


def timestamp_ms(now: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    if now.tzinfo is None:
        raise ValueError("timestamp_ms needs an aware datetime (UTC)")
    return (now - _EPOCH) // _MILLISECOND


def signed_bytes(
    method: str, timestamp_ms: int, nonce: str, audience: bytes, body_digest: bytes
) -> bytes:
    """The message a node signs for one call, and the link verifies.

    ``SIGNING_DOMAIN || method || NUL || decimal timestamp || NUL || nonce || NUL || audience
    || digest``. Raises ValueError for inputs that would make the encoding ambiguous.
    """
    if "\x00" in method or not method.startswith("/"):
        raise ValueError("method must be a full gRPC method name (/package.Service/Method)")
    if timestamp_ms < 0:
        raise ValueError("timestamp must not be negative")
    if not is_valid_nonce(nonce):
        raise ValueError("nonce must be 32 lowercase hex digits")
    if len(audience) != AUDIENCE_SIZE:
        raise ValueError("audience must be a SHA-256 digest (the link's server key)")
    if len(body_digest) != _DIGEST_SIZE:
        raise ValueError(
            "body digest must be a SHA-256 digest (of the request, or of the object declared)"
        )
    return b"".join(
        (
            SIGNING_DOMAIN,
            method.encode("utf-8"),
            b"\x00",
            str(timestamp_ms).encode("ascii"),
            b"\x00",
            nonce.encode("ascii"),
            b"\x00",
            audience,
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
        self,
        method: str,
        body_digest: bytes,
        now: datetime,
        audience: bytes,
        nonce: str | None = None,
    ) -> tuple[tuple[str, str], ...]:
        """The five metadata entries for one call to the link ``audience`` names (a fresh
        nonce unless one is given)."""
        nonce = new_nonce() if nonce is None else nonce
        timestamp = timestamp_ms(now)
        message = signed_bytes(method, timestamp, nonce, audience, body_digest)
        signature = self._key.sign(message, self._algorithm)
        return (
            (PUBLIC_KEY_METADATA_KEY, self._encoded_public_key),
            (TIMESTAMP_METADATA_KEY, str(timestamp)),
            (NONCE_METADATA_KEY, nonce),
            (AUDIENCE_METADATA_KEY, audience_text(audience)),
            (SIGNATURE_METADATA_KEY, base64.b64encode(signature).decode("ascii")),
        )


def sign_call(
    key: ec.EllipticCurvePrivateKey,
    method: str,
    body_digest: bytes,
    now: datetime,
    audience: bytes,
    nonce: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The metadata signing one call. A node signing many calls should keep a CallSigner."""
    return CallSigner(key).metadata(method, body_digest, now, audience, nonce)


def key_signature_from_metadata(
    metadata: Iterable[tuple[str, str | bytes]], body_digest: bytes
) -> KeySignature | None:
    """What the link hands the authenticator: None if the call carries none of the five
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
        audience=single(AUDIENCE_METADATA_KEY),
        signature=single(SIGNATURE_METADATA_KEY),
        body_digest=body_digest,
    )
