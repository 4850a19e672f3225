"""Which link an EC-key node signs for: the link's server key, learned from TLS itself.

Rules kept here:

* The audience is the SHA-256 of the SubjectPublicKeyInfo of the certificate the link presents
  (:func:`flwrmtls.auth.callsigning.audience_of`), read from a TLS handshake of the node's own to
  the same address, verified as grpc verifies the link: against ``--root-certificates`` (the
  system's CA store without it), with the host of ``--superlink`` as the name, offering ALPN
  ``h2`` (grpc servers require it), and presenting the node's client certificate when it has
  one (a certificate+key link asks for it at the handshake).
* Never from anything the link says in a message: a link the node trusts by mistake could name
  another link's key, and the node would sign calls that link could replay there.
* Learned before the first signed call, and again when the link refuses a call as
  ``wrong-audience`` (its server certificate was rotated to a new key); the refused call is
  then retried once (:class:`flwrmtls.fleet.client.FleetClient`).
* A certificate that does not verify is :class:`~flwrmtls.errors.Refused`, named as grpc's
  own failure is; anything else that stops the handshake (nothing listening, a link
  restarting) is :class:`~flwrmtls.errors.LinkUnreachable`, which the node retries.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509

from flwrmtls.auth.callsigning import audience_of, audience_text
from flwrmtls.errors import InputError, LinkUnreachable, Refused

__all__ = ["LinkAudience", "split_address"]

log = logging.getLogger("flwrmtls.node")

_TIMEOUT = 10.0


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); InputError otherwise."""
    host, colon, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--superlink {address!r} is not host:port")
    return host, int(port)


class LinkAudience:
    """The audience of the link at ``address``: learned once, re-learned on request.

    Thread-safe: the node's calls to the link (heartbeats, pulls, transfers) run in worker
    threads and sign concurrently.
    """

    def __init__(
        self,
        address: str,
        roots_pem: bytes | None,
        client_files: tuple[Path, Path] | None = None,
        *,
        server_name: str | None = None,
        roots_name: str = "",
        timeout: float = _TIMEOUT,
    ) -> None:
        """``client_files``: the node's certificate chain and key files, presented at the
        handshake. ``server_name``: the name the link's certificate must carry (default: the
        host of ``address``, as grpc checks it). ``roots_name``: the CA file, for messages."""
        self._address = address
        self._host, self._port = split_address(address)
        self._server_name = server_name or self._host
        self._roots_pem = roots_pem
        self._roots_name = roots_name or "the system's CA store"
        self._client_files = client_files
        self._timeout = timeout
        self._lock = threading.Lock()
        self._audience: bytes | None = None

    def current(self) -> bytes:
        """The audience to sign for (learned on first use)."""
        with self._lock:
            if self._audience is None:
                self._audience = self._learn()
                log.info(
                    "signing for the link's server key sha256:%s",
                    audience_text(self._audience)[:16],
                )
            return self._audience

    def relearn(self) -> bytes:
        """Learn the audience again (the link said the node signed for another key)."""
        with self._lock:
            previous, self._audience = self._audience, self._learn()
            if previous != self._audience:
                log.info(
                    "the link's server key changed: signing for sha256:%s from now on",
                    audience_text(self._audience)[:16],
                )
            return self._audience

    def _context(self) -> ssl.SSLContext:
        roots = self._roots_pem.decode("ascii") if self._roots_pem is not None else None
        context = ssl.create_default_context(cadata=roots)
        context.set_alpn_protocols(["h2"])
        if self._client_files is not None:
            chain, key = self._client_files
            context.load_cert_chain(str(chain), str(key))
        return context

    def _learn(self) -> bytes:
        try:
            context = self._context()
        except (ssl.SSLError, OSError, ValueError) as error:
            raise Refused(
                f"cannot set up TLS to learn the link's server key: {error}: check "
                "--root-certificates and --ssl-client-certfile/--ssl-client-keyfile"
            ) from None
        try:
            with (
                socket.create_connection((self._host, self._port), self._timeout) as raw,
                context.wrap_socket(raw, server_hostname=self._server_name) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLCertVerificationError as error:
            raise Refused(
                f"certificate verify failed: the link at {self._address} presented a "
                f"certificate that {self._roots_name} does not verify ({error.verify_message})"
            ) from None
        except (OSError, ssl.SSLError) as error:
            raise LinkUnreachable(
                f"cannot reach the link at {self._address} to learn its server key: {error}"
            ) from None
        if der is None:  # pragma: no cover - a verified handshake always has a certificate
            raise LinkUnreachable(f"the link at {self._address} presented no certificate")
        return audience_of(x509.load_der_x509_certificate(der))
