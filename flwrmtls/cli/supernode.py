"""``flwrmtls supernode``: the nodes the link knows, and how it checks their revocation.

``supernode list`` prints the nodes, then (table format) the link's revocation coverage per
issuer of client certificates. Its JSON stays the list of nodes scripts read; the coverage in
JSON is ``supernode revocation --format json``. Both print one warning line on stderr per CRL
in force that lapses soon (in every format), since past its next update the link refuses every
certificate of that issuer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from flwrmtls.auth.keyformats import load_public_key_file, public_key_der
from flwrmtls.cli.output import OutputFormat, emit, format_time, printable, table
from flwrmtls.cli.params import ConnectionArgument, FormatOption, NodeIdArgument, group
from flwrmtls.connectionprofiles import ConfigFile
from flwrmtls.control.client import ControlClient
from flwrmtls.errors import InputError
from flwrmtls.proto import control_pb2

__all__ = ["app"]

app = group(
    "Nodes and their revocation. List the nodes the link knows and how it checks their "
    "revocation; unregister and readmit any node; register EC keys."
)


@app.command("list")
def list_nodes(
    connection: ConnectionArgument = None,
    format: FormatOption = OutputFormat.TABLE,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also unregistered nodes.")
    ] = False,
) -> None:
    """The nodes the link knows.

    For each: node id, identity (Subject or key fingerprint), organisation, auth method,
    status, certificate expiry; then (table only: the JSON stays the list of nodes) how the
    link checks revocation per issuer, as `supernode revocation` shows it.
    """
    config = ConfigFile()
    client = ControlClient(config.profile(connection), str(config.path))
    try:
        response = client.list_nodes_and_revocation(verbose=verbose)
    finally:
        client.close()
    nodes = response.nodes
    data = [
        {
            "node_id": n.node_id,
            "identity": n.identity,
            "organisation": n.organisation,
            "auth_method": n.auth_method,
            "status": n.status,
            "status_detail": n.status_detail or None,
            "cert_not_after": format_time(n.cert_not_after) if n.cert_not_after else None,
            "cert_fingerprint": f"sha256:{n.cert_fingerprint}" if n.cert_fingerprint else None,
            "cert_expires_soon": n.cert_expires_soon,
            "last_seen": format_time(n.last_seen),
            "peer_address": n.peer_address,
        }
        for n in nodes
    ]
    headers = ["NODE ID", "IDENTITY", "ORGANISATION", "AUTH", "STATUS", "CERT EXPIRES", "LAST SEEN"]
    rows = [
        [
            str(n.node_id),
            n.identity,
            n.organisation or "-",
            n.auth_method,
            n.status,
            format_time(n.cert_not_after) + (" (expires soon!)" if n.cert_expires_soon else ""),
            format_time(n.last_seen),
        ]
        for n in nodes
    ]
    if any(n.status_detail for n in nodes):  # why the link refused a revoked or expired node
        headers.append("REFUSED")
        for row, n in zip(rows, nodes, strict=True):
            row.append(n.status_detail or "-")
    emit(format, data, headers, rows)
    _warn_lapsing(response.revocation)
    if format is OutputFormat.TABLE and response.revocation:
        typer.echo("\nRevocation (per issuer of client certificates):")
        typer.echo(table(_COVERAGE_HEADERS, _coverage_rows(response.revocation)))


_COVERAGE_HEADERS = ["ISSUER", "SCOPE", "CHECKED BY", "FROM", "UNTIL", "STATE", "DETAIL"]


def _coverage_data(coverage: Sequence[control_pb2.RevocationCoverage]) -> list[dict[str, Any]]:
    return [
        {
            "issuer": c.issuer,
            "scope": c.scope,
            "kind": c.kind,
            "sources": list(c.sources),
            "crl_number": c.crl_number or None,
            "delta_crl_number": c.delta_crl_number or None,
            "this_update": format_time(c.this_update) if c.this_update else None,
            "next_update": format_time(c.next_update) if c.next_update else None,
            "state": c.state,
            "detail": c.detail,
            "expires_soon": c.expires_soon,
            "expiry_warning": c.expiry_warning,
        }
        for c in coverage
    ]


def _crl_column(c: control_pb2.RevocationCoverage) -> str:
    if c.kind == "none":
        return "none"
    numbers = f" #{c.crl_number}" if c.crl_number else ""
    if c.delta_crl_number:
        numbers += f" + delta #{c.delta_crl_number}"
    return f"{c.kind}{numbers}"


def _coverage_rows(coverage: Sequence[control_pb2.RevocationCoverage]) -> list[list[str]]:
    return [
        [
            c.issuer,
            c.scope,
            _crl_column(c),
            ", ".join(c.sources) or "-",
            format_time(c.next_update) + (" (expires soon!)" if c.expires_soon else ""),
            c.state,
            "; ".join(text for text in (c.detail, c.expiry_warning) if text) or "-",
        ]
        for c in coverage
    ]


def _warn_lapsing(coverage: Sequence[control_pb2.RevocationCoverage]) -> None:
    """One stderr line per CRL that lapses soon, whatever the output format (scripts too)."""
    for c in coverage:
        if c.expires_soon:
            typer.echo(
                printable(f"flwrmtls: warning: the link's CRL for issuer {c.issuer} ({c.scope}) "
                          f"{c.expiry_warning}"),
                err=True,
            )  # fmt: skip


@app.command("revocation")
def revocation(
    connection: ConnectionArgument = None,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """How the link checks revocation.

    Per issuer of client certificates: the CRLs in force (complete, +delta, partition), their
    files, until when, and their state (current, kept, expired, failing-closed, not-checked);
    with --ocsp on the link, the OCSP responders its certificates were checked at, and how
    many answers are good, revoked or missing.
    """
    config = ConfigFile()
    client = ControlClient(config.profile(connection), str(config.path))
    try:
        coverage = client.list_nodes_and_revocation().revocation
    finally:
        client.close()
    _warn_lapsing(coverage)
    emit(format, _coverage_data(coverage), _COVERAGE_HEADERS, _coverage_rows(coverage))


@app.command("register")
def register(
    files_and_connection: Annotated[
        list[str],
        typer.Argument(
            help="Public key files (the .pub ssh-keygen writes, or PEM), then optionally a "
            "connection profile.",
            metavar="PUBKEY_FILE... [CONNECTION]",
            show_default=False,
        ),
    ],
    identity: Annotated[
        str | None,
        typer.Option(
            "--identity",
            metavar="IDENTITY",
            help="certificate+key links: the node certificate this key belongs to, as the link "
            "names it ('CN=node-1,O=Hospital A', a SPIFFE ID, or its node id); the link then "
            "admits the key only with that node's certificate.",
        ),
    ] = None,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """Register EC public keys of nodes.

    For links with --enable-supernode-auth; prints each file's node id.
    """
    files, connection = _split_connection(files_and_connection)
    if identity is not None and len(files) != 1:
        raise InputError(
            f"--identity binds one node's key: give exactly one key file (got {len(files)})"
        )
    keys = [load_public_key_file(Path(file)) for file in files]
    config = ConfigFile()
    client = ControlClient(config.profile(connection), str(config.path))
    try:
        registered = client.register_keys([public_key_der(key) for key in keys], identity or "")
    finally:
        client.close()
    data = [
        {
            "file": file, "node_id": r.node_id, "fingerprint": r.fingerprint,
            "outcome": r.outcome, "bound_node_id": r.bound_node_id or None,
            "identity": identity if r.bound_node_id else None,
        }
        for file, r in zip(files, registered, strict=True)
    ]  # fmt: skip
    rows = [
        [file, str(r.node_id), r.fingerprint, r.outcome,
         f"{identity} (node id {r.bound_node_id})" if r.bound_node_id else "-"]
        for file, r in zip(files, registered, strict=True)
    ]  # fmt: skip
    emit(format, data, ["FILE", "NODE ID", "KEY", "OUTCOME", "BOUND TO"], rows)


def _split_connection(arguments: list[str]) -> tuple[list[str], str | None]:
    """The last argument is a connection profile when it is not an existing file."""
    if len(arguments) > 1 and not Path(arguments[-1]).exists():
        return arguments[:-1], arguments[-1]
    return arguments, None


@app.command("unregister")
def unregister(
    node_id: NodeIdArgument,
    connection: ConnectionArgument = None,
) -> None:
    """Refuse a node at once, certificate or EC key.

    Without waiting for a CRL: its open calls are answered with the refusal. Undo it with
    `flwrmtls supernode readmit NODE_ID` (certificate nodes) or by registering the key again
    (EC-key nodes).
    """
    config = ConfigFile()
    client = ControlClient(config.profile(connection), str(config.path))
    try:
        response = client.unregister_node(node_id)
    finally:
        client.close()
    typer.echo(f"node {node_id} ({printable(response.identity)}) unregistered")


@app.command("readmit")
def readmit(
    node_id: NodeIdArgument,
    connection: ConnectionArgument = None,
) -> None:
    """Let an unregistered certificate node in again."""
    config = ConfigFile()
    client = ControlClient(config.profile(connection), str(config.path))
    try:
        identity = client.readmit_node(node_id)
    finally:
        client.close()
    typer.echo(f"node {node_id} ({printable(identity)}) readmitted")
