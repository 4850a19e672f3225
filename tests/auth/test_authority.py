"""One identity, one CA: two CAs in one bundle cannot alias a node id or a run owner.

As an attacker holding a CA the link trusts (another hospital's, say): issuing another CA's
Subject is refused once that Subject is pinned; beside it, the legitimate cases pass: the
owning CA's reissued certificate, and a successor root that the old root cross-signed (a CA
rollover keeps node ids). Through the real link in tests/e2e/test_control_api.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from flwrmtls.auth.authenticator import AuthenticationFailed, CallCredentials, RefusalReason
from flwrmtls.auth.authority import (
    Authorities,
    Pin,
    PinDecision,
    PinnedToAuthority,
    decide_pin,
    key_id,
)
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.pki.files import read_certificates_file

NOW = datetime.now(UTC)
METHOD = "/flwrmtls.proto.Fleet/Heartbeat"


class MemoryPins:
    def __init__(self) -> None:
        self.pins: dict[str, Pin] = {}

    def get(self, identity: str) -> Pin | None:
        return self.pins.get(identity)

    def put(self, identity: str, pin: Pin, now: datetime) -> None:
        self.pins[identity] = pin


def roots(*authorities: CertificateAuthority) -> list[x509.Certificate]:
    return [a.root_certificate for a in authorities]


def call(chain_file: Path) -> CallCredentials:
    pems = chain_file.read_bytes().split(b"-----END CERTIFICATE-----\n")
    leaf = pems[0] + b"-----END CERTIFICATE-----\n"
    rest = b"".join(p + b"-----END CERTIFICATE-----\n" for p in pems[1:] if p.strip())
    return CallCredentials(METHOD, "ipv4:127.0.0.1:5555", leaf, rest or None)


def pinned(bundle: list[x509.Certificate], pins: MemoryPins) -> PinnedToAuthority:
    return PinnedToAuthority(MtlsAuthenticator(bundle), pins, Authorities.of(bundle))


def test_a_root_and_its_issuing_ca_are_one_authority_other_cas_are_not(tmp_path: Path) -> None:
    a = CertificateAuthority.create(tmp_path / "a")
    b = CertificateAuthority.create(tmp_path / "b")  # the same default name, another key
    assert a.root_certificate.subject == b.root_certificate.subject
    authorities = Authorities.of([a.root_certificate, a.issuing_certificate, b.root_certificate])
    assert authorities.same(key_id(a.root_certificate), key_id(a.issuing_certificate))
    assert not authorities.same(key_id(a.root_certificate), key_id(b.root_certificate))


def test_a_cross_signed_successor_joins_the_old_authority(tmp_path: Path) -> None:
    old = CertificateAuthority.create(tmp_path / "old")
    new = CertificateAuthority.create(tmp_path / "new")
    cross = old.cross_sign(new.root_certificate)
    assert key_id(cross) == key_id(new.root_certificate)
    joined = Authorities.of([*roots(old, new), cross])
    assert joined.same(key_id(old.root_certificate), key_id(new.root_certificate))
    # Without the cross-certificate, two roots are two authorities.
    apart = Authorities.of(roots(old, new))
    assert not apart.same(key_id(old.root_certificate), key_id(new.root_certificate))


def test_a_cross_certificate_needs_a_self_signed_ca_of_another_key(tmp_path: Path) -> None:
    from flwrmtls.errors import InputError

    old = CertificateAuthority.create(tmp_path / "old")
    leaf = old.issue_node("node-1")
    with pytest.raises(InputError, match="self-signed CA"):
        old.cross_sign(read_certificates_file(leaf.chain_path)[0])
    with pytest.raises(InputError, match="own root key"):
        old.cross_sign(old.root_certificate)


@pytest.mark.parametrize(
    ("pin", "key", "expected"),
    [
        (None, "a", PinDecision.NEW),
        (Pin("a", "A"), "a", PinDecision.KEEP),
        (Pin("a", "A"), "a2", PinDecision.FOLLOW),
        (Pin("a", "A"), "b", PinDecision.REFUSE),
        (Pin("gone", "Old"), "b", PinDecision.RETIRED),
    ],
)
def test_the_pin_decision_table(pin: Pin | None, key: str, expected: PinDecision) -> None:
    authorities = Authorities(group={"a": 0, "a2": 0, "b": 1}, names={})
    assert decide_pin(pin, key, authorities) is expected


def test_another_ca_issuing_a_pinned_subject_is_refused(tmp_path: Path) -> None:
    owner = CertificateAuthority.create(tmp_path / "owner")
    other = CertificateAuthority.create(tmp_path / "other")
    genuine = owner.issue_node("node-1", organization="Hospital A")
    alias = other.issue_node(
        "node-1", organization="Hospital A", options=LeafOptions(out_dir=tmp_path / "alias")
    )
    pins = MemoryPins()
    auth = pinned(roots(owner, other), pins)
    first = auth.authenticate(call(genuine.chain_path), NOW)
    assert pins.get(first.identity) == Pin(key_id(owner.root_certificate), "CN=flwrmtls Root CA")

    with pytest.raises(AuthenticationFailed) as refused:
        auth.authenticate(call(alias.chain_path), NOW)
    assert refused.value.reason is RefusalReason.AMBIGUOUS_IDENTITY
    assert "belongs to the CA" in refused.value.message

    # Control: the owner reissues (new key, new serial): the same node, admitted.
    reissued = owner.issue_node(
        "node-1", organization="Hospital A", options=LeafOptions(force=True)
    )
    assert auth.authenticate(call(reissued.chain_path), NOW).node_id == first.node_id


def test_a_cross_signed_rollover_keeps_the_identity_and_moves_the_pin(tmp_path: Path) -> None:
    old = CertificateAuthority.create(tmp_path / "old")
    new = CertificateAuthority.create(tmp_path / "new")
    before = old.issue_node("node-1", organization="Hospital A")
    after = new.issue_node("node-1", organization="Hospital A")
    pins = MemoryPins()
    bundle = [*roots(old, new), old.cross_sign(new.root_certificate)]
    auth = pinned(bundle, pins)
    node_id = auth.authenticate(call(before.chain_path), NOW).node_id
    assert auth.authenticate(call(after.chain_path), NOW).node_id == node_id
    assert pins.pins["CN=node-1,O=Hospital A"].key == key_id(new.root_certificate)
    # The same rollover without the cross-certificate is an alias, refused.
    pins_apart = MemoryPins()
    apart = pinned(roots(old, new), pins_apart)
    apart.authenticate(call(before.chain_path), NOW)
    with pytest.raises(AuthenticationFailed):
        apart.authenticate(call(after.chain_path), NOW)


def test_a_pin_moves_when_its_ca_left_the_bundle(tmp_path: Path) -> None:
    old = CertificateAuthority.create(tmp_path / "old")
    new = CertificateAuthority.create(tmp_path / "new")
    pins = MemoryPins()
    pinned(roots(old), pins).authenticate(call(old.issue_node("node-1").chain_path), NOW)
    # The operator retired the old CA: the name may now come from the new one.
    principal = pinned(roots(new), pins).authenticate(
        call(new.issue_node("node-1").chain_path), NOW
    )
    assert pins.pins[principal.identity].key == key_id(new.root_certificate)
