"""The errors a user of flwrmtls can act on.

::

    FlwrmtlsError            one line: what went wrong, which file or flag, what to do
     ├── InputError          a file, flag or profile the user gave is wrong
     ├── LinkUnreachable     the link could not be reached (retrying may help)
     │    └── HandshakeClosed  the link closed the connection during the handshake: it may
     │                         have refused these credentials, or be restarting; nothing the
     │                         client sees tells the two apart, so it is retried like an
     │                         unreachable link (within the node's bounds)
     └── Refused             the link refused these credentials (retrying will not help)

Every command-line entry point prints ``str(error)`` on one line and exits non-zero; nothing
below it prints a traceback for these.
"""

from __future__ import annotations

__all__ = ["FlwrmtlsError", "HandshakeClosed", "InputError", "LinkUnreachable", "Refused"]


class FlwrmtlsError(Exception):
    """Base class: the message is a complete sentence for the user."""


class InputError(FlwrmtlsError):
    """A file, flag or profile the user gave is unusable."""


class LinkUnreachable(FlwrmtlsError):
    """The link is not there (yet): connection refused, timed out, name not resolved."""


class HandshakeClosed(LinkUnreachable):
    """The link closed the connection during the handshake, saying nothing.

    A link refusing the client's certificate (or its lack of one, or plaintext) at the TLS
    handshake and a link that dies mid-connection (OOM kill, host loss, eviction) look the same
    to the client. Retrying within bounds is right for both: a restarted link answers, a
    refusal stays a refusal. The message names both possibilities.
    """


class Refused(FlwrmtlsError):
    """The link refused our credentials or our request; retrying will not change that."""
