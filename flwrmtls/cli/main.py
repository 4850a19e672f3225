"""``flwrmtls``: the command line, joined from one module per command group.

A failure is one line on standard error, escaped (:func:`flwrmtls.terminal.printable`): the
link's error details and a run's reason are someone else's text.
"""

from __future__ import annotations

import logging
import sys

import typer

from flwrmtls.cli import audit, ca, config, new, runs, supernode
from flwrmtls.errors import FlwrmtlsError
from flwrmtls.terminal import printable

__all__ = ["app", "main"]

app = typer.Typer(
    name="flwrmtls",
    help="flwrmtls: an mTLS-first federated-learning runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(ca.app, name="ca")
app.add_typer(config.app, name="config")
app.add_typer(supernode.app, name="supernode")
app.command("new")(new.new)
app.command("run")(runs.run)
app.command("ls")(runs.ls)
app.command("log")(runs.log)
app.command("stop")(runs.stop)
app.command("audit")(audit.audit)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"flwrmtls: {record.levelname.lower()}: {record.getMessage()}"


def main() -> None:
    # Warnings from the modules the CLI uses (a key file others may read), one line each.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        app(prog_name="flwrmtls")
    except FlwrmtlsError as error:
        print(f"flwrmtls: error: {printable(str(error))}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
