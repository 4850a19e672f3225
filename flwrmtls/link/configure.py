"""The link's flags, checked, made into its :class:`~flwrmtls.link.config.LinkConfig`.

Every flag the link has is :mod:`flwrmtls.link.flags`; here they are read, the files they
name loaded and judged (TLS material, CA bundles, the enrollment sub-CA), and a value the link
cannot use refused with one line naming the flag (:class:`~flwrmtls.errors.InputError`), before
anything listens. :mod:`flwrmtls.link.main` runs the link with what comes out.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.auth.identity import IdentitySource, RoleSource
from flwrmtls.auth.nodeauth import NodeAuth, requires_client_certificate
from flwrmtls.auth.ocspcheck import OcspMode, responder_url
from flwrmtls.auth.ocsppolicy import OcspPolicy, Unreachable
from flwrmtls.clock import SystemClock
from flwrmtls.enroll.config import (
    EnrollmentConfig,
    EnrollMode,
)
from flwrmtls.enroll.issuer import EnrollmentIssuer
from flwrmtls.errors import InputError
from flwrmtls.link.config import LinkConfig
from flwrmtls.link.reload import TlsFiles
from flwrmtls.runs.linkobjects import (
    StorageLimits,
)
from flwrmtls.sizes import parse_size
from flwrmtls.state.database import parse_location
from flwrmtls.wire.bounds import HEARTBEAT_SECONDS
from flwrmtls.wire.credentials import load_ca_bundle, load_tls_identity
from flwrmtls.wire.listen import ServerLimits, is_loopback, require_loopback

__all__ = ["check_control_exposure", "config_from_args"]

log = logging.getLogger("flwrmtls.link")

_MAX_WINDOW = 3600.0
"""The widest --auth-timestamp-window: a replay memory spanning more would grow without use."""


def _objects_dir(args: argparse.Namespace) -> Path | None:
    """``--objects-dir``, checked against ``--database`` (one line when it is missing)."""
    url = parse_location(args.database)
    if url.drivername != "sqlite" and args.objects_dir is None:
        raise InputError(
            "a postgresql:// --database needs --objects-dir: the directory of objects every "
            "link of that database mounts (e.g. a ReadWriteMany volume)"
        )
    return Path(args.objects_dir).expanduser() if args.objects_dir is not None else None


def config_from_args(args: argparse.Namespace) -> LinkConfig:
    """Check flag combinations and load every file, failing with one line on any problem."""
    require_loopback(args.serverappio_api_address, "--serverappio-api-address", "ServerAppIo")

    storage = StorageLimits(
        max_run_bytes=parse_size(args.max_run_storage, "--max-run-storage"),
        max_node_pending_bytes=parse_size(
            args.max_node_pending_storage, "--max-node-pending-storage"
        ),
    )
    tls_flags = [
        args.ssl_ca_certfile,
        args.ssl_certfile,
        args.ssl_keyfile,
        args.ssl_client_ca_certfile,
        args.ssl_crl_file,
        args.ssl_cli_ca_certfile,
    ]
    ocsp = _ocsp_policy(args)
    if ocsp.enabled and not args.ssl_require_client_auth:
        raise InputError("--ocsp applies to client certificates: add --ssl-require-client-auth")
    if args.insecure:
        if any(tls_flags) or args.ssl_require_client_auth:
            raise InputError("--insecure cannot be combined with --ssl-* flags: choose one")
        if args.node_auth not in (None, NodeAuth.NONE.value) or args.key_fleet_api_address:
            raise InputError(
                "node authentication needs TLS: drop --insecure and give --ssl-certfile and "
                "--ssl-keyfile"
            )
        if args.enable_supernode_auth:
            raise InputError("--enable-supernode-auth needs TLS: drop --insecure")
        check_control_exposure(
            args.control_api_address,
            authenticates=False,
            anonymous_allowed=args.unsafe_anonymous_control_api,
        )
        return replace(_listening(args, storage), insecure=True, node_auth=NodeAuth.NONE)
    if args.ssl_certfile is None or args.ssl_keyfile is None:
        raise InputError(
            "TLS needs --ssl-certfile and --ssl-keyfile (and --ssl-ca-certfile); "
            "use --insecure only for local development"
        )
    identity = load_tls_identity(
        args.ssl_certfile, args.ssl_keyfile, cert_flag="--ssl-certfile", key_flag="--ssl-keyfile"
    )
    if warning := _not_a_server_certificate(identity.leaf, args.ssl_certfile):
        log.warning("%s", warning)
    client_ca_pem: bytes | None = None
    client_cas: list[x509.Certificate] = []
    if args.ssl_require_client_auth:
        if args.ssl_client_ca_certfile is not None:
            client_ca_pem, client_cas = load_ca_bundle(
                args.ssl_client_ca_certfile, "--ssl-client-ca-certfile"
            )
        elif args.ssl_ca_certfile is not None:
            client_ca_pem, client_cas = load_ca_bundle(args.ssl_ca_certfile, "--ssl-ca-certfile")
        else:
            raise InputError(
                "--ssl-require-client-auth needs a CA to verify clients: give --ssl-ca-certfile "
                "or --ssl-client-ca-certfile"
            )
    else:
        if args.ssl_client_ca_certfile is not None or args.ssl_crl_file is not None:
            raise InputError(
                "--ssl-client-ca-certfile and --ssl-crl-file apply to client certificates: "
                "add --ssl-require-client-auth"
            )
        if args.ssl_ca_certfile is not None:
            load_ca_bundle(args.ssl_ca_certfile, "--ssl-ca-certfile")
    cli_ca_pem: bytes | None = None
    cli_cas: list[x509.Certificate] = []
    if args.ssl_cli_ca_certfile is not None:
        cli_ca_pem, cli_cas = load_ca_bundle(args.ssl_cli_ca_certfile, "--ssl-cli-ca-certfile")
    check_control_exposure(
        args.control_api_address,
        authenticates=args.ssl_require_client_auth or bool(cli_cas),
        anonymous_allowed=args.unsafe_anonymous_control_api,
    )
    node_auth = _node_auth(args)
    if args.max_chain_depth is not None and args.max_chain_depth < 0:
        raise InputError("--max-chain-depth must be 0 or more")
    if not 0 < args.crl_expiry_warning_hours <= 24 * 366:
        raise InputError("--crl-expiry-warning-hours must be above 0, at most 8784 (a year)")
    base = _listening(args, storage)
    enroll = _enrollment(args, client_cas)
    return replace(  # LinkConfig.__post_init__ runs again on the result: it is idempotent
        base,
        enroll=enroll,
        tls=identity,
        client_ca_pem=client_ca_pem,
        client_ca_certificates=client_cas,
        require_client_auth=args.ssl_require_client_auth,
        crl_path=args.ssl_crl_file,
        ocsp=ocsp,
        identity_source=IdentitySource(args.identity_source),
        max_chain_depth=args.max_chain_depth,
        node_auth=node_auth,
        key_fleet_address=args.key_fleet_api_address,
        enable_supernode_auth=args.enable_supernode_auth,
        signature_window=args.auth_timestamp_window,
        signature_future_skew=args.auth_timestamp_future_skew,
        cert_expiry_warning_days=args.cert_expiry_warning_days,
        crl_expiry_warning=timedelta(hours=args.crl_expiry_warning_hours),
        role_source=RoleSource(args.cli_role_source),
        cli_ca_pem=cli_ca_pem,
        cli_ca_certificates=cli_cas,
        tls_files=TlsFiles(
            certfile=args.ssl_certfile,
            keyfile=args.ssl_keyfile,
            client_ca=(args.ssl_client_ca_certfile or args.ssl_ca_certfile)
            if args.ssl_require_client_auth
            else None,
            client_ca_flag="--ssl-client-ca-certfile"
            if args.ssl_client_ca_certfile
            else "--ssl-ca-certfile",
            cli_ca=args.ssl_cli_ca_certfile,
        ),
    )


def _listening(args: argparse.Namespace, storage: StorageLimits) -> LinkConfig:
    """What the link is with or without TLS: its database, listeners, limits, heartbeat and
    apps (each checked; one line otherwise)."""
    if args.max_connections < 1 or args.max_calls_per_address < 1:
        raise InputError("--max-connections and --max-calls-per-address must be at least 1")
    if not HEARTBEAT_SECONDS.allows(args.heartbeat_interval):
        # one range with what nodes accept from the link: it never sends what they refuse
        raise InputError(f"--heartbeat-interval must be {HEARTBEAT_SECONDS.text}")
    return LinkConfig(
        database=args.database,
        objects_dir=_objects_dir(args),
        fleet_address=args.fleet_api_address,
        control_address=args.control_api_address,
        anonymous_control=args.unsafe_anonymous_control_api,
        heartbeat_interval=args.heartbeat_interval,
        serverappio_address=args.serverappio_api_address,
        share_objects=args.shared_objects,
        storage=storage,
        server_limits=ServerLimits(max_connections=args.max_connections),
        calls_per_address=args.max_calls_per_address,
        health_address=args.health_api_address,
        metrics_address=args.metrics_address,
        install_app_dependencies=args.install_app_dependencies,
    )


def _enrollment(
    args: argparse.Namespace, client_cas: list[x509.Certificate]
) -> EnrollmentConfig | None:
    """The ``--enroll*`` flags, checked, and the sub-CA loaded (one line otherwise)."""
    files = (args.enroll_ca_certfile, args.enroll_ca_keyfile)
    if args.enroll_mode is None:
        if any(files):
            raise InputError("--enroll-ca-certfile and --enroll-ca-keyfile need --enroll-mode")
        return None
    if not args.ssl_require_client_auth:
        raise InputError(
            "--enroll-mode issues node certificates: the link must require them "
            "(--ssl-require-client-auth)"
        )
    if not all(files):
        raise InputError(
            f"--enroll-mode {args.enroll_mode} signs with a sub-CA: give --enroll-ca-certfile "
            "and --enroll-ca-keyfile (`flwrmtls ca init` writes ca/issuing.crt and "
            "ca/issuing.key)"
        )
    if not 1 <= args.enroll_certificate_days <= 825:
        raise InputError("--enroll-certificate-days must be 1 to 825")
    if not 1 <= args.enroll_rate <= 10_000:
        raise InputError("--enroll-rate must be 1 to 10000 calls a minute")
    issuer = EnrollmentIssuer.load(
        args.enroll_ca_certfile, args.enroll_ca_keyfile, client_cas=client_cas,
        now=SystemClock().now(),
    )  # fmt: skip
    return EnrollmentConfig(
        mode=EnrollMode(args.enroll_mode),
        issuer=issuer,
        address=args.enrollment_api_address,
        certificate_days=args.enroll_certificate_days,
        per_minute=args.enroll_rate,
    )


def _ocsp_policy(args: argparse.Namespace) -> OcspPolicy:
    """The ``--ocsp*`` flags, checked (one line naming the flag otherwise)."""
    text = args.ocsp.strip()
    url = None
    if text.lower() in (OcspMode.OFF.value, OcspMode.AIA.value):
        mode = OcspMode(text.lower())
    else:
        try:
            url = responder_url(text)
        except ValueError as error:
            raise InputError(
                f"--ocsp {text!r}: {error}; give off, aia or the http:// or https:// URL of an "
                "OCSP responder"
            ) from None
        mode = OcspMode.URL
    if not 0 < args.ocsp_timeout <= 60:
        raise InputError("--ocsp-timeout must be above 0 and at most 60 seconds")
    if not 1 <= args.ocsp_refresh_interval <= 86400:
        raise InputError("--ocsp-refresh-interval must be 1 to 86400 seconds")
    return OcspPolicy(
        mode=mode,
        url=url,
        unreachable=Unreachable(args.ocsp_unreachable),
        timeout=args.ocsp_timeout,
        refresh_interval=args.ocsp_refresh_interval,
    )


def _not_a_server_certificate(leaf: x509.Certificate, path: Path) -> str | None:
    """A warning when the link's certificate is not a server certificate: with an extended
    key usage that lacks serverAuth, every node and CLI refuses it at the handshake."""
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if (
        ExtendedKeyUsageOID.SERVER_AUTH in usages
        or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
    ):
        return None
    return (
        f"--ssl-certfile: {path} ({leaf.subject.rfc4514_string()}) is not a server certificate: "
        "its extended key usage lacks serverAuth, so nodes and the CLI will refuse it "
        "('certificate verify failed'); issue one with `flwrmtls ca issue server NAME --dns HOST`"
    )


def check_control_exposure(address: str, *, authenticates: bool, anonymous_allowed: bool) -> None:
    """Refuse a Control API that anyone beyond this host could use without a certificate.

    Control starts runs (code on the link and on every node) and manages nodes, so it requires
    a CLI certificate whenever it listens off loopback, whatever the nodes authenticate with.
    """
    if authenticates:
        if anonymous_allowed:
            raise InputError(
                "--unsafe-anonymous-control-api contradicts --ssl-require-client-auth / "
                "--ssl-cli-ca-certfile, which make the Control API require CLI certificates: "
                "drop one"
            )
        return
    if anonymous_allowed or is_loopback(address):
        return
    raise InputError(
        f"the Control API at {address} would let anyone who reaches it start runs (code on the "
        "link and every node) and manage nodes: give --ssl-cli-ca-certfile (the CA of your CLI "
        "certificates) or --ssl-require-client-auth, or listen on loopback only "
        "(--control-api-address 127.0.0.1:9093); --unsafe-anonymous-control-api is for a lab"
    )


def _node_auth(args: argparse.Namespace) -> NodeAuth:
    """The main Fleet listener's mode, checked against the other flags."""
    default = NodeAuth.CERTIFICATE if args.ssl_require_client_auth else NodeAuth.KEY
    mode = NodeAuth(args.node_auth) if args.node_auth else default
    if requires_client_certificate(mode) and not args.ssl_require_client_auth:
        raise InputError(f"--node-auth {mode.value} needs --ssl-require-client-auth")
    if mode is NodeAuth.CERTIFICATE_AND_KEY and not args.enable_supernode_auth:
        raise InputError(
            "--node-auth certificate+key needs --enable-supernode-auth: without registered keys "
            "any self-made key would pass"
        )
    uses_keys = mode in (NodeAuth.KEY, NodeAuth.CERTIFICATE_AND_KEY)
    if args.enable_supernode_auth and not (uses_keys or args.key_fleet_api_address):
        raise InputError(
            "--enable-supernode-auth applies to EC-key nodes: use --node-auth key or "
            "certificate+key, or add --key-fleet-api-address"
        )
    if not 0 < args.auth_timestamp_window <= _MAX_WINDOW:
        raise InputError(
            f"--auth-timestamp-window must be a number of seconds above 0, at most {_MAX_WINDOW:g}"
        )
    if not 0 <= args.auth_timestamp_future_skew <= args.auth_timestamp_window:
        raise InputError(
            "--auth-timestamp-future-skew must be a number of seconds from 0 to "
            "--auth-timestamp-window"
        )
    return mode
