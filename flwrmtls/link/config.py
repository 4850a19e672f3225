"""What a link is configured with (:class:`LinkConfig`, made from its flags by
:func:`flwrmtls.link.configure.config_from_args`), and the node authenticators it composes from it.

The values only: checking them against each other and the files they name is the flags'
job (:mod:`flwrmtls.link.flags`, :mod:`flwrmtls.link.configure`); wiring them into listeners is
:class:`flwrmtls.link.server.Link`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from flwrmtls.auth.callsigning import audience_of
from flwrmtls.auth.crllapse import DEFAULT_LAPSE_WARNING
from flwrmtls.auth.eckey import Audiences, EcKeyAuthenticator, KeyStatus, Registration
from flwrmtls.auth.identity import IdentitySource, RoleSource
from flwrmtls.auth.mtls import MtlsAuthenticator
from flwrmtls.auth.nodeauth import NodeAuth
from flwrmtls.auth.ocsppolicy import OcspPolicy
from flwrmtls.auth.ocspstore import OcspStore
from flwrmtls.auth.ratelimit import FailureBudget
from flwrmtls.auth.replay import ReplayLimits
from flwrmtls.auth.revocation import RevocationStore
from flwrmtls.control.servicer import KeyBinding
from flwrmtls.enroll.config import EnrollmentConfig
from flwrmtls.home import flwrmtls_home
from flwrmtls.link.reload import TlsFiles
from flwrmtls.runs.linkobjects import StorageLimits
from flwrmtls.state.keytable import KeyRegistration
from flwrmtls.state.linkstate import LinkState
from flwrmtls.wire.credentials import TlsIdentity
from flwrmtls.wire.listen import ServerLimits

__all__ = ["LinkConfig", "build_certificate_authenticator", "build_key_authenticator"]


@dataclass
class LinkConfig:
    database: Path | str
    """A SQLite file, or a postgresql:// URL several links share."""
    objects_dir: Path | None = None
    """Where objects are stored; None: beside a SQLite database (``<database>.objects``)."""
    fleet_address: str = "0.0.0.0:9092"
    control_address: str = "0.0.0.0:9093"
    tls: TlsIdentity | None = None
    """Server certificate chain and key; None only with ``insecure``."""
    client_ca_pem: bytes | None = None
    client_ca_certificates: list[x509.Certificate] = field(default_factory=list)
    require_client_auth: bool = False
    crl_path: Path | None = None
    ocsp: OcspPolicy = field(default_factory=OcspPolicy)
    """Whether and how client certificates are checked with OCSP responders (``--ocsp``)."""
    identity_source: IdentitySource = IdentitySource.SUBJECT
    max_chain_depth: int | None = None
    heartbeat_interval: float = 10.0
    insecure: bool = False
    serverappio_address: str = "127.0.0.1:9091"
    node_auth: NodeAuth = NodeAuth.CERTIFICATE
    """How the main Fleet listener authenticates nodes."""
    key_fleet_address: str | None = None
    """A second Fleet listener for EC-key nodes (server TLS only), for mixed fleets."""
    share_objects: bool = True
    """ServerApps read and write the link's object directory instead of streaming objects."""
    enable_supernode_auth: bool = False
    """EC-key nodes must have a registered key (CLI-managed mode)."""
    signature_window: float = 60.0
    """Seconds an EC-key signature's timestamp may be behind the link's clock."""
    signature_future_skew: float = 5.0
    """Seconds an EC-key signature's timestamp may be ahead of the link's clock."""
    previous_server_key_grace: float = 300.0
    """Seconds EC-key signatures made for the previous server key are still accepted after the
    server certificate was rotated to a new key (nodes re-learn the key when refused)."""
    replay_limits: ReplayLimits = field(default_factory=ReplayLimits)
    """Bounds of the EC-key replay memory."""
    auth_failures: FailureBudget = field(default_factory=FailureBudget)
    """Failed authentications a peer address may cause on each Fleet and Control listener."""
    server_limits: ServerLimits = field(default_factory=ServerLimits)
    """Connections, streams, keepalive and sizes grpc enforces on every listener."""
    calls_per_address: int = 1000
    """Authorized calls one peer address may have in progress on a Fleet or Control listener."""
    cert_expiry_warning_days: float = 14.0
    """Certificates expiring within this many days are flagged and logged."""
    crl_expiry_warning: timedelta = DEFAULT_LAPSE_WARNING
    """CRLs in force lapsing within this (at most a quarter of their lifetime) are flagged
    and logged (:mod:`flwrmtls.auth.crllapse`)."""
    role_source: RoleSource = RoleSource.ROLE
    """Where a CLI certificate's role comes from: the X.520 role attribute, or the OU."""
    tls_files: TlsFiles | None = None
    """Where ``tls`` and the client CA came from: watched and re-read when they change."""
    cli_ca_pem: bytes | None = None
    cli_ca_certificates: list[x509.Certificate] = field(default_factory=list)
    """What verifies CLI certificates on the Control API (``--ssl-cli-ca-certfile``); with
    ``require_client_auth`` and none given, the client CA bundle. Empty: Control is anonymous,
    which :func:`flwrmtls.link.configure.config_from_args` allows only on loopback or with
    ``--unsafe-anonymous-control-api``."""
    anonymous_control: bool = False
    """``--unsafe-anonymous-control-api``: Control without CLI certificates off loopback."""

    enroll: EnrollmentConfig | None = None
    """``--enroll-mode``: the Enrollment API and the sub-CA it signs with (None: not served)."""

    storage: StorageLimits = field(default_factory=StorageLimits)
    """What one run, and one node's pending uploads, may store (``--max-run-storage``,
    ``--max-node-pending-storage``)."""
    health_address: str | None = None
    """``--health-api-address``: the plaintext gRPC health listener (None: none)."""
    metrics_address: str | None = None
    """``--metrics-address``: Prometheus metrics over HTTP (None: off, nothing counted)."""
    install_app_dependencies: bool = True
    """Install what a run's ServerApp needs (``--disable-runtime-dependency-installation``:
    never)."""

    def __post_init__(self) -> None:
        if self.require_client_auth and not self.cli_ca_certificates:
            self.cli_ca_pem = self.client_ca_pem
            self.cli_ca_certificates = list(self.client_ca_certificates)

    @property
    def control_authenticates(self) -> bool:
        """Whether the Control API requires a CLI certificate at the handshake."""
        return bool(self.cli_ca_certificates)

    @property
    def uses_keys(self) -> bool:
        return self.key_fleet_address is not None or self.node_auth in (
            NodeAuth.KEY, NodeAuth.CERTIFICATE_AND_KEY,
        )  # fmt: skip

    @property
    def objects_directory(self) -> Path:
        if self.objects_dir is not None:
            return self.objects_dir
        return Path(f"{self.database}.objects")

    @property
    def app_envs_directory(self) -> Path:
        """Where the runs' app environments are built: beside a SQLite database; with a
        shared (PostgreSQL) database, on this link's own host (each link builds its own)."""
        if "://" in str(self.database):
            return flwrmtls_home() / "link.app-envs"
        return Path(f"{self.database}.app-envs")

    @property
    def key_binding(self) -> KeyBinding:
        """Whether a registered EC key names the certificate node it belongs to."""
        if self.node_auth is not NodeAuth.CERTIFICATE_AND_KEY:
            return KeyBinding.REFUSED
        return KeyBinding.OPTIONAL if self.key_fleet_address is not None else KeyBinding.REQUIRED


def build_certificate_authenticator(
    config: LinkConfig,
    revocations: RevocationStore | None,
    anchors: Sequence[x509.Certificate] | None = None,
    ocsp: OcspStore | None = None,
) -> MtlsAuthenticator:
    return MtlsAuthenticator(
        list(anchors if anchors is not None else config.client_ca_certificates),
        revocations=revocations,
        ocsp=ocsp,
        identity_source=config.identity_source,
        max_chain_depth=config.max_chain_depth,
        role_source=config.role_source,
    )


_KEY_STATUS = {
    KeyRegistration.REGISTERED: KeyStatus.REGISTERED,
    KeyRegistration.UNREGISTERED: KeyStatus.UNREGISTERED,
}


def build_key_authenticator(config: LinkConfig, state: LinkState) -> EcKeyAuthenticator:
    registry = None
    if config.enable_supernode_auth:

        def registry(public_key: bytes) -> Registration:
            record = state.keys.get(public_key)
            if record is None:
                return Registration(KeyStatus.UNKNOWN)
            return Registration(_KEY_STATUS[record.status], record.changed_at)

    audience = audience_of(config.tls.leaf) if config.tls is not None else b"\x00" * 32
    return EcKeyAuthenticator(
        registry=registry,
        audiences=Audiences(audience),
        window=timedelta(seconds=config.signature_window),
        future_skew=timedelta(seconds=config.signature_future_skew),
        replay=config.replay_limits,
        shared_nonces=state.nonces.claim if state.shared else None,
    )
