"""The EC-key authenticator as pure calls, with keys made by ssh-keygen and by cryptography.

Each refusal sits beside its negative control: the same key and setup with an honest call
passes. The clock is the ``now`` passed in, so tests jump instead of sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    AuthMethod,
    CallCredentials,
    KeySignature,
    Principal,
    RefusalReason,
    TryLater,
)
from flwrmtls.auth.callsigning import (
    CallSigner,
    body_digest,
    declared_object_digest,
    key_signature_from_metadata,
    new_nonce,
    signed_bytes,
    timestamp_ms,
)
from flwrmtls.auth.eckey import Audiences, EcKeyAuthenticator, KeyStatus, Registration
from flwrmtls.auth.identity import PrincipalKind
from flwrmtls.auth.keyformats import (
    key_fingerprint,
    load_node_private_key,
    load_public_key_file,
    node_id_for_key,
    public_key_der,
)
from flwrmtls.auth.replay import ReplayLimits

METHOD = "/flwrmtls.proto.Fleet/PullMessages"
PUSH = "/flwrmtls.proto.Fleet/PushObject"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BODY = body_digest(b"\x08\x2a")
AUDIENCE = hashlib.sha256(b"this link's server key").digest()
LINK = Audiences(AUDIENCE)
PEER = "ipv4:10.0.0.7:40000"


def ssh_keygen(directory: Path, name: str, *options: str) -> Path:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", *options, "-N", "", "-C", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def ssh_fingerprint(public_file: Path) -> str:
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return shown.split()[1]


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Node keys as Flower users make them (``ssh-keygen -t ecdsa -b 384 -N "" -f ...``)."""
    directory = tmp_path_factory.mktemp("node-keys")
    files = {
        f"p{bits}": ssh_keygen(directory, f"node_{bits}", "-t", "ecdsa", "-b", str(bits))
        for bits in (256, 384, 521)
    }
    files["rsa"] = ssh_keygen(directory, "node_rsa", "-t", "rsa", "-b", "2048")
    files["ed25519"] = ssh_keygen(directory, "node_ed25519", "-t", "ed25519")
    return files


@pytest.fixture(scope="module")
def node_key(key_files: dict[str, Path]) -> ec.EllipticCurvePrivateKey:
    return load_node_private_key(key_files["p384"], "--auth-supernode-private-key")


def call(
    signer: CallSigner,
    *,
    method: str = METHOD,
    digest: bytes = BODY,
    at: datetime = NOW,
    nonce: str | None = None,
) -> CallCredentials:
    """A call as the link sees it after a node signed (method, digest, at)."""
    metadata = signer.metadata(method, digest, at, AUDIENCE, nonce)
    return received(metadata, method=method, digest=digest)


def received(
    metadata: tuple[tuple[str, str], ...], *, method: str = METHOD, digest: bytes = BODY
) -> CallCredentials:
    """What the link builds from the metadata, the method it routed and the body it read."""
    return CallCredentials(
        method, PEER, None, None, key_signature=key_signature_from_metadata(metadata, digest)
    )


def refused(
    auth: EcKeyAuthenticator, credentials: CallCredentials, now: datetime = NOW
) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        auth.authenticate(credentials, now)
    return caught.value


class Registry:
    """A link's registered keys, by SubjectPublicKeyInfo (what the state will hold)."""

    def __init__(self) -> None:
        self.status: dict[bytes, KeyStatus] = {}
        self.since: dict[bytes, datetime] = {}
        self.lookups = 0

    def __call__(self, der: bytes) -> Registration:
        self.lookups += 1
        since = self.since.get(der)
        return Registration(
            self.status.get(der, KeyStatus.UNKNOWN), since.timestamp() if since else 0.0
        )


def with_signature(credentials: CallCredentials, **changes: object) -> CallCredentials:
    assert credentials.key_signature is not None
    signature = replace(credentials.key_signature, **changes)  # type: ignore[arg-type]
    return replace(credentials, key_signature=signature)


# --- accepted ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["p256", "p384", "p521"])
def test_ssh_keygen_key_is_accepted_in_automatic_mode(
    key_files: dict[str, Path], name: str
) -> None:
    key = load_node_private_key(key_files[name], "--auth-supernode-private-key")
    principal = EcKeyAuthenticator(audiences=LINK).authenticate(call(CallSigner(key)), NOW)
    fingerprint = ssh_fingerprint(key_files[name].with_name(key_files[name].name + ".pub"))
    assert principal == Principal(
        kind=PrincipalKind.NODE,
        auth_method=AuthMethod.KEY,
        identity=fingerprint,
        organisation="",
        node_id=node_id_for_key(key),
        not_after=None,
        fingerprint=fingerprint,
    )


def test_cryptography_key_is_accepted_and_named_by_its_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    auth = EcKeyAuthenticator(audiences=LINK)
    first = auth.authenticate(call(CallSigner(key)), NOW)
    again = auth.authenticate(call(CallSigner(key)), NOW + timedelta(seconds=5))
    assert first == again  # the same node on every call
    other = auth.authenticate(call(CallSigner(ec.generate_private_key(ec.SECP256R1()))), NOW)
    assert other.node_id != first.node_id
    assert other.identity != first.identity


def test_registered_key_is_accepted_and_unknown_key_is_told_how_to_register(
    key_files: dict[str, Path], node_key: ec.EllipticCurvePrivateKey
) -> None:
    registry = Registry()
    auth = EcKeyAuthenticator(registry, audiences=LINK)
    signer = CallSigner(node_key)
    fingerprint = key_fingerprint(node_key)

    error = refused(auth, call(signer))
    assert error.reason is RefusalReason.UNREGISTERED_KEY
    assert error.message == (
        f"public key {fingerprint} is not registered: run "
        "`flwrmtls supernode register <its .pub file>`"
    )
    assert error.fingerprint == fingerprint
    assert signer.encoded_public_key[:40] not in error.message  # the key itself is not echoed

    public = load_public_key_file(key_files["p384"].with_name("node_384.pub"))
    registry.status[public_key_der(public)] = KeyStatus.REGISTERED
    principal = auth.authenticate(call(signer), NOW)
    assert principal.fingerprint == fingerprint
    assert principal.node_id == node_id_for_key(public)


def test_unregistered_node_is_refused_and_can_be_registered_again(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    registry = Registry()
    der = public_key_der(node_key)
    registry.status[der] = KeyStatus.REGISTERED
    auth = EcKeyAuthenticator(registry, audiences=LINK)
    signer = CallSigner(node_key)
    auth.authenticate(call(signer), NOW)  # control

    registry.status[der] = KeyStatus.UNREGISTERED
    refused_call = call(signer, at=NOW + timedelta(seconds=1))
    error = refused(auth, refused_call, NOW + timedelta(seconds=1))
    assert error.reason is RefusalReason.NODE_UNREGISTERED
    assert error.message == (
        f"node unregistered (key {key_fingerprint(node_key)}): an operator can re-admit it "
        "with `flwrmtls supernode register <its .pub file>`"
    )

    registry.status[der] = KeyStatus.REGISTERED
    registry.since[der] = NOW + timedelta(seconds=2)
    # Registered again: fresh calls pass, but the call refused while unregistered (never
    # recorded) predates the registration and cannot be replayed.
    auth.authenticate(call(signer, at=NOW + timedelta(seconds=2)), NOW + timedelta(seconds=2))
    later = NOW + timedelta(seconds=3)
    error = refused(auth, refused_call, later)
    assert error.reason is RefusalReason.STALE_TIMESTAMP
    assert error.message.startswith("signature predates the key's registration")


def test_registry_is_not_asked_for_a_call_whose_signature_fails(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    registry = Registry()
    auth = EcKeyAuthenticator(registry, audiences=LINK)
    forged = with_signature(call(CallSigner(node_key)), body_digest=body_digest(b"forged"))
    assert refused(auth, forged).reason is RefusalReason.BAD_SIGNATURE
    assert registry.lookups == 0
    assert refused(auth, call(CallSigner(node_key))).reason is RefusalReason.UNREGISTERED_KEY
    assert registry.lookups == 1


# --- the signature binds the call ---------------------------------------------------------


def test_no_signature_is_refused_naming_the_flag(node_key: ec.EllipticCurvePrivateKey) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    auth.authenticate(call(CallSigner(node_key)), NOW)  # control
    error = refused(auth, CallCredentials(METHOD, PEER, None, None))
    assert error.reason is RefusalReason.NO_SIGNATURE
    assert "--auth-supernode-private-key" in error.message
    assert error.fingerprint == ""


def test_tampered_signature_is_refused_and_does_not_burn_the_nonce(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    honest = call(CallSigner(node_key))
    assert honest.key_signature is not None
    raw = bytearray(base64.b64decode(honest.key_signature.signature))
    raw[-1] ^= 0x01
    tampered = with_signature(honest, signature=base64.b64encode(bytes(raw)).decode())
    error = refused(auth, tampered)
    assert error.reason is RefusalReason.BAD_SIGNATURE
    assert error.fingerprint == key_fingerprint(node_key)
    not_base64 = with_signature(honest, signature="!!!!")
    assert refused(auth, not_base64).reason is RefusalReason.BAD_SIGNATURE
    # Verification comes before the nonce is recorded: the honest call with that nonce passes.
    auth.authenticate(honest, NOW)


def test_body_changed_after_signing_is_refused(node_key: ec.EllipticCurvePrivateKey) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    metadata = CallSigner(node_key).metadata(METHOD, BODY, NOW, AUDIENCE)
    other_body = received(metadata, digest=body_digest(b"\x08\x2b"))
    assert refused(auth, other_body).reason is RefusalReason.BAD_SIGNATURE
    no_body = received(metadata, digest=b"")
    assert refused(auth, no_body).reason is RefusalReason.BAD_SIGNATURE
    auth.authenticate(received(metadata, digest=BODY), NOW)  # control: the body it signed


def test_signature_for_another_method_is_refused(node_key: ec.EllipticCurvePrivateKey) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    metadata = CallSigner(node_key).metadata(METHOD, BODY, NOW, AUDIENCE)
    elsewhere = received(metadata, method="/flwrmtls.proto.Fleet/PushMessages")
    assert refused(auth, elsewhere).reason is RefusalReason.BAD_SIGNATURE
    auth.authenticate(received(metadata, method=METHOD), NOW)  # control


def test_signature_over_another_encoding_is_refused(node_key: ec.EllipticCurvePrivateKey) -> None:
    """A signer with its own idea of the message (here Flower's: the timestamp alone) fails."""
    auth = EcKeyAuthenticator(audiences=LINK)
    signer = CallSigner(node_key)
    algorithm = ec.ECDSA(hashes.SHA384())
    nonce = new_nonce()
    timestamp = timestamp_ms(NOW)

    def signed_over(message: bytes) -> CallCredentials:
        signature = base64.b64encode(node_key.sign(message, algorithm)).decode()
        return CallCredentials(
            METHOD,
            PEER,
            None,
            None,
            key_signature=KeySignature(
                signer.encoded_public_key, str(timestamp), nonce, AUDIENCE.hex(), signature, BODY
            ),
        )

    flower_style = signed_over(str(timestamp).encode())
    assert refused(auth, flower_style).reason is RefusalReason.BAD_SIGNATURE
    message = signed_bytes(METHOD, timestamp, nonce, AUDIENCE, BODY)
    wrong_hash = base64.b64encode(node_key.sign(message, ec.ECDSA(hashes.SHA256()))).decode()
    assert refused(auth, with_signature(flower_style, signature=wrong_hash)).reason is (
        RefusalReason.BAD_SIGNATURE
    )
    auth.authenticate(signed_over(message), NOW)  # control


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "+1748779200000"),
        ("timestamp", "01748779200000"),
        ("timestamp", "1_748_779_200_000"),
        ("timestamp", "1748779200000.0"),
        ("nonce", "0123456789ABCDEF0123456789ABCDEF"),
        ("nonce", "0123456789abcdef"),
    ],
)
def test_malformed_timestamp_or_nonce_is_refused(
    node_key: ec.EllipticCurvePrivateKey, field: str, value: str
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    honest = call(CallSigner(node_key))
    error = refused(auth, with_signature(honest, **{field: value}))
    assert error.reason is RefusalReason.BAD_SIGNATURE
    assert "malformed" in error.message
    auth.authenticate(honest, NOW)  # control


@pytest.mark.parametrize("field", ["public_key", "timestamp", "nonce", "signature"])
def test_incomplete_signature_is_refused(node_key: ec.EllipticCurvePrivateKey, field: str) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    honest = call(CallSigner(node_key))
    error = refused(auth, with_signature(honest, **{field: ""}))
    assert error.reason is RefusalReason.BAD_SIGNATURE
    assert "incomplete" in error.message
    auth.authenticate(honest, NOW)  # control


# --- time -----------------------------------------------------------------------------------


def test_timestamp_too_old_is_refused_saying_by_how_much(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    signer = CallSigner(node_key)
    auth.authenticate(call(signer, at=NOW - timedelta(seconds=60)), NOW)  # edge: accepted
    old = call(signer, at=NOW - timedelta(seconds=75, milliseconds=300))
    error = refused(auth, old)
    assert error.reason is RefusalReason.STALE_TIMESTAMP
    assert error.message.startswith("signature timestamp too old: 75.3 s behind")
    assert "check the node's clock" in error.message
    assert error.fingerprint == key_fingerprint(node_key)
    just_over = call(signer, at=NOW - timedelta(seconds=60, milliseconds=1))
    assert refused(auth, just_over).reason is RefusalReason.STALE_TIMESTAMP


def test_timestamp_too_far_ahead_is_refused_saying_by_how_much(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    signer = CallSigner(node_key)
    auth.authenticate(call(signer, at=NOW + timedelta(seconds=5)), NOW)  # edge: accepted
    error = refused(auth, call(signer, at=NOW + timedelta(seconds=90)))
    assert error.reason is RefusalReason.STALE_TIMESTAMP
    assert error.message.startswith("signature timestamp too far ahead: 90.0 s ahead")
    # Ahead is bounded tightly, apart from the window behind: 5 s by default.
    just_over = call(signer, at=NOW + timedelta(seconds=5, milliseconds=1))
    assert refused(auth, just_over).reason is RefusalReason.STALE_TIMESTAMP


def test_window_is_configurable(node_key: ec.EllipticCurvePrivateKey) -> None:
    auth = EcKeyAuthenticator(
        audiences=LINK, window=timedelta(seconds=5), future_skew=timedelta(seconds=1)
    )
    signer = CallSigner(node_key)
    auth.authenticate(call(signer, at=NOW - timedelta(seconds=4)), NOW)  # control
    error = refused(auth, call(signer, at=NOW - timedelta(seconds=10)))
    assert error.reason is RefusalReason.STALE_TIMESTAMP
    assert "the link accepts 5.0 s behind and 1.0 s ahead" in error.message
    assert refused(auth, call(signer, at=NOW + timedelta(seconds=2))).reason is (
        RefusalReason.STALE_TIMESTAMP
    )
    with pytest.raises(ValueError, match="positive"):
        EcKeyAuthenticator(audiences=LINK, window=timedelta(0))
    with pytest.raises(ValueError, match="negative"):
        EcKeyAuthenticator(audiences=LINK, future_skew=timedelta(seconds=-1))


# --- replay ---------------------------------------------------------------------------------


def test_replayed_call_is_refused_inside_the_window_and_a_fresh_nonce_works(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    signer = CallSigner(node_key)
    first = call(signer)
    auth.authenticate(first, NOW)
    error = refused(auth, first, NOW + timedelta(seconds=1))
    assert error.reason is RefusalReason.REPLAYED
    assert error.fingerprint == key_fingerprint(node_key)
    auth.authenticate(call(signer, at=NOW + timedelta(seconds=1)), NOW + timedelta(seconds=1))


def test_replay_with_the_key_reencoded_is_still_a_replay(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    """The same key sent as a compressed point is the same key: same node, same nonces."""
    auth = EcKeyAuthenticator(audiences=LINK)
    first = call(CallSigner(node_key))
    principal = auth.authenticate(first, NOW)
    compressed = node_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    uncompressed_der = public_key_der(node_key)
    # P-384 SubjectPublicKeyInfo: SEQUENCE header (2), AlgorithmIdentifier (18), BIT STRING
    # header (3), then the uncompressed point. Rebuild it around the compressed point.
    assert uncompressed_der[23:] == node_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    algorithm_id = uncompressed_der[2:20]
    bit_string = b"\x03" + bytes([len(compressed) + 1]) + b"\x00" + compressed
    body = algorithm_id + bit_string
    reencoded = base64.b64encode(b"\x30" + bytes([len(body)]) + body).decode()
    assert reencoded != first.key_signature.public_key  # type: ignore[union-attr]
    replayed = with_signature(first, public_key=reencoded)
    error = refused(auth, replayed, NOW + timedelta(seconds=1))
    assert error.reason is RefusalReason.REPLAYED
    # Control: a fresh call under the re-encoded key is accepted as the same node.
    fresh = with_signature(call(CallSigner(node_key), at=NOW), public_key=reencoded)
    assert auth.authenticate(fresh, NOW).node_id == principal.node_id


# --- the link a signature is for ------------------------------------------------------------


def test_a_signature_for_another_link_is_refused_before_its_nonce_is_used(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    """As a link replaying what a node signed for it: the other link refuses, and nothing of
    the call is remembered there."""
    other_link = EcKeyAuthenticator(audiences=Audiences(hashlib.sha256(b"other").digest()))
    signed_for_us = call(CallSigner(node_key))
    error = refused(other_link, signed_for_us)
    assert error.reason is RefusalReason.WRONG_AUDIENCE
    assert error.fingerprint == key_fingerprint(node_key)
    assert other_link.remembered_nonces == 0
    EcKeyAuthenticator(audiences=LINK).authenticate(signed_for_us, NOW)  # control: this link


def test_the_audience_entry_is_covered_by_the_signature(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Relabelling a captured call with the other link's audience does not make it verify."""
    other = hashlib.sha256(b"other").digest()
    other_link = EcKeyAuthenticator(audiences=Audiences(other))
    relabelled = with_signature(call(CallSigner(node_key)), audience=other.hex())
    assert refused(other_link, relabelled).reason is RefusalReason.BAD_SIGNATURE
    malformed = with_signature(call(CallSigner(node_key)), audience=AUDIENCE.hex().upper())
    assert refused(EcKeyAuthenticator(audiences=LINK), malformed).reason is (
        RefusalReason.BAD_SIGNATURE
    )


def test_after_a_rotation_the_previous_key_is_accepted_for_the_grace_only(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    new = hashlib.sha256(b"the link's new server key").digest()
    rotated = LINK.rotated(new, NOW, timedelta(minutes=5))
    assert rotated.current == new
    assert rotated.accepts(new, NOW + timedelta(days=1))
    assert rotated.accepts(AUDIENCE, NOW + timedelta(minutes=5))
    assert not rotated.accepts(AUDIENCE, NOW + timedelta(minutes=5, seconds=1))
    assert rotated.rotated(new, NOW, timedelta(minutes=5)) is rotated  # same key: no change
    auth = EcKeyAuthenticator(audiences=rotated)
    signer = CallSigner(node_key)
    auth.authenticate(call(signer), NOW)  # signed for the previous key, within the grace
    late = NOW + timedelta(minutes=6)
    assert refused(auth, call(signer, at=late), late).reason is RefusalReason.WRONG_AUDIENCE
    fresh = received(signer.metadata(METHOD, BODY, late, new))
    auth.authenticate(fresh, late)  # control: signed for the new key


def test_an_upload_without_a_declared_object_is_refused(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    declared = declared_object_digest(f"{hashlib.sha256(b'x').hexdigest()}:1")
    metadata = CallSigner(node_key).metadata(PUSH, declared, NOW, AUDIENCE)
    undeclared = received(metadata, method=PUSH, digest=b"")
    error = refused(auth, undeclared)
    assert error.reason is RefusalReason.BAD_SIGNATURE
    assert "declare its object" in error.message
    auth.authenticate(received(metadata, method=PUSH, digest=declared), NOW)  # control


def test_an_open_call_is_rechecked_by_its_registration_only(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    """Judging an open call again checks the key's registration, not its (used) nonce."""
    registry = Registry()
    registry.status[public_key_der(node_key)] = KeyStatus.REGISTERED
    auth = EcKeyAuthenticator(registry, audiences=LINK)
    credentials = call(CallSigner(node_key))
    principal = auth.authenticate(credentials, NOW)
    later = NOW + timedelta(hours=1)  # long past the signature's window
    auth.recheck(credentials, principal, later)
    auth.recheck(credentials, principal, later)  # again: no nonce is spent
    registry.status[public_key_der(node_key)] = KeyStatus.UNREGISTERED
    with pytest.raises(AuthenticationFailed) as caught:
        auth.recheck(credentials, principal, later)
    assert caught.value.reason is RefusalReason.NODE_UNREGISTERED
    assert caught.value.fingerprint == key_fingerprint(node_key)


def test_nonces_are_per_key(node_key: ec.EllipticCurvePrivateKey) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    nonce = new_nonce()
    auth.authenticate(call(CallSigner(node_key), nonce=nonce), NOW)
    other = CallSigner(ec.generate_private_key(ec.SECP256R1()))
    auth.authenticate(call(other, nonce=nonce), NOW)
    again = call(CallSigner(node_key), nonce=nonce)
    assert refused(auth, again).reason is RefusalReason.REPLAYED


def test_replay_after_the_window_is_stale_and_its_nonce_is_forgotten(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    signer = CallSigner(node_key)
    first = call(signer)
    auth.authenticate(first, NOW)
    assert auth.remembered_nonces == 1
    later = NOW + timedelta(seconds=61)
    assert refused(auth, first, later).reason is RefusalReason.STALE_TIMESTAMP
    assert auth.remembered_nonces == 0  # expired by the clock passed in: memory stays bounded
    auth.authenticate(call(signer, at=later), later)  # control
    assert auth.remembered_nonces == 1


def test_nonce_memory_is_capped_and_eviction_never_admits_a_replay(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK, replay=ReplayLimits(per_key=3))
    signer = CallSigner(node_key)
    calls = [call(signer, at=NOW + timedelta(milliseconds=i)) for i in range(5)]
    for credentials in calls:
        auth.authenticate(credentials, NOW + timedelta(seconds=1))
    assert auth.remembered_nonces == 3
    # The two oldest were evicted early; replaying them is refused, not admitted.
    for evicted in calls[:2]:
        error = refused(auth, evicted, NOW + timedelta(seconds=1))
        assert error.reason is RefusalReason.STALE_TIMESTAMP
    for remembered in calls[2:]:
        assert refused(auth, remembered, NOW + timedelta(seconds=1)).reason is (
            RefusalReason.REPLAYED
        )
    # Control: new calls still pass.
    auth.authenticate(call(signer, at=NOW + timedelta(seconds=1)), NOW + timedelta(seconds=1))


def test_link_clock_stepping_back_does_not_reopen_forgotten_nonces(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    signer = CallSigner(node_key)
    first = call(signer)
    auth.authenticate(first, NOW)
    later = NOW + timedelta(minutes=2)
    auth.authenticate(call(signer, at=later), later)  # forgets the first call's nonce
    error = refused(auth, first, NOW)  # the link's clock is back at NOW
    assert error.reason is RefusalReason.STALE_TIMESTAMP
    assert "already forgotten" in error.message
    # Control: a call newer than everything forgotten passes at that clock.
    auth.authenticate(call(signer, at=NOW + timedelta(seconds=1)), NOW)


# --- key types ------------------------------------------------------------------------------


def test_p224_key_is_refused_as_the_wrong_curve() -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    auth.authenticate(call(CallSigner(ec.generate_private_key(ec.SECP256R1()))), NOW)  # control
    key = ec.generate_private_key(ec.SECP224R1())
    nonce = new_nonce()
    timestamp = timestamp_ms(NOW)
    message = signed_bytes(METHOD, timestamp, nonce, AUDIENCE, BODY)
    signature = key.sign(message, ec.ECDSA(hashes.SHA224()))
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    credentials = CallCredentials(
        METHOD,
        PEER,
        None,
        None,
        key_signature=KeySignature(
            base64.b64encode(der).decode(),
            str(timestamp),
            nonce,
            AUDIENCE.hex(),
            base64.b64encode(signature).decode(),
            BODY,
        ),
    )
    error = refused(auth, credentials)
    assert error.reason is RefusalReason.WRONG_KEY_TYPE
    assert "P-224" in error.message
    assert error.fingerprint == ""


@pytest.mark.parametrize("name", ["rsa", "ed25519"])
def test_other_key_types_are_refused(
    key_files: dict[str, Path], node_key: ec.EllipticCurvePrivateKey, name: str
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    honest = call(CallSigner(node_key))
    auth.authenticate(honest, NOW)  # control
    public_line = key_files[name].with_name(key_files[name].name + ".pub").read_bytes()
    public = serialization.load_ssh_public_key(public_line)
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private = serialization.load_ssh_private_key(key_files[name].read_bytes(), None)
    message = signed_bytes(METHOD, timestamp_ms(NOW), new_nonce(), AUDIENCE, BODY)
    if isinstance(private, rsa.RSAPrivateKey):
        raw = private.sign(message, padding.PKCS1v15(), hashes.SHA256())
    else:
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        raw = private.sign(message)
    foreign = with_signature(
        call(CallSigner(node_key)),
        public_key=base64.b64encode(der).decode(),
        signature=base64.b64encode(raw).decode(),
    )
    error = refused(auth, foreign)
    assert error.reason is RefusalReason.WRONG_KEY_TYPE
    assert "ssh-keygen -t ecdsa -b 384" in error.message


@pytest.mark.parametrize("encoded", ["not base64!", base64.b64encode(b"\x30\x03junk").decode()])
def test_garbage_key_is_refused(node_key: ec.EllipticCurvePrivateKey, encoded: str) -> None:
    auth = EcKeyAuthenticator(audiences=LINK)
    honest = call(CallSigner(node_key))
    assert refused(auth, with_signature(honest, public_key=encoded)).reason is (
        RefusalReason.WRONG_KEY_TYPE
    )
    assert refused(auth, with_signature(honest, public_key="A" * 4096)).reason is (
        RefusalReason.WRONG_KEY_TYPE
    )
    auth.authenticate(honest, NOW)  # control


def test_each_key_is_parsed_once_and_the_cache_is_bounded(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK, key_cache_size=2)
    signer = CallSigner(node_key)
    for _ in range(5):
        auth.authenticate(call(signer), NOW)
    assert auth.cached_keys == 1
    for _ in range(3):
        auth.authenticate(call(CallSigner(ec.generate_private_key(ec.SECP256R1()))), NOW)
    assert auth.cached_keys == 2
    auth.authenticate(call(signer), NOW)  # evicted, parsed again, still the same node
    assert auth.cached_keys == 2


# --- flooding the replay memory --------------------------------------------------------------


def test_an_unregistered_keys_future_calls_leave_nothing_in_the_replay_memory(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    """As anyone on the network: a key the link does not accept cannot fill its memory."""
    registry = Registry()
    registry.status[public_key_der(node_key)] = KeyStatus.REGISTERED
    auth = EcKeyAuthenticator(registry, audiences=LINK)
    honest = CallSigner(node_key)
    auth.authenticate(call(honest), NOW)  # control: a registered key's nonce is kept
    attacker = CallSigner(ec.generate_private_key(ec.SECP256R1()))
    for i in range(200):  # at the future edge: once kept for the whole window and more
        flood = call(attacker, at=NOW + timedelta(seconds=5, milliseconds=-i))
        assert refused(auth, flood).reason is RefusalReason.UNREGISTERED_KEY
    assert auth.remembered_nonces == 1
    auth.authenticate(call(honest, at=NOW + timedelta(seconds=1)), NOW + timedelta(seconds=1))
    assert auth.remembered_nonces == 2


def test_one_keys_flood_narrows_only_its_own_window(node_key: ec.EllipticCurvePrivateKey) -> None:
    """Automatic mode, where any key is a node: a key making more calls than the memory keeps
    per key forgets its own oldest nonces, and the floor that keeps replays out rises for it
    alone. (One global memory and floor let such a flood lock every other node out.)"""
    auth = EcKeyAuthenticator(audiences=LINK, replay=ReplayLimits(per_key=10, total=1000))
    honest = CallSigner(node_key)
    auth.authenticate(call(honest), NOW)
    attacker = CallSigner(ec.generate_private_key(ec.SECP256R1()))
    for i in range(100):
        auth.authenticate(call(attacker, at=NOW + timedelta(seconds=4, milliseconds=i)), NOW)
    assert auth.remembered_nonces == 11  # 10 for the flooding key, 1 for the honest one
    # The flooder's own older calls are refused (its window narrowed)...
    error = refused(auth, call(attacker, at=NOW))
    assert error.reason is RefusalReason.STALE_TIMESTAMP
    assert "already forgotten" in error.message
    # ...while the honest node's calls at the link's clock pass, and its replays are caught.
    fresh = call(honest, at=NOW + timedelta(milliseconds=1))
    auth.authenticate(fresh, NOW)
    assert refused(auth, fresh).reason is RefusalReason.REPLAYED


def test_a_full_memory_keeps_the_keys_it_holds_and_tells_new_keys_to_retry(
    node_key: ec.EllipticCurvePrivateKey,
) -> None:
    auth = EcKeyAuthenticator(audiences=LINK, replay=ReplayLimits(keys=2))
    honest = CallSigner(node_key)
    auth.authenticate(call(honest), NOW)
    auth.authenticate(call(CallSigner(ec.generate_private_key(ec.SECP256R1()))), NOW)
    newcomer = CallSigner(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(TryLater, match="retry in a few seconds"):
        auth.authenticate(call(newcomer), NOW)
    auth.authenticate(call(honest, at=NOW + timedelta(seconds=1)), NOW)  # held: goes on
    assert auth.remembered_keys == 2
    # Once the other key's nonces have left the window, its place is free for the newcomer.
    later = NOW + timedelta(seconds=62)
    auth.authenticate(call(honest, at=later), later)
    auth.authenticate(call(newcomer, at=later), later)
    assert auth.remembered_keys == 2
    with pytest.raises(ValueError, match="at least 1"):
        ReplayLimits(total=0)
