"""``flwrmtls ca``: the built-in CA tool on the command line.

A thin layer over :mod:`flwrmtls.pki`: every command parses its flags, calls one pki function,
and prints what it wrote, one path per line on stdout (a CRL with its next update, the date
it must be renewed by). Warnings go to stderr, one line each: a new certificate that takes
the identity of one already issued, a wait for another command holding the CA's lock, a CRL
rewritten because it lacked a recorded revocation. Errors are InputErrors, which
``flwrmtls.cli.main`` prints on one line before exiting 1. No key material is ever printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509

from flwrmtls.auth.identity import IdentitySource
from flwrmtls.cli.output import OutputFormat, printable
from flwrmtls.cli.params import group
from flwrmtls.pki import (
    CRL_VALIDITY_DAYS,
    CaFiles,
    CertificateAuthority,
    CertificateDescription,
    IssuedCertificate,
    KeyType,
    LeafOptions,
    RevocationReason,
    describe_certificate,
    read_certificate_file,
)
from flwrmtls.pki.certsigning import pem_bundle
from flwrmtls.pki.crl import CRL_MAX_DAYS, parse_serial
from flwrmtls.pki.files import write_file

__all__ = ["app"]

app = group(
    "The built-in CA. Create a CA, issue server, node and CLI certificates, revoke them, "
    "write the CRL, and show the identity a certificate maps to."
)
issue_app = group(
    "Issue a certificate. Signed by the CA's issuing CA: NAME.pem (chain) and NAME.key."
)
app.add_typer(issue_app, name="issue")


DirectoryOption = Annotated[
    Path,
    typer.Option(
        "--dir", metavar="DIR", help="The CA directory.", file_okay=False, show_default=True
    ),
]
DaysOption = Annotated[int, typer.Option("--days", metavar="DAYS", help="Validity in days.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Overwrite existing files.")]
KeyTypeOption = Annotated[
    KeyType | None,
    typer.Option(
        "--key-type",
        metavar="KEY_TYPE",
        help="ec or rsa (default: the CA's).",
        case_sensitive=False,
        show_default=False,
    ),
]
OrganizationOption = Annotated[
    str | None,
    typer.Option("--org", metavar="ORG", help="Subject organisation (O).", show_default=False),
]
CommonNameOption = Annotated[
    str | None,
    typer.Option(
        "--cn", metavar="CN", help="Subject common name (default: NAME).", show_default=False
    ),
]
NameArgument = Annotated[
    str,
    typer.Argument(
        metavar="NAME", help="File name stem: writes NAME.pem and NAME.key.", show_default=False
    ),
]
DEFAULT_DIRECTORY = Path("certs")


def _print_issued(issued: IssuedCertificate) -> None:
    for holder in issued.takes_over:
        replaced = holder.path == issued.chain_path.absolute()
        where = f"the certificate {'that was ' if replaced else ''}in {holder.path}"
        typer.echo(
            printable(
                f"flwrmtls: warning: {holder.shared} is also that of {where} (serial "
                f"{holder.serial:#x}, valid until {holder.not_after:%Y-%m-%d}, not revoked): "
                "to the link both are the same holder (same node id or user, same runs). A "
                "rotation? Revoke the old one once replaced: `flwrmtls ca revoke --serial "
                f"{holder.serial:#x} --reason superseded`. Meant as a new node? Revoke this "
                "one and issue it with another --cn/--org"
            ),
            err=True,
        )
    typer.echo(f"wrote {issued.chain_path} (certificate chain, serial {issued.serial:#x})")
    typer.echo(f"wrote {issued.key_path} (private key)")


def _crl_written(path: Path) -> str:
    """``wrote crl.pem (CRL, next update ...)``: when it has to be renewed by."""
    crl = x509.load_pem_x509_crl(path.read_bytes())
    next_update = crl.next_update_utc
    when = f"{next_update:%Y-%m-%d %H:%M} UTC" if next_update else "none"
    return f"wrote {path} (CRL, next update {when}: renew it before, `flwrmtls ca crl`)"


@app.command("init")
def init_command(
    directory: DirectoryOption = DEFAULT_DIRECTORY,
    name: Annotated[
        str, typer.Option("--name", metavar="NAME", help="CA name: CN=NAME Root CA.")
    ] = "flwrmtls",
    key_type: Annotated[
        KeyType,
        typer.Option("--key-type", metavar="KEY_TYPE", help="ec or rsa.", case_sensitive=False),
    ] = KeyType.EC,
    days: DaysOption = 3650,
    force: ForceOption = False,
) -> None:
    """Create a root CA and an issuing CA, and an empty CRL."""
    authority = CertificateAuthority.create(
        directory, name=name, key_type=key_type, days=days, force=force
    )
    files = authority.files
    typer.echo(f"wrote {files.trust_bundle} (root CA certificate: the trust anchor)")
    typer.echo(f"wrote {files.root_key} (root CA private key)")
    typer.echo(f"wrote {files.issuing_certificate} (issuing CA certificate)")
    typer.echo(f"wrote {files.issuing_key} (issuing CA private key)")
    typer.echo(f"wrote {files.revocation_record} (revocation record)")
    typer.echo(_crl_written(files.crl))


@issue_app.command("server")
def issue_server_command(
    name: NameArgument,
    dns: Annotated[
        list[str] | None,
        typer.Option("--dns", metavar="NAME", help="DNS name (repeatable).", show_default=False),
    ] = None,
    ip: Annotated[
        list[str] | None,
        typer.Option(
            "--ip", metavar="ADDRESS", help="IP address (repeatable).", show_default=False
        ),
    ] = None,
    directory: DirectoryOption = DEFAULT_DIRECTORY,
    days: DaysOption = 365,
    key_type: KeyTypeOption = None,
    force: ForceOption = False,
) -> None:
    """A link's certificate (EKU serverAuth).

    Without --dns and --ip its SANs are localhost and 127.0.0.1.
    """
    dns_names, ip_addresses = (dns or [], ip or []) if dns or ip else (["localhost"], ["127.0.0.1"])
    issued = CertificateAuthority.load(directory).issue_server(
        name,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        options=LeafOptions(days=days, key_type=key_type, force=force),
    )
    _print_issued(issued)


@issue_app.command("node")
def issue_node_command(
    name: NameArgument,
    cn: CommonNameOption = None,
    org: OrganizationOption = None,
    ou: Annotated[
        str | None,
        typer.Option("--ou", metavar="OU", help="Subject organisational unit.", show_default=False),
    ] = None,
    spiffe_id: Annotated[
        str | None,
        typer.Option(
            "--spiffe-id",
            metavar="URI",
            help="SPIFFE ID, written as the URI SAN.",
            show_default=False,
        ),
    ] = None,
    directory: DirectoryOption = DEFAULT_DIRECTORY,
    days: DaysOption = 365,
    key_type: KeyTypeOption = None,
    force: ForceOption = False,
) -> None:
    """A node's certificate (EKU clientAuth).

    Its Subject is the node's identity: the same Subject is the same node (rotation).
    """
    issued = CertificateAuthority.load(directory).issue_node(
        name,
        common_name=cn,
        organization=org,
        organizational_unit=ou,
        spiffe_id=spiffe_id,
        options=LeafOptions(days=days, key_type=key_type, force=force),
    )
    _print_issued(issued)


@issue_app.command("cli")
def issue_cli_command(
    name: NameArgument,
    role: Annotated[
        str, typer.Option("--role", metavar="ROLE", help="operator or user.", show_default=False)
    ],
    cn: CommonNameOption = None,
    org: OrganizationOption = None,
    directory: DirectoryOption = DEFAULT_DIRECTORY,
    days: DaysOption = 365,
    key_type: KeyTypeOption = None,
    force: ForceOption = False,
) -> None:
    """A CLI user's certificate (EKU clientAuth).

    Its Subject carries the X.520 role attribute: operator or user.
    """
    issued = CertificateAuthority.load(directory).issue_cli(
        name,
        role=role,
        common_name=cn,
        organization=org,
        options=LeafOptions(days=days, key_type=key_type, force=force),
    )
    _print_issued(issued)


@app.command("revoke")
def revoke_command(
    certificate_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="CERTIFICATE_FILE",
            help="The certificate (chain) file to revoke.",
            show_default=False,
        ),
    ] = None,
    serial: Annotated[
        str | None,
        typer.Option(
            "--serial",
            metavar="SERIAL",
            help="Serial to revoke: 0x1f2e, 1F:2E or decimal.",
            show_default=False,
        ),
    ] = None,
    reason_name: Annotated[
        str,
        typer.Option(
            "--reason",
            metavar="REASON",
            help="The RFC 5280 reason, in any case: "
            + ", ".join(reason.value for reason in RevocationReason)
            + ".",
        ),
    ] = RevocationReason.UNSPECIFIED.value,
    directory: DirectoryOption = DEFAULT_DIRECTORY,
) -> None:
    """Revoke a certificate by file or serial and rewrite the CRL."""
    reason = RevocationReason.parse(reason_name)
    authority = CertificateAuthority.load(directory)
    revoked_serial = authority.revoke(
        certificate_file=certificate_file,
        serial=None if serial is None else parse_serial(serial),
        reason=reason,
    )
    typer.echo(f"revoked serial {revoked_serial:#x} ({reason.value})")
    typer.echo(f"wrote {authority.files.revocation_record} (revocation record)")
    typer.echo(_crl_written(authority.crl_path))


@app.command("cross-sign")
def cross_sign_command(
    successor: Annotated[
        Path,
        typer.Argument(
            metavar="NEW_ROOT",
            help="The new CA's root certificate (its ca.crt).",
            show_default=False,
        ),
    ],
    directory: DirectoryOption = DEFAULT_DIRECTORY,
    output: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            help="Where to write it (default: DIR/cross-signed.pem).",
            show_default=False,
        ),
    ] = None,
    force: ForceOption = False,
) -> None:
    """Cross-sign a new root: a CA rollover that keeps node ids.

    Signs the new root's key with this CA's root. Put the result in the link's client CA
    bundle beside both roots: certificates the new CA issues then keep the identities and node
    ids the old CA's had.
    """
    authority = CertificateAuthority.load(directory)
    cross = authority.cross_sign(read_certificate_file(successor, "successor root certificate"))
    path = output or authority.files.directory / "cross-signed.pem"
    write_file(path, pem_bundle(cross), secret=False, force=force)
    typer.echo(f"wrote {path} (the successor's key, signed by {authority.files.trust_bundle})")
    typer.echo(
        "next: give the link a client CA bundle holding both roots and this file, e.g. "
        f"cat {authority.files.trust_bundle} {successor} {path} > bundle.pem"
    )  # fmt: skip


@app.command("crl")
def crl_command(
    directory: DirectoryOption = DEFAULT_DIRECTORY,
    days: Annotated[
        int,
        typer.Option(
            "--days",
            help=f"Days until the CRL's next update, 1 to {CRL_MAX_DAYS}. Links refuse every "
            "certificate of this CA once it passes: run this daily (cron, a CronJob).",
        ),
    ] = CRL_VALIDITY_DAYS,
) -> None:
    """Rewrite the CRL, renewing its next update.

    Schedule it (see docs/operations.md): past its next update, links refuse every certificate
    of this CA.
    """
    crl_path = CertificateAuthority.load(directory).write_crl(days=days)
    typer.echo(_crl_written(crl_path))


def _issuing_ca_in(directory: Path) -> x509.Certificate | None:
    files = CaFiles(directory)
    if not files.issuing_certificate.is_file():
        return None
    return read_certificate_file(files.issuing_certificate, "issuing CA certificate")


def _render_text(description: CertificateDescription, directory: Path) -> list[str]:
    rows = [
        ("subject", description.subject),
        ("issuer", description.issuer),
        ("serial", description.serial_hex),
        ("not before", description.not_before.isoformat()),
        ("not after", description.not_after.isoformat()),
        ("key type", description.key_type),
        ("CA", "yes" if description.is_ca else "no"),
        ("EKU", ", ".join(description.extended_key_usages) or "none (any purpose)"),
        ("SANs", ", ".join(description.subject_alternative_names) or "none"),
        ("fingerprint", description.sha256_fingerprint),
    ]
    if description.is_ca:  # what a site enrolling with --ca-cert-hash is given
        rows.append(("public key sha256", description.public_key_sha256))
    if description.issued_by_ca is not None:
        verdict = "yes" if description.issued_by_ca else "no"
        rows.append((f"issued by CA in {directory}", verdict))
    source = description.identity_source.value
    if description.identity_error is None:
        rows.append(("kind", description.kind or ""))
        if description.node_id is not None:
            rows += [
                (f"identity ({source})", description.identity or ""),
                ("node id", str(description.node_id)),
            ]
    else:
        rows.append((f"identity ({source})", f"refused: {description.identity_error}"))
    rows.append(("use", description.use))
    width = max(len(label) for label, _ in rows) + 1
    return [f"{label + ':':<{width}} {value}" for label, value in rows]


@app.command("show")
def show_command(
    certificate_file: Annotated[
        Path,
        typer.Argument(
            metavar="CERTIFICATE_FILE",
            help="A certificate or chain file (the first certificate is shown).",
        ),
    ],
    spiffe: Annotated[
        bool, typer.Option("--spiffe", help="Map the identity as a link using SPIFFE IDs does.")
    ] = False,
    output_format: Annotated[
        OutputFormat,
        typer.Option(
            "--format", metavar="FORMAT", help="table (for people) or json (for scripts)."
        ),
    ] = OutputFormat.TABLE,
    directory: Annotated[
        Path,
        typer.Option(
            "--dir", metavar="DIR", help="Also say whether the CA in this directory issued it."
        ),
    ] = DEFAULT_DIRECTORY,
) -> None:
    """Show a certificate and what the link makes of it.

    Its fields, what it is for (CA, server, node or CLI), and the identity and node id the link
    would give its holder.
    """
    certificate = read_certificate_file(certificate_file)
    source = IdentitySource.SPIFFE if spiffe else IdentitySource.SUBJECT
    description = describe_certificate(certificate, source, issuing_ca=_issuing_ca_in(directory))
    if output_format is OutputFormat.JSON:
        typer.echo(json.dumps(description.to_json(), indent=2))
    else:
        typer.echo("\n".join(printable(line) for line in _render_text(description, directory)))
