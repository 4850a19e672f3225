"""Check that an address can be listened on, before grpc tries (and logs its own error)."""

from __future__ import annotations

import socket

__all__ = ["check_bindable"]


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
