"""Parameters several commands share, written once: one metavar and one help text each.

Help is plain click text (``rich_markup_mode=None`` on every group): paragraphs are rewrapped
to the terminal, metavars are upper case (``APP_DIR``, ``CONNECTION``, ``RUN_ID``), and flags
show no type.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flwrmtls.cli.output import OutputFormat

__all__ = ["ConnectionArgument", "FormatOption", "NodeIdArgument", "RunIdArgument", "group"]

ConnectionArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="CONNECTION",
        help="A profile in config.toml (default: the default profile).",
        show_default=False,
    ),
]
FormatOption = Annotated[
    OutputFormat,
    typer.Option("--format", metavar="FORMAT", help="table (for people) or json (for scripts)."),
]
RunIdArgument = Annotated[int, typer.Argument(metavar="RUN_ID", help="The run.")]
NodeIdArgument = Annotated[
    int, typer.Argument(metavar="NODE_ID", help="The node (see supernode list).")
]


def group(help: str) -> typer.Typer:
    """A command group with plain help, no completion and exceptions left to ``main``."""
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        add_completion=False,
    )
