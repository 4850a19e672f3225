"""x509-limbo's client-certificate cases, each through a real handshake with a running link.

For every case of ``tests/conformance/data/x509-limbo-client.json`` (see its README): a link on
127.0.0.1 that trusts the case's ``trusted_certs`` for clients, with the case's
``max_chain_depth``, and a server certificate from a separate test PKI; a node presents
``peer_certificate`` + ``untrusted_intermediates`` with ``peer_certificate_key``. The node must be
admitted (ActivateNode succeeds) exactly when the case expects SUCCESS.

Two gates decide: BoringSSL at the TLS handshake, then the link's own check (cryptography's client
verifier, then the identity rules). Where the pair still disagrees with x509-limbo, the case is
in :data:`KNOWN_DIVERGENCES` with the reason, and the test asserts that it still diverges in the
recorded way: a fix, or a different failure, fails here until the table (and
docs/conformance.md) is updated.
"""

from __future__ import annotations

import enum
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from flwrmtls.errors import HandshakeClosed, Refused
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki, make_test_pki

LIMBO_FILE = Path(__file__).resolve().parent / "data" / "x509-limbo-client.json"

# rfc5280::serial::zero makes the link's cryptography warn that a zero serial will not parse in
# a future release; that case is a recorded divergence, the warning is expected.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number which wasn't positive"
    ":cryptography.utils.CryptographyDeprecationWarning"
)


class Outcome(enum.Enum):
    """What happened to a node presenting a case's certificate."""

    ADMITTED = "admitted"
    REFUSED_AT_HANDSHAKE = "refused at the TLS handshake (BoringSSL in the link)"
    REFUSED_BY_LINK = "refused after the handshake by the link's own check"
    NOT_PRESENTABLE = "not presented: the node's TLS library refuses to use the certificate"


@dataclass(frozen=True, slots=True)
class LimboCase:
    id: str
    expected_success: bool
    trusted_certs: tuple[str, ...]
    untrusted_intermediates: tuple[str, ...]
    peer_certificate: str
    peer_certificate_key: str
    max_chain_depth: int | None


def _load_cases() -> tuple[dict[str, LimboCase], str | None]:
    """The cases by id, or an error message saying why there are none."""
    try:
        document = json.loads(LIMBO_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, (
            f"x509-limbo conformance data missing: {LIMBO_FILE} does not exist; restore it "
            "from git (git checkout -- tests/conformance/data)"
        )
    except (OSError, ValueError) as error:
        return {}, f"x509-limbo conformance data unreadable: {LIMBO_FILE}: {error}"
    cases: dict[str, LimboCase] = {}
    for raw in document["cases"]:
        cases[raw["id"]] = LimboCase(
            id=raw["id"],
            expected_success=raw["expected_result"] == "SUCCESS",
            trusted_certs=tuple(raw["trusted_certs"]),
            untrusted_intermediates=tuple(raw["untrusted_intermediates"]),
            peer_certificate=raw["peer_certificate"],
            peer_certificate_key=raw["peer_certificate_key"],
            max_chain_depth=raw["max_chain_depth"],
        )
    return cases, None


CASES, LOAD_ERROR = _load_cases()
CASE_IDS = list(CASES) or ["x509-limbo-data-missing"]

_ADMITTED_BY_BOTH = (
    "BoringSSL and cryptography's client verifier both accept it, so the link admits it."
)
_NOT_PRESENTABLE = (
    "Its keyUsage is keyCertSign only and its key is EC, so it cannot sign a TLS handshake: "
    "BoringSSL in the node refuses to load an EC certificate without digitalSignature "
    "(SSL_R_UNKNOWN_CERTIFICATE_TYPE; grpc reports 'Failed to create security handshaker'). "
    "Presented anyway (openssl s_client), BoringSSL in the link refuses it too (TLS 1.3: "
    "KEY_USAGE_BIT_INCORRECT; TLS 1.2: 'unsupported certificate purpose'), and cryptography's "
    "client verifier refuses a CA certificate as the leaf ('basicConstraints.cA must not be "
    "asserted in an EE certificate'). x509-limbo tests path validation only, where this is "
    "valid; TLS client authentication needs a signing key."
)

KNOWN_DIVERGENCES: dict[str, str] = {
    "cve::cve-2024-0567": (
        "Path validation agrees: BoringSSL and cryptography both resolve the cross-signed cycle "
        "to leaf -> A1 -> Root A. But the leaf's Subject is empty (it names itself only by a DNS "
        "SAN) and the link names a node by its Subject, so the link's identity rule refuses it "
        "('certificate Subject is empty'). A choice of the link, not a validation gap."
    ),
    "pathlen::validation-ignores-pathlen-in-leaf": (
        "The leaf is a CA certificate (CA:TRUE, pathlen:0) under a pathlen:0 intermediate; "
        "RFC 5280 does not count the leaf against pathlen. " + _NOT_PRESENTABLE
    ),
    "pathlen::self-issued-certs-pathlen": (
        "RFC 5280 does not count self-issued intermediates against pathLenConstraint, so "
        "root -> ICA'(pathlen:1) -> ICA'(self-issued) -> ICA''(pathlen:0) -> EE is valid. "
        "BoringSSL accepts it at the handshake; cryptography's path builder deliberately counts "
        "every intermediate (its source names this limbo case as one it fails on purpose), so "
        "the link's own check refuses it ('certificate not signed by a trusted CA')."
    ),
    "pathlen::max-chain-depth-1-self-issued": (
        "root -> ICA' -> ICA'(self-issued) -> leaf has one logical intermediate, within "
        "max_chain_depth 1 per RFC 5280. BoringSSL, as grpc configures it, has no such limit "
        "and accepts it; cryptography counts the self-issued certificate too (it verifies "
        "with depth 2, not 1), so the link's own check refuses it."
    ),
    "rfc5280::aki::intermediate-missing-aki": (
        "RFC 5280 requires an authorityKeyIdentifier in every certificate a conforming CA "
        "issues; the intermediate has none. BoringSSL never requires AKI, and cryptography's "
        "CA profile makes AKI optional (it requires it only in end-entity certificates). "
        + _ADMITTED_BY_BOTH
    ),
    "rfc5280::aki::cross-signed-root-missing-aki": (
        "The trust anchor is cross-signed (issuer differs from subject) and has no AKI "
        "(limbo feature pedantic-rfc5280). Neither BoringSSL nor cryptography requires AKI in "
        "a CA certificate. " + _ADMITTED_BY_BOTH
    ),
    "rfc5280::nc::permitted-dns-match-noncritical": (
        "The names satisfy the root's nameConstraints, but the extension is not critical, "
        "which RFC 5280 requires (limbo feature rfc5280-incompatible-with-webpki). The CA/B "
        "Forum allows a non-critical nameConstraints; cryptography follows it (criticality "
        "agnostic) and BoringSSL does not check the criticality. " + _ADMITTED_BY_BOTH
    ),
    "rfc5280::nc::permitted-ipv4-match": (
        "The root permits iPAddress 192.0.2.0/24 and the leaf's IP SAN is inside it. BoringSSL "
        "does not implement iPAddress name constraints: an IP constraint applied to an IP SAN "
        "fails with X509_V_ERR_UNSUPPORTED_CONSTRAINT_TYPE ('unsupported name constraint "
        "type'), so the handshake fails although cryptography would accept. Fails closed."
    ),
    "rfc5280::nc::permitted-ipv6-match": (
        "The root permits iPAddress ::1/128 and the leaf's IP SAN is ::1. As for the IPv4 case, "
        "BoringSSL has no iPAddress name-constraint matching ('unsupported name constraint "
        "type') and refuses at the handshake; cryptography would accept. Fails closed."
    ),
    "rfc5280::nc::permitted-dn-match": (
        "The root's critical nameConstraints permits directoryName CN=foo and the leaf's "
        "directoryName SAN matches. BoringSSL matches directoryName constraints and accepts "
        "at the handshake; cryptography does not implement directoryName matching and refuses "
        "any permitted directoryName constraint ('unsupported directoryName constraint'), so "
        "the link's own check refuses. Fails closed."
    ),
    "rfc5280::nc::nc-forbids-alternate-chain-ica": (
        "The leaf's issuer name matches two intermediates: ICA_B', whose issuer is named like "
        "the trusted root but signed with another, untrusted key, and ICA_B'', issued by ICA_A "
        "whose name constraints permit the leaf. The valid path is EE -> ICA_B'' -> ICA_A -> "
        "root. BoringSSL takes ICA_B', finds no trusted issuer for it ('unable to get local "
        "issuer certificate') and does not backtrack, so the handshake fails; cryptography's "
        "path builder tries the next candidate and would accept. Fails closed."
    ),
    "rfc5280::nc::nc-forbids-same-chain-ica": (
        "Two trusted roots share one name. EE -> ICA_B' -> ICA_A -> root A violates ICA_A's "
        "excluded subtree (ICA_B' carries SAN forbidden.example.com); EE -> ICA_B'' -> root B "
        "is valid. BoringSSL builds the first path, fails it ('excluded subtree violation') "
        "and does not try the other, so the handshake fails; cryptography's path builder "
        "would find the valid path. Fails closed."
    ),
    "rfc5280::pc::ica-noncritical-pc": (
        "RFC 5280 requires policyConstraints to be critical; the intermediate's is not. "
        "BoringSSL does not enforce that criticality, and cryptography's policy does not check "
        "policyConstraints at all (unknown non-critical extensions are ignored). "
        + _ADMITTED_BY_BOTH
    ),
    "rfc5280::serial::zero": (
        "The leaf's serial number is 0, which RFC 5280 forbids (limbo feature "
        "pedantic-serial-number). BoringSSL accepts it, and cryptography tolerates a zero "
        "serial on purpose (roots in common trust stores have one), only warning that a future "
        "release will not parse it. " + _ADMITTED_BY_BOTH
    ),
    "rfc5280::ski::root-missing-ski": (
        "RFC 5280 requires a subjectKeyIdentifier in CA certificates; the root has none. "
        "BoringSSL never requires SKI, and cryptography makes it optional in CA certificates "
        "on purpose (many older CAs lack it). " + _ADMITTED_BY_BOTH
    ),
    "rfc5280::ski::intermediate-missing-ski": (
        "RFC 5280 requires a subjectKeyIdentifier in CA certificates; the intermediate has "
        "none. BoringSSL never requires SKI, and cryptography makes it optional in CA "
        "certificates on purpose. " + _ADMITTED_BY_BOTH
    ),
    "rfc5280::ca-as-leaf": (
        "The intermediate CA itself is the leaf; RFC 5280 allows a CA certificate to end a "
        "path. " + _NOT_PRESENTABLE
    ),
}

_DIVERGENT_OUTCOMES: dict[str, tuple[Outcome, str]] = {
    # case id: (what happens, a fragment of the refusal the reason above relies on)
    "cve::cve-2024-0567": (Outcome.REFUSED_BY_LINK, "certificate Subject is empty"),
    "pathlen::validation-ignores-pathlen-in-leaf": (
        Outcome.NOT_PRESENTABLE,
        "could not set up TLS with this client's own certificate",
    ),
    "pathlen::self-issued-certs-pathlen": (
        Outcome.REFUSED_BY_LINK,
        "certificate not signed by a trusted CA",
    ),
    "pathlen::max-chain-depth-1-self-issued": (
        Outcome.REFUSED_BY_LINK,
        "certificate not signed by a trusted CA",
    ),
    "rfc5280::aki::intermediate-missing-aki": (Outcome.ADMITTED, ""),
    "rfc5280::aki::cross-signed-root-missing-aki": (Outcome.ADMITTED, ""),
    "rfc5280::nc::permitted-dns-match-noncritical": (Outcome.ADMITTED, ""),
    "rfc5280::nc::permitted-ipv4-match": (Outcome.REFUSED_AT_HANDSHAKE, ""),
    "rfc5280::nc::permitted-ipv6-match": (Outcome.REFUSED_AT_HANDSHAKE, ""),
    "rfc5280::nc::permitted-dn-match": (
        Outcome.REFUSED_BY_LINK,
        "unsupported directoryName constraint",
    ),
    "rfc5280::nc::nc-forbids-alternate-chain-ica": (Outcome.REFUSED_AT_HANDSHAKE, ""),
    "rfc5280::nc::nc-forbids-same-chain-ica": (Outcome.REFUSED_AT_HANDSHAKE, ""),
    "rfc5280::pc::ica-noncritical-pc": (Outcome.ADMITTED, ""),
    "rfc5280::serial::zero": (Outcome.ADMITTED, ""),
    "rfc5280::ski::root-missing-ski": (Outcome.ADMITTED, ""),
    "rfc5280::ski::intermediate-missing-ski": (Outcome.ADMITTED, ""),
    "rfc5280::ca-as-leaf": (
        Outcome.NOT_PRESENTABLE,
        "could not set up TLS with this client's own certificate",
    ),
}

REFUSED_BEFORE_THE_LINK: dict[str, str] = {
    # Cases whose expected FAILURE holds only because the node cannot present the certificate.
    "rfc5280::ca-as-leaf-wrong-san": (
        "x509-limbo expects a failure because the SAN does not match an expected peer name, "
        "which does not apply to client certificates. The node is refused all the same: "
        + _NOT_PRESENTABLE
    ),
}


@pytest.fixture(scope="session")
def limbo_server_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """The link's own certificate, from a CA unrelated to every case."""
    return make_test_pki(tmp_path_factory.mktemp("limbo-server-pki"))


def _case(case_id: str) -> LimboCase:
    if LOAD_ERROR is not None:
        pytest.fail(LOAD_ERROR, pytrace=False)
    return CASES[case_id]


def _classify_refusal(message: str) -> Outcome:
    if "could not set up TLS with this client's own certificate" in message:
        return Outcome.NOT_PRESENTABLE
    if "closed the connection during the handshake: it may have refused" in message:
        return Outcome.REFUSED_AT_HANDSHAKE
    if "refused this client: " in message:
        return Outcome.REFUSED_BY_LINK
    raise AssertionError(f"a refusal that is not about the certificate: {message}")


def present(case: LimboCase, server_pki: TestPki, directory: Path) -> tuple[Outcome, str]:
    """Run a link configured for ``case`` and have a node activate with its certificate.

    Returns the outcome and the admitted identity or the refusal message.
    """
    client_ca = directory / "client-ca.pem"
    client_ca.write_text("".join(case.trusted_certs), encoding="utf-8")
    server_chain, server_key = server_pki.paths("server")
    config = mtls_config(
        directory / "link.db",
        server_chain=server_chain,
        server_key=server_key,
        client_ca=client_ca,
        max_chain_depth=case.max_chain_depth,
    )
    chain_pem = (case.peer_certificate + "".join(case.untrusted_intermediates)).encode()
    with running_link(config) as link:
        client, channel = node_client(
            link,
            root_certificates=server_pki.trust_bundle_path,
            chain_pem=chain_pem,
            key_pem=case.peer_certificate_key.encode(),
        )
        try:
            session = client.activate()
        except (Refused, HandshakeClosed) as error:
            return _classify_refusal(str(error)), str(error)
        finally:
            channel.close()
    return Outcome.ADMITTED, session.identity


def _subject_of(certificate_pem: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
    return certificate.subject.rfc4514_string()


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_limbo_case(case_id: str, limbo_server_pki: TestPki, tmp_path: Path) -> None:
    case = _case(case_id)
    outcome, detail = present(case, limbo_server_pki, tmp_path)
    admitted = outcome is Outcome.ADMITTED
    expected = "SUCCESS" if case.expected_success else "FAILURE"
    if case_id in KNOWN_DIVERGENCES:
        assert admitted != case.expected_success, (
            f"{case_id} no longer diverges from x509-limbo ({outcome.value}): remove it from "
            "KNOWN_DIVERGENCES and from docs/conformance.md"
        )
        recorded, fragment = _DIVERGENT_OUTCOMES[case_id]
        changed = (
            f"{case_id} diverges differently than recorded: {outcome.value}: {detail}; "
            "re-investigate and rewrite its reason"
        )
        assert outcome is recorded, changed
        assert fragment in detail, changed
    else:
        assert admitted == case.expected_success, (
            f"{case_id}: x509-limbo expects {expected}, the link gave: {outcome.value}: {detail}"
        )
        presented = outcome is not Outcome.NOT_PRESENTABLE
        assert presented != (case_id in REFUSED_BEFORE_THE_LINK), (
            f"{case_id}: {outcome.value}: {detail}; update REFUSED_BEFORE_THE_LINK"
        )
    if admitted:
        assert detail == _subject_of(case.peer_certificate)


def test_limbo_data_is_the_client_case_set() -> None:
    if LOAD_ERROR is not None:
        pytest.fail(LOAD_ERROR, pytrace=False)
    assert len(CASES) == 106
    assert sum(case.expected_success for case in CASES.values()) == 33


def test_divergence_tables_name_real_cases() -> None:
    if LOAD_ERROR is not None:
        pytest.fail(LOAD_ERROR, pytrace=False)
    assert set(KNOWN_DIVERGENCES) == set(_DIVERGENT_OUTCOMES)
    assert set(KNOWN_DIVERGENCES) <= set(CASES)
    assert all(reason.strip() for reason in KNOWN_DIVERGENCES.values())
    for case_id in REFUSED_BEFORE_THE_LINK:
        assert not CASES[case_id].expected_success
        assert case_id not in KNOWN_DIVERGENCES
    for case_id, (outcome, _) in _DIVERGENT_OUTCOMES.items():
        # A divergence is either a refusal of a valid chain or an admission of an invalid one.
        assert (outcome is Outcome.ADMITTED) != CASES[case_id].expected_success
