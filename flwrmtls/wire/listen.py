"""Listening: check an address before grpc tries (and logs its own error); server options.

Rules:

* An address is ``host:port``; a host in brackets is IPv6 (``[::1]:9091``).
* A host is loopback when every address it names is (127.0.0.0/8, ``::1``; ``localhost``
  resolves so); ``0.0.0.0``, ``[::]`` and an empty host listen on every interface
  (:func:`is_loopback`).
* The app-process APIs (ServerAppIo, ClientAppIo) carry run tokens in plaintext, so they
  listen on loopback only; any other address is refused (:func:`require_loopback`): app
  processes are the link's and the node's own children, on the same host, so nothing
  legitimate ever reaches these APIs from elsewhere.

What grpc core enforces for each listener, from :class:`ServerLimits`:

* connections: at most ``max_connections`` at once per listener (grpc's
  ``max_allowed_incoming_connections``: a connection over it is closed at once); one
  connection carries at most ``max_concurrent_streams`` calls at once (more wait on the
  client); a connection without calls for ``max_connection_idle`` is closed, and every
  connection is closed after ``max_connection_age`` (plus ``max_connection_age_grace`` for
  its calls in progress): a client reconnects transparently, with a new TLS handshake.
* keepalive: the link pings an idle client every ``keepalive_time`` and closes the
  connection when no answer comes within ``keepalive_timeout`` (a vanished peer frees its
  connection); a client pinging more often than every ``min_client_ping_interval`` without
  data gets GOAWAY ``too_many_pings`` after two strikes (nodes and the CLI send no pings).
* sizes, checked by grpc before a request is parsed: a request over ``max_receive_bytes``
  is refused with RESOURCE_EXHAUSTED, and metadata over ``max_metadata_bytes`` too.

Not bounded here (grpcio has no per-address hook): connections per peer address. The auth
interceptor bounds the calls in progress per address and the failed authentications per
address; an operator who needs a per-address connection cap sets it in the firewall.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from flwrmtls.errors import InputError

__all__ = ["SERVER_OPTIONS", "ServerLimits", "check_bindable", "is_loopback", "require_loopback"]

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    # grpc turns SO_REUSEPORT on by default: two servers could then share one port silently.
    ("grpc.so_reuseport", 0),
    # No bandwidth-delay probing: grpc then keeps each stream's receive window small, so what
    # a server buffers stays bounded per stream instead of growing by megabytes with every
    # concurrent upload (8 uploads of 200 MiB into a grpc.aio server: 372 -> 64 MiB peak RSS,
    # throughput alike; see docs/performance.md).
    ("grpc.http2.bdp_probe", 0),
)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What grpc core enforces on one listener (see the module's rules). Seconds, bytes."""

    max_connections: int = 10_000
    max_concurrent_streams: int = 100
    max_connection_idle: float = 300.0
    max_connection_age: float = 3600.0
    max_connection_age_grace: float = 600.0
    """Long enough for a large object transfer (a node's transfer timeout is 600 s)."""
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    min_client_ping_interval: float = 60.0
    max_receive_bytes: int = 4 << 20
    max_metadata_bytes: int = 8 << 10

    def options(self) -> list[tuple[str, int]]:
        """grpc server options: :data:`SERVER_OPTIONS` and these limits."""

        def ms(seconds: float) -> int:
            return int(seconds * 1000)

        return [
            *SERVER_OPTIONS,
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.max_connection_idle_ms", ms(self.max_connection_idle)),
            ("grpc.max_connection_age_ms", ms(self.max_connection_age)),
            ("grpc.max_connection_age_grace_ms", ms(self.max_connection_age_grace)),
            ("grpc.keepalive_time_ms", ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", ms(self.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", ms(self.min_client_ping_interval)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.max_metadata_size", self.max_metadata_bytes),
        ]


def check_bindable(address: str) -> None:
    """Raise OSError naming ``address`` if it cannot be listened on (before grpc tries and logs)."""
    host, _, port_text = address.rpartition(":")
    bind_host = host.strip("[]") or None
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(
            bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (ValueError, socket.gaierror) as error:
        raise OSError(f"{address} is not a usable host:port ({error})") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                raise OSError(f"cannot listen on {address}: {error.strerror}") from None


def is_loopback(address: str) -> bool:
    """Whether listening on ``address`` (host:port) is reachable from this host only.

    True when every address the host resolves to is a loopback address (127.0.0.0/8, ::1);
    an empty host, ``0.0.0.0`` and ``[::]`` listen on every interface, so they are not.
    """
    host = address.rpartition(":")[0].strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos
    )


def require_loopback(address: str, flag: str, api: str) -> None:
    """Raise InputError naming ``flag`` unless ``address`` is a loopback address."""
    if not is_loopback(address):
        port = address.rpartition(":")[2] or "PORT"
        raise InputError(
            f"{flag} {address} is not a loopback address: {api} carries run tokens in "
            f"plaintext and serves only processes on this host; use 127.0.0.1:{port}, "
            f"[::1]:{port} or localhost:{port}"
        )
