"""``flwrmtls config``: manage connection profiles in config.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flwrmtls.cli.output import OutputFormat, emit
from flwrmtls.cli.params import FormatOption, group
from flwrmtls.connectionprofiles import ConfigFile, Profile
from flwrmtls.errors import InputError
from flwrmtls.wire.credentials import load_ca_bundle, load_tls_identity, no_root_certificates

__all__ = ["app"]

app = group("Connection profiles. In config.toml: add one, list them, choose the default.")


def _existing(path: Path | None, option: str) -> Path | None:
    if path is not None and not path.expanduser().is_file():
        raise InputError(f"{option}: {path} is not a file")
    return path


@app.command("add")
def add(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The profile's name, e.g. my-deployment.")
    ],
    address: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="The link's Control API (default port 9093).")
    ],
    root_certificates: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="CA bundle (PEM) that verifies the link: required unless --insecure (the CLI "
            "never falls back to a default set of public CAs).",
            show_default=False,
        ),
    ] = None,
    client_certificate: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="The CLI's certificate chain (PEM).", show_default=False),
    ] = None,
    client_private_key: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="The CLI's private key (PEM); the profile stores its path.",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext: development only.")
    ] = False,
    default: Annotated[bool, typer.Option("--default", help="Make it the default.")] = False,
) -> None:
    """Add or replace a connection profile.

    The files are checked first: a CA bundle where the CA bundle goes, a certificate and the
    private key that belongs to it.
    """
    if insecure and (root_certificates or client_certificate or client_private_key):
        raise InputError("--insecure cannot be combined with certificate options")
    if (client_certificate is None) != (client_private_key is None):
        raise InputError("give both --client-certificate and --client-private-key, or neither")
    if not insecure and root_certificates is None:
        raise no_root_certificates("no --root-certificates", "--root-certificates FILE")
    # What each file is, before it is written down: a CA bundle, a certificate and its key.
    if root_certificates is not None:
        load_ca_bundle(root_certificates, "--root-certificates")
    if client_certificate is not None and client_private_key is not None:
        load_tls_identity(
            client_certificate,
            client_private_key,
            cert_flag="--client-certificate",
            key_flag="--client-private-key",
        )
    config = ConfigFile()
    config.add(
        Profile(
            name=name,
            address=address,
            root_certificates=_existing(root_certificates, "--root-certificates"),
            client_certificate=_existing(client_certificate, "--client-certificate"),
            client_private_key=_existing(client_private_key, "--client-private-key"),
            insecure=insecure,
        ),
        make_default=default,
    )
    typer.echo(f"profile {name!r} written to {config.path}")


@app.command("use")
def use(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The profile to make the default.")],
) -> None:
    """Make a profile the default."""
    config = ConfigFile()
    config.use(name)
    typer.echo(f"default profile is now {name!r} ({config.path})")


def _security(profile: Profile) -> str:
    if profile.insecure:
        return "insecure"
    if profile.root_certificates is None:
        return "unusable: no root-certificates"
    return "mTLS" if profile.client_certificate else "TLS"


@app.command("list")
def list_profiles(
    format: FormatOption = OutputFormat.TABLE,
) -> None:
    """Where config.toml is, and its profiles.

    The default profile is marked with *.
    """
    config = ConfigFile()
    profiles = [config.profile(name) for name in config.names()]
    data = {
        "path": str(config.path),
        "default": config.default,
        "profiles": [
            {
                "name": p.name,
                "address": p.address,
                "root-certificates": str(p.root_certificates or ""),
                "client-certificate": str(p.client_certificate or ""),
                "insecure": p.insecure,
            }
            for p in profiles
        ],
    }
    if format is OutputFormat.TABLE:
        typer.echo(f"config: {config.path}")
    rows = [
        [
            ("* " if p.name == config.default else "  ") + p.name,
            p.address,
            _security(p),
        ]
        for p in profiles
    ]
    emit(format, data, ["  PROFILE", "ADDRESS", "SECURITY"], rows)
