"""OCSP answers judged, and the answers the link holds, as pure calls.

Answers are built with cryptography's OCSPResponseBuilder and signed by the real keys of a CA
the project's CA tool made (or of another CA, or a delegated responder it issued); each
refusal sits beside the answer that is taken. The same checks against a real responder
(openssl), through the real link, are in tests/e2e/test_ocsp.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    CallCredentials,
    DecisionPending,
    RefusalReason,
)
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.ocspcheck import (
    CertStatus,
    OcspAnswer,
    OcspMode,
    OcspResponseRefused,
    OcspSubject,
    ocsp_subjects,
    responder_url,
    verify_response,
)
from flwrmtls.auth.ocsppolicy import OcspPolicy, Unreachable
from flwrmtls.auth.ocspstore import OcspQuery, OcspStore
from flwrmtls.pki import LeafOptions
from flwrmtls.testing.clock import FakeClock
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.wire.refusals import Refusal

from .crl_builders import Ca, issuing_ca, make_ca, make_leaf

NOW = datetime.now(UTC).replace(microsecond=0)
NONCE = bytes(range(32))
URL = "http://127.0.0.1:9/ocsp"


def _certificates(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def subject_of(pki: TestPki, name: str) -> OcspSubject:
    leaf, issuer = _certificates(pki.paths(name)[0])
    (subject,) = ocsp_subjects([leaf, issuer, pki.ca.root_certificate], OcspMode.URL, URL)
    return subject


def answer(
    subject: OcspSubject,
    signer: Ca,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    about: x509.Certificate | None = None,
    nonce: bytes | None = NONCE,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    by_name: bool = False,
    carry: tuple[x509.Certificate, ...] = (),
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> bytes:
    """A DER answer about ``subject`` (or ``about``), signed by ``signer``'s key and naming
    ``signer``'s certificate as the responder."""
    this_update = this_update or NOW - timedelta(minutes=1)
    revoked = status is ocsp.OCSPCertStatus.REVOKED
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=about or subject.certificate,
            issuer=subject.issuer,
            algorithm=hashes.SHA1(),  # noqa: S303 - as responders answer
            cert_status=status,
            this_update=this_update,
            next_update=next_update or this_update + timedelta(hours=1),
            revocation_time=this_update - timedelta(hours=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        .responder_id(
            ocsp.OCSPResponderEncoding.NAME if by_name else ocsp.OCSPResponderEncoding.HASH,
            signer.certificate,
        )
    )
    if carry:
        builder = builder.certificates(list(carry))
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def verify(subject: OcspSubject, der: bytes, *, required: bool = False) -> OcspAnswer:
    return verify_response(subject, der, nonce=NONCE, nonce_required=required, now=NOW)


def refused(subject: OcspSubject, der: bytes, *, required: bool = False) -> str:
    with pytest.raises(OcspResponseRefused) as refusal:
        verify(subject, der, required=required)
    return str(refusal.value)


def delegated(
    pki: TestPki, directory: Path, *usages: x509.ObjectIdentifier, **window: datetime
) -> Ca:
    """A responder certificate ``CN=responder`` the pki's issuing CA issued with ``usages``
    as its EKU (none: no EKU extension), written to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    issued = pki.ca.issue_server(
        "responder",
        options=LeafOptions(
            out_dir=directory,
            extended_key_usages=list(usages),
            not_before=window.get("not_before"),
            not_after=window.get("not_after"),
        ),
    )
    key = serialization.load_pem_private_key(issued.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Ca(issued.certificate, key)


# --- what an answer must be -------------------------------------------------------------------


def test_an_answer_signed_by_the_issuer_is_taken(pki: TestPki) -> None:
    subject = subject_of(pki, "node-1")
    for by_name in (False, True):
        taken = verify(subject, answer(subject, issuing_ca(pki), by_name=by_name))
        assert taken.status is CertStatus.GOOD
        assert taken.signer == "the issuer"
        assert taken.nonce_echoed


def test_a_revoked_answer_says_why_and_since_when(pki: TestPki) -> None:
    subject = subject_of(pki, "node-1")
    taken = verify(subject, answer(subject, issuing_ca(pki), status=ocsp.OCSPCertStatus.REVOKED))
    assert taken.status is CertStatus.REVOKED
    assert taken.reason == "keyCompromise"
    assert taken.revoked_at is not None


def test_an_answer_about_another_certificate_is_refused(pki: TestPki) -> None:
    subject, other = subject_of(pki, "node-1"), subject_of(pki, "node-2")
    message = refused(subject, answer(subject, issuing_ca(pki), about=other.certificate))
    assert "about another certificate" in message
    assert verify(subject, answer(subject, issuing_ca(pki))).status is CertStatus.GOOD


def test_an_answer_about_the_same_serial_of_another_issuer_is_refused(
    pki: TestPki, tmp_path: Path
) -> None:
    """The CertID names the issuer too (its name and key hashes), not only the serial."""
    subject = subject_of(pki, "node-1")
    twin = make_test_pki(tmp_path / "twin")  # another CA with the same name
    other_issuer = twin.ca.issuing_certificate
    key = ec.generate_private_key(ec.SECP256R1())
    same_serial = (
        x509.CertificateBuilder()
        .subject_name(subject.certificate.subject)
        .issuer_name(other_issuer.subject)
        .public_key(key.public_key())
        .serial_number(subject.serial)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(issuing_ca(twin).key, hashes.SHA256())
    )
    about_twin = dataclasses.replace(subject, certificate=same_serial, issuer=other_issuer)
    der = answer(about_twin, issuing_ca(pki), by_name=True)  # signed by the right issuer
    assert "about another certificate" in refused(subject, der)


def test_an_answer_whose_signature_is_not_the_issuers_is_refused(
    pki: TestPki, tmp_path: Path
) -> None:
    """Another CA of the same name (every `ca init` is named alike) signs, naming the issuer
    by name: the issuer's own key does not verify it."""
    twin = make_test_pki(tmp_path / "twin")
    subject = subject_of(pki, "node-1")
    forged = answer(subject, issuing_ca(twin), by_name=True)
    assert "does not verify with the key of the issuer" in refused(subject, forged)


@pytest.mark.parametrize(
    ("usages", "window", "problem"),
    [
        ((ExtendedKeyUsageOID.OCSP_SIGNING,), {}, None),
        ((ExtendedKeyUsageOID.SERVER_AUTH,), {}, "lacks the extended key usage"),
        ((), {}, "lacks the extended key usage"),
        (
            (ExtendedKeyUsageOID.OCSP_SIGNING,),
            {"not_before": NOW - timedelta(days=3), "not_after": NOW - timedelta(days=1)},
            "is not valid now",
        ),
    ],
)
def test_a_delegated_responder_needs_ocsp_signing_from_the_issuer(
    pki: TestPki,
    tmp_path: Path,
    usages: tuple[x509.ObjectIdentifier, ...],
    window: dict[str, datetime],
    problem: str | None,
) -> None:
    subject = subject_of(pki, "node-1")
    responder = delegated(pki, tmp_path, *usages, **window)
    der = answer(subject, responder, carry=(responder.certificate,))
    if problem is None:
        assert verify(subject, der).signer == "delegated responder CN=responder"
    else:
        assert problem in refused(subject, der)


def test_a_responder_of_another_ca_is_refused(pki: TestPki, tmp_path: Path) -> None:
    other = make_test_pki(tmp_path / "other")
    responder = delegated(other, tmp_path / "issued", ExtendedKeyUsageOID.OCSP_SIGNING)
    subject = subject_of(pki, "node-1")
    der = answer(subject, responder, carry=(responder.certificate,))
    assert "which the certificate's issuer did not issue" in refused(subject, der)


def test_a_responder_whose_certificate_the_answer_lacks_is_refused(
    pki: TestPki, tmp_path: Path
) -> None:
    responder = delegated(pki, tmp_path / "issued", ExtendedKeyUsageOID.OCSP_SIGNING)
    subject = subject_of(pki, "node-1")
    message = refused(subject, answer(subject, responder))
    assert "neither the certificate's issuer nor a responder certificate" in message


def test_the_nonce_must_be_the_links_and_is_required_once_echoed(pki: TestPki) -> None:
    subject, ca = subject_of(pki, "node-1"), issuing_ca(pki)
    assert "another nonce" in refused(subject, answer(subject, ca, nonce=b"\x01" * 32))
    without = answer(subject, ca, nonce=None)
    assert not verify(subject, without).nonce_echoed  # a responder that never echoes one
    assert "carries no nonce" in refused(subject, without, required=True)


def test_an_answer_from_the_future_or_past_its_next_update_is_refused(pki: TestPki) -> None:
    subject, ca = subject_of(pki, "node-1"), issuing_ca(pki)
    future = answer(subject, ca, this_update=NOW + timedelta(minutes=10))
    assert "made in the future" in refused(subject, future)
    stale = answer(
        subject, ca, this_update=NOW - timedelta(hours=2), next_update=NOW - timedelta(hours=1)
    )
    assert "is stale" in refused(subject, stale)
    skewed = answer(subject, ca, this_update=NOW + timedelta(minutes=2))
    assert verify(subject, skewed).status is CertStatus.GOOD  # within the clock skew allowed


def test_unsuccessful_unreadable_or_critically_extended_answers_are_refused(
    pki: TestPki,
) -> None:
    subject, ca = subject_of(pki, "node-1"), issuing_ca(pki)
    try_later = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
    der = try_later.public_bytes(serialization.Encoding.DER)
    assert "answered 'try_later'" in refused(subject, der)
    assert "not an OCSP response" in refused(subject, b"<html>not found</html>")
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    critical = answer(subject, ca, extensions=((unknown, True),))
    assert "critical response extension" in refused(subject, critical)
    assert verify(subject, answer(subject, ca, extensions=((unknown, False),))).status is (
        CertStatus.GOOD
    )


# --- which responder, which URLs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://ocsp.example.org/", None),
        ("https://ocsp.example.org:8443/path?q=1", None),
        ("file:///etc/passwd", "the scheme 'file' is not used"),
        ("ftp://127.0.0.1:9/", "the scheme 'ftp' is not used"),
        ("gopher://127.0.0.1:70/", "the scheme 'gopher' is not used"),
        ("data:text/plain,hello", "the scheme 'data' is not used"),
        ("ocsp.example.org", "the scheme '(none)' is not used"),
        ("http:///path", "names no host"),
        ("http://user:secret@ocsp.example.org/", "user name or password"),
        ("http://ocsp.example.org/a b", "not a URL"),
        ("http://ocsp.example.org:port/", "not a URL"),
    ],
)
def test_only_http_and_https_responder_urls_are_used(url: str, problem: str | None) -> None:
    if problem is None:
        assert responder_url(url) == url
    else:
        with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
            responder_url(url)


def test_which_certificates_are_asked_about_and_where(pki: TestPki, tmp_path: Path) -> None:
    ca = issuing_ca(pki)

    def chain_of(path: Path) -> list[x509.Certificate]:
        return [*_certificates(path), pki.ca.root_certificate]

    named, _, _ = make_leaf(ca, tmp_path, "named", ocsp=["ldap://x/", "http://aia.example/"])
    by_file, _, _ = make_leaf(ca, tmp_path, "by-file", ocsp=["file:///etc/passwd"])
    plain = pki.paths("node-1")[0]
    assert ocsp_subjects(chain_of(named), OcspMode.OFF) == ()
    (first,) = ocsp_subjects(chain_of(named), OcspMode.AIA)
    assert first.url == "http://aia.example/"  # the first http(s) URL it names
    assert first.is_leaf
    assert ocsp_subjects(chain_of(plain), OcspMode.AIA) == ()  # names none: not asked
    (configured,) = ocsp_subjects(chain_of(named), OcspMode.URL, URL)
    assert configured.url == URL  # the operator's responder, for the leaf
    (unusable,) = ocsp_subjects(chain_of(by_file), OcspMode.AIA)
    assert unusable.url is None
    assert unusable.problem is not None
    assert "the scheme 'file' is not used" in unusable.problem


def test_an_unverified_chain_never_makes_the_link_ask_anyone(pki: TestPki, tmp_path: Path) -> None:
    """As anyone presenting a certificate that names a responder the attacker wants the link
    to fetch: only verified chains are asked about (a trusted CA wrote the URL)."""
    store = OcspStore(OcspPolicy(mode=OcspMode.AIA), FakeClock(NOW))
    anchors = _certificates(pki.trust_bundle_path)
    auth = MtlsAuthenticator(anchors, ocsp=store)
    stranger = make_ca("Stranger CA")
    _, _, leaf = make_leaf(stranger, tmp_path, "node-1", ocsp=["http://169.254.169.254/"])
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    method = "/flwrmtls.proto.Fleet/Heartbeat"
    with pytest.raises(AuthenticationFailed) as refusal:
        auth.authenticate(CallCredentials(method, "ipv4:127.0.0.1:1", pem, None), NOW)
    assert refusal.value.reason is RefusalReason.UNTRUSTED
    assert len(store) == 0
    _, _, trusted_leaf = make_leaf(issuing_ca(pki), tmp_path, "aia-node", ocsp=[URL])
    intermediates = pki.ca.issuing_certificate.public_bytes(serialization.Encoding.PEM)
    call = CallCredentials(
        method, "ipv4:127.0.0.1:1", trusted_leaf.public_bytes(serialization.Encoding.PEM),
        intermediates,
    )  # fmt: skip
    with pytest.raises(DecisionPending):
        auth.authenticate(call, NOW)
    assert len(store) == 1
    assert [q.url for q in store.due(NOW)] == [URL]


# --- the answers the link holds ----------------------------------------------------------------


def good(status: CertStatus = CertStatus.GOOD, **fields: object) -> OcspAnswer:
    values: dict[str, object] = {
        "status": status,
        "this_update": NOW - timedelta(minutes=1),
        "next_update": NOW + timedelta(minutes=10),
        "revoked_at": NOW - timedelta(hours=1) if status is CertStatus.REVOKED else None,
        "reason": "keyCompromise" if status is CertStatus.REVOKED else None,
        "nonce_echoed": True,
        "signer": "the issuer",
    }
    values.update(fields)
    return OcspAnswer(**values)  # type: ignore[arg-type]


def store_with(
    subject: OcspSubject, unreachable: Unreachable = Unreachable.FAIL_CLOSED
) -> tuple[OcspStore, FakeClock, OcspQuery]:
    clock = FakeClock(NOW)
    policy = OcspPolicy(mode=OcspMode.URL, url=URL, unreachable=unreachable, timeout=1.0)
    store = OcspStore(policy, clock)
    store.admit([subject], NOW)
    (query,) = store.due(NOW)
    return store, clock, query


def reason_of(
    store: OcspStore, subject: OcspSubject, now: datetime
) -> RefusalReason | Refusal | None:
    try:
        store.check([subject], now)
    except AuthenticationFailed as refusal:
        return refusal.reason
    return None


def test_a_certificate_waits_for_its_first_answer_then_is_judged(pki: TestPki) -> None:
    subject = subject_of(pki, "node-1")
    store, _, query = store_with(subject)

    async def first_call() -> RefusalReason | Refusal | None:
        with pytest.raises(DecisionPending) as pending:
            store.check([subject], NOW)
        asyncio.get_running_loop().call_later(0.05, store.apply, query, good(), NOW)
        await pending.value.wait()
        return reason_of(store, subject, NOW)

    assert asyncio.run(first_call()) is None
    assert store.due(NOW) == []  # one question at a time, and not again before it is due


def test_no_answer_at_all_refuses_whatever_the_policy(pki: TestPki) -> None:
    subject = subject_of(pki, "node-1")
    for unreachable in Unreachable:
        store, _, query = store_with(subject, unreachable)
        store.apply(query, "it cannot be reached (connection refused)", NOW)
        assert reason_of(store, subject, NOW) is Refusal.OCSP_UNAVAILABLE


@pytest.mark.parametrize(
    ("next_update", "asked_again_after"),
    [
        # a short-lived answer (4 minutes): again at three quarters of its life, well before
        # its nextUpdate, never past it
        (NOW + timedelta(minutes=3), timedelta(minutes=2)),
        # a long-lived answer (a day): again after the refresh interval (300 s)
        (NOW + timedelta(days=1), timedelta(seconds=300)),
        # no nextUpdate (the responder always has news): after the refresh interval
        (None, timedelta(seconds=300)),
    ],
)
def test_an_answer_is_asked_for_again_before_its_next_update(
    pki: TestPki, next_update: datetime | None, asked_again_after: timedelta
) -> None:
    subject = subject_of(pki, "node-1")
    store, _, query = store_with(subject)
    store.apply(query, good(this_update=NOW - timedelta(minutes=1), next_update=next_update), NOW)
    assert store.next_due() == NOW + asked_again_after  # when the refresher wakes for it
    assert store.due(NOW + asked_again_after - timedelta(seconds=1)) == []
    (again,) = store.due(NOW + asked_again_after)
    assert again.subject is subject
    assert again.nonce != query.nonce  # a fresh nonce for each question
    if next_update is not None:
        assert NOW + asked_again_after < next_update
        # in force until its nextUpdate, and not a moment after
        assert reason_of(store, subject, next_update) is None
        after = next_update + timedelta(seconds=1)
        assert reason_of(store, subject, after) is Refusal.OCSP_UNAVAILABLE


def test_a_failed_refresh_refuses_under_fail_closed_and_keeps_under_keep_last_good(
    pki: TestPki,
) -> None:
    subject = subject_of(pki, "node-1")
    for unreachable, expected in (
        (Unreachable.FAIL_CLOSED, Refusal.OCSP_UNAVAILABLE),
        (Unreachable.KEEP_LAST_GOOD, None),
    ):
        store, clock, query = store_with(subject, unreachable)
        assert store.apply(query, good(), NOW)
        assert reason_of(store, subject, NOW) is None
        clock.advance(400)
        (refresh,) = store.due(clock.now())
        changed = store.apply(refresh, "no answer within 1 s", clock.now())
        assert changed is (expected is not None)
        assert reason_of(store, subject, clock.now()) is expected
        # past the answer's nextUpdate nothing is kept
        later = NOW + timedelta(minutes=11)
        assert store.lapsed_between(clock.now(), later)
        assert reason_of(store, subject, later) is Refusal.OCSP_UNAVAILABLE


def test_a_revocation_stands_and_an_older_answer_never_replaces_a_newer_one(
    pki: TestPki,
) -> None:
    subject = subject_of(pki, "node-1")
    store, clock, query = store_with(subject)
    store.apply(query, good(this_update=NOW), NOW)
    clock.advance(400)
    (again,) = store.due(clock.now())
    store.apply(again, good(this_update=NOW - timedelta(minutes=5)), clock.now())
    assert reason_of(store, subject, clock.now()) is Refusal.OCSP_UNAVAILABLE  # a replay
    clock.advance(5)
    (again,) = store.due(clock.now())
    assert store.apply(again, good(CertStatus.REVOKED, this_update=clock.now()), clock.now())
    assert reason_of(store, subject, clock.now()) is RefusalReason.REVOKED
    assert store.due(clock.now() + timedelta(days=1)) == []  # final: not asked again


def test_a_released_hold_is_good_again_but_a_key_compromise_is_not(pki: TestPki) -> None:
    subject = subject_of(pki, "node-1")
    store, clock, query = store_with(subject)
    store.apply(query, good(CertStatus.REVOKED, reason="certificateHold", this_update=NOW), NOW)
    clock.advance(400)
    (again,) = store.due(clock.now())  # a hold is asked about again
    store.apply(again, good(this_update=clock.now()), clock.now())
    assert reason_of(store, subject, clock.now()) is None
    store, clock, query = store_with(subject)
    store.apply(query, good(CertStatus.REVOKED, this_update=NOW), NOW)
    clock.advance(400)
    assert store.due(clock.now()) == []  # a key compromise is not asked about again
    store.apply(query, good(this_update=clock.now()), clock.now())  # nor undone by a stray answer
    assert reason_of(store, subject, clock.now()) is RefusalReason.REVOKED


def test_unknown_and_a_missing_responder_refuse(pki: TestPki, tmp_path: Path) -> None:
    subject = subject_of(pki, "node-1")
    store, _, query = store_with(subject)
    store.apply(query, good(CertStatus.UNKNOWN), NOW)
    assert reason_of(store, subject, NOW) is Refusal.OCSP_UNAVAILABLE
    by_file, _, _ = make_leaf(issuing_ca(pki), tmp_path, "by-file", ocsp=["file:///etc/passwd"])
    chain = [*_certificates(by_file), pki.ca.root_certificate]
    (unusable,) = ocsp_subjects(chain, OcspMode.AIA)
    assert reason_of(store, unusable, NOW) is Refusal.OCSP_UNAVAILABLE
    assert [q.subject for q in store.due(NOW)] == []  # nothing fetched for it


def test_over_a_chain_a_revocation_anywhere_refuses(pki: TestPki, tmp_path: Path) -> None:
    leaf = subject_of(pki, "node-1")
    other = subject_of(pki, "node-2")  # stands for another certificate of the chain
    store, _, query = store_with(leaf)
    store.admit([other], NOW)
    (other_query,) = store.due(NOW)
    store.apply(other_query, good(CertStatus.REVOKED), NOW)
    with pytest.raises(AuthenticationFailed) as refusal:  # the leaf is still pending
        store.check([leaf, other], NOW)
    assert refusal.value.reason is RefusalReason.REVOKED
    store.apply(query, good(), NOW)
    assert reason_of(store, leaf, NOW) is None


def test_once_a_responder_echoed_a_nonce_its_answers_must_carry_one(pki: TestPki) -> None:
    subject = subject_of(pki, "node-1")
    store, clock, query = store_with(subject)
    assert not query.nonce_required
    assert len(query.nonce) == 32
    store.apply(query, good(nonce_echoed=True), NOW)
    clock.advance(400)
    (again,) = store.due(clock.now())
    assert again.nonce_required
    assert again.nonce != query.nonce


def test_idle_certificates_are_forgotten_and_no_longer_asked_about(pki: TestPki) -> None:
    subject = subject_of(pki, "node-1")
    store, clock, query = store_with(subject)
    store.apply(query, good(next_update=NOW + timedelta(days=1)), NOW)
    clock.advance(2 * 3600)
    assert store.due(clock.now()) == []
    assert len(store) == 0
