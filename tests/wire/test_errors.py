"""Lock in what grpcio reports for each handshake failure, through real connections.

If a grpcio upgrade changes these strings, these tests fail before users see
"check your network" instead of the cause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from flwrmtls.errors import FlwrmtlsError, HandshakeClosed, LinkUnreachable, Refused
from flwrmtls.fleet.client import FleetClient, Pulled
from flwrmtls.link.server import Link
from flwrmtls.pki import CertificateAuthority
from flwrmtls.testing.link import FleetListener, mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.testing.processes import LinkProcess
from flwrmtls.wire.credentials import CertificateCheck, CertificateProblem
from flwrmtls.wire.errors import (
    ConnectionContext,
    call,
    explain_handshake_closed,
    rpc_failure,
    translate_rpc_error,
)


def activate(client: FleetClient, channel: grpc.Channel) -> None:
    try:
        client.activate()
    finally:
        channel.close()


def test_good_client_is_admitted(link: Link, pki: TestPki) -> None:
    chain, key = pki.paths("node-1")
    activate(*node_client(link, root_certificates=pki.trust_bundle_path, chain=chain, key=key))


def test_no_client_certificate(link: Link, pki: TestPki) -> None:
    # A link that closes the handshake could also be one that died: retried, both named.
    with pytest.raises(
        HandshakeClosed, match=r"requires a client certificate .* or it is restarting"
    ):
        activate(*node_client(link, root_certificates=pki.trust_bundle_path))


def test_client_certificate_from_another_ca(link: Link, pki: TestPki, tmp_path: Path) -> None:
    stranger = CertificateAuthority.create(tmp_path / "stranger").issue_node("node-1")
    with pytest.raises(
        HandshakeClosed, match="may have refused this certificate, or be restarting"
    ):
        activate(
            *node_client(
                link,
                root_certificates=pki.trust_bundle_path,
                chain=stranger.chain_path,
                key=stranger.key_path,
            )
        )


def test_link_not_verified_by_client_roots(link: Link, pki: TestPki, tmp_path: Path) -> None:
    stranger = CertificateAuthority.create(tmp_path / "stranger")
    chain, key = pki.paths("node-1")
    with pytest.raises(Refused, match="certificate verify failed"):
        activate(
            *node_client(link, root_certificates=stranger.trust_bundle_path, chain=chain, key=key)
        )


def test_plaintext_client_against_tls_link(link: Link) -> None:
    address = f"127.0.0.1:{link.fleet_port}"
    channel = grpc.insecure_channel(address)
    ctx = ConnectionContext(address, tls=False, has_client_certificate=False, root_certificates="")
    with pytest.raises(HandshakeClosed, match=r"probably requires TLS .* unless it is restarting"):
        activate(FleetClient(channel, ctx), channel)


def test_nothing_listening(pki: TestPki) -> None:
    address = "127.0.0.1:1"
    channel = grpc.secure_channel(
        address, grpc.ssl_channel_credentials(pki.trust_bundle_path.read_bytes())
    )
    ctx = ConnectionContext(address, tls=True, has_client_certificate=False, root_certificates="")
    with pytest.raises(LinkUnreachable, match="connection refused"):
        activate(FleetClient(channel, ctx), channel)


def as_dict(metadata: Any) -> dict[str, str]:
    return {str(key): str(value) for key, value in metadata or ()}


def test_a_refused_call_names_its_reason_in_trailing_metadata(link: Link, pki: TestPki) -> None:
    from flwrmtls.proto import control_pb2, control_pb2_grpc
    from flwrmtls.wire.credentials import channel_credentials, load_tls_identity
    from flwrmtls.wire.metadata import REFUSAL_KEY

    def list_nodes(certificate: str) -> tuple[grpc.StatusCode, dict[str, str]]:
        identity = load_tls_identity(*pki.paths(certificate), cert_flag="c", key_flag="k")
        credentials = channel_credentials(pki.trust_bundle_path.read_bytes(), identity)
        with grpc.secure_channel(f"127.0.0.1:{link.control_port}", credentials) as channel:
            stub = control_pb2_grpc.ControlStub(channel)
            try:
                _, call = stub.ListNodes.with_call(control_pb2.ListNodesRequest())
            except grpc.RpcError as error:
                return error.code(), as_dict(error.trailing_metadata())
            return call.code(), as_dict(call.trailing_metadata())

    code, trailer = list_nodes("node-1")  # a node certificate may not list nodes
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert trailer.get(REFUSAL_KEY) == "not-permitted"
    code, trailer = list_nodes("cli-operator")  # control
    assert code is grpc.StatusCode.OK
    assert REFUSAL_KEY not in trailer


# --- a link that goes away is not a link that refuses ----------------------------------------


def link_process(pki: TestPki, tmp_path: Path) -> LinkProcess:
    chain, key = pki.paths("server")
    link = LinkProcess(
        [
            "--fleet-api-address", "127.0.0.1:0", "--control-api-address", "127.0.0.1:0",
            "--serverappio-api-address", "127.0.0.1:0", "--database", str(tmp_path / "link.db"),
            "--ssl-require-client-auth", "--ssl-ca-certfile", str(pki.trust_bundle_path),
            "--ssl-certfile", str(chain), "--ssl-keyfile", str(key),
        ],
        tmp_path / "link.log",
    )  # fmt: skip
    link.start_and_wait()
    return link


def node_1(link: FleetListener, pki: TestPki) -> tuple[FleetClient, grpc.Channel]:
    chain, key = pki.paths("node-1")
    return node_client(link, root_certificates=pki.trust_bundle_path, chain=chain, key=key)


def test_a_call_cut_by_a_killed_link_is_the_link_going_away(pki: TestPki, tmp_path: Path) -> None:
    # The attack is the link's own death: an OOM kill or a lost host closes the connection
    # under a call, and grpc's words for it ("Stream removed (Socket closed)") contain the words
    # of a handshake refusal. Read as a refusal, it ended every node for good.
    link = link_process(pki, tmp_path)
    client, channel = node_1(link, pki)
    try:
        session = client.activate()
        cut: list[BaseException] = []

        def long_poll() -> None:
            try:
                client.pull(session, wait=20.0, active_run_ids=[])
            except FlwrmtlsError as error:
                cut.append(error)

        poll = threading.Thread(target=long_poll)
        poll.start()
        assert link.process is not None
        link.process.send_signal(signal.SIGKILL)
        link.process.wait()
        poll.join(timeout=30)
        [error] = cut
        assert type(error) is LinkUnreachable, error  # retried, never final
        assert "went away" in str(error)
        assert "refused this" not in str(error)
        # Control: the link gone, the calls after it find nothing listening, still unreachable
        # (the first may still meet the closing connection: "went away", also unreachable).
        words = []
        for _ in range(50):
            with pytest.raises(LinkUnreachable) as unreachable:
                client.heartbeat(session)
            words.append(str(unreachable.value))
            if "no link is listening" in words[-1]:
                break
            time.sleep(0.1)
        assert "no link is listening" in words[-1], words
    finally:
        channel.close()
        link.stop()


def test_a_connection_closed_before_the_links_tls_hello_is_not_a_refusal(pki: TestPki) -> None:
    # What a node meets when a link dies as it connects, or a proxy has no link behind it:
    # the connection is accepted and closed. Measured: "Handshake read failed (Socket closed)".
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def accept_and_close() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = server.accept()
                    connection.recv(1 << 16)  # the client's hello: closing unread would reset
                    connection.close()

        threading.Thread(target=accept_and_close, daemon=True).start()
        listener = SimpleNamespace(fleet_port=port)
        client, channel = node_1(listener, pki)
        with pytest.raises(HandshakeClosed) as closed:
            activate(client, channel)
    message = str(closed.value)
    assert "may have refused this certificate, or be restarting" in message
    assert "nothing wrong found here" in message  # the node's own check passed
    assert "chain to --root-certificates" in message


# --- the table, value by value -----------------------------------------------------------------


class Failure(grpc.RpcError):
    """A failed call as grpc hands it over: a code and a details string."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


LAST = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:9092: "
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
WITH_CERT = ConnectionContext(
    "127.0.0.1:9092", tls=True, has_client_certificate=True, root_certificates="ca.crt"
)
NO_CERT = ConnectionContext(
    "127.0.0.1:9092", tls=True, has_client_certificate=False, root_certificates="ca.crt"
)
PLAIN = ConnectionContext(
    "127.0.0.1:9092", tls=False, has_client_certificate=False, root_certificates=""
)


@pytest.mark.parametrize(
    ("details", "ctx", "kind", "says"),
    [
        ("Stream removed (Socket closed)", WITH_CERT, LinkUnreachable, "went away"),
        ("Stream removed (Socket closed)", PLAIN, LinkUnreachable, "went away"),
        (LAST + "Socket closed", WITH_CERT, HandshakeClosed,
         "may have refused this certificate, or be restarting"),
        (LAST + "Handshake read failed (Socket closed)", WITH_CERT, HandshakeClosed,
         "may have refused this certificate, or be restarting"),
        (LAST + "Socket closed", NO_CERT, HandshakeClosed,
         "requires a client certificate (give --ssl-client-certfile"),
        (LAST + "Socket closed", PLAIN, HandshakeClosed, "probably requires TLS"),
        (LAST + "CERTIFICATE_VERIFY_FAILED", WITH_CERT, Refused, "certificate verify failed"),
        (LAST + "WRONG_VERSION_NUMBER", WITH_CERT, Refused, "does not speak TLS"),
        (LAST + "Failed to create security handshaker", WITH_CERT, Refused,
         "could not set up TLS"),
        ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9092: "
         "Failed to connect to remote host: Connection refused", WITH_CERT, LinkUnreachable,
         "no link is listening"),
        ("Stream removed (recvmsg:Connection reset by peer)", WITH_CERT, LinkUnreachable,
         "went away"),
        ("Cancelling all calls", WITH_CERT, LinkUnreachable, "is stopping"),
    ],
)  # fmt: skip
def test_unavailable_translations(
    details: str, ctx: ConnectionContext, kind: type[FlwrmtlsError], says: str
) -> None:
    error = translate_rpc_error(Failure(UNAVAILABLE, details), ctx)
    assert type(error) is kind
    assert says in str(error)
    if kind is LinkUnreachable:
        assert "refused this" not in str(error)


def test_a_call_the_link_cancels_is_retried_not_final() -> None:
    error = translate_rpc_error(Failure(grpc.StatusCode.CANCELLED, "CANCELLED"), WITH_CERT)
    assert type(error) is LinkUnreachable
    assert str(error) == (
        "the call to the link at 127.0.0.1:9092 was cancelled before its answer (CANCELLED): "
        "the link may be stopping or restarting"
    )
    said = translate_rpc_error(Failure(grpc.StatusCode.CANCELLED, "proxy reset"), WITH_CERT)
    assert "(CANCELLED: proxy reset)" in str(said)


def test_a_long_poll_of_a_stopping_link_is_the_link_stopping_in_plain_words(
    pki: TestPki, tmp_path: Path
) -> None:
    # A link stopped with SIGTERM cancels the calls in progress: grpc says "Cancelling all
    # calls", which the node used to log raw. Control: a call before the stop is answered.
    config = mtls_config(
        tmp_path / "link.db", server_chain=pki.paths("server")[0],
        server_key=pki.paths("server")[1], client_ca=pki.trust_bundle_path,
    )  # fmt: skip
    cut: list[FlwrmtlsError] = []
    with running_link(config) as link:
        client, channel = node_1(link, pki)
        session = client.activate()
        assert client.pull(session, wait=0.0, active_run_ids=[]) == Pulled([], [])

        def long_poll() -> None:
            try:
                client.pull(session, wait=20.0, active_run_ids=[])
            except FlwrmtlsError as error:
                cut.append(error)

        poll = threading.Thread(target=long_poll)
        poll.start()
        deadline = time.monotonic() + 20
        while not len(link.live_calls) and time.monotonic() < deadline:  # the poll is in
            time.sleep(0.05)
        assert len(link.live_calls) == 1
    poll.join(timeout=30)
    channel.close()
    [error] = cut
    assert type(error) is LinkUnreachable, error
    assert "is stopping" in str(error)


def test_refusals_the_link_states_stay_final() -> None:
    for code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        # Even when the link's reason happens to contain the words of a closed connection.
        error = translate_rpc_error(Failure(code, "certificate revoked (Socket closed)"), WITH_CERT)
        assert type(error) is Refused
        assert str(error) == (
            "the link at 127.0.0.1:9092 refused this client: certificate revoked (Socket closed)"
        )


def own(*problems: CertificateProblem) -> CertificateCheck:
    return CertificateCheck(problems, checked="dates, key usage, key, chain to ca.crt")


def test_the_clients_own_check_settles_or_informs_a_closed_handshake() -> None:
    expired = CertificateProblem("--cert: certificate expired on 2020-01-01", definite=True)
    unchained = CertificateProblem("--cert: certificate does not chain to ca.crt", definite=False)
    details = LAST + "Socket closed"
    for check, kind, says in [
        (own(expired, unchained), Refused, "own certificate explains why: --cert: certificate "
         "expired on 2020-01-01"),
        (own(unchained), HandshakeClosed, "the likely cause, if it refused: --cert: certificate "
         "does not chain to ca.crt"),
        (own(), HandshakeClosed, "nothing wrong found here with this certificate (checked: "
         "dates, key usage, key, chain to ca.crt)"),
    ]:  # fmt: skip
        ctx = dataclasses.replace(WITH_CERT, check_certificate=functools.partial(same, check))
        error = translate_rpc_error(Failure(UNAVAILABLE, details), ctx)
        assert type(error) is kind
        assert says in str(error)
        explained = explain_handshake_closed(ctx.address, check)
        assert (type(explained), str(explained)) == (kind, str(error))
    # The check runs only for a closed handshake: a call cut mid-way never asks it.
    asked: list[bool] = []

    def check_and_note() -> CertificateCheck:
        asked.append(True)
        return own()

    ctx = dataclasses.replace(WITH_CERT, check_certificate=check_and_note)
    translate_rpc_error(Failure(UNAVAILABLE, "Stream removed (Socket closed)"), ctx)
    assert asked == []
    translate_rpc_error(Failure(UNAVAILABLE, details), ctx)
    assert asked == [True]


def same(check: CertificateCheck) -> CertificateCheck:
    return check


def test_every_call_is_translated_in_one_place_the_clients_own_table_first() -> None:
    def failing(error: grpc.RpcError) -> Any:
        def invoke() -> None:
            raise error

        return invoke

    assert call(lambda: 42, NO_CERT) == 42  # the control: an answer passes through
    refused = Failure(grpc.StatusCode.PERMISSION_DENIED, "revoked")
    with pytest.raises(
        Refused, match=r"the link at 127\.0\.0\.1:9092 refused this client: revoked"
    ):
        call(failing(refused), NO_CERT)
    # A client's table of stated refusals is read first; what it does not state falls through.
    mine = FlwrmtlsError("the node's own error for it")
    stated = {id(refused): mine}
    with pytest.raises(FlwrmtlsError) as raised:
        call(failing(refused), NO_CERT, lambda error: stated.get(id(error)))
    assert raised.value is mine
    cut = Failure(UNAVAILABLE, "Stream removed (Socket closed)")
    with pytest.raises(LinkUnreachable, match="went away"):
        call(failing(cut), NO_CERT, lambda error: stated.get(id(error)))
    assert type(rpc_failure(cut, NO_CERT)) is LinkUnreachable
    with pytest.raises(ValueError, match="not a gRPC failure"):  # anything else is not ours
        call(failing(ValueError("not a gRPC failure")), NO_CERT)  # type: ignore[arg-type]
