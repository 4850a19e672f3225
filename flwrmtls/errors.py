"""The errors a user of flwrmtls can act on.

::

    FlwrmtlsError            one line: what went wrong, which file or flag, what to do
     ├── InputError          a file, flag or profile the user gave is wrong
     ├── LinkUnreachable     the link could not be reached (retrying may help)
     └── Refused             the link refused these credentials (retrying will not help)

Every command-line entry point prints ``str(error)`` on one line and exits non-zero; nothing
below it prints a traceback for these.
"""

from __future__ import annotations

__all__ = ["FlwrmtlsError", "InputError", "LinkUnreachable", "Refused"]


class FlwrmtlsError(Exception):
    """Base class: the message is a complete sentence for the user."""


class InputError(FlwrmtlsError):
    """A file, flag or profile the user gave is unusable."""


class LinkUnreachable(FlwrmtlsError):
    """The link is not there (yet): connection refused, timed out, name not resolved."""


class Refused(FlwrmtlsError):
    """The link refused our credentials or our request; retrying will not change that."""
