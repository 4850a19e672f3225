"""Text that came from someone else, made safe to print: the one escaping rule for everything
the CLI, the link and the nodes print (tables, log lines, error lines, identities).

Rules:

- Every character Python does not call printable is shown as an escape, visibly, so that it
  can neither drive the terminal nor hide or reorder text: C0 controls (ESC, BEL, CR, ...),
  DEL, C1 controls (U+0080-U+009F, U+009B is a CSI on many terminals), bidirectional
  controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C), zero-width and other
  format characters, line and paragraph separators, spaces other than U+0020, surrogates,
  private-use and unassigned code points.
- Escapes look like Python's: ``\\t``, ``\\r``, ``\\n``, ``\\x1b``, ``\\u202e``, ``\\U000e0001``.
- A newline is escaped too, except where a multi-line text is intended (``keep_newlines``:
  a run's log entry, a traceback): one item of a table or one error line stays one line.
- Everything else passes unchanged: accents, CJK, emoji, the backslash itself (so that
  RFC 4514 names such as ``CN=a\\,b`` read as they are written).
- Logs: :class:`EscapingFormatter` applies the rule to each record's message (newlines
  escaped: a message cannot forge a second log line) and to tracebacks (newlines kept).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from logging import _SysExcInfoType

__all__ = ["EscapingFormatter", "configure_logging", "printable"]

_SHORT = {"\t": "\\t", "\r": "\\r", "\n": "\\n"}


def _escaped(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every non-printable character shown as an escape (``\\x1b``); newlines
    too unless ``keep_newlines``."""
    if text.isprintable():
        return text
    if keep_newlines:
        return "\n".join(_escape_line(line) for line in text.split("\n"))
    return _escape_line(text)


class EscapingFormatter(logging.Formatter):
    """A log formatter whose lines carry no terminal controls, whatever was logged."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: _SysExcInfoType) -> str:
        return printable(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), keep_newlines=True)


def configure_logging(fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """INFO and above to standard error, through :class:`EscapingFormatter` (link, node)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(fmt))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
