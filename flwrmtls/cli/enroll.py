"""``flwrmtls enroll``: join tokens that let a new site ask the link for its certificate.

``enroll token create`` prints the token once, on standard output alone (or writes it to
``--output FILE``, mode 0600), and what it allows on standard error: the link keeps only the
hash of its secret and never shows it again. ``enroll token ls`` and ``revoke`` name tokens by
their id, the part before the dot, which is no secret. See docs/enrollment.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from flwrmtls.cli.output import OutputFormat, emit, format_time, printable
from flwrmtls.cli.params import ConnectionArgument, FormatOption, group
from flwrmtls.control.client import ControlClient
from flwrmtls.enroll.client import spki_sha256
from flwrmtls.enroll.tokens import MAX_TTL, parse_duration
from flwrmtls.errors import InputError
from flwrmtls.pki.files import write_file
from flwrmtls.connectionprofiles import ConfigFile
from flwrmtls.proto import control_pb2

__all__ = ["app"]

app = group(
    "Enrollment of new sites. A new site joins with a one-time join token and makes its own "
    "key; see docs/enrollment.md."
)
token_app = group(
    "Join tokens. Each is single use, short-lived and bound to the identity the site's "
    "certificate will carry."
)
app.add_typer(token_app, name="token")

TokenIdArgument = Annotated[
    str,
    typer.Argument(
        metavar="TOKEN_ID",
        help="The token's id (the part before the dot; see enroll token ls).",
        show_default=False,
    ),
]


def _client(connection: str | None) -> ControlClient:
    config = ConfigFile()
    return ControlClient(config.profile(connection), str(config.path))


def _data(token: control_pb2.EnrollToken) -> dict[str, Any]:
    identity = token.identity
    return {
        "token_id": token.token_id,
        "subject": token.subject,
        "common_name": identity.common_name,
        "organization": identity.organization or None,
        "organizational_unit": identity.organizational_unit or None,
        "spiffe_id": identity.spiffe_id or None,
        "state": token.state,
        "created_at": format_time(token.created_at),
        "expires_at": format_time(token.expires_at),
        "created_by": token.created_by,
        "used_at": format_time(token.used_at) if token.used_at else None,
        "revoked_at": format_time(token.revoked_at) if token.revoked_at else None,
    }


def _identity(token: control_pb2.EnrollToken) -> str:
    spiffe = token.identity.spiffe_id
    return f"{token.subject} ({spiffe})" if spiffe else token.subject


@token_app.command("create")
def create(
    common_name: Annotated[
        str,
        typer.Argument(
            metavar="COMMON_NAME",
            help="The site's node name: the CN of its certificate.",
            show_default=False,
        ),
    ],
    connection: ConnectionArgument = None,
    org: Annotated[
        str,
        typer.Option("--org", metavar="ORG", help="Subject organisation (O).", show_default=False),
    ] = "",
    ou: Annotated[
        str,
        typer.Option("--ou", metavar="OU", help="Subject organisational unit.", show_default=False),
    ] = "",
    spiffe_id: Annotated[
        str,
        typer.Option(
            "--spiffe-id",
            metavar="URI",
            help="SPIFFE ID the certificate carries as its only URI SAN.",
            show_default=False,
        ),
    ] = "",
    ttl: Annotated[
        str,
        typer.Option(
            "--ttl",
            metavar="DURATION",
            help=f"How long the token may be used: 30m, 1h, 2d (at most {MAX_TTL.days}d).",
        ),
    ] = "1h",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            metavar="FILE",
            help="Write the token to FILE (created 0600, never overwritten) instead of printing "
            "it.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """A join token for one site.

    The certificate the site gets with it carries exactly this identity (Subject O, OU, CN
    as `flwrmtls ca issue node` writes them, and the SPIFFE ID if given). The token works
    once, until --ttl passes or it is revoked. It is printed once, alone on standard output
    (or written to --output); hand it to the site by a channel you trust. The site's node
    reads it from a file or the FLWRMTLS_ENROLL_TOKEN variable, never its command line.
    """
    lifetime = parse_duration(ttl)
    if not 0 < lifetime.total_seconds() <= MAX_TTL.total_seconds():
        raise InputError(f"--ttl {ttl}: a join token lives more than 0s and at most 7d")
    if output is not None and output.exists():
        raise InputError(f"--output {output} exists: choose a new file (it is never overwritten)")
    identity = control_pb2.EnrollIdentity(
        common_name=common_name, organization=org, organizational_unit=ou, spiffe_id=spiffe_id
    )
    config = ConfigFile()
    profile = config.profile(connection)
    client = ControlClient(profile, str(config.path))
    try:
        created = client.create_enroll_token(identity, lifetime.total_seconds())
    finally:
        client.close()
    _print_ca_hashes(profile.root_certificates)
    info = created.info
    about = (
        f"join token {info.token_id} for {_identity(info)}, single use, valid until "
        f"{format_time(info.expires_at)}"
    )
    if output is not None:
        write_file(output, created.token.encode("ascii") + b"\n", secret=True, force=False)
        typer.echo(printable(f"wrote {output} ({about})"))
        return
    if format is OutputFormat.JSON:
        typer.echo(json.dumps({"token": created.token, **_data(info)}, indent=2, sort_keys=True))
    else:
        typer.echo(created.token)
    typer.echo(
        printable(f"flwrmtls: {about}: the link will not show it again; give it to the site "
                  "by a channel you trust"),
        err=True,
    )  # fmt: skip


def _print_ca_hashes(roots: Path | None) -> None:
    """What a site that is given no CA file pins instead (``--ca-cert-hash``): the public
    key hash of each CA in this profile's root-certificates, which verify the link."""
    if roots is None:
        return
    try:
        certificates = x509.load_pem_x509_certificates(roots.read_bytes())
    except (OSError, ValueError):
        return
    for certificate in certificates:
        typer.echo(
            printable(f"flwrmtls: the site verifies the link with --root-certificates (a copy "
                      f"of {roots}) or --ca-cert-hash {spki_sha256(certificate)} "
                      f"({certificate.subject.rfc4514_string()})"),
            err=True,
        )  # fmt: skip


@token_app.command("ls")
def ls(
    connection: ConnectionArgument = None,
    all: Annotated[
        bool, typer.Option("--all", "-a", help="Also used, expired and revoked tokens.")
    ] = False,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """Join tokens not used yet (never their secrets)."""
    client = _client(connection)
    try:
        tokens = client.list_enroll_tokens(all=all)
    finally:
        client.close()
    rows = [
        [t.token_id, _identity(t), t.state, format_time(t.expires_at), t.created_by,
         format_time(t.created_at)]
        for t in tokens
    ]  # fmt: skip
    headers = ["TOKEN ID", "IDENTITY", "STATE", "EXPIRES", "CREATED BY", "CREATED"]
    emit(format, [_data(t) for t in tokens], headers, rows)


@token_app.command("revoke")
def revoke(token_id: TokenIdArgument, connection: ConnectionArgument = None) -> None:
    """Revoke a join token not used yet.

    The site can no longer enroll with it.
    """
    client = _client(connection)
    try:
        token = client.revoke_enroll_token(token_id)
    finally:
        client.close()
    typer.echo(printable(f"join token {token.token_id} ({_identity(token)}) revoked"))
