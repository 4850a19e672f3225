"""The link: composition only. Wires credentials, authenticators, state and servicers together.

grpc.aio servers in one event loop (no thread per connection):

* the Fleet API for nodes, authenticated as ``--node-auth`` says (see
  :mod:`flwrmtls.auth.nodeauth`), and optionally a second Fleet listener for EC-key nodes;
* the Control API for the CLI, by certificate from the CLI CA bundle (``--ssl-cli-ca-certfile``,
  by default the client CA bundle); anonymous only on loopback or with the loud opt-out;
* ServerAppIo for the runs' ServerApp processes, by run token, in plaintext: on loopback
  only (an address off loopback is refused before anything listens).

All share the policy table and the refusal log. What a servicer refuses, and a call that meets
a failure of the link's storage (a full disk, an I/O error, in its database or its object
directory), is answered in one place, as the error catalogue says (:mod:`flwrmtls.wire.refusals`):
one clear status, never UNKNOWN.

Objects (array bytes, bundles) live in a directory beside the database, private to the link's
OS account (0700, see :mod:`flwrmtls.filemodes`), as the database is (0600); who may read and
store which is :mod:`flwrmtls.runs.linkobjects`.

Several link processes may share one PostgreSQL database and one object directory, behind a
TCP load balancer that passes TLS through: each is a replica, and together they act as one
link (:mod:`flwrmtls.link.replication`).

Open calls on the Fleet and Control listeners are kept in one registry
(:mod:`flwrmtls.auth.livecalls`) and judged again when credentials may have ended: at once
after CRLs reload, a CA bundle changes, a node is unregistered or a key bound anew, an OCSP
answer revokes a certificate or can no longer be used, or a CRL's or an OCSP answer's
next-update passes; each second for expiries. A refused open call is answered with the
refusal, so a node idle in a long poll is out within about a second of the file changing (or
of the OCSP answer arriving: :mod:`flwrmtls.auth.ocsprefresh` asks responders off the loop).

Operations (:mod:`flwrmtls.ops`), each only when its address is configured: the gRPC health
listener and the metrics endpoint (:mod:`flwrmtls.link.operations`), and the counters (the
call interceptor outermost on each listener, the interceptors' and the Fleet servicer's
hooks). Without them, no port is opened and each hook is one None check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

import grpc
import grpc.aio
from cryptography import x509

from flwrmtls.appio.serverappio import ServerAppIoServicer
from flwrmtls.auth.authenticator import Authenticator, OpenAuthenticator, RefusalReason
from flwrmtls.auth.authority import Authorities, PinnedToAuthority
from flwrmtls.auth.caller import caller_name
from flwrmtls.auth.callsigning import audience_of, audience_text
from flwrmtls.auth.compose import DenyUnregistered
from flwrmtls.auth.crlcoverage import CoverageRow
from flwrmtls.auth.crllapse import LapseLog, with_lapse_warning
from flwrmtls.auth.eckey import (
    EcKeyAuthenticator,
)
from flwrmtls.auth.interceptor import AuthInterceptor
from flwrmtls.auth.livecalls import LiveCalls
from flwrmtls.auth.nodeauth import NodeAuth, build_node_authenticator, requires_client_certificate
from flwrmtls.auth.ocsprefresh import OcspRefresher
from flwrmtls.auth.ocspstore import OcspStore
from flwrmtls.auth.ratelimit import FailureLimiter
from flwrmtls.auth.refusallog import RefusalLog
from flwrmtls.auth.revocation import RevocationStore, coverage_report
from flwrmtls.auth.tokens import TokenAuthenticator
from flwrmtls.clock import Clock, SystemClock
from flwrmtls.control.servicer import ControlServicer
from flwrmtls.enroll.config import MAX_RECEIVE_BYTES as ENROLL_MAX_RECEIVE_BYTES
from flwrmtls.enroll.config import EnrollmentConfig
from flwrmtls.enroll.renewal import Renewals
from flwrmtls.enroll.servicer import EnrollmentServicer, rate_budget
from flwrmtls.filemodes import private_directory, tighten
from flwrmtls.fleet.servicer import FleetServicer
from flwrmtls.link.config import (
    LinkConfig,
    build_certificate_authenticator,
    build_key_authenticator,
)
from flwrmtls.link.operations import LinkOperations
from flwrmtls.link.reload import TlsMaterial, TlsWatcher, Trust
from flwrmtls.link.replication import Replication
from flwrmtls.objects.store import ObjectStore
from flwrmtls.ops.callmetrics import CallMetricsInterceptor
from flwrmtls.ops.metrics import LinkMetrics
from flwrmtls.proto import appio_pb2_grpc, control_pb2_grpc, enrollment_pb2_grpc, fleet_pb2_grpc
from flwrmtls.runs.appenvs import AppEnvs
from flwrmtls.runs.linkobjects import SWEEP_INTERVAL, LinkObjects
from flwrmtls.runs.notify import Notifier
from flwrmtls.runs.presence import Presence
from flwrmtls.runs.runlog import RunLog
from flwrmtls.runs.serverapps import ServerApps
from flwrmtls.state.linkstate import LinkState
from flwrmtls.wire.credentials import server_credentials
from flwrmtls.wire.listen import ServerLimits, check_bindable, require_loopback
from flwrmtls.wire.refusals import RefusalInterceptor
from flwrmtls.wire.validate import RequestBoundsInterceptor

__all__ = ["Link"]

log = logging.getLogger("flwrmtls.link")

_CRL_POLL_SECONDS = 1.0
_ANONYMOUS = OpenAuthenticator()
"""The Enrollment API's callers have no credentials: the policy table lets them call it only."""
_ENROLL_CALLS = 8
"""Enrollment calls one address may have in progress at once (a node makes one at a time)."""
_ENROLL_STREAMS = 4
_ENROLL_IDLE = 60.0
MAX_BUNDLE_BYTES = 64 << 20
"""The largest app bundle StartRun accepts (the Control API's receive limit)."""


class Link:
    """A running link. ``await start()``, read the bound ports, ``await stop()``."""

    def __init__(self, config: LinkConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        # CRLs first: a CRL the link refuses stops it before anything else is opened.
        self.revocations = RevocationStore(config.crl_path, self.clock) if config.crl_path else None
        self.ocsp = OcspStore(config.ocsp, self.clock) if config.ocsp.enabled else None
        self._ocsp_refresher: OcspRefresher | None = None
        self._lapse_log = LapseLog()
        self.state = LinkState(config.database)
        self.keys = build_key_authenticator(config, self.state) if config.uses_keys else None
        self.live_calls = LiveCalls()
        """Open Fleet and Control calls, judged again when credentials may have ended."""
        self._access_changed = False
        self._last_tick: datetime | None = None
        self._trust(config.client_ca_certificates, config.cli_ca_certificates)
        self.tls_watcher: TlsWatcher | None = None
        self._material: TlsMaterial | None = None
        if config.tls is not None:
            self._material = TlsMaterial(
                config.tls, config.client_ca_pem, tuple(config.client_ca_certificates),
                config.cli_ca_pem, tuple(config.cli_ca_certificates),
            )  # fmt: skip
        if config.tls_files is not None and self._material is not None:
            self.tls_watcher = TlsWatcher(
                config.tls_files, self._material, on_trust=self._new_trust,
                on_server_key=self._new_server_key,
            )  # fmt: skip
        self.metrics = LinkMetrics() if config.metrics_address is not None else None
        """Off (None) unless ``--metrics-address``: then nothing is counted anywhere."""
        self._serving = False
        refusals = RefusalLog(self.clock)
        digest = config.node_auth in (NodeAuth.KEY, NodeAuth.CERTIFICATE_AND_KEY)
        audit = self.state.audit.record

        self._limiters: dict[str, FailureLimiter] = {}

        def failures(name: str) -> FailureLimiter:
            limiter = self._limiters[name] = FailureLimiter(
                self.clock.monotonic, config.auth_failures
            )
            return limiter

        self._fleet_interceptor = AuthInterceptor(
            lambda: self.fleet_authenticator, self.clock, refusals, digest_bodies=digest,
            audit=audit, failures=failures("fleet"), calls_per_address=config.calls_per_address,
            live=self.live_calls, node_refused=self._node_refused, serves="Fleet",
            metrics=self.metrics,
        )  # fmt: skip
        key_fleet = DenyUnregistered(self.keys, self.state.is_unregistered) if self.keys else None
        self._key_fleet_interceptor = AuthInterceptor(
            lambda: key_fleet or self._keys(), self.clock, refusals, digest_bodies=True,
            audit=audit, failures=failures("key-fleet"),
            calls_per_address=config.calls_per_address, live=self.live_calls,
            node_refused=self._node_refused, serves="Fleet", metrics=self.metrics,
        )  # fmt: skip
        self._control_interceptor = AuthInterceptor(
            lambda: self.control_authenticator, self.clock, refusals, audit=audit,
            failures=failures("control"), calls_per_address=config.calls_per_address,
            live=self.live_calls, serves="Control", metrics=self.metrics,
        )  # fmt: skip
        if config.enroll is not None:  # its rate per address: one budget across replicas
            self._limiters["enrollment"] = FailureLimiter(
                self.clock.monotonic, rate_budget(config.enroll.per_minute)
            )
        self._enroll_interceptor = AuthInterceptor(
            lambda: _ANONYMOUS, self.clock, refusals, calls_per_address=_ENROLL_CALLS,
            serves="Enrollment", metrics=self.metrics,
        )  # fmt: skip
        tokens = TokenAuthenticator(self.state.runs.token)
        self._app_interceptor = AuthInterceptor(
            lambda: tokens, self.clock, refusals, serves="ServerAppIo", metrics=self.metrics
        )
        self.notifier = Notifier()
        private_directory(config.objects_directory)
        if warning := tighten(config.objects_directory):
            log.warning("%s", warning)
        self.objects = LinkObjects(
            ObjectStore(config.objects_directory), self.state, self.clock, config.storage
        )
        self.operations = LinkOperations(
            config, self.clock, self.state, self.objects.store, self.metrics,
            tls_leaf=self._tls_leaf, serving=lambda: self._serving,
        )  # fmt: skip
        self.run_log = RunLog(self.state.runs, self.notifier, self.clock)
        self.runs = ServerApps(
            self.state, self.clock, notifier=self.notifier, run_log=self.run_log,
            objects=self.objects,
            envs=AppEnvs(
                config.app_envs_directory, host="the link",
                install=config.install_app_dependencies, clock=self.clock,
            ),
        )  # fmt: skip
        self.replication = Replication(
            self.state, self.clock, notifier=self.notifier, runs=self.runs,
            limiters=self._limiters, access_changed=self.recheck_open_calls,
            description=f"fleet {config.fleet_address}, control {config.control_address}",
        )  # fmt: skip
        self.presence = Presence(
            self.clock,
            mark_offline=self._connection_closed,
            on_offline=self._node_went_offline,
        )
        """Nodes whose connection closed: offline within a second (flwrmtls.runs.presence)."""
        self._servers: list[grpc.aio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.fleet_port = 0
        self.key_fleet_port = 0
        self.control_port = 0
        self.serverappio_port = 0
        self.enrollment_port = 0

    def _connection_closed(self, node_id: int, session_id: str, now: float) -> bool:
        """Mark ``node_id`` offline after its connection closed (:mod:`flwrmtls.runs.presence`).

        Only a link that is the federation's one link does: with several replicas the node may
        go on through another one (a balancer that restarts closes every connection, and the
        node's next call reaches any replica), which this process cannot see. There the
        heartbeat bound is the one that holds (docs/several-links.md, "Limits")."""
        if self.state.shared:
            return False
        return self.state.connection_closed(node_id, session_id, now=now)

    def _node_went_offline(self, node_id: int) -> None:
        """Wake the ServerApps' long polls: the replies they await from ``node_id`` are due."""
        self.notifier.notify(("nodes",))
        for run in self.state.runs.active():
            self.notifier.notify(("run", run.run_id))

    def _trust(self, nodes: Sequence[x509.Certificate], cli: Sequence[x509.Certificate]) -> None:
        """(Re)build the certificate authenticators from the client and CLI CA bundles.

        Each is wrapped so that an identity belongs to one authority of both bundles
        (:mod:`flwrmtls.auth.authority`).
        """
        config = self.config
        authorities = Authorities.of(nodes, cli)
        self.certificates: Authenticator | None = None
        if config.require_client_auth:
            self.certificates = PinnedToAuthority(
                build_certificate_authenticator(config, self.revocations, nodes, self.ocsp),
                self.state.pins,
                authorities,
            )
        nodes_authenticator = build_node_authenticator(
            config.node_auth, certificates=self._certificates, keys=self._keys,
            bound_node=self.state.keys.bound_node,
        )  # fmt: skip
        self.fleet_authenticator: Authenticator = DenyUnregistered(
            nodes_authenticator, self.state.is_unregistered
        )
        self.control_authenticator: Authenticator = OpenAuthenticator()
        if cli:
            self.control_authenticator = PinnedToAuthority(
                build_certificate_authenticator(config, self.revocations, cli, self.ocsp),
                self.state.pins,
                authorities,
            )

    def _new_trust(self, material: TlsMaterial) -> None:
        """New CA bundles: open connections are judged against them from the next call, and
        their open calls at once."""
        self._trust(material.client_ca_certificates, material.cli_ca_certificates)
        self._access_changed = True

    def _new_server_key(self, material: TlsMaterial) -> None:
        """A new server key: EC-key signatures for the previous one stay good for a while."""
        if self.keys is None:
            return
        audience = audience_of(material.identity.leaf)
        grace = timedelta(seconds=self.config.previous_server_key_grace)
        self.keys.audiences = self.keys.audiences.rotated(audience, self.clock.now(), grace)
        log.info(
            "EC-key signatures now name server key sha256:%s; the previous key is accepted "
            "for %.0f s more", audience_text(audience)[:16], grace.total_seconds(),
        )  # fmt: skip

    def recheck_open_calls(self) -> int:
        """Judge every open call again now; refused ones are answered with their refusal."""
        ended = self.live_calls.recheck(self.clock.now())
        if ended:
            log.info("ended %d open call(s) whose credentials are no longer admitted", ended)
        return ended

    def revocation_coverage(self, now: datetime) -> list[CoverageRow]:
        """Per issuer of client certificates (nodes' and CLI's): its CRLs in force, until
        when, or unchecked; then the issuers whose certificates the link asked OCSP about."""
        material = self.tls_watcher.material if self.tls_watcher is not None else self._material
        if material is not None:
            cas = [*material.client_ca_certificates, *material.cli_ca_certificates]
        else:
            cas = [*self.config.client_ca_certificates, *self.config.cli_ca_certificates]
        if not cas and self.revocations is None:
            return []
        warning = self.config.crl_expiry_warning
        ocsp = self.ocsp.coverage(now) if self.ocsp is not None else []
        return [with_lapse_warning(row, now, warning) for row in coverage_report(
            self.revocations, cas, now, ocsp
        )]  # fmt: skip

    def log_crl_lapses(self) -> None:
        """Log CRLs in force that lapse soon (when they enter the window, then hourly)."""
        if self.revocations is not None:
            now = self.clock.now()
            self._lapse_log.log_due(self.revocation_coverage(now), now)

    def _node_refused(self, node_id: int, reason: RefusalReason, detail: str) -> None:
        """A node the link verified was refused (revoked, expired): ``supernode list`` shows
        it so at once, and runs waiting on it learn it is offline."""
        if self.state.node_refused(node_id, reason.value, detail, now=self.clock.now().timestamp()):
            self.notifier.notify(("nodes",))

    def _certificates(self) -> Authenticator:
        assert self.certificates is not None, "certificate modes need --ssl-require-client-auth"
        return self.certificates

    def _keys(self) -> EcKeyAuthenticator:
        assert self.keys is not None
        return self.keys

    def _credentials(self, listener: str, trust: Trust) -> grpc.ServerCredentials | None:
        if self._material is None:
            return None
        if self.tls_watcher is not None:
            watcher = self.tls_watcher
            return grpc.dynamic_ssl_server_credentials(
                watcher.material.server_configuration(trust),
                watcher.fetcher(listener, trust),
                require_client_authentication=trust is not Trust.NONE,
            )
        return server_credentials(
            self._material.identity,
            client_ca_pem=self._material.roots(trust),
            require_client_auth=trust is not Trust.NONE,
        )

    def _server(
        self,
        address: str,
        interceptor: AuthInterceptor,
        credentials: grpc.ServerCredentials | None,
        limits: ServerLimits | None = None,
    ) -> tuple[grpc.aio.Server, int]:
        check_bindable(address)
        # outside auth (its storage: pins) and inside (so the audit has the real status)
        metrics, api = self.metrics, interceptor.serves
        answers = RefusalInterceptor(
            storage_owner="link", caller=caller_name,
            refused=(lambda code: metrics.refused(api, code.value)) if metrics else None,
        )  # fmt: skip
        interceptors: list[grpc.aio.ServerInterceptor] = []  # type: ignore[type-arg]
        if metrics is not None:  # outermost: a call's time includes its authentication
            interceptors.append(CallMetricsInterceptor(metrics, api, self.clock))
        server = grpc.aio.server(
            interceptors=[*interceptors, answers, interceptor, RequestBoundsInterceptor(), answers],
            options=(limits or self.config.server_limits).options(),
        )
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return server, port

    async def start(self) -> None:
        config = self.config
        self.loop = asyncio.get_running_loop()
        """The event loop the link runs in (tests call into it from other threads)."""
        require_loopback(config.serverappio_address, "--serverappio-api-address", "ServerAppIo")
        others_alive = self.replication.others_alive()
        self.replication.join()
        restored = self.state.link_started(now=self.clock.now().timestamp())
        if restored:
            log.info("%d node(s) were online when the link last stopped: offline until they "
                     "call again", restored)  # fmt: skip
        self.runs.recover()
        reclaimed, partial = self.objects.collect_unowned(others_alive=others_alive)
        if reclaimed:
            log.info("deleted %d stored objects that belong to no run", reclaimed)
        if partial:
            log.info("deleted %d partial object writes a link that stopped left", partial)
        fleet_servicer = FleetServicer(
            self.state, self.clock, config.heartbeat_interval, notifier=self.notifier,
            objects=self.objects, run_log=self.run_log, presence=self.presence,
            expiry_warning_days=config.cert_expiry_warning_days,
            on_round_trip=self.metrics.round_trip if self.metrics is not None else None,
            renewals=Renewals(
                self.state.enroll, config.enroll.issuer, max_days=config.enroll.certificate_days
            ) if config.enroll is not None else None,
        )  # fmt: skip
        fleet, self.fleet_port = self._server(
            config.fleet_address,
            self._fleet_interceptor,
            self._credentials(
                "fleet",
                Trust.NODES if requires_client_certificate(config.node_auth) else Trust.NONE,
            ),
        )
        fleet_pb2_grpc.add_FleetServicer_to_server(fleet_servicer, fleet)
        servers = [fleet]
        if config.key_fleet_address is not None:
            key_fleet, self.key_fleet_port = self._server(
                config.key_fleet_address,
                self._key_fleet_interceptor,
                self._credentials("key-fleet", Trust.NONE),
            )
            fleet_pb2_grpc.add_FleetServicer_to_server(fleet_servicer, key_fleet)
            servers.append(key_fleet)
        control, self.control_port = self._server(
            config.control_address,
            self._control_interceptor,
            self._credentials("control", Trust.CLI if config.control_authenticates else Trust.NONE),
            limits=replace(config.server_limits, max_receive_bytes=MAX_BUNDLE_BYTES),
        )
        control_pb2_grpc.add_ControlServicer_to_server(
            ControlServicer(
                self.state,
                self.clock,
                runs=self.runs,
                notifier=self.notifier,
                expiry_warning_days=self.config.cert_expiry_warning_days,
                revocation_coverage=self.revocation_coverage,
                key_binding=config.key_binding,
                identity_source=config.identity_source,
                access_changed=self.recheck_open_calls,
                enrollment=config.enroll,
            ),
            control,
        )
        # App processes reach ServerAppIo on loopback (checked above) with their token; no TLS.
        serverappio, self.serverappio_port = self._server(
            config.serverappio_address, self._app_interceptor, None
        )
        appio_pb2_grpc.add_ServerAppIoServicer_to_server(
            ServerAppIoServicer(
                self.state, self.clock, notifier=self.notifier, objects=self.objects,
                runs=self.runs, presence=self.presence, share_objects=config.share_objects,
            ),
            serverappio,
        )  # fmt: skip
        host = config.serverappio_address.rpartition(":")[0]
        self.runs.listen(f"{host}:{self.serverappio_port}")
        if config.enroll is not None:
            servers.append(self._enrollment_server(config.enroll))
        self._servers = [*servers, control, serverappio]
        for server in self._servers:
            await server.start()
        self._serving = True
        await self.operations.start()
        self._tasks.append(asyncio.create_task(self._watch_files()))
        self._tasks.append(asyncio.create_task(self._sweep_objects()))
        if self.ocsp is not None:
            self._ocsp_refresher = OcspRefresher(self.ocsp, self.clock, self.recheck_open_calls)
            self._tasks.append(asyncio.create_task(self._ocsp_refresher.run()))
        self.replication.start()

    @property
    def health_port(self) -> int:
        return self.operations.health_port

    @property
    def metrics_port(self) -> int:
        return self.operations.metrics_port

    def _tls_leaf(self) -> x509.Certificate | None:
        material = self.tls_watcher.material if self.tls_watcher is not None else self._material
        return material.identity.leaf if material is not None else None

    def _enrollment_server(self, enroll: EnrollmentConfig) -> grpc.aio.Server:
        """The Enrollment API: TLS without client certificates, small messages, few streams
        per connection, its own rate per address (:mod:`flwrmtls.enroll.servicer`)."""
        limits = replace(
            self.config.server_limits,
            max_receive_bytes=ENROLL_MAX_RECEIVE_BYTES,
            max_concurrent_streams=_ENROLL_STREAMS,
            max_connection_idle=_ENROLL_IDLE,
        )
        server, self.enrollment_port = self._server(
            enroll.address,
            self._enroll_interceptor,
            self._credentials("enrollment", Trust.NONE),
            limits=limits,
        )
        enrollment_pb2_grpc.add_EnrollmentServicer_to_server(
            EnrollmentServicer(
                self.state.enroll, enroll.issuer, self.clock, mode=enroll.mode,
                ca_certificates_pem=self.config.client_ca_pem or b"",
                certificate_days=enroll.certificate_days, per_minute=enroll.per_minute,
                audit=self.state.audit.record, log=log.info,
                limiter=self._limiters["enrollment"],
            ),
            server,
        )  # fmt: skip
        return server

    async def _watch_files(self) -> None:
        """Re-read CRLs and TLS files about once a second (see :mod:`flwrmtls.link.reload`),
        then judge open calls again: all of them after a change, else the expired ones."""
        while True:
            await asyncio.sleep(_CRL_POLL_SECONDS)
            try:
                if self.revocations is not None:
                    if self.revocations.refresh():
                        self._access_changed = True
                    self.log_crl_lapses()
                if self.tls_watcher is not None:
                    self.tls_watcher.poll()
            except Exception:  # never stop watching: a dead watcher would miss revocations
                log.exception("re-reading CRL or TLS files failed; keeping the last good ones")
            try:
                self._judge_open_calls()
            except Exception:
                log.exception("judging open calls failed; trying again in a second")

    def _judge_open_calls(self) -> None:
        now = self.clock.now()
        last, self._last_tick = self._last_tick, now
        # A CRL or an OCSP answer past its next-update refuses its certificates: a change by
        # time.
        if last is not None and (
            (
                self.revocations is not None
                and any(last <= moment < now for moment in self.revocations.next_updates)
            )
            or (self.ocsp is not None and self.ocsp.lapsed_between(last, now))
        ):
            self._access_changed = True
        if self._access_changed:
            self._access_changed = False
            self.recheck_open_calls()
        elif self.live_calls.recheck_expired(now):
            log.info("ended open call(s) whose certificates expired")

    async def _sweep_objects(self) -> None:
        """Expire node uploads no reply named in time (see :mod:`flwrmtls.runs.linkobjects`)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.objects.expire_pending()
            except Exception:  # never stop sweeping: the next sweep may succeed
                log.exception("expiring pending node uploads failed; trying again later")

    async def wait(self) -> None:
        await asyncio.gather(*(server.wait_for_termination() for server in self._servers))

    async def stop(self, grace: float = 2.0) -> None:
        self._serving = False
        await self.operations.stop()  # not ready first, so no new work is sent here
        self.presence.close()  # every connection closes now: none of that is a node lost
        await self.runs.shutdown()
        await self.replication.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._ocsp_refresher is not None:
            await self._ocsp_refresher.close()
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        self.state.close()
