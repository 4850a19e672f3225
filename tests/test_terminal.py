"""The one escaping rule for printed text: each attack string shown visibly, beside ordinary
unicode text that passes unchanged."""

from __future__ import annotations

import io
import logging

import pytest

from flwrmtls.terminal import EscapingFormatter, printable

ATTACKS = [
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),  # clear the screen
    ("\x1b]0;owned\x07", "\\x1b]0;owned\\x07"),  # set the window title
    ("\x9b2J", "\\x9b2J"),  # C1 CSI: a one-byte ESC [ on many terminals
    ("\x85", "\\x85"),  # C1 NEL
    ("\x7f", "\\x7f"),  # DEL
    ("ok\rFAKE", "ok\\rFAKE"),  # carriage return overwrites the line
    ("a\tb", "a\\tb"),
    ("evil\u202egpj.exe", "evil\\u202egpj.exe"),  # right-to-left override
    ("\u2066x\u2069", "\\u2066x\\u2069"),  # isolates
    ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),  # marks
    ("ad\u200bmin", "ad\\u200bmin"),  # zero-width space
    ("a\u2028b", "a\\u2028b"),  # line separator
    ("node\u00a01", "node\\xa01"),  # a space that is not a space
    ("\U000e0041", "\\U000e0041"),  # tag character
    ("\ue000", "\\ue000"),  # private use
]


@pytest.mark.parametrize(("attack", "shown"), ATTACKS)
def test_attacks_are_shown_escaped(attack: str, shown: str) -> None:
    assert printable(f"CN={attack}") == f"CN={shown}"
    assert printable(f"CN={attack}", keep_newlines=True) == f"CN={shown}"


@pytest.mark.parametrize(
    "text",
    [
        "CN=node-1,O=Hospital A",
        "CN=Zo\u00eb M\u00fcller,O=Clinique de l'\u00c9toile",
        "O=\u5317\u4eac\u533b\u9662,CN=\u8282\u70b9-1",
        "CN=\u0645\u0633\u062a\u0634\u0641\u0649",  # Arabic letters (no controls)
        "round 3: loss 0.25 \u2713 \U0001f600",
        "CN=a\\,b",  # RFC 4514 escapes stay as written
    ],
)
def test_ordinary_text_passes_unchanged(text: str) -> None:
    assert printable(text) == text


def test_newlines_are_kept_only_where_multi_line_text_is_meant() -> None:
    traceback = 'Traceback (most recent call last):\n  File "x"\nZeroDivisionError\x1b[0m'
    assert printable(traceback, keep_newlines=True) == (
        'Traceback (most recent call last):\n  File "x"\nZeroDivisionError\\x1b[0m'
    )
    assert printable("run 1 failed\n12:00 link: run 1 completed") == (
        "run 1 failed\\n12:00 link: run 1 completed"
    )


def test_log_records_cannot_forge_lines_or_drive_the_terminal() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test-terminal")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("refused %s", "CN=eve\x1b[2J\nINFO node CN=admin admitted")
        logger.info("node CN=\u00c9lise admitted")  # control
        try:
            raise ValueError("bad\x1b[31m")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING refused CN=eve\\x1b[2J\\nINFO node CN=admin admitted"
    assert lines[1] == "INFO node CN=\u00c9lise admitted"
    assert lines[2] == "ERROR failed"
    assert lines[3].startswith("Traceback")  # the traceback keeps its lines
    assert lines[-1] == "ValueError: bad\\x1b[31m"
    assert "\x1b" not in stream.getvalue()
