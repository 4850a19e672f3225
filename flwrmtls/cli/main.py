"""``flwrmtls``: the command line, joined from one module per command group.

A failure is one line on standard error, escaped (:func:`flwrmtls.terminal.printable`): the
link's error details and a run's reason are someone else's text.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any, NoReturn

import typer

from flwrmtls import __version__
from flwrmtls.cli import audit, ca, config, enroll, new, runcommands, supernode
from flwrmtls.cli.params import group
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.terminal import printable

__all__ = ["app", "main"]

_USAGE_ERROR: type[Exception] = next(
    kind for kind in typer.BadParameter.__mro__ if kind.__name__ == "UsageError"
)
"""Click's UsageError, which typer may vendor: reached through typer's public BadParameter."""

app = group("flwrmtls: an mTLS-first federated-learning runtime.")


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"flwrmtls {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """flwrmtls: an mTLS-first federated-learning runtime."""


app.add_typer(ca.app, name="ca")
app.add_typer(config.app, name="config")
app.add_typer(supernode.app, name="supernode")
app.add_typer(enroll.app, name="enroll")
app.command("new")(new.new)
app.command("run")(runcommands.run)
app.command("ls")(runcommands.ls)
app.command("log")(runcommands.log)
app.command("stop")(runcommands.stop)
app.command("audit")(audit.audit)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"flwrmtls: {record.levelname.lower()}: {record.getMessage()}"


def _usage_failed(usage: Exception) -> NoReturn:
    """A flag or argument the command cannot take: one line, and where its help is. (A group
    named without a command is click's NoArgsIsHelpError: its help, exit 0.)"""
    error: Any = usage  # click's UsageError: format_message(), ctx
    if type(error).__name__ == "NoArgsIsHelpError":
        print(error.format_message())
        sys.exit(0)
    context = getattr(error, "ctx", None)
    where = context.command_path if context is not None else "flwrmtls"
    message = printable(error.format_message())
    print(f"flwrmtls: error: {message} (see {where} --help)", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    # Warnings from the modules the CLI uses (a key file others may read), one line each.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        code = app(prog_name="flwrmtls", standalone_mode=False)
    except FlwrmtlsError as error:
        print(f"flwrmtls: error: {printable(str(error))}", file=sys.stderr)
        sys.exit(1)
    except _USAGE_ERROR as usage:
        _usage_failed(usage)
    except RuntimeError as error:
        if type(error).__name__ != "Abort":  # Ctrl-C at a prompt or during a command
            raise
        print("flwrmtls: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
