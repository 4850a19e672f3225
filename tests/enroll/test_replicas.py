"""Enrollment through two link replicas sharing one PostgreSQL database, as a federation of
several links runs it: real links on loopback, real gRPC over TLS, a real PostgreSQL.

Each attack beside its control: one token sent to both replicas at once (one certificate,
the other refused as used; another token then works at either), two operators deciding one
request at both replicas (one decision), an address spreading its calls over the replicas
(one budget; another address served).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from flwrmtls.auth.ratelimit import peer_host
from flwrmtls.enroll.config import EnrollmentConfig, EnrollMode
from flwrmtls.enroll.issuer import EnrollmentIssuer
from flwrmtls.enroll.tokens import Binding, new_token
from flwrmtls.link.server import Link
from flwrmtls.proto import control_pb2, control_pb2_grpc
from flwrmtls.testing.link import mtls_config, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
from flwrmtls.wire.refusals import Refusal, refusal_in
from tests.link.test_replication import on_loop, wait_until

from .test_endpoint import SITE, ask, collect, csr, enrollment, refused


@contextmanager
def enrolling_replicas(
    pki: TestPki, tmp_path: Path, url: str, *, mode: EnrollMode = EnrollMode.SIGN,
    per_minute: int = 1000,
) -> Iterator[list[Link]]:  # fmt: skip
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "unused.db", server_chain=chain, server_key=key, client_ca=pki.trust_bundle_path
    )
    issuer = EnrollmentIssuer.load(
        pki.ca.files.issuing_certificate, pki.ca.files.issuing_key,
        client_cas=config.client_ca_certificates, now=datetime.now(UTC),
    )  # fmt: skip
    enroll = EnrollmentConfig(
        mode, issuer, address="[::]:0", certificate_days=30, per_minute=per_minute
    )
    config = dataclasses.replace(
        config, database=url, objects_dir=tmp_path / "objects", enroll=enroll
    )
    with ExitStack() as stack:
        links = [stack.enter_context(running_link(config)) for _ in range(2)]
        for link in links:  # announcements flow once each listens
            wait_until(link.replication.listening.is_set)
        yield links


def token_at(link: Link, binding: Binding = SITE) -> str:
    """A token as `enroll token create` makes one, kept by ``link`` (on its own loop)."""
    issued = new_token(binding, link.clock.now(), timedelta(hours=1), "operator")
    assert on_loop(link, lambda: link.state.enroll.add(issued.record))
    return issued.text


def at_once(*calls: Any) -> list[Any]:
    """Run the calls on threads released together: each one's answer or its RpcError."""
    start = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        start.wait(timeout=30)
        try:
            results[index] = calls[index]()
        except grpc.RpcError as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_one_token_sent_to_both_replicas_at_once_gets_one_certificate(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    with (
        enrolling_replicas(pki, tmp_path, postgres_url) as (a, b),
        enrollment(a, pki) as at_a,
        enrollment(b, pki) as at_b,
    ):
        for _ in range(5):  # several races, each with a fresh token
            token = token_at(a)
            answers = at_once(
                lambda token=token: ask(at_a, token, csr()[0]),
                lambda token=token: ask(at_b, token, csr()[0]),
            )
            issued = [x for x in answers if not isinstance(x, grpc.RpcError)]
            lost = [x for x in answers if isinstance(x, grpc.RpcError)]
            assert len(issued) == 1
            assert issued[0].certificate_chain_pem
            (error,) = lost
            assert refusal_in(error) is Refusal.TOKEN_REFUSED
            assert "used already" in str(error.details())
        # The control: a token made through one replica works once at the other.
        token = token_at(a)
        assert ask(at_b, token, csr()[0]).certificate_chain_pem
        code, why = refused(at_a, token, csr()[0])
        assert code is Refusal.TOKEN_REFUSED
        assert "used already" in why


def _control(link: Link, pki: TestPki, stack: ExitStack) -> Any:
    operator = pki.paths("cli-operator")
    identity = load_tls_identity(*operator, cert_flag="c", key_flag="k")
    credentials = channel_credentials(pki.trust_bundle_path.read_bytes(), identity)
    channel = stack.enter_context(
        grpc.secure_channel(f"127.0.0.1:{link.control_port}", credentials)
    )
    return control_pb2_grpc.ControlStub(channel)


def test_a_request_made_at_one_replica_is_decided_once_and_collected_at_the_other(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """--enroll-mode approve on two replicas: the request waits at A; one operator approves
    it through A while another denies it through B, at once: one decision stands, the other
    is told the request was decided already; the node collects the outcome through B."""
    with (
        enrolling_replicas(pki, tmp_path, postgres_url, mode=EnrollMode.APPROVE) as (a, b),
        enrollment(a, pki) as at_a,
        enrollment(b, pki) as at_b,
        ExitStack() as stack,
    ):
        control_a, control_b = _control(a, pki, stack), _control(b, pki, stack)
        token = token_at(b)
        pending = ask(at_a, token, csr()[0])
        assert pending.state == "pending"
        assert collect(at_b, token, pending.request_id).state == "pending"
        approve = control_pb2.DecideEnrollRequestRequest(
            request_id=pending.request_id, approve=True
        )
        deny = control_pb2.DecideEnrollRequestRequest(request_id=pending.request_id, reason="no")
        answers = at_once(
            lambda: control_a.DecideEnrollRequest(approve),
            lambda: control_b.DecideEnrollRequest(deny),
        )
        won = [x for x in answers if not isinstance(x, grpc.RpcError)]
        lost = [x for x in answers if isinstance(x, grpc.RpcError)]
        assert len(won) == 1
        (error,) = lost
        assert refusal_in(error) is Refusal.ENROLL_REQUEST_STATE
        assert "already" in str(error.details())
        state = won[0].request.state
        assert state in ("issued", "denied")
        if state == "issued":
            assert collect(at_b, token, pending.request_id).certificate_chain_pem
        else:
            with pytest.raises(grpc.RpcError) as denial:
                collect(at_b, token, pending.request_id)
            assert refusal_in(denial.value) is Refusal.REQUEST_DENIED


def test_an_address_spreading_its_calls_over_the_replicas_has_one_budget(
    pki: TestPki, tmp_path: Path, postgres_url: str
) -> None:
    """--enroll-rate 5: five calls from one address at A use its budget at B too (each call
    is announced); another address is served at B."""
    with (
        enrolling_replicas(pki, tmp_path, postgres_url, per_minute=5) as (a, b),
        enrollment(a, pki, "127.0.0.1") as flooder_at_a,
        enrollment(b, pki, "127.0.0.1") as flooder_at_b,
        enrollment(b, pki, "[::1]") as neighbour_at_b,
    ):
        token = token_at(a)
        for _ in range(5):
            code, _ = refused(flooder_at_a, token, b"garbage")
            assert code is Refusal.CSR_REFUSED
        entries = on_loop(a, lambda: a.state.audit.entries(10, ""))
        host = peer_host(entries[0].record.peer)  # as the link names the address
        limiter = b._limiters["enrollment"]
        wait_until(lambda: on_loop(b, lambda: limiter.wait(host, b"")) is not None)
        code, why = refused(flooder_at_b, token, csr()[0])
        assert code is Refusal.ENROLL_RATE_LIMITED
        assert "retry in" in why
        assert ask(neighbour_at_b, token, csr()[0]).certificate_chain_pem  # the control
