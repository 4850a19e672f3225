"""The ``--help`` and ``--version`` of ``flwrmtls-superlink`` and ``flwrmtls-supernode``.

Both parse flags with argparse; :func:`finish_parser` gives them the same help: every default
shown (``(default: 0.0.0.0:9092)``) except those that mean "not given", short metavars
(``HOST:PORT`` for addresses, ``FILE`` for paths, ``N`` for numbers), and ``--version``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flwrmtls import __version__

__all__ = ["finish_parser"]


class _HelpWithDefaults(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS, "")
        if shown and "%(default)" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _metavar(action: argparse.Action) -> str | None:
    if action.metavar is not None or action.nargs == 0 or action.choices is not None:
        return None
    if action.dest.endswith("api_address") or action.dest == "superlink":
        return "HOST:PORT"
    if action.dest.endswith("storage"):
        return "SIZE"
    if action.dest == "database":
        return "FILE"
    if action.type is Path:
        return "PATH" if "crl" in action.dest else "FILE"
    if action.type in (int, float):
        return "N"
    return None


def finish_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the shared help formatting and ``--version``."""
    parser.formatter_class = _HelpWithDefaults
    for action in parser._actions:  # argparse has no public way to list its actions
        metavar = _metavar(action)
        if metavar is not None:
            action.metavar = metavar
    parser.add_argument(
        "--version", action="version", version=f"{parser.prog} {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    return parser
