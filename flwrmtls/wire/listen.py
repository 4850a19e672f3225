"""Listening: check an address before grpc tries (and logs its own error); server options."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["SERVER_OPTIONS", "check_bindable", "is_loopback"]

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    # grpc turns SO_REUSEPORT on by default: two servers could then share one port silently.
    ("grpc.so_reuseport", 0),
    # No bandwidth-delay probing: grpc then keeps each stream's receive window small, so what
    # a server buffers stays bounded per stream instead of growing by megabytes with every
    # concurrent upload (8 uploads of 200 MiB into a grpc.aio server: 372 -> 64 MiB peak RSS,
    # throughput alike; see docs/performance.md).
    ("grpc.http2.bdp_probe", 0),
)


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
