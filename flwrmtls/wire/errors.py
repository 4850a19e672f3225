"""Translate a failed gRPC call into an error the user can act on, in one table.

What a client sees when a TLS handshake fails is only a string inside ``UNAVAILABLE``
(measured with grpcio 1.85, locked in by tests/wire/test_errors.py):

=====================================  ============================================
the client sees                        what happened
=====================================  ============================================
``Connection refused``                 nothing listens there (link down, wrong port)
``CERTIFICATE_VERIFY_FAILED``          the client could not verify the link's cert
``WRONG_VERSION_NUMBER``               the client speaks TLS, the link plaintext
``Socket closed`` (TLS client)         the link refused the client's certificate,
                                       or it has none and the link requires one
``Socket closed`` (plaintext client)   the link speaks TLS
``Failed to create security            the client's own certificate or key cannot
handshaker``                           do TLS (e.g. key usage without
                                       digitalSignature); nothing was sent
=====================================  ============================================

A refusal after the handshake (``UNAUTHENTICATED``/``PERMISSION_DENIED``) carries the link's
reason in its details and a :data:`REFUSAL_METADATA_KEY` trailer.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from flwrmtls.errors import FlwrmtlsError, LinkUnreachable, Refused

__all__ = ["ConnectionContext", "translate_rpc_error"]


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What the client knows about how it connected, to name the likely cause."""

    address: str
    tls: bool
    has_client_certificate: bool
    root_certificates: str
    """The file the client verifies the link with, for messages ('' = system roots)."""
    client_flags: str = "--ssl-client-certfile/--ssl-client-keyfile"


def _handshake_closed(ctx: ConnectionContext) -> FlwrmtlsError:
    if not ctx.tls:
        return Refused(
            f"the link at {ctx.address} closed the connection: it probably requires TLS; "
            "drop --insecure and give the CA that verifies the link"
        )
    if not ctx.has_client_certificate:
        return Refused(
            f"the link at {ctx.address} requires a client certificate: give {ctx.client_flags}"
        )
    return Refused(
        f"the link at {ctx.address} refused this client's certificate at the TLS handshake: "
        "it is not signed by a CA the link trusts for clients, or not valid for client "
        "authentication (the link's log has the reason)"
    )


def _server_unverified(ctx: ConnectionContext) -> FlwrmtlsError:
    roots = ctx.root_certificates or "the system's CA store"
    return Refused(
        f"certificate verify failed: the link at {ctx.address} presented a certificate that "
        f"{roots} does not verify (wrong CA bundle, or the address is not in its SANs)"
    )


def _not_tls(ctx: ConnectionContext) -> FlwrmtlsError:
    return Refused(
        f"the link at {ctx.address} does not speak TLS (it runs --insecure?): "
        "connect with TLS only to a TLS link"
    )


def _unusable_local_certificate(ctx: ConnectionContext) -> FlwrmtlsError:
    return Refused(
        "grpc could not set up TLS with this client's own certificate and key (for example "
        "its key usage lacks digitalSignature): check "
        f"{ctx.client_flags if ctx.has_client_certificate else 'the CA bundle'}"
    )


def _unreachable(ctx: ConnectionContext) -> FlwrmtlsError:
    return LinkUnreachable(f"no link is listening at {ctx.address} (connection refused)")


# (substring of the error text, translation), first match wins.
_UNAVAILABLE_CAUSES = (
    ("CERTIFICATE_VERIFY_FAILED", _server_unverified),
    ("WRONG_VERSION_NUMBER", _not_tls),
    ("Socket closed", _handshake_closed),
    ("Failed to create security handshaker", _unusable_local_certificate),
    ("Connection refused", _unreachable),
)


def translate_rpc_error(error: grpc.RpcError, ctx: ConnectionContext) -> FlwrmtlsError:
    """The one place a gRPC failure becomes a user-facing error."""
    code = error.code()
    details = error.details() or ""
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return Refused(f"the link at {ctx.address} refused this client: {details}")
    if code is grpc.StatusCode.UNAVAILABLE:
        for marker, translate in _UNAVAILABLE_CAUSES:
            if marker in details:
                return translate(ctx)
        return LinkUnreachable(f"the link at {ctx.address} is unavailable: {details}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return LinkUnreachable(f"the link at {ctx.address} did not answer in time")
    return FlwrmtlsError(f"the link at {ctx.address} answered {code.name}: {details}")
