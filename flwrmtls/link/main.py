"""``flwrmtls-superlink``: parse flags, load and check TLS material, run the link.

The process runs with umask 077 and keeps its state private (:mod:`flwrmtls.filemodes`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.auth.crlcoverage import CoverageState
from flwrmtls.auth.identity import IdentitySource, RoleSource
from flwrmtls.auth.nodeauth import NodeAuth, requires_client_certificate
from flwrmtls.auth.ocspcheck import OcspMode, responder_url
from flwrmtls.auth.ocspstore import OcspPolicy, Unreachable
from flwrmtls.clock import SystemClock
from flwrmtls.enroll.config import (
    EnrollmentConfig,
    EnrollMode,
)
from flwrmtls.enroll.issuer import EnrollmentIssuer
from flwrmtls.errors import FlwrmtlsError, InputError
from flwrmtls.filemodes import open_directory_warning, private_directory, restrict_umask
from flwrmtls.heap import limit_malloc_arenas
from flwrmtls.home import flwrmtls_home
from flwrmtls.link.config import LinkConfig
from flwrmtls.link.flags import parser
from flwrmtls.link.reload import TlsFiles
from flwrmtls.link.server import Link
from flwrmtls.runs.linkobjects import (
    StorageLimits,
)
from flwrmtls.sizes import format_size, parse_size
from flwrmtls.state.database import DatabaseError, error_reason, parse_location
from flwrmtls.state.faults import FAULT_VARIABLE, parse_crash_point
from flwrmtls.terminal import configure_logging, printable
from flwrmtls.wire.bounds import HEARTBEAT_SECONDS
from flwrmtls.wire.credentials import load_ca_bundle, load_tls_identity
from flwrmtls.wire.listen import ServerLimits, is_loopback, require_loopback

__all__ = [
    "check_control_exposure",
    "config_from_args",
    "format_size",
    "main",
    "parse_size",
    "parser",
]

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
        return LinkConfig(
            database=args.database,
            objects_dir=_objects_dir(args),
            fleet_address=args.fleet_api_address,
            control_address=args.control_api_address,
            insecure=True,
            anonymous_control=args.unsafe_anonymous_control_api,
            node_auth=NodeAuth.NONE,
            heartbeat_interval=args.heartbeat_interval,
            serverappio_address=args.serverappio_api_address,
            share_objects=args.shared_objects,
            storage=storage,
            health_address=args.health_api_address,
            metrics_address=args.metrics_address,
            install_app_dependencies=args.install_app_dependencies,
        )
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
    if args.max_connections < 1 or args.max_calls_per_address < 1:
        raise InputError("--max-connections and --max-calls-per-address must be at least 1")
    if not 0 < args.crl_expiry_warning_hours <= 24 * 366:
        raise InputError("--crl-expiry-warning-hours must be above 0, at most 8784 (a year)")
    if not HEARTBEAT_SECONDS.allows(args.heartbeat_interval):
        # one range with what nodes accept from the link: it never sends what they refuse
        raise InputError(f"--heartbeat-interval must be {HEARTBEAT_SECONDS.text}")
    enroll = _enrollment(args, client_cas)
    return LinkConfig(
        enroll=enroll,
        database=args.database,
        objects_dir=_objects_dir(args),
        fleet_address=args.fleet_api_address,
        control_address=args.control_api_address,
        tls=identity,
        client_ca_pem=client_ca_pem,
        client_ca_certificates=client_cas,
        require_client_auth=args.ssl_require_client_auth,
        crl_path=args.ssl_crl_file,
        ocsp=ocsp,
        identity_source=IdentitySource(args.identity_source),
        max_chain_depth=args.max_chain_depth,
        heartbeat_interval=args.heartbeat_interval,
        serverappio_address=args.serverappio_api_address,
        node_auth=node_auth,
        key_fleet_address=args.key_fleet_api_address,
        share_objects=args.shared_objects,
        storage=storage,
        enable_supernode_auth=args.enable_supernode_auth,
        signature_window=args.auth_timestamp_window,
        signature_future_skew=args.auth_timestamp_future_skew,
        server_limits=ServerLimits(max_connections=args.max_connections),
        calls_per_address=args.max_calls_per_address,
        cert_expiry_warning_days=args.cert_expiry_warning_days,
        crl_expiry_warning=timedelta(hours=args.crl_expiry_warning_hours),
        role_source=RoleSource(args.cli_role_source),
        cli_ca_pem=cli_ca_pem,
        cli_ca_certificates=cli_cas,
        anonymous_control=args.unsafe_anonymous_control_api,
        health_address=args.health_api_address,
        metrics_address=args.metrics_address,
        install_app_dependencies=args.install_app_dependencies,
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


def _describe(link: Link) -> str:
    config = link.config
    if config.insecure:
        return "INSECURE: plaintext, no authentication"
    parts = [f"nodes: {config.node_auth.value}"]
    if config.key_fleet_address:
        parts.append(f"EC-key nodes also on port {link.key_fleet_port}")
    if config.uses_keys:
        parts.append("registered keys only" if config.enable_supernode_auth else "any valid EC key")
    if config.require_client_auth:
        parts.append(
            f"client certificates required ({len(config.client_ca_certificates)} trusted CA(s), "
            f"identity from {config.identity_source.value})"
        )
    if config.control_authenticates:
        source = (
            "the client CA bundle"
            if config.cli_ca_certificates == config.client_ca_certificates
            else f"{len(config.cli_ca_certificates)} CLI CA(s)"
        )
        parts.append(f"Control API: CLI certificates from {source}")
    else:
        parts.append("Control API WITHOUT client authentication")
    if link.revocations is not None:
        parts.append(f"CRLs from {config.crl_path} for {len(link.revocations.issuers)} issuer(s)")
    if config.ocsp.enabled:
        parts.append(config.ocsp.describe())
    if config.enroll is not None:
        issuer = config.enroll.issuer.certificate.subject.rfc4514_string()
        parts.append(
            f"enrollment ({config.enroll.mode.value}) on port {link.enrollment_port}: node "
            f"certificates signed by {issuer} for {config.enroll.certificate_days} days"
        )
    return "; ".join(parts)


def _log_revocation_coverage(link: Link) -> None:
    """One line per issuer of client certificates: how its certificates are revocation-checked
    (what ``flwrmtls supernode list`` shows under the nodes)."""
    for row in link.revocation_coverage(link.clock.now()):
        if row.state is CoverageState.NOT_CHECKED:
            log.warning("revocation: issuer %s is NOT revocation-checked (no CRL)", row.issuer)
            continue
        numbers = f"#{row.crl_number}" if row.crl_number is not None else "unnumbered"
        if row.delta_crl_number is not None:
            numbers += f" + delta #{row.delta_crl_number}"
        until = f"{row.next_update:%Y-%m-%d %H:%M:%S} UTC" if row.next_update else "no next update"
        log.info(
            "revocation: issuer %s (%s): %s CRL %s from %s, until %s: %s%s",
            row.issuer,
            row.scope,
            row.kind,
            numbers,
            ", ".join(row.sources) or "-",
            until,
            row.state,
            f" ({row.detail})" if row.detail else "",
        )


async def _run(config: LinkConfig) -> None:
    if "://" not in str(config.database):
        directory = Path(config.database).expanduser().parent
        try:
            private_directory(directory)
        except OSError as error:
            raise InputError(
                f"cannot create {directory} for the database: {error.strerror}: check --database"
            ) from None
        if directory.resolve() == flwrmtls_home().resolve() and (
            warning := open_directory_warning(directory)
        ):
            log.warning("%s", warning)
    fault = os.environ.get(FAULT_VARIABLE)
    crash_point = parse_crash_point(fault) if fault else None
    link = Link(config)
    if crash_point is not None:
        log.warning(
            "!!! %s is set: this link kills itself before statement %d from the first one "
            "containing %r (a test hook: never set it in production) !!!",
            FAULT_VARIABLE, crash_point.offset, crash_point.fragment,
        )  # fmt: skip
        link.state.crash_at(crash_point)
    try:
        await link.start()
    except InputError:
        await link.stop(0)
        raise
    except (OSError, RuntimeError) as error:
        await link.stop(0)
        raise InputError(f"{error}: check the --*-api-address flags (port in use?)") from None
    except DatabaseError as error:
        await link.stop(0)
        check = (
            "check the PostgreSQL server (reachable? its disk full?) and --database"
            if link.state.shared
            else "check the disk it is on (full? read-only?) and that no other process holds it"
        )
        raise FlwrmtlsError(
            f"the link's database {link.state.path} failed at start-up: {error_reason(error)}: "
            f"{check}"
        ) from None
    # Before "link serving" is said: a SIGTERM sent on reading it stops the link cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if config.insecure or config.node_auth is NodeAuth.NONE:
        log.warning("!!! %s: nodes are NOT authenticated: local development only !!!",
                    _describe(link))  # fmt: skip
    if not config.control_authenticates:
        log.warning(
            "!!! the Control API is not authenticated: anyone who reaches %s may start runs "
            "and manage nodes%s !!!",
            config.control_address,
            " (--unsafe-anonymous-control-api)" if config.anonymous_control else
            " (loopback only: every user of this host)",
        )  # fmt: skip
    log.info(
        "link serving: Fleet API on %s (port %d), Control API on %s (port %d); %s; state in %s",
        config.fleet_address,
        link.fleet_port,
        config.control_address,
        link.control_port,
        _describe(link),
        link.state.path,
    )
    if link.health is not None:
        log.info("health (grpc.health.v1) on %s (port %d)", config.health_address,
                 link.health_port)  # fmt: skip
    if link.metrics_server is not None:
        log.info("metrics on http://%s/metrics (port %d)", config.metrics_address,
                 link.metrics_port)  # fmt: skip
    if link.state.shared:
        alive = link.state.replicas.alive(now=link.clock.now().timestamp())
        log.info(
            "link replica %s: %d link(s) of this database alive, this one included; objects "
            "in %s must be the directory every one of them mounts",
            link.state.replica_id, len(alive), link.objects.store.directory,
        )  # fmt: skip
    _log_revocation_coverage(link)
    log.info(
        "objects in %s: at most %s per run, %s of uploads no reply names yet per node",
        link.objects.store.directory,
        format_size(config.storage.max_run_bytes),
        format_size(config.storage.max_node_pending_bytes),
    )

    link.log_crl_lapses()
    await stop.wait()
    log.info("link stopping")
    await link.stop()
    log.info("link stopped")


def main(argv: list[str] | None = None) -> None:
    limit_malloc_arenas()  # before any thread: see flwrmtls.heap
    restrict_umask()  # before anything is created: see flwrmtls.filemodes
    configure_logging()  # escaped: identities, reasons and app output are others' text
    args = parser().parse_args(argv)
    try:
        config = config_from_args(args)
        asyncio.run(_run(config))
    except FlwrmtlsError as error:
        print(f"flwrmtls-superlink: error: {printable(str(error))}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
