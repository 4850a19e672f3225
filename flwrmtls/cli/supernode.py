"""``flwrmtls supernode``: the nodes the link knows."""

from __future__ import annotations

from typing import Annotated

import typer

from flwrmtls.cli.output import OutputFormat, emit, format_time
from flwrmtls.control.client import ControlClient
from flwrmtls.profiles import ConfigFile

__all__ = ["app"]

app = typer.Typer(help="Nodes: list them.", no_args_is_help=True)


@app.command("list")
def list_nodes(
    connection: Annotated[
        str | None, typer.Argument(help="connection profile (default: the default one)")
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.TABLE,
) -> None:
    """Nodes: node id, identity, organisation, auth method, status, certificate expiry."""
    config = ConfigFile()
    client = ControlClient(config.profile(connection), str(config.path))
    try:
        nodes = client.list_nodes()
    finally:
        client.close()
    data = [
        {
            "node_id": n.node_id,
            "identity": n.identity,
            "organisation": n.organisation,
            "auth_method": n.auth_method,
            "status": n.status,
            "cert_not_after": format_time(n.cert_not_after) if n.cert_not_after else None,
            "cert_fingerprint": n.cert_fingerprint,
            "last_seen": format_time(n.last_seen),
            "peer_address": n.peer_address,
        }
        for n in nodes
    ]
    rows = [
        [
            str(n.node_id),
            n.identity,
            n.organisation or "-",
            n.auth_method,
            n.status,
            format_time(n.cert_not_after),
            format_time(n.last_seen),
        ]
        for n in nodes
    ]
    emit(
        format,
        data,
        ["NODE ID", "IDENTITY", "ORGANISATION", "AUTH", "STATUS", "CERT EXPIRES", "LAST SEEN"],
        rows,
    )
