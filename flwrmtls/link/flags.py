"""``flwrmtls-superlink``'s flags: the parser, its defaults and its help, in one place.

Rules: every flag is declared here and nowhere else; checking what the flags say together, and
building the link's configuration from them, is :func:`flwrmtls.link.configure.config_from_args`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flwrmtls.auth.identity import IdentitySource, RoleSource
from flwrmtls.auth.nodeauth import NodeAuth
from flwrmtls.auth.ocspcheck import OcspMode
from flwrmtls.auth.ocsppolicy import OcspPolicy, Unreachable
from flwrmtls.cliargs import finish_parser
from flwrmtls.enroll.config import (
    DEFAULT_ADDRESS,
    DEFAULT_CERTIFICATE_DAYS,
    DEFAULT_PER_MINUTE,
    EnrollMode,
)
from flwrmtls.home import flwrmtls_home
from flwrmtls.runs.appenvs import DISABLE_FLAG
from flwrmtls.runs.linkobjects import (
    DEFAULT_MAX_NODE_PENDING_STORAGE,
    DEFAULT_MAX_RUN_STORAGE,
    PENDING_TTL,
)
from flwrmtls.sizes import format_size
from flwrmtls.wire.listen import ServerLimits

__all__ = ["parser"]


def _default_database() -> str:
    return str(flwrmtls_home() / "link.db")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flwrmtls-superlink",
        description="Run the link: the Fleet API for nodes and the Control API for the CLI.",
    )
    p.add_argument("--fleet-api-address", default="0.0.0.0:9092", help="nodes connect here")
    p.add_argument("--control-api-address", default="0.0.0.0:9093", help="the CLI connects here")
    p.add_argument(
        "--serverappio-api-address",
        default="127.0.0.1:9091",
        help="ServerApp processes connect here with their run token, in plaintext: loopback "
        "only (127.0.0.0/8, ::1 or localhost); any other host is refused",
    )
    p.add_argument(
        "--ssl-ca-certfile",
        type=Path,
        help="CA bundle (PEM); by default it also verifies client certificates",
    )
    p.add_argument(
        "--ssl-certfile", type=Path, help="server certificate chain (PEM); re-read when it changes"
    )
    p.add_argument(
        "--ssl-keyfile", type=Path, help="server private key (PEM); re-read when it changes"
    )
    p.add_argument(
        "--ssl-require-client-auth",
        action="store_true",
        help="require a client certificate from a trusted CA at the TLS handshake "
        "on the Fleet and Control APIs",
    )
    p.add_argument(
        "--ssl-client-ca-certfile",
        type=Path,
        help="verify client certificates against this CA bundle instead of --ssl-ca-certfile; "
        "re-read when it changes",
    )
    p.add_argument(
        "--ssl-cli-ca-certfile",
        type=Path,
        help="verify CLI certificates on the Control API against this CA bundle instead of the "
        "client CA bundle; with it the Control API requires a CLI certificate even when nodes "
        "use EC keys; re-read when it changes",
    )
    p.add_argument(
        "--unsafe-anonymous-control-api",
        action="store_true",
        help="let anyone who reaches --control-api-address use the Control API without a "
        "certificate (start runs, which run code on the link and every node; manage nodes): "
        "a lab on a closed network only",
    )
    p.add_argument(
        "--ssl-crl-file",
        type=Path,
        help="CRL(s), PEM or DER: one file or a directory; re-read when it changes",
    )
    p.add_argument(
        "--ocsp",
        default=OcspMode.OFF.value,
        metavar="off|aia|URL",
        help="also check client certificates with OCSP: aia asks the responder each "
        "certificate names (AuthorityInformationAccess); an http(s) URL asks that responder "
        "about node and CLI certificates (CA certificates: the one they name); off (default). "
        "A revoked answer refuses, as a CRL does",
    )
    p.add_argument(
        "--ocsp-unreachable",
        choices=[choice.value for choice in Unreachable],
        default=Unreachable.FAIL_CLOSED.value,
        help="when an answer cannot be refreshed: refuse the certificate until an answer "
        "comes (fail-closed, default), or keep the last good answer until its next update "
        "(keep-last-good); a certificate never answered is refused either way",
    )
    p.add_argument(
        "--ocsp-timeout",
        type=float,
        default=OcspPolicy().timeout,
        metavar="SECONDS",
        help="seconds one question to an OCSP responder may take (default %(default)s; at "
        "most 60); a node's first call waits for the first answer that long",
    )
    p.add_argument(
        "--ocsp-refresh-interval",
        type=float,
        default=OcspPolicy().refresh_interval,
        metavar="SECONDS",
        help="seconds after which an OCSP answer is asked for again (default %(default)s, 1 "
        "to 86400), and always before its next update: how soon a revocation reaches the link",
    )
    p.add_argument(
        "--enroll-mode",
        choices=[mode.value for mode in EnrollMode],
        help="serve the Enrollment API, where new sites ask for their certificate with a join "
        "token (flwrmtls enroll token create), and sign what a valid token allows with "
        "--enroll-ca-certfile's sub-CA: at once (sign), or once an operator approved the "
        "request (approve: flwrmtls enroll ls, approve, deny). Off by default "
        "(docs/enrollment.md)",
    )
    p.add_argument(
        "--enrollment-api-address",
        default=DEFAULT_ADDRESS,
        help="where the Enrollment API listens (TLS with --ssl-certfile, no client "
        "certificate), with --enroll-mode (default %(default)s)",
    )
    p.add_argument(
        "--enroll-ca-certfile",
        type=Path,
        help="the issuing sub-CA enrollment signs with (PEM: its certificate, then any "
        "intermediates above it; never a self-signed root), chaining to the client CA bundle",
    )
    p.add_argument(
        "--enroll-ca-keyfile",
        type=Path,
        help="that sub-CA's private key (PEM, mode 0600)",
    )
    p.add_argument(
        "--enroll-certificate-days",
        type=int,
        default=DEFAULT_CERTIFICATE_DAYS,
        help="how long an enrolled node's certificate is valid, at most (default "
        "%(default)s; 1 to 825); nodes renew before it ends",
    )
    p.add_argument(
        "--enroll-rate",
        type=int,
        default=DEFAULT_PER_MINUTE,
        metavar="N",
        help="Enrollment API calls one address (an IPv6 caller: its whole /64) may make per "
        "minute, and at once (default %(default)s; one budget across links sharing a "
        "PostgreSQL database)",
    )
    p.add_argument(
        "--node-auth",
        choices=[mode.value for mode in NodeAuth],
        help="how nodes on --fleet-api-address authenticate: certificate (default with "
        "--ssl-require-client-auth), key (EC-key signatures; default otherwise), "
        "certificate+key (both), none (development only)",
    )
    p.add_argument(
        "--enable-supernode-auth",
        action="store_true",
        help="EC-key nodes must have a registered public key (flwrmtls supernode register)",
    )
    p.add_argument(
        "--key-fleet-api-address",
        help="a second Fleet listener for EC-key nodes (server TLS only), so one link admits "
        "certificate nodes and EC-key nodes at once",
    )
    p.add_argument(
        "--auth-timestamp-window",
        type=float,
        default=60.0,
        help="seconds an EC-key node's signed timestamp may be behind the link's clock",
    )
    p.add_argument(
        "--auth-timestamp-future-skew",
        type=float,
        default=5.0,
        help="seconds an EC-key node's signed timestamp may be ahead of the link's clock "
        "(a node whose clock runs fast)",
    )
    p.add_argument(
        "--cert-expiry-warning-days",
        type=float,
        default=14.0,
        help="flag and log node certificates that expire within this many days",
    )
    p.add_argument(
        "--crl-expiry-warning-hours",
        type=float,
        default=48.0,
        help="flag and log a CRL in force whose next update is this close (at most a quarter "
        "of its lifetime): past it, every certificate of its issuer is refused",
    )
    p.add_argument(
        "--identity-source",
        choices=[IdentitySource.SUBJECT.value, IdentitySource.SPIFFE.value],
        default=IdentitySource.SUBJECT.value,
        help="what names a node: its certificate's Subject (default) or its SPIFFE URI SAN",
    )
    p.add_argument(
        "--cli-role-source",
        choices=[source.value for source in RoleSource],
        default=RoleSource.ROLE.value,
        help="where a CLI certificate's role (operator or user) is read: the X.520 role "
        "attribute (as `flwrmtls ca issue cli` writes it) or the OU (other CAs)",
    )
    p.add_argument(
        "--no-shared-objects", dest="shared_objects", action="store_false",
        help="send array bytes to ServerApps over ServerAppIo instead of letting them read and "
        "write the link's object directory (the default: same host, same OS user)",
    )  # fmt: skip
    p.add_argument(
        "--max-connections", type=int, default=ServerLimits().max_connections,
        help="connections each listener accepts at once (default %(default)s); more are closed",
    )  # fmt: skip
    p.add_argument(
        "--max-calls-per-address", type=int, default=1000,
        help="calls one peer address may have in progress on the Fleet or Control API "
        "(default %(default)s; raise it for many nodes behind one NAT address)",
    )  # fmt: skip
    p.add_argument(
        "--max-run-storage",
        default=format_size(DEFAULT_MAX_RUN_STORAGE).replace(" ", ""),
        help="bytes of objects (array bytes, its bundle) one run may hold on the link, e.g. "
        "500M, 32G (default %(default)s); over it, the push or message is refused "
        "(RESOURCE_EXHAUSTED); an ended run's objects are deleted",
    )
    p.add_argument(
        "--max-node-pending-storage",
        default=format_size(DEFAULT_MAX_NODE_PENDING_STORAGE).replace(" ", ""),
        help="bytes one node may have uploaded that no reply of it names yet (default "
        f"%(default)s; at least the largest reply); unnamed uploads expire after "
        f"{PENDING_TTL:.0f} s",
    )
    p.add_argument(
        "--max-chain-depth", type=int, help="refuse client chains with more intermediates than this"
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=10.0,
        help="seconds between node heartbeats, 1 to 86400 (what nodes accept); a node is "
        "offline after 2.5 missed",
    )
    p.add_argument(
        "--health-api-address",
        help="serve gRPC health checking (grpc.health.v1.Health: services '' and 'readiness' "
        "SERVING when certificates are loaded, the database answers and the APIs serve; "
        "'liveness' while the process serves) in plaintext here, e.g. 0.0.0.0:9095, for "
        "Kubernetes grpc probes (default: off)",
    )
    p.add_argument(
        "--metrics-address",
        help="serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics, e.g. "
        "0.0.0.0:9100 (default: off, and nothing is counted)",
    )
    p.add_argument(
        DISABLE_FLAG, dest="install_app_dependencies", action="store_false",
        help="never install an app's [project] dependencies here: a run whose ServerApp "
        "needs a package this link's environment lacks is refused at once, naming it "
        "(default: install them with this environment's pip and its configuration, wheels "
        "only, into a virtualenv per set of requirements next to the database, reused)",
    )  # fmt: skip
    p.add_argument(
        "--database",
        default=_default_database(),
        help="the link's state: a SQLite file (default: $FLWRMTLS_HOME/link.db; one link), or "
        "a postgresql://USER@HOST:PORT/DB URL several links share (give the password in "
        "PGPASSFILE, not the URL: a command line is visible to every user of the host)",
    )
    p.add_argument(
        "--objects-dir",
        type=Path,
        default=None,
        help="where the link stores objects (array bytes, bundles); default: beside a SQLite "
        "--database (DATABASE.objects); required with a postgresql:// --database, and then "
        "one directory every link of the database mounts",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, no authentication: local development only",
    )
    return finish_parser(p)
