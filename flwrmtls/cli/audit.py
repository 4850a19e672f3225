"""``flwrmtls audit``: the link's audit trail (operators only)."""

from __future__ import annotations

from typing import Annotated

import typer

from flwrmtls.cli.output import OutputFormat, emit, format_time
from flwrmtls.cli.params import ConnectionArgument, FormatOption
from flwrmtls.connectionprofiles import ConfigFile
from flwrmtls.control.client import ControlClient

__all__ = ["audit"]

_METHOD_PREFIX = "/flwrmtls.proto."


def _short_method(method: str) -> str:
    """``/flwrmtls.proto.Control/StartRun`` -> ``Control/StartRun``."""
    return method.removeprefix(_METHOD_PREFIX)


def audit(
    connection: ConnectionArgument = None,
    limit: Annotated[
        int,
        typer.Option("--limit", metavar="N", min=1, help="At most N entries, newest first."),
    ] = 100,
    identity: Annotated[
        str,
        typer.Option(
            "--identity",
            metavar="IDENTITY",
            help="Only this identity's entries (exact match).",
            show_default=False,
        ),
    ] = "",
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """The audit trail, newest first.

    Control calls, node admissions and refusals, each with the identity, the method and the
    outcome (operators only).
    """
    config = ConfigFile()
    client = ControlClient(config.profile(connection), str(config.path))
    try:
        entries = client.list_audit(limit=limit, identity=identity)
    finally:
        client.close()
    data = [
        {
            "seq": e.seq,
            "time": format_time(e.timestamp),
            "timestamp": e.timestamp,
            "identity": e.identity,
            "auth_method": e.auth_method,
            "method": e.method,
            "outcome": e.outcome,
            "detail": e.detail,
            "peer": e.peer,
        }
        for e in entries
    ]
    rows = [
        [
            format_time(e.timestamp),
            e.identity,
            e.auth_method,
            _short_method(e.method),
            e.outcome,
            e.detail[:80],
        ]
        for e in entries
    ]
    emit(format, data, ["TIME", "IDENTITY", "AUTH", "METHOD", "OUTCOME", "DETAIL"], rows)
