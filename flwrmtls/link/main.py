"""``flwrmtls-superlink``: parse flags, make the configuration (:mod:`flwrmtls.link.configure`:
TLS material loaded and checked), run the link.

The process runs with umask 077 and keeps its state private (:mod:`flwrmtls.filemodes`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from flwrmtls.auth.crlcoverage import CoverageState
from flwrmtls.auth.nodeauth import NodeAuth
from flwrmtls.errors import FlwrmtlsError, InputError
from flwrmtls.filemodes import open_directory_warning, private_directory, restrict_umask
from flwrmtls.heap import limit_malloc_arenas
from flwrmtls.home import flwrmtls_home
from flwrmtls.link.config import LinkConfig
from flwrmtls.link.configure import config_from_args
from flwrmtls.link.flags import parser
from flwrmtls.link.server import Link
from flwrmtls.sizes import format_size, parse_size
from flwrmtls.state.database import DatabaseError, error_reason
from flwrmtls.state.faults import FAULT_VARIABLE, parse_crash_point
from flwrmtls.terminal import configure_logging, printable

__all__ = [
    "format_size",
    "main",
    "parse_size",
    "parser",
]

log = logging.getLogger("flwrmtls.link")


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
    if link.operations.health is not None:
        log.info("health (grpc.health.v1) on %s (port %d)", config.health_address,
                 link.health_port)  # fmt: skip
    if link.operations.metrics_server is not None:
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
