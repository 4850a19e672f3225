"""Translate a failed gRPC call into an error the user can act on, in one table.

Rules:

* A refusal the link states (``UNAUTHENTICATED``/``PERMISSION_DENIED``: revoked, unregistered,
  not permitted) is :class:`~flwrmtls.errors.Refused`, with the link's reason from its details
  (and a :data:`~flwrmtls.wire.metadata.REFUSAL_KEY` trailer): final.
* A connection the link closes without a word is never read as a refusal on its own: a link
  that refuses a certificate at the TLS handshake and a link that dies mid-connection (OOM
  kill, host loss, eviction) look alike. It is :class:`~flwrmtls.errors.HandshakeClosed` (a
  :class:`~flwrmtls.errors.LinkUnreachable`: retried within bounds), naming both
  possibilities. With a client certificate, the client's own check
  (:func:`~flwrmtls.wire.credentials.check_own_certificate`, run here through the context)
  settles it when it finds a definite cause (expired, not yet valid, no clientAuth): then it is
  Refused, naming that cause; a likely cause (a chain not leading to the client's CA bundle) is
  added to the message.
* Every call of the CLI's and the node's clients goes through :func:`call`: a failure is
  translated there, once (with the client's table of stated refusals first, if it has one).
* A call cut on an established connection (``Stream removed``), or cancelled by a link that
  is stopping (``Cancelling all calls``), is the link going away, never a refusal: retried
  (:func:`never_connected` tells these from a connection never made). A call ended
  ``CANCELLED`` without this client's code cancelling it (by the link, by a proxy on the way,
  or by the client's channel closed under it when its certificate is rotated; grpc does not
  say which) is retried too; its line quotes grpc and says the link may be stopping.
* An ``UNAVAILABLE`` that carries a :data:`~flwrmtls.wire.metadata.REFUSAL_KEY` trailer is the
  link speaking (the catalogue's ``ocsp-unavailable``, :mod:`flwrmtls.wire.refusals`: it has
  no usable OCSP answer for the client's certificate yet; or ``rate-limited``): retried, and
  its details are the link's sentence, never read for the transport's words below (the
  sentence may quote a responder's "Connection refused").

What a client sees is only a string inside ``UNAVAILABLE`` (measured with grpcio 1.85, locked
in by tests/wire/test_errors.py):

=========================================  ============================================
the client sees                            what happened
=========================================  ============================================
``Connection refused``                     nothing listens there (link down, wrong port)
``CERTIFICATE_VERIFY_FAILED``              the client could not verify the link's cert
``WRONG_VERSION_NUMBER``                   the client speaks TLS, the link plaintext
``Stream removed (Socket closed)``         an established connection closed during a
                                           call: the link stopped, crashed or restarted
``Cancelling all calls``                   the link is stopping (SIGTERM): its calls in
                                           progress are cancelled
``...: Socket closed`` (TLS client)        closed after the client's handshake flight:
                                           the link refused the client's certificate (or
                                           its lack of one), or it died right then
``Handshake read failed (Socket closed)``  closed before the link's TLS hello: a link
                                           starting or dying, or a proxy without a link
``Socket closed`` (plaintext client)       the link speaks TLS, or it died right then
``Failed to create security                the client's own certificate or key cannot
handshaker``                               do TLS (e.g. key usage without
                                           digitalSignature); nothing was sent
=========================================  ============================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from flwrmtls.errors import FlwrmtlsError, HandshakeClosed, LinkUnreachable, Refused
from flwrmtls.wire.credentials import CertificateCheck
from flwrmtls.wire.metadata import REFUSAL_KEY

__all__ = [
    "ConnectionContext",
    "StatedError",
    "call",
    "explain_handshake_closed",
    "never_connected",
    "rpc_failure",
    "translate_rpc_error",
]

_T = TypeVar("_T")

StatedError = Callable[[grpc.RpcError], FlwrmtlsError | None]
"""A client's own table of what the link states with a refusal code
(:mod:`flwrmtls.wire.refusals`): its error for the call, or None when the call states none."""


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What the client knows about how it connected, to name the likely cause."""

    address: str
    tls: bool
    has_client_certificate: bool
    root_certificates: str
    """The file the client verifies the link with, for messages ('' = system roots)."""
    client_flags: str = "--ssl-client-certfile/--ssl-client-keyfile"
    check_certificate: Callable[[], CertificateCheck] | None = None
    """The client's own check of the certificate it presents now (it may have been rotated
    or expired since start-up), run when the link closes a handshake without a word."""


def explain_handshake_closed(address: str, check: CertificateCheck) -> FlwrmtlsError:
    """A handshake the link closed, with what the client found about its own certificate."""
    definite = check.definite
    if definite is not None:
        return Refused(
            f"the link at {address} closed the connection during the handshake, and this "
            f"client's own certificate explains why: {definite.message}"
        )
    said = (
        f"the link at {address} closed the connection during the handshake: it may have "
        "refused this certificate, or be restarting"
    )
    if check.problems:
        likely = "; ".join(problem.message for problem in check.problems)
        return HandshakeClosed(f"{said}; the likely cause, if it refused: {likely}")
    return HandshakeClosed(
        f"{said}; nothing wrong found here with this certificate (checked: {check.checked})"
    )


def _handshake_closed(ctx: ConnectionContext) -> FlwrmtlsError:
    if not ctx.tls:
        return HandshakeClosed(
            f"the link at {ctx.address} closed the connection: it probably requires TLS (drop "
            "--insecure and give the CA that verifies the link), unless it is restarting"
        )
    if not ctx.has_client_certificate:
        return HandshakeClosed(
            f"the link at {ctx.address} closed the connection during the handshake: either it "
            f"requires a client certificate (give {ctx.client_flags}) or it is restarting"
        )
    if ctx.check_certificate is not None:
        return explain_handshake_closed(ctx.address, ctx.check_certificate())
    return HandshakeClosed(
        f"the link at {ctx.address} closed the connection during the handshake: it may have "
        "refused this certificate, or be restarting (a refusal is in the link's log)"
    )


def _went_away(ctx: ConnectionContext) -> FlwrmtlsError:
    return LinkUnreachable(
        f"the link at {ctx.address} went away: the connection closed during a call (the link "
        "stopped, crashed or is restarting)"
    )


def _stopping(ctx: ConnectionContext) -> FlwrmtlsError:
    return LinkUnreachable(
        f"the link at {ctx.address} is stopping: it cancelled the calls in progress (it may be "
        "restarting)"
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


# (substring of the error text, translation), first match wins: "Stream removed" before
# "Socket closed", which it may contain.
_UNAVAILABLE_CAUSES = (
    ("CERTIFICATE_VERIFY_FAILED", _server_unverified),
    ("WRONG_VERSION_NUMBER", _not_tls),
    ("Stream removed", _went_away),
    ("Cancelling all calls", _stopping),
    ("Socket closed", _handshake_closed),
    ("Failed to create security handshaker", _unusable_local_certificate),
    ("Connection refused", _unreachable),
)


_NEVER_CONNECTED = (
    _server_unverified,
    _not_tls,
    _handshake_closed,
    _unusable_local_certificate,
    _unreachable,
)
"""The causes in :data:`_UNAVAILABLE_CAUSES` where no usable connection to the link was made."""


def never_connected(details: str) -> bool:
    """Whether an ``UNAVAILABLE``'s details are grpc's words for a connection to the link never
    made (nothing listening, no name, a handshake refused or failed), as opposed to a call cut
    on one that was (``Stream removed``, a link stopping) or an answer of the link's own."""
    for marker, translate in _UNAVAILABLE_CAUSES:
        if marker in details:
            return translate in _NEVER_CONNECTED
    return "failed to connect to all addresses" in details or "DNS resolution failed" in details


def _stated_by_the_link(error: grpc.RpcError) -> bool:
    trailers = getattr(error, "trailing_metadata", lambda: ())() or ()
    return any(key == REFUSAL_KEY for key, _ in trailers)


def translate_rpc_error(error: grpc.RpcError, ctx: ConnectionContext) -> FlwrmtlsError:
    """The one place a gRPC failure becomes a user-facing error."""
    code = error.code()
    details = error.details() or ""
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return Refused(f"the link at {ctx.address} refused this client: {details}")
    if code is grpc.StatusCode.UNAVAILABLE:
        if _stated_by_the_link(error):
            return LinkUnreachable(f"the link at {ctx.address} is unavailable: {details}")
        for marker, translate in _UNAVAILABLE_CAUSES:
            if marker in details:
                return translate(ctx)
        return LinkUnreachable(f"the link at {ctx.address} is unavailable: {details}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return LinkUnreachable(f"the link at {ctx.address} did not answer in time")
    if code is grpc.StatusCode.UNIMPLEMENTED:  # a wrong port: final, retrying cannot help
        if details.startswith("this address is"):  # the link says which door this is
            return Refused(f"{ctx.address}: {details}")
        return Refused(
            f"the server at {ctx.address} does not serve this call ({details}): check the "
            "address (the link's Fleet API, for nodes, listens on port 9092 by default; its "
            "Control API, for the CLI, on 9093)"
        )
    if code is grpc.StatusCode.CANCELLED:  # a stream cancelled on purpose is never translated
        said = f": {details}" if details and details != "CANCELLED" else ""
        return LinkUnreachable(
            f"the call to the link at {ctx.address} was cancelled before its answer (CANCELLED"
            f"{said}): the link may be stopping or restarting"
        )
    return FlwrmtlsError(f"the link at {ctx.address} answered {code.name}: {details}")


def rpc_failure(
    error: grpc.RpcError, ctx: ConnectionContext, stated: StatedError | None = None
) -> FlwrmtlsError:
    """A failed call's error for the user: what the link stated, through the client's own
    table (``stated``), else :func:`translate_rpc_error`."""
    found = stated(error) if stated is not None else None
    return found if found is not None else translate_rpc_error(error, ctx)


def call(invoke: Callable[[], _T], ctx: ConnectionContext, stated: StatedError | None = None) -> _T:
    """Make one call (``invoke``); its failure raised as :func:`rpc_failure` names it: the one
    try/except around every call of the CLI's and the node's clients."""
    try:
        return invoke()
    except grpc.RpcError as error:
        raise rpc_failure(error, ctx, stated) from None
