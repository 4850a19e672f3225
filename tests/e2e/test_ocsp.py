"""Revocation by OCSP, through a real link on loopback and a real OCSP responder (openssl).

Each attack sits beside the input that passes, through the same link: a revoked node beside
a good one; a responder that is down, slow, answers about another certificate, replays an
answer or signs with a key that may not, beside the same responder doing its job. The
responder is ``openssl ocsp`` (see ``ocsp_responder.py``), answering from an index written
from the built-in CA's certificates; delegated responder certificates come from the built-in
CA, certificates naming a responder in their AIA from the openssl CLI.

Bounds: the link refreshes answers every second here (``--ocsp-refresh-interval 1``) and
judges open calls at once when an answer changes; the tests allow 10 s (``PROMPT``), so they
do not depend on the machine's speed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.auth.ocspcheck import OcspMode
from flwrmtls.auth.ocsppolicy import OcspPolicy, Unreachable
from flwrmtls.errors import LinkUnreachable, Refused
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.server import Link
from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.proto import fleet_pb2, fleet_pb2_grpc
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki, make_test_pki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.refusals import Refusal, refusal_in

from .deployment import Deployment
from .ocsp_responder import OpensslResponder

PROMPT = 10.0
"""How soon the link must act on what its responder says (it asks every second here)."""
LONG_POLL = 30.0


def certificate(path: Path) -> x509.Certificate:
    """The first certificate of a chain file."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def leaf(pki: TestPki, name: str) -> x509.Certificate:
    return certificate(pki.paths(name)[0])


def issuing(pki: TestPki) -> x509.Certificate:
    return certificate(pki.ca.files.issuing_certificate)


@contextmanager
def responder_for(
    pki: TestPki, directory: Path, *, start: bool = True
) -> Iterator[OpensslResponder]:
    """openssl answering for ``pki``'s issuing CA (signed by it), knowing node-1, node-2 and
    cli-operator as good."""
    files = pki.ca.files
    responder = OpensslResponder(
        directory,
        ca_certificate=files.issuing_certificate,
        signer_certificate=files.issuing_certificate,
        signer_key=files.issuing_key,
    )
    responder.register(*(leaf(pki, name) for name in ("node-1", "node-2", "cli-operator")))
    if start:
        responder.start()
    try:
        yield responder
    finally:
        responder.stop()


def policy(
    url: str = "",
    *,
    mode: OcspMode = OcspMode.URL,
    unreachable: Unreachable = Unreachable.FAIL_CLOSED,
    timeout: float = 2.0,
) -> OcspPolicy:
    return OcspPolicy(
        mode=mode,
        url=url or None,
        unreachable=unreachable,
        timeout=timeout,
        refresh_interval=1.0,
    )


class ShiftedClock:
    """The real clock, moved ahead when a test says so (to pass an answer's nextUpdate)."""

    def __init__(self) -> None:
        self.shift = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.shift

    def monotonic(self) -> float:
        return time.monotonic() + self.shift.total_seconds()


@contextmanager
def ocsp_link(
    tmp_path: Path,
    pki: TestPki,
    ocsp: OcspPolicy,
    *,
    crl: bool = False,
    clock: ShiftedClock | None = None,
) -> Iterator[Link]:
    chain, key = pki.paths("server")
    config = dataclasses.replace(
        mtls_config(
            tmp_path / "link.db", server_chain=chain, server_key=key,
            client_ca=pki.trust_bundle_path, crl=pki.crl_path if crl else None,
        ),
        ocsp=ocsp,
    )  # fmt: skip
    with running_link(config, clock) as link:
        yield link


@contextmanager
def node(link: Link, pki: TestPki, chain: Path, key: Path) -> Iterator[FleetClient]:
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
    )
    try:
        yield client
    finally:
        channel.close()


@contextmanager
def named(link: Link, pki: TestPki, name: str) -> Iterator[FleetClient]:
    with node(link, pki, *pki.paths(name)) as client:
        yield client


def unavailable(client: FleetClient) -> str:
    """The link answers this node UNAVAILABLE (it retries), never admitting it."""
    with pytest.raises(LinkUnreachable) as answer:
        client.activate()
    assert not isinstance(answer.value, Refused)
    return str(answer.value)


def stated_on_the_wire(link: Link, pki: TestPki, name: str) -> tuple[grpc.StatusCode, object]:
    """What a raw ActivateNode of ``name`` is answered: its status and the catalogue's code."""
    identity = load_tls_identity(*pki.paths(name), cert_flag="c", key_flag="k")
    credentials = channel_credentials(pki.trust_bundle_path.read_bytes(), identity)
    with grpc.secure_channel(f"127.0.0.1:{link.fleet_port}", credentials) as channel:
        try:
            fleet_pb2_grpc.FleetStub(channel).ActivateNode(
                fleet_pb2.ActivateNodeRequest(), timeout=PROMPT
            )
        except grpc.RpcError as error:
            return error.code(), refusal_in(error)
    return grpc.StatusCode.OK, None


def refused(client: FleetClient) -> str:
    with pytest.raises(Refused) as answer:
        client.activate()
    return str(answer.value)


def admitted_within(client: FleetClient, bound: float = PROMPT) -> Session:
    """Activate as a node does: UNAVAILABLE is retried (every 0.2 s here) within ``bound``."""
    deadline = time.monotonic() + bound
    while True:
        try:
            return client.activate()
        except LinkUnreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Polls:
    """Long polls on threads; the ones still open at the end are cancelled, not awaited."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self.done = threading.Event()

    def open(self, client: FleetClient, session: Session) -> Future[object]:
        """An idle node's PullMessages, held open by the link for up to LONG_POLL seconds."""
        return self._pool.submit(
            client.pull, session, wait=LONG_POLL, active_run_ids=[], cancel=[self.done]
        )


@contextmanager
def polling() -> Iterator[Polls]:
    with ThreadPoolExecutor(2) as pool:
        polls = Polls(pool)
        try:
            yield polls
        finally:
            polls.done.set()


def ended_within(future: Future[object], error: type[Exception]) -> str:
    with pytest.raises(error) as ended:
        future.result(timeout=PROMPT)
    return str(ended.value)


def wait_until(condition: Callable[[], bool], bound: float = PROMPT) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.1)


# --- revoked and good ---------------------------------------------------------------------


def test_a_node_its_responder_says_is_revoked_is_refused_and_a_good_one_admitted(
    tmp_path: Path, pki: TestPki
) -> None:
    """As a node whose certificate the CA revoked, known only to its OCSP responder (no CRL):
    refused at its first call; a good node is admitted at its first call (the call waits
    for the answer rather than being turned away)."""
    with responder_for(pki, tmp_path / "responder") as responder:
        responder.revoke(leaf(pki, "node-2"))
        with (
            ocsp_link(tmp_path, pki, policy(responder.url)) as link,
            named(link, pki, "node-1") as good,
            named(link, pki, "node-2") as revoked,
        ):
            session = good.activate()
            assert session.identity == "CN=node-1,O=Hospital A"
            message = refused(revoked)
            assert "certificate revoked according to its OCSP responder" in message
            assert "reason keyCompromise" in message
            good.heartbeat(session)
            outcomes = [e.record.outcome for e in link.state.audit.entries(limit=50)]
            assert "revoked" in outcomes
            (row,) = [r for r in link.revocation_coverage(link.clock.now()) if r.kind == "ocsp"]
            assert row.sources == (responder.url,)
            assert "1 good" in row.detail
            assert "1 revoked" in row.detail


def test_a_live_session_is_refused_within_seconds_of_its_responder_answering_revoked(
    tmp_path: Path, pki: TestPki
) -> None:
    """As a node revoked while it waits in its long poll: the next refresh brings the
    revocation, and the link ends the open call at once, as for a CRL change."""
    with (
        responder_for(pki, tmp_path / "responder") as responder,
        ocsp_link(tmp_path, pki, policy(responder.url)) as link,
        named(link, pki, "node-1") as kept,
        named(link, pki, "node-2") as revoked,
        polling() as polls,
    ):
        kept_session, revoked_session = kept.activate(), revoked.activate()
        kept_poll = polls.open(kept, kept_session)
        revoked_poll = polls.open(revoked, revoked_session)
        time.sleep(0.5)  # both polls are open on the link
        responder.revoke(leaf(pki, "node-2"))
        started = time.monotonic()
        assert "certificate revoked according to its OCSP responder" in ended_within(
            revoked_poll, Refused
        )
        took = time.monotonic() - started
        assert not kept_poll.done()
        kept.heartbeat(kept_session)
        print(f"revoked by OCSP: open call ended {took:.2f} s after the responder's change")


# --- a responder that is down ---------------------------------------------------------------


def test_a_responder_that_is_down_keeps_new_nodes_out_until_it_answers(
    tmp_path: Path, pki: TestPki
) -> None:
    """Fail closed for a node not yet admitted: without an answer it is not let in (UNAVAILABLE,
    which nodes retry); once the responder answers, the same node is admitted."""
    with responder_for(pki, tmp_path / "responder", start=False) as responder:
        responder.start()
        responder.stop()  # its port now refuses connections
        with (
            ocsp_link(tmp_path, pki, policy(responder.url)) as link,
            named(link, pki, "node-1") as client,
        ):
            message = unavailable(client)
            assert "has no OCSP answer" in message
            assert "cannot be reached" in message
            assert "Connection refused" in message
            # The error catalogue's row: UNAVAILABLE (retried) with its code, for every client.
            assert stated_on_the_wire(link, pki, "node-1") == (
                grpc.StatusCode.UNAVAILABLE,
                Refusal.OCSP_UNAVAILABLE,
            )
            responder.start()
            assert admitted_within(client).identity == "CN=node-1,O=Hospital A"


def test_fail_closed_refuses_a_connected_node_whose_answer_cannot_be_refreshed(
    tmp_path: Path, pki: TestPki
) -> None:
    """--ocsp-unreachable fail-closed (the default): once a refresh fails, the connected
    node's open call ends (UNAVAILABLE: it retries, it is not told it is revoked), and it is
    admitted again when the responder answers."""
    with (
        responder_for(pki, tmp_path / "responder") as responder,
        ocsp_link(tmp_path, pki, policy(responder.url)) as link,
        named(link, pki, "node-1") as client,
        polling() as polls,
    ):
        session = client.activate()
        poll = polls.open(client, session)
        time.sleep(0.5)
        responder.stop()
        message = ended_within(poll, LinkUnreachable)
        assert "could not refresh its OCSP answer" in message
        assert "--ocsp-unreachable fail-closed" in message
        with pytest.raises(LinkUnreachable):
            client.heartbeat(session)
        responder.start()
        wait_until(lambda: _heartbeat_passes(client, session))


def _heartbeat_passes(client: FleetClient, session: Session) -> bool:
    try:
        client.heartbeat(session)
    except LinkUnreachable:
        return False
    return True


def test_keep_last_good_keeps_a_connected_node_until_its_answers_next_update(
    tmp_path: Path, pki: TestPki
) -> None:
    """--ocsp-unreachable keep-last-good: the responder going down leaves the connected node
    in (its open call stays, its calls pass, the coverage says ``kept``) until the answer's
    nextUpdate (5 minutes: the link's clock is moved past it), then it is refused."""
    clock = ShiftedClock()
    keep = policy(unreachable=Unreachable.KEEP_LAST_GOOD)
    with (
        responder_for(pki, tmp_path / "responder") as responder,
        ocsp_link(tmp_path, pki, dataclasses.replace(keep, url=responder.url), clock=clock) as link,
        named(link, pki, "node-1") as client,
        polling() as polls,
    ):
        session = client.activate()
        poll = polls.open(client, session)
        time.sleep(0.5)
        responder.stop()

        def kept() -> bool:
            rows = [r for r in link.revocation_coverage(clock.now()) if r.kind == "ocsp"]
            return bool(rows) and rows[0].state.value == "kept"

        wait_until(kept)
        client.heartbeat(session)
        assert not poll.done()
        clock.shift = timedelta(minutes=6)  # past the answer's nextUpdate (openssl -nmin 5)
        assert "expired at" in ended_within(poll, LinkUnreachable)
        with pytest.raises(LinkUnreachable):
            client.heartbeat(session)


# --- a slow responder, the wrong certificate, a replay --------------------------------------


def test_a_slow_responder_is_given_up_on_after_the_timeout(tmp_path: Path, pki: TestPki) -> None:
    """A responder slower than --ocsp-timeout admits nobody (and the link's event loop is
    not held: another node's calls pass meanwhile); at its normal speed it admits."""
    with (
        responder_for(pki, tmp_path / "responder") as responder,
        ocsp_link(tmp_path, pki, policy(responder.url, timeout=0.5)) as link,
        named(link, pki, "node-1") as client,
        named(link, pki, "node-2") as other,
    ):
        other_session = other.activate()
        responder.delay(3.0)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(unavailable, client)
            other.heartbeat(other_session)  # served while node-1's answer is awaited
            assert "no answer within 0.5 s" in waiting.result(timeout=PROMPT)
        responder.delay(0.0)
        admitted_within(client)


def test_an_answer_about_another_certificate_is_not_taken(tmp_path: Path, pki: TestPki) -> None:
    """A responder answering about another certificate (with the link's own nonce): the
    CertID does not match, so the answer counts for nothing; answering as asked, it admits."""
    with (
        responder_for(pki, tmp_path / "responder") as responder,
        ocsp_link(tmp_path, pki, policy(responder.url)) as link,
        named(link, pki, "node-1") as client,
    ):
        responder.about(leaf(pki, "node-2"), issuing(pki))
        message = unavailable(client)
        assert "the answer is about another certificate" in message
        responder.about(None, None)
        admitted_within(client)


def test_a_replayed_good_answer_does_not_hide_a_revocation(tmp_path: Path, pki: TestPki) -> None:
    """As an attacker between the link and the responder, replaying a good answer captured
    before the revocation: the nonce is not the link's, so the answer is not taken and the
    node is refused (fail closed). Without the replay the revocation itself refuses it."""
    with (
        responder_for(pki, tmp_path / "responder") as responder,
        ocsp_link(tmp_path, pki, policy(responder.url)) as link,
        named(link, pki, "node-1") as client,
        polling() as polls,
    ):
        session = client.activate()
        responder.replay()  # the next good answer is captured and replayed from now on
        requests = responder.requests
        wait_until(lambda: responder.requests > requests + 1)
        responder.revoke(leaf(pki, "node-1"))
        poll = polls.open(client, session)
        assert "another nonce than the link sent" in ended_within(poll, LinkUnreachable)
        responder.replay(False)
        wait_until(lambda: "certificate revoked" in _activation_error(client))


def _activation_error(client: FleetClient) -> str:
    try:
        client.activate()
    except (LinkUnreachable, Refused) as error:
        return str(error)
    return ""


# --- who may sign an answer -----------------------------------------------------------------


def _signer(pki: TestPki, tmp_path: Path, kind: str) -> tuple[Path, Path]:
    files = pki.ca.files
    if kind == "the issuing CA":
        return files.issuing_certificate, files.issuing_key
    if kind == "a delegated responder with OCSPSigning":
        issued = pki.ca.issue_server(
            "ocsp-signer",
            options=LeafOptions(
                out_dir=tmp_path, extended_key_usages=[ExtendedKeyUsageOID.OCSP_SIGNING]
            ),
        )
        return issued.chain_path, issued.key_path
    if kind == "a certificate of the CA without OCSPSigning":
        return pki.paths("server")
    if kind == "another CA's responder with OCSPSigning":
        other = CertificateAuthority.create(tmp_path / "other-ca", name="Other")
        issued = other.issue_server(
            "ocsp-signer",
            options=LeafOptions(
                out_dir=tmp_path, extended_key_usages=[ExtendedKeyUsageOID.OCSP_SIGNING]
            ),
        )
        return issued.chain_path, issued.key_path
    if kind == "another CA of the same name":
        twin = make_test_pki(tmp_path / "twin")  # CN=flwrmtls test Issuing CA, another key
        return twin.ca.files.issuing_certificate, twin.ca.files.issuing_key
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("signer", "refusal"),
    [
        ("the issuing CA", None),
        ("a delegated responder with OCSPSigning", None),
        ("a certificate of the CA without OCSPSigning", "lacks the extended key usage"),
        ("another CA's responder with OCSPSigning", "which the certificate's issuer did not issue"),
        ("another CA of the same name", "signature does not verify with the key of the issuer"),
    ],
)
def test_only_the_issuer_or_its_delegated_responder_may_sign_answers(
    tmp_path: Path, pki: TestPki, signer: str, refusal: str | None
) -> None:
    """As whoever holds some other key and answers in the responder's place: an answer
    'good', signed by a key that may not sign for the certificate's issuer, is not taken, so
    the node is not admitted (fail closed), whatever the answer says. The issuer and its
    delegated responder are believed."""
    with responder_for(pki, tmp_path / "responder") as responder:
        responder.sign_with(*_signer(pki, tmp_path, signer))
        with (
            ocsp_link(tmp_path, pki, policy(responder.url)) as link,
            named(link, pki, "node-1") as client,
        ):
            if refusal is None:
                assert client.activate().identity == "CN=node-1,O=Hospital A"
            else:
                assert refusal in unavailable(client)


# --- CRL and OCSP together ------------------------------------------------------------------


def test_a_revocation_by_either_crl_or_ocsp_refuses(tmp_path: Path, fresh_pki: TestPki) -> None:
    """A link with CRLs and OCSP: a node revoked only in the CRL is refused although its
    responder says good; one revoked only by its responder is refused although the CRL
    lists nothing against it; one good in both is admitted."""
    pki = fresh_pki
    third = pki.ca.issue_node("node-3", organization="Hospital C")
    pki.ca.revoke(certificate_file=pki.paths("node-1")[0])
    with responder_for(pki, tmp_path / "responder") as responder:
        responder.register(third.certificate)
        responder.revoke(leaf(pki, "node-2"))
        with (
            ocsp_link(tmp_path, pki, policy(responder.url), crl=True) as link,
            named(link, pki, "node-1") as crl_revoked,
            named(link, pki, "node-2") as ocsp_revoked,
            node(link, pki, third.chain_path, third.key_path) as good,
        ):
            assert "certificate revoked (serial" in refused(crl_revoked)
            assert "according to its OCSP responder" in refused(ocsp_revoked)
            assert good.activate().identity == "CN=node-3,O=Hospital C"
            kinds = {row.kind for row in link.revocation_coverage(link.clock.now())}
            assert {"complete", "ocsp"} <= kinds


# --- the responder a certificate names (AIA) ------------------------------------------------

OPENSSL = shutil.which("openssl")
_AIA_EXTENSIONS = """\
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
authorityInfoAccess    = OCSP;URI:{url}
"""


def openssl_node(pki: TestPki, directory: Path, name: str, aia_url: str) -> tuple[Path, Path]:
    """A node certificate made by the openssl CLI, signed by ``pki``'s issuing CA, naming
    ``aia_url`` as its OCSP responder: (chain file, key file)."""
    if OPENSSL is None:
        raise RuntimeError("the openssl CLI is not on PATH: install OpenSSL 3 to run this")
    directory.mkdir(parents=True, exist_ok=True)
    key, request, leaf_file = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    extensions = directory / f"{name}.cnf"
    extensions.write_text(_AIA_EXTENSIONS.format(url=aia_url))
    files = pki.ca.files
    for command in (
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
        ["req", "-new", "-key", key, "-subj", f"/O=Hospital AIA/CN={name}", "-out", request],
        [
            "x509", "-req", "-in", request, "-CA", files.issuing_certificate,
            "-CAkey", files.issuing_key, "-CAcreateserial", "-days", "30", "-sha256",
            "-extfile", extensions, "-out", leaf_file,
        ],
    ):  # fmt: skip
        result = subprocess.run(
            [OPENSSL, *map(str, command)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
    key.chmod(0o600)
    chain = directory / f"{name}.pem"
    chain.write_bytes(leaf_file.read_bytes() + files.issuing_certificate.read_bytes())
    return chain, key


def test_with_aia_the_link_asks_the_responder_each_certificate_names(
    tmp_path: Path, pki: TestPki
) -> None:
    """--ocsp aia: a certificate naming a responder is checked there (revoked: refused; good:
    admitted); one naming none is not checked by OCSP (admitted while the responder is
    down); one naming a responder only by a scheme the link does not use (file:, ftp:) is
    refused, and nothing reaches that address."""
    with responder_for(pki, tmp_path / "responder") as responder:
        certs = tmp_path / "aia"
        good = openssl_node(pki, certs, "aia-good", responder.url)
        revoked = openssl_node(pki, certs, "aia-revoked", responder.url)
        by_ftp = openssl_node(pki, certs, "aia-ftp", f"ftp://127.0.0.1:{responder.port}/")
        by_file = openssl_node(pki, certs, "aia-file", "file:///etc/passwd")
        responder.register(certificate(good[0]))
        responder.revoke(certificate(revoked[0]))
        with ocsp_link(tmp_path, pki, policy(mode=OcspMode.AIA)) as link:
            with node(link, pki, *good) as client:
                assert client.activate().identity == "CN=aia-good,O=Hospital AIA"
            with node(link, pki, *revoked) as client:
                assert "according to its OCSP responder" in refused(client)
            asked = responder.requests
            for chain_and_key, scheme in ((by_ftp, "'ftp'"), (by_file, "'file'")):
                with node(link, pki, *chain_and_key) as client:
                    message = unavailable(client)
                    assert "names OCSP responders the link will not ask" in message
                    assert f"the scheme {scheme} is not used" in message
            assert responder.requests == asked  # the ftp URL named its port: never reached
            responder.stop()
            with named(link, pki, "node-1") as client:  # names no responder
                assert client.activate().identity == "CN=node-1,O=Hospital A"


# --- the real programs ------------------------------------------------------------------------


def test_real_link_nodes_and_cli_follow_their_ocsp_responder(deployment: Deployment) -> None:
    """flwrmtls-superlink --ocsp URL with real nodes and the real CLI: a node that starts
    while the responder is down waits (it retries; the link fails closed) and joins once the
    responder answers; the operator sees the responder in ``supernode revocation``; a node
    revoked at its responder exits with one line while the other goes on."""
    pki = deployment.pki
    with responder_for(pki, deployment.tmp / "responder", start=False) as responder:
        responder.start()
        responder.stop()
        link = deployment.start_link(
            [
                *deployment.link_args(), "--ocsp", responder.url,
                "--ocsp-refresh-interval", "1", "--ocsp-timeout", "2",
            ]
        )  # fmt: skip
        assert f"OCSP: node and CLI certificates at {responder.url}" in link.log
        waiting = deployment.node("node-1", link.fleet_port)
        waiting.wait_for(r"has no OCSP answer for certificate .*; retrying in")
        responder.start()
        waiting.wait_active()
        revoked = deployment.node("node-2", link.fleet_port)
        revoked.wait_active()
        deployment.profile(link.control_port)
        listing = deployment.cli("supernode", "revocation", "--format", "json")
        assert listing.returncode == 0, listing.stderr
        (row,) = [row for row in json.loads(listing.stdout) if row["kind"] == "ocsp"]
        assert row["sources"] == [responder.url]
        assert row["state"] == "current"
        assert "3 certificate(s) asked about, 3 good" in row["detail"]  # 2 nodes, the CLI
        table = deployment.cli("supernode", "revocation")
        assert "CHECKED BY" in table.stdout
        assert responder.url in table.stdout
        responder.revoke(leaf(pki, "node-2"))
        assert revoked.wait_exit() == 1
        assert "certificate revoked according to its OCSP responder" in revoked.log
        assert waiting.process is not None
        assert waiting.process.poll() is None
        statuses = {n["identity"]: n["status"] for n in deployment.list_nodes()}
        assert statuses["CN=node-2,O=Hospital B"] == "revoked"
