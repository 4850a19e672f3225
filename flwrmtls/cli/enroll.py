"""``flwrmtls enroll``: join tokens that let a new site ask the link for its certificate.

``enroll token create`` prints the token once, on standard output alone (or writes it to
``--output FILE``, mode 0600), and what it allows on standard error: the link keeps only the
hash of its secret and never shows it again. ``enroll token ls`` and ``revoke`` name tokens by
their id, the part before the dot, which is no secret. ``enroll ls``, ``approve`` and ``deny``
handle the certificate requests sites made with their tokens (``--enroll-mode approve``
waits for them): each shows the identity the certificate will carry and the SHA-256 of the
site's public key, to compare with what the site's node printed. See docs/enrollment.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from flwrmtls.cli.output import OutputFormat, emit, format_time, printable
from flwrmtls.cli.params import ConnectionArgument, FormatOption, group
from flwrmtls.connectionprofiles import ConfigFile
from flwrmtls.control.client import ControlClient
from flwrmtls.durations import parse_duration
from flwrmtls.enroll.client import spki_sha256
from flwrmtls.enroll.tokens import MAX_TTL
from flwrmtls.errors import InputError
from flwrmtls.pki.files import write_file
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


# --- certificate requests ------------------------------------------------------------------

RequestIdArgument = Annotated[
    int,
    typer.Argument(
        metavar="REQUEST_ID", help="The certificate request (see enroll ls).", show_default=False
    ),
]


def _request_data(r: control_pb2.EnrollRequest) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "token_id": r.token_id,
        "subject": r.subject,
        "spiffe_id": r.identity.spiffe_id or None,
        "key_fingerprint": r.key_fingerprint,
        "key_type": r.key_type,
        "peer": r.peer,
        "state": r.state,
        "created_at": format_time(r.created_at),
        "decided_at": format_time(r.decided_at) if r.decided_at else None,
        "decided_by": r.decided_by or None,
        "reason": r.reason or None,
        "serial": r.serial or None,
        "days": r.days,
    }


def _request_identity(r: control_pb2.EnrollRequest) -> str:
    spiffe = r.identity.spiffe_id
    return f"{r.subject} ({spiffe})" if spiffe else r.subject


@app.command("ls")
def list_requests(
    connection: ConnectionArgument = None,
    all: Annotated[
        bool, typer.Option("--all", "-a", help="Also issued and denied requests.")
    ] = False,
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """Certificate requests waiting for an operator.

    Each with the identity its certificate will carry, the SHA-256 of the site's public key
    (ask the site for the one its node printed, and compare before you approve), the key
    type, where it came from and when.
    """
    client = _client(connection)
    try:
        requests = client.list_enroll_requests(all=all)
    finally:
        client.close()
    rows = [
        [str(r.request_id), _request_identity(r), r.key_fingerprint, r.key_type, r.state,
         r.peer, format_time(r.created_at), r.token_id]
        for r in requests
    ]  # fmt: skip
    headers = ["REQUEST", "IDENTITY", "KEY SHA-256", "KEY", "STATE", "FROM", "AT", "TOKEN"]
    emit(format, [_request_data(r) for r in requests], headers, rows)


@app.command("approve")
def approve(request_id: RequestIdArgument, connection: ConnectionArgument = None) -> None:
    """Approve a certificate request: the link signs it.

    The site's node, waiting, collects its certificate and joins.
    """
    client = _client(connection)
    try:
        decided = client.decide_enroll_request(request_id, approve=True)
    finally:
        client.close()
    typer.echo(
        printable(f"certificate request {decided.request_id} approved: {_request_identity(decided)}"
                  f", key {decided.key_fingerprint}, serial {decided.serial}")
    )  # fmt: skip


@app.command("deny")
def deny(
    request_id: RequestIdArgument,
    connection: ConnectionArgument = None,
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            metavar="TEXT",
            help="Why, shown to the site (at most 200 characters).",
            show_default=False,
        ),
    ] = "",
) -> None:
    """Deny a certificate request.

    The site's node stops with the reason; its token stays used.
    """
    client = _client(connection)
    try:
        decided = client.decide_enroll_request(request_id, approve=False, reason=reason)
    finally:
        client.close()
    typer.echo(
        printable(f"certificate request {decided.request_id} denied: {_request_identity(decided)}")
    )
