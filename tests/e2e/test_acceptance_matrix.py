"""Which client certificates a link admits and which it refuses, through real handshakes.

Accepted: certificates from the built-in CA tool and from the openssl CLI, with EC and RSA keys
in every key encoding a node reads (PKCS#8, SEC1, PKCS#1), each presented with its chain. The
node id is the one its Subject gives and stays the same across connections.

Refused, each with the cause the node reports, and each beside a good certificate the same link
admits (its negative control): no certificate, another CA, a self-signed impersonator with a
good node's exact Subject, expired, not yet valid, serverAuth only, revoked, a chain without its
intermediate. BoringSSL refuses expired, not-yet-valid and serverAuth-only certificates at the
handshake, where the node learns nothing, so the node's own check must name the cause: at
start-up, and again when the link closes the handshake (then it is final). Every other closed
handshake is ambiguous (a link that died looks the same): the node names both possibilities and
what its own check found (a chain that does not lead to its CA bundle), and retries.

Also: ``--ssl-client-ca-certfile`` puts a separate CA in charge of clients; good nodes keep
working while bad ones are refused; and a revocation ends a live connection's access within
seconds, without a reconnect.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from flwrmtls.auth.identity import identity_from_certificate
from flwrmtls.errors import HandshakeClosed, InputError, Refused
from flwrmtls.fleet.client import FleetClient, Session
from flwrmtls.link.configure import config_from_args
from flwrmtls.link.main import parser
from flwrmtls.link.server import Link
from flwrmtls.pki import CertificateAuthority, IssuedCertificate, KeyEncoding, KeyType, LeafOptions
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki
from flwrmtls.wire.credentials import check_client_certificate, load_tls_identity

from .openssl_pki import KEY_PEM_HEADERS, KeyAlgorithm, KeyFormat, OpensslCa, OpensslPki

AT_HANDSHAKE = "closed the connection during the handshake: it may have refused this certificate"
NOT_CHAINED = "does not chain to a CA in --root-certificates"
EXPLAINED = "closed the connection during the handshake, and this client's own certificate explains"
NO_CERTIFICATE = "requires a client certificate"
REVOKED = "certificate revoked"

_databases = itertools.count()


# --- a link and nodes ------------------------------------------------------------------------


@contextmanager
def started_link(
    tmp_path: Path, pki: TestPki, *, client_ca: Path | None = None, crl: Path | None = None
) -> Iterator[Link]:
    """A link on 127.0.0.1 with ``pki``'s server certificate, trusting ``client_ca`` (default:
    ``pki``'s root) for clients."""
    server_chain, server_key = pki.paths("server")
    config = mtls_config(
        tmp_path / f"link-{next(_databases)}.db",
        server_chain=server_chain,
        server_key=server_key,
        client_ca=client_ca or pki.trust_bundle_path,
        crl=crl,
    )
    with running_link(config) as link:
        yield link


@contextmanager
def connected(
    link: Link, pki: TestPki, chain: Path | None = None, key: Path | None = None
) -> Iterator[FleetClient]:
    """A node's Fleet client on its own channel, presenting ``chain``/``key`` (or nothing)
    loaded by the node's own loader."""
    client, channel = node_client(
        link, root_certificates=pki.trust_bundle_path, chain=chain, key=key
    )
    try:
        yield client
    finally:
        channel.close()


def admitted(link: Link, pki: TestPki, chain: Path, key: Path) -> Session:
    """Activate and heartbeat once on a fresh connection; raises if refused."""
    with connected(link, pki, chain, key) as client:
        session = client.activate()
        client.heartbeat(session)
        return session


def refusal(link: Link, pki: TestPki, chain: Path | None = None, key: Path | None = None) -> str:
    """The message of the refusal a node presenting ``chain``/``key`` gets from ActivateNode:
    final (Refused) or a closed handshake the node cannot tell from a link restarting."""
    with (
        connected(link, pki, chain, key) as client,
        pytest.raises((Refused, HandshakeClosed)) as refused,
    ):
        client.activate()
    message = str(refused.value)
    assert isinstance(refused.value, HandshakeClosed) == ("restarting" in message), message
    return message


def startup_check(chain: Path, key: Path) -> None:
    """What ``flwrmtls-supernode`` checks before it connects."""
    identity = load_tls_identity(
        chain, key, cert_flag="--ssl-client-certfile", key_flag="--ssl-client-keyfile"
    )
    check_client_certificate(identity, datetime.now(UTC), cert_flag="--ssl-client-certfile")


def leaf_of(chain: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(chain.read_bytes())[0]


def key_algorithm_of(certificate: x509.Certificate) -> str:
    key = certificate.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    return type(key).__name__


def assert_admitted_with_stable_node_id(link: Link, pki: TestPki, chain: Path, key: Path) -> None:
    leaf = leaf_of(chain)
    first = admitted(link, pki, chain, key)
    again = admitted(link, pki, chain, key)
    assert first.identity == leaf.subject.rfc4514_string()
    assert first.node_id == again.node_id == identity_from_certificate(leaf).node_id
    assert first.session_id != again.session_id


# --- certificates a link must refuse ----------------------------------------------------------


def issue_expired(ca: CertificateAuthority) -> IssuedCertificate:
    now = datetime.now(UTC)
    return ca.issue_node(
        "expired",
        organization="Hospital A",
        options=LeafOptions(not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)),
    )


def issue_not_yet_valid(ca: CertificateAuthority) -> IssuedCertificate:
    now = datetime.now(UTC)
    return ca.issue_node(
        "not-yet-valid",
        organization="Hospital A",
        options=LeafOptions(not_before=now + timedelta(days=1), not_after=now + timedelta(days=30)),
    )


def issue_server_auth_only(ca: CertificateAuthority) -> IssuedCertificate:
    return ca.issue_node(
        "server-auth-only",
        organization="Hospital A",
        options=LeafOptions(extended_key_usages=[ExtendedKeyUsageOID.SERVER_AUTH]),
    )


def issue_from_another_ca(directory: Path) -> IssuedCertificate:
    """``CN=node-1, O=Hospital A``, the good node's Subject, from a CA the link does not trust."""
    other = CertificateAuthority.create(directory, name="other")
    return other.issue_node("node-1", organization="Hospital A")


def write_self_signed_impersonator(directory: Path, subject: x509.Name) -> tuple[Path, Path]:
    """A self-signed client certificate carrying ``subject`` exactly; (chain, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    chain_path, key_path = directory / "impersonator.pem", directory / "impersonator.key"
    chain_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return chain_path, key_path


def write_leaf_only(chain: Path, directory: Path) -> Path:
    """The leaf of ``chain`` without the issuing CA after it."""
    leaf_only = directory / f"{chain.stem}-leaf-only.pem"
    leaf_only.write_bytes(leaf_of(chain).public_bytes(serialization.Encoding.PEM))
    return leaf_only


# --- accepted ---------------------------------------------------------------------------------

KEY_CHOICES = [
    (KeyType.EC, KeyEncoding.PKCS8),
    (KeyType.EC, KeyEncoding.SEC1),
    (KeyType.RSA, KeyEncoding.PKCS8),
    (KeyType.RSA, KeyEncoding.PKCS1),
]


@pytest.mark.parametrize(("key_type", "key_encoding"), KEY_CHOICES)
def test_ca_tool_certificate_is_admitted(
    key_type: KeyType, key_encoding: KeyEncoding, tmp_path: Path, fresh_pki: TestPki
) -> None:
    issued = fresh_pki.ca.issue_node(
        f"node-{key_type.value}-{key_encoding.value}",
        organization="Hospital C",
        options=LeafOptions(key_type=key_type, key_encoding=key_encoding),
    )
    assert key_algorithm_of(issued.certificate) == key_type.value
    assert issued.key_path.read_bytes().startswith(KEY_PEM_HEADERS[KeyFormat(key_encoding.value)])
    chain = x509.load_pem_x509_certificates(issued.chain_path.read_bytes())
    assert chain == [issued.certificate, fresh_pki.ca.issuing_certificate]
    startup_check(issued.chain_path, issued.key_path)
    with started_link(tmp_path, fresh_pki) as link:
        assert_admitted_with_stable_node_id(link, fresh_pki, issued.chain_path, issued.key_path)


@pytest.fixture(scope="module")
def openssl_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[OpensslPki, OpensslCa, Path]:
    """An openssl PKI: (the tool, an intermediate CA to issue from, the root certificate)."""
    tool = OpensslPki(tmp_path_factory.mktemp("openssl-pki"))
    root = tool.root_ca("OpenSSL Test Root CA")
    intermediate = tool.intermediate_ca(root, "OpenSSL Test Intermediate CA")
    return tool, intermediate, root.certificate


@pytest.mark.parametrize(
    ("algorithm", "key_format"),
    [
        (KeyAlgorithm.EC, KeyFormat.PKCS8),
        (KeyAlgorithm.EC, KeyFormat.SEC1),
        (KeyAlgorithm.RSA, KeyFormat.PKCS8),
        (KeyAlgorithm.RSA, KeyFormat.PKCS1),
    ],
)
def test_openssl_certificate_is_admitted(
    algorithm: KeyAlgorithm,
    key_format: KeyFormat,
    openssl_ca: tuple[OpensslPki, OpensslCa, Path],
    tmp_path: Path,
    fresh_pki: TestPki,
) -> None:
    tool, intermediate, root = openssl_ca
    name = f"openssl-{algorithm.value}-{key_format.value}"
    leaf = tool.client_certificate(
        intermediate,
        name,
        subject=f"/O=Hospital D/CN={name}",
        algorithm=algorithm,
        key_format=key_format,
    )
    assert leaf.key.read_bytes().startswith(KEY_PEM_HEADERS[key_format])
    chain = x509.load_pem_x509_certificates(leaf.chain.read_bytes())
    assert key_algorithm_of(chain[0]) == algorithm.value
    assert [c.subject.rfc4514_string() for c in chain] == [
        f"CN={name},O=Hospital D",
        "CN=OpenSSL Test Intermediate CA",
    ]
    startup_check(leaf.chain, leaf.key)
    with started_link(tmp_path, fresh_pki, client_ca=root) as link:
        assert_admitted_with_stable_node_id(link, fresh_pki, leaf.chain, leaf.key)
        # Negative control: the same link refuses the leaf without its intermediate.
        assert AT_HANDSHAKE in refusal(
            link, fresh_pki, write_leaf_only(leaf.chain, tmp_path), leaf.key
        )


def test_reissued_certificate_keeps_its_node_id(tmp_path: Path, fresh_pki: TestPki) -> None:
    node_1, node_2 = fresh_pki.paths("node-1"), fresh_pki.paths("node-2")
    original = leaf_of(node_1[0])
    with started_link(tmp_path, fresh_pki) as link:
        before = admitted(link, fresh_pki, *node_1)
        reissued = fresh_pki.ca.issue_node(
            "node-1",
            organization="Hospital A",
            options=LeafOptions(key_type=KeyType.RSA, force=True),
        )
        after = admitted(link, fresh_pki, reissued.chain_path, reissued.key_path)
        other = admitted(link, fresh_pki, *node_2)
    assert reissued.certificate.subject == original.subject
    assert reissued.serial != original.serial_number
    assert after.node_id == before.node_id
    assert other.node_id != before.node_id


# --- refused, each with its negative control --------------------------------------------------


def test_refuses_a_node_without_a_certificate(tmp_path: Path, fresh_pki: TestPki) -> None:
    with started_link(tmp_path, fresh_pki) as link:
        admitted(link, fresh_pki, *fresh_pki.paths("node-1"))
        assert NO_CERTIFICATE in refusal(link, fresh_pki)


def test_refuses_a_certificate_from_another_ca(tmp_path: Path, fresh_pki: TestPki) -> None:
    good_chain, good_key = fresh_pki.paths("node-1")
    foreign = issue_from_another_ca(tmp_path / "other-ca")
    assert foreign.certificate.subject == leaf_of(good_chain).subject
    with started_link(tmp_path, fresh_pki) as link:
        admitted(link, fresh_pki, good_chain, good_key)
        message = refusal(link, fresh_pki, foreign.chain_path, foreign.key_path)
        assert AT_HANDSHAKE in message
        assert NOT_CHAINED in message  # the node's own check names the likely cause


def test_refuses_a_self_signed_impersonator(tmp_path: Path, fresh_pki: TestPki) -> None:
    good_chain, good_key = fresh_pki.paths("node-1")
    good_subject = leaf_of(good_chain).subject
    chain, key = write_self_signed_impersonator(tmp_path / "impersonator", good_subject)
    assert leaf_of(chain).subject.public_bytes() == good_subject.public_bytes()
    startup_check(chain, key)  # dates and usage are fine: only the signer is wrong
    with started_link(tmp_path, fresh_pki) as link:
        admitted(link, fresh_pki, good_chain, good_key)
        assert AT_HANDSHAKE in refusal(link, fresh_pki, chain, key)


@pytest.mark.parametrize(
    ("issue", "startup_cause"),
    [
        pytest.param(issue_expired, "certificate expired on", id="expired"),
        pytest.param(issue_not_yet_valid, "certificate not valid before", id="not-yet-valid"),
        pytest.param(issue_server_auth_only, "does not include clientAuth", id="server-auth-only"),
    ],
)
def test_refuses_at_handshake_and_the_node_names_the_cause(
    issue: Callable[[CertificateAuthority], IssuedCertificate],
    startup_cause: str,
    tmp_path: Path,
    fresh_pki: TestPki,
) -> None:
    bad = issue(fresh_pki.ca)
    good_chain, good_key = fresh_pki.paths("node-1")
    with pytest.raises(InputError, match=startup_cause) as startup:
        startup_check(bad.chain_path, bad.key_path)
    assert str(startup.value).startswith("--ssl-client-certfile: ")
    startup_check(good_chain, good_key)
    with started_link(tmp_path, fresh_pki) as link:
        admitted(link, fresh_pki, good_chain, good_key)
        message = refusal(link, fresh_pki, bad.chain_path, bad.key_path)
    # At the handshake too, the node's own check names the cause: final, not retried.
    assert EXPLAINED in message
    assert startup_cause in message


def test_refuses_a_revoked_certificate(tmp_path: Path, fresh_pki: TestPki) -> None:
    revoked_chain, revoked_key = fresh_pki.paths("node-2")
    serial = fresh_pki.ca.revoke(certificate_file=revoked_chain)
    with started_link(tmp_path, fresh_pki, crl=fresh_pki.crl_path) as link:
        admitted(link, fresh_pki, *fresh_pki.paths("node-1"))
        message = refusal(link, fresh_pki, revoked_chain, revoked_key)
    assert REVOKED in message
    assert f"serial {serial:x}" in message


def test_refuses_a_chain_without_its_intermediate(tmp_path: Path, fresh_pki: TestPki) -> None:
    chain, key = fresh_pki.paths("node-1")
    leaf_only = write_leaf_only(chain, tmp_path)
    with started_link(tmp_path, fresh_pki) as link:
        admitted(link, fresh_pki, chain, key)
        assert AT_HANDSHAKE in refusal(link, fresh_pki, leaf_only, key)


# --- --ssl-client-ca-certfile -----------------------------------------------------------------


def _link_from_flags(tmp_path: Path, pki: TestPki, *extra: str) -> Link:
    server_chain, server_key = pki.paths("server")
    flags = [
        "--fleet-api-address",
        "127.0.0.1:0",
        "--control-api-address",
        "127.0.0.1:0",
        "--serverappio-api-address",
        "127.0.0.1:0",
        "--database",
        str(tmp_path / f"link-{next(_databases)}.db"),
        "--ssl-certfile",
        str(server_chain),
        "--ssl-keyfile",
        str(server_key),
        "--ssl-ca-certfile",
        str(pki.trust_bundle_path),
        "--ssl-require-client-auth",
        *extra,
    ]
    return Link(config_from_args(parser().parse_args(flags)))


def test_client_ca_certfile_puts_a_separate_ca_in_charge_of_clients(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    client_ca = CertificateAuthority.create(tmp_path / "client-ca", name="clients")
    client_node = client_ca.issue_node("node-c", organization="Hospital C")
    server_ca_node = fresh_pki.paths("node-1")
    separate = _link_from_flags(
        tmp_path, fresh_pki, "--ssl-client-ca-certfile", str(client_ca.trust_bundle_path)
    )
    with running_link(separate.config) as link:
        admitted(link, fresh_pki, client_node.chain_path, client_node.key_path)
        message = refusal(link, fresh_pki, *server_ca_node)
        # The node's certificate chains to its own CA bundle: nothing it can find locally.
        assert AT_HANDSHAKE in message
        assert "nothing wrong found here" in message
    # Control: without the flag, the same flags trust the server's CA for clients instead.
    shared = _link_from_flags(tmp_path, fresh_pki)
    with running_link(shared.config) as link:
        admitted(link, fresh_pki, *server_ca_node)
        assert AT_HANDSHAKE in refusal(
            link, fresh_pki, client_node.chain_path, client_node.key_path
        )


# --- refusals do not disturb good nodes; revocation reaches live connections ------------------


def test_good_node_keeps_working_while_bad_nodes_are_refused(
    tmp_path: Path, fresh_pki: TestPki
) -> None:
    ca = fresh_pki.ca
    revoked = ca.issue_node("revoked", organization="Hospital A")
    ca.revoke(certificate_file=revoked.chain_path)
    expired, server_only = issue_expired(ca), issue_server_auth_only(ca)
    foreign = issue_from_another_ca(tmp_path / "other-ca")
    good_chain, good_key = fresh_pki.paths("node-1")
    impersonator = write_self_signed_impersonator(tmp_path / "imp", leaf_of(good_chain).subject)
    bad_attempts: list[tuple[tuple[Path, Path] | None, str]] = [
        (None, NO_CERTIFICATE),
        ((foreign.chain_path, foreign.key_path), AT_HANDSHAKE),
        (impersonator, AT_HANDSHAKE),
        ((expired.chain_path, expired.key_path), "certificate expired on"),
        ((server_only.chain_path, server_only.key_path), "does not include clientAuth"),
        ((write_leaf_only(good_chain, tmp_path), good_key), AT_HANDSHAKE),
        ((revoked.chain_path, revoked.key_path), REVOKED),
    ]
    with (
        started_link(tmp_path, fresh_pki, crl=fresh_pki.crl_path) as link,
        connected(link, fresh_pki, good_chain, good_key) as good,
    ):
        session = good.activate()
        for presented, cause in bad_attempts * 2:
            assert cause in refusal(link, fresh_pki, *(presented or ()))
        good.heartbeat(session)
        admitted(link, fresh_pki, *fresh_pki.paths("node-2"))
        good.heartbeat(session)


def test_revocation_reaches_a_live_connection(tmp_path: Path, fresh_pki: TestPki) -> None:
    revoked_chain, revoked_key = fresh_pki.paths("node-2")
    with (
        started_link(tmp_path, fresh_pki, crl=fresh_pki.crl_path) as link,
        connected(link, fresh_pki, *fresh_pki.paths("node-1")) as kept,
        connected(link, fresh_pki, revoked_chain, revoked_key) as revoked,
    ):
        kept_session, revoked_session = kept.activate(), revoked.activate()
        revoked.heartbeat(revoked_session)
        fresh_pki.ca.revoke(certificate_file=revoked_chain)
        deadline = time.monotonic() + 10.0  # the link re-reads CRL files about every second
        message = ""
        while not message and time.monotonic() < deadline:
            try:
                revoked.heartbeat(revoked_session)
            except Refused as error:
                message = str(error)
            else:
                time.sleep(0.1)
        assert REVOKED in message, "the revoked node's next heartbeat was not refused in 10 s"
        kept.heartbeat(kept_session)
        assert REVOKED in refusal(link, fresh_pki, revoked_chain, revoked_key)
