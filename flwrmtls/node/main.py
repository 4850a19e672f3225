"""``flwrmtls-supernode``: load and check this node's credentials, then run the agent.

The node's certificate is checked at start-up (a definite cause, such as expiry, is one line and
exit 1) and again, through the connection context, whenever the link closes a handshake without
a word (see :mod:`flwrmtls.wire.errors`), against the certificate in use then.

The process runs with umask 077 (:mod:`flwrmtls.filemodes`); its objects live in its state
directory (``--state-dir``, 0700, locked to this process, emptied of leftovers at start: see
:mod:`flwrmtls.node.statedir`), bounded by ``--max-object-storage``
(:mod:`flwrmtls.node.storage`).

The node is one asyncio program (:func:`_serve`): ClientAppIo and the ClientApp processes
(:mod:`flwrmtls.node.clientapps`), the certificate watcher (:mod:`flwrmtls.node.rotation`), an
enrolled node's renewer (:mod:`flwrmtls.node.renewal`) and the agent
(:mod:`flwrmtls.node.agent`) are tasks on one event loop, which alone holds the
node's state; calls to the link, which block, run in worker threads.

With ``--health-api-address`` and ``--metrics-address`` (:mod:`flwrmtls.ops`; off by default)
the node serves gRPC health (ready: certificate loaded and in date, state directory there, a
session with the link) and Prometheus metrics; without them neither port nor interceptor exists.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc

from flwrmtls.auth.callsigning import CallSigner
from flwrmtls.auth.keyformats import key_fingerprint, load_node_private_key, node_id_for_key
from flwrmtls.cliargs import finish_parser
from flwrmtls.clock import SystemClock
from flwrmtls.durations import parse_duration
from flwrmtls.errors import FlwrmtlsError, InputError
from flwrmtls.filemodes import restrict_umask
from flwrmtls.fleet.client import FleetClient
from flwrmtls.heap import limit_malloc_arenas
from flwrmtls.keyvalues import parse_key_values
from flwrmtls.node.agent import NodeAgent, RetryPolicy
from flwrmtls.node.appioserver import ClientAppIoServer
from flwrmtls.node.audience import LinkAudience
from flwrmtls.node.clientapps import ClientApps
from flwrmtls.node.enrollment import (
    DEFAULT_ENROLLMENT_PORT,
    TOKEN_VARIABLE,
    EnrollmentStopped,
    enroll,
)
from flwrmtls.node.renewal import CertificateRenewer
from flwrmtls.node.rotation import CertificateWatcher
from flwrmtls.node.signer import SigningInterceptor
from flwrmtls.node.statedir import StateDir, default_state_dir, open_state_dir
from flwrmtls.node.storage import DEFAULT_MAX_OBJECT_STORAGE
from flwrmtls.ops.callmetrics import NodeCallMetrics
from flwrmtls.ops.health import HealthListener
from flwrmtls.ops.metrics import MetricsServer, NodeMetrics, NodeSnapshot
from flwrmtls.runs.appenvs import DISABLE_FLAG, AppEnvs
from flwrmtls.sizes import format_size, parse_size
from flwrmtls.terminal import configure_logging, printable
from flwrmtls.wire.clienttls import NODE_NAMES, ClientTls, load_client_tls
from flwrmtls.wire.credentials import (
    TlsIdentity,
    no_root_certificates,
)
from flwrmtls.wire.errors import ConnectionContext
from flwrmtls.wire.listen import check_bindable, require_loopback

__all__ = ["main", "parser"]

log = logging.getLogger("flwrmtls.node")

_CHANNEL_OPTIONS = [("grpc.max_reconnect_backoff_ms", int(RetryPolicy().max_delay * 1000))]
"""grpc's own reconnect backoff grows to 120 s: after a long outage the node's calls would fail
at once for up to two minutes after the link is back (measured: 36 s after 150 s down, 4 s
with this). Keep it within the agent's own backoff."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flwrmtls-supernode",
        description="Run a node: connect to the link's Fleet API and serve it.",
    )
    p.add_argument("--superlink", default="127.0.0.1:9092", help="the link's Fleet API, host:port")
    p.add_argument(
        "--root-certificates",
        type=Path,
        help="CA bundle (PEM) that verifies the link: required with TLS (never a default "
        "set of public CAs)",
    )
    p.add_argument(
        "--ssl-client-certfile",
        type=Path,
        help="this node's certificate chain (PEM: leaf, then intermediates)",
    )
    p.add_argument(
        "--ssl-client-keyfile",
        type=Path,
        help="this node's private key (PEM: PKCS#8, SEC1 or PKCS#1)",
    )
    p.add_argument(
        "--enroll-token-file",
        type=Path,
        help="enroll with this join token (a file holding what `flwrmtls enroll token "
        f"create` printed; or the {TOKEN_VARIABLE} variable) while --ssl-client-certfile does "
        "not exist: the node makes its key in --ssl-client-keyfile (0600, never sent), gets "
        "its certificate from the link and writes it to --ssl-client-certfile; a request "
        "waiting for an operator is kept in <keyfile>.request and asked about again on the "
        "next start (docs/enrollment.md)",
    )
    p.add_argument(
        "--enrollment-address",
        metavar="HOST:PORT",
        help="the link's Enrollment API, host:port (default: --superlink's host, port "
        f"{DEFAULT_ENROLLMENT_PORT})",
    )
    p.add_argument(
        "--ca-cert-hash",
        metavar="sha256:HEX",
        help="instead of a CA file: the SHA-256 of the public key of the CA that verifies the "
        "link (as the operator gives it); the node finds that CA at the link's Enrollment "
        "API and writes it to --root-certificates",
    )
    p.add_argument(
        "--renew-before",
        metavar="DURATION",
        help="an enrolled node renews its certificate when less than this is left (30m, 12h, "
        "10d; default: a third of its lifetime), with the link, authenticated by it",
    )
    p.add_argument(
        "--auth-supernode-private-key",
        type=Path,
        help="EC-key mode: this node's ECDSA private key (as ssh-keygen -t ecdsa writes it, or "
        "PEM); every call is signed with it",
    )
    p.add_argument(
        "--node-config",
        default="",
        help="'key=value key2=\"text\"' handed to the ClientApp as its node config",
    )
    p.add_argument(
        "--clientappio-api-address",
        default="127.0.0.1:9094",
        help="ClientApp processes connect here with their run token, in plaintext: loopback "
        "only (127.0.0.0/8, ::1 or localhost; any other host is refused); port 0 picks a "
        "free one",
    )
    p.add_argument(
        "--cert-expiry-warning-days",
        type=float,
        default=14.0,
        help="warn when this node's certificate expires within this many days",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        help="reconnect attempts before giving up on a link that is down, restarting, or closes "
        "the TLS handshake without a word (default: no limit); a refusal the link states "
        "(revoked, unregistered, not permitted) ends the node at once",
    )
    p.add_argument(
        "--max-wait-time",
        type=float,
        help="seconds without the link before giving up, in the same cases (default: no limit)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="this node's own directory (its objects, a lock), created 0700; objects left "
        "there by an earlier run of the node are deleted at start (default: "
        "$FLWRMTLS_HOME/supernode/<16 hex digits of the --superlink address and the "
        "credential files' paths>)",
    )
    p.add_argument(
        "--max-object-storage",
        default=format_size(DEFAULT_MAX_OBJECT_STORAGE).replace(" ", ""),
        help="bytes of objects (app bundles, array bytes) this node keeps at once, e.g. 500M, "
        "8G (default %(default)s); a message whose objects would exceed it gets an error reply "
        "naming the flag, and the node goes on",
    )
    p.add_argument(
        DISABLE_FLAG, dest="install_app_dependencies", action="store_false",
        help="never install an app's [project] dependencies here: a message of a run whose "
        "ClientApp needs a package this node's environment lacks gets an error reply at once, "
        "naming it (default: install them with this environment's pip and its configuration, "
        "wheels only, into a virtualenv per set of requirements under --state-dir, reused)",
    )  # fmt: skip
    p.add_argument(
        "--no-shared-objects", dest="shared_objects", action="store_false",
        help="send array bytes to ClientApps over ClientAppIo instead of letting them read and "
        "write this node's object directory (the default: same host, same OS user)",
    )  # fmt: skip
    p.add_argument(
        "--health-api-address",
        help="serve gRPC health checking (grpc.health.v1.Health: services '' and 'readiness' "
        "SERVING when the certificate is loaded and valid, the state directory is open and a "
        "session with the link is active; 'liveness' while the process serves) in plaintext "
        "here, e.g. 0.0.0.0:9095, for Kubernetes grpc probes (default: off)",
    )
    p.add_argument(
        "--metrics-address",
        help="serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics, e.g. "
        "0.0.0.0:9100 (default: off, and nothing is counted)",
    )
    p.add_argument("--insecure", action="store_true", help="plaintext: development only")
    return finish_parser(p)


@dataclass
class _Transport:
    """How this node reaches the link; builds a channel for the certificate in use (a rotation
    replaces ``tls.identity``)."""

    tls: ClientTls
    signer: CallSigner | None
    audience: LinkAudience | None
    """The link's server key an EC-key node signs for, learned from TLS (with ``signer``)."""

    def channel(self) -> grpc.Channel:
        channel = self.tls.channel(_CHANNEL_OPTIONS)
        if self.signer is not None and self.audience is not None:
            interceptor = SigningInterceptor(self.signer, self.audience.current)
            channel = grpc.intercept_channel(channel, interceptor)
        return channel


def _transport(
    args: argparse.Namespace,
) -> tuple[_Transport | None, ClientTls | None, ConnectionContext]:
    """Check the flags and files; None for the transport means plaintext, None for the
    second: no client certificate (plaintext, or an EC key alone)."""
    tls_flags = [args.root_certificates, args.ssl_client_certfile, args.ssl_client_keyfile]
    if args.insecure:
        if any(tls_flags) or args.auth_supernode_private_key:
            raise InputError(
                "--insecure cannot be combined with TLS flags or --auth-supernode-private-key"
            )
        log.warning("!!! INSECURE: plaintext connection to the link: development only !!!")
        ctx = ConnectionContext(
            args.superlink, tls=False, has_client_certificate=False, root_certificates=""
        )
        return None, None, ctx
    tls = load_client_tls(
        args.superlink, roots=args.root_certificates, certfile=args.ssl_client_certfile,
        keyfile=args.ssl_client_keyfile, names=NODE_NAMES,
        no_roots=no_root_certificates("no --root-certificates", "--root-certificates FILE"),
    )  # fmt: skip
    own = tls if tls.identity is not None else None
    signer = None
    audience = None
    if args.auth_supernode_private_key is not None:
        key = load_node_private_key(args.auth_supernode_private_key, "--auth-supernode-private-key")
        log.info(
            "signing every call with EC key %s (node id %d)",
            key_fingerprint(key), node_id_for_key(key),
        )  # fmt: skip
        signer = CallSigner(key)
        client_files = None
        if own is not None:
            client_files = (args.ssl_client_certfile, args.ssl_client_keyfile)
        audience = LinkAudience(
            args.superlink, tls.roots_pem, client_files, roots_name=tls.roots_file
        )
    return _Transport(tls, signer, audience), own, tls.context()


class _Operations:
    """The node's health listener and metrics endpoint, where the operator asked for them."""

    def __init__(
        self,
        args: argparse.Namespace,
        agent: NodeAgent,
        own: ClientTls | None,
        state: StateDir,
        metrics: NodeMetrics | None,
    ) -> None:
        self._args = args
        self._agent = agent
        self._own = own
        self._state = state
        self._metrics = metrics
        self.health: HealthListener | None = None
        self.metrics_server: MetricsServer | None = None

    async def start(self) -> None:
        """On the node's event loop: its health listener is a grpc.aio server there (its
        liveness answer proves the loop alive)."""
        args = self._args
        if args.health_api_address is not None:
            try:
                self.health = HealthListener(
                    args.health_api_address,
                    {"certificates": self._certificate_ready, "state": self._state_ready,
                     "serving": self._serving_ready},
                    what="node",
                )  # fmt: skip
            except OSError as error:
                raise InputError(f"{error}: check --health-api-address") from None
            await self.health.start()
            log.info("health (grpc.health.v1) on %s (port %d)", args.health_api_address,
                     self.health.port)  # fmt: skip
        if self._metrics is not None:
            store = self._state.objects
            self._metrics.watch_state(
                self._snapshot, lambda: len(store.object_ids()), store.stored_bytes
            )
            self.metrics_server = MetricsServer(
                self._metrics.registry, args.metrics_address, "--metrics-address"
            )
            log.info("metrics on http://%s/metrics (port %d)", args.metrics_address,
                     self.metrics_server.port)  # fmt: skip

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()

    def _certificate_ready(self) -> str | None:
        if self._own is None:
            return None  # an EC key, or plaintext: nothing that expires
        definite = self._own.check().definite
        return definite.message if definite is not None else None

    def _state_ready(self) -> str | None:
        path = self._state.objects.directory
        return None if path.is_dir() else f"the state directory's {path} is gone"

    def _serving_ready(self) -> str | None:
        return None if self._agent.connected else "no active session with the link"

    def _snapshot(self) -> NodeSnapshot:
        identity = self._own.identity if self._own is not None else None
        leaf = identity.leaf if identity is not None else None
        return NodeSnapshot(
            connected=self._agent.connected,
            certificate_not_after=leaf.not_valid_after_utc if leaf is not None else None,
        )


def run(args: argparse.Namespace) -> None:
    stopping = threading.Event()
    """Set by SIGINT/SIGTERM: the node stops (enrolling, or running)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping (signal %d)", signum)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node_config = parse_key_values(args.node_config, "--node-config")
    if args.max_retries is not None and args.max_retries < 0:
        raise InputError("--max-retries must be 0 or more")
    max_object_bytes = parse_size(args.max_object_storage, "--max-object-storage")
    retry = RetryPolicy(max_retries=args.max_retries, max_wait_time=args.max_wait_time)
    try:
        enrolled = enroll(args, retry, stopping)
    except EnrollmentStopped:  # a signal while enrolling: what it made is kept for next time
        return
    try:
        renew_before = parse_duration(args.renew_before) if args.renew_before else None
    except InputError as error:
        raise InputError(f"--renew-before: {error}") from None
    transport, own, ctx = _transport(args)
    metrics = NodeMetrics() if args.metrics_address is not None else None

    def instrumented(channel: grpc.Channel) -> grpc.Channel:
        if metrics is None:
            return channel
        return grpc.intercept_channel(channel, NodeCallMetrics(metrics, SystemClock()))

    channel = instrumented(
        transport.channel()
        if transport
        else grpc.insecure_channel(args.superlink, options=_CHANNEL_OPTIONS)
    )
    channels = [channel]
    if node_config:
        log.info("node config: %s", ", ".join(f"{k}={v!r}" for k, v in node_config.items()))
    relearn = transport.audience.relearn if transport and transport.audience else None
    client = FleetClient(channel, ctx, relearn_audience=relearn)
    require_loopback(args.clientappio_api_address, "--clientappio-api-address", "ClientAppIo")
    try:
        check_bindable(args.clientappio_api_address)
    except OSError as error:
        raise InputError(f"{error}: check --clientappio-api-address") from None
    state_dir = args.state_dir or default_state_dir(
        args.superlink,
        [args.ssl_client_certfile, args.ssl_client_keyfile, args.auth_supernode_private_key],
    )
    state = open_state_dir(state_dir)
    for warning in state.warnings:
        log.warning("%s", warning)
    count, freed = state.leftover
    log.info(
        "state in %s; objects at most %s%s", state.path, format_size(max_object_bytes),
        f" ({count} objects, {freed} bytes, left from before deleted)" if count or freed else "",
    )  # fmt: skip
    envs = AppEnvs(state.path / "app-envs", host="this node", install=args.install_app_dependencies)
    if not envs.install:
        log.info("app dependencies are not installed here (%s)", DISABLE_FLAG)
    apps = ClientApps(
        client, state.objects, node_config=node_config, share_objects=args.shared_objects,
        max_object_bytes=max_object_bytes, envs=envs,
    )  # fmt: skip
    agent = NodeAgent(client, apps=apps, retry=retry)
    watcher = None
    if transport is not None and own is not None and own.identity is not None:

        def rotate(new_identity: TlsIdentity) -> None:
            assert transport is not None
            assert own is not None
            own.identity = new_identity
            channels.append(instrumented(transport.channel()))
            client.replace_channel(channels[-1])
            agent.request_reconnect()
            while len(channels) > 2:  # keep the new one and the one calls may still be on
                channels.pop(0).close()

        watcher = CertificateWatcher(
            args.ssl_client_certfile, args.ssl_client_keyfile, own.identity,
            on_change=rotate, warning_days=args.cert_expiry_warning_days,
        )  # fmt: skip
    renewer = None
    if enrolled and own is not None:
        renewer = CertificateRenewer(
            args.ssl_client_certfile, args.ssl_client_keyfile, client.renew_certificate,
            SystemClock(), renew_before=renew_before,
        )  # fmt: skip
    operations = _Operations(args, agent, own, state, metrics)
    try:
        if stopping.is_set():  # a signal while enrolling or starting: stop before serving
            return
        asyncio.run(
            _serve(
                agent, ClientAppIoServer(apps, args.clientappio_api_address), watcher,
                renewer, operations,
            )
        )  # fmt: skip
    finally:
        for open_channel in channels:
            open_channel.close()
        state.close()  # the runs' objects went as they ended


async def _serve(
    agent: NodeAgent,
    clientappio: ClientAppIoServer,
    watcher: CertificateWatcher | None,
    renewer: CertificateRenewer | None,
    operations: _Operations,
) -> None:
    """The node, one event loop: ClientAppIo and the ClientApps it serves, the certificate
    watcher and (an enrolled node) its renewer, health and metrics, the agent; stopped by
    SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    await clientappio.start()
    tasks = [asyncio.create_task(task.run()) for task in (watcher, renewer) if task is not None]

    def on_signal(signum: int) -> None:
        log.info("stopping (signal %d)", signum)
        agent.request_stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await operations.start()
        await agent.run()
    finally:
        await operations.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await clientappio.stop()


def main(argv: list[str] | None = None) -> None:
    limit_malloc_arenas()  # before any thread: see flwrmtls.heap
    restrict_umask()  # before anything is created: see flwrmtls.filemodes
    configure_logging()  # escaped: identities, reasons and app output are others' text
    try:
        run(parser().parse_args(argv))
    except FlwrmtlsError as error:
        print(f"flwrmtls-supernode: error: {printable(str(error))}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
