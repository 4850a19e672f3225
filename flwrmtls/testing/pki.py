"""A complete test PKI in a directory, made with the built-in CA in one call.

``make_test_pki(tmp_path)`` writes a CA and these certificates (chain ``<name>.pem`` and key
``<name>.key`` each):

========================  =========================================================
``server``                the link: DNS ``localhost``, IP ``127.0.0.1``, serverAuth
``node-1``                a node: ``CN=node-1, O=Hospital A``, clientAuth
``node-2``                a node: ``CN=node-2, O=Hospital B``, clientAuth
``cli-operator``          a CLI user: ``CN=cli-operator, role=operator``, clientAuth
========================  =========================================================

Use ``pki.ca`` to issue more (expired, wrong EKU, other key encodings) or to revoke.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwrmtls.clock import Clock
from flwrmtls.pki import CertificateAuthority, KeyType

__all__ = ["TEST_PKI_NAMES", "TestPki", "make_test_pki"]

TEST_PKI_NAMES = ("server", "node-1", "node-2", "cli-operator")


@dataclass(frozen=True)
class TestPki:
    """A CA directory with the certificates of :data:`TEST_PKI_NAMES`."""

    __test__ = False  # not a pytest test class, despite the name

    ca: CertificateAuthority
    directory: Path

    @property
    def trust_bundle_path(self) -> Path:
        """``ca.crt``: what links and nodes trust."""
        return self.ca.trust_bundle_path

    @property
    def crl_path(self) -> Path:
        return self.ca.crl_path

    def paths(self, name: str) -> tuple[Path, Path]:
        """``(chain file, key file)`` of the certificate called ``name``."""
        chain_path, key_path = self.ca.files.leaf_paths(name)
        if not chain_path.exists():
            raise FileNotFoundError(f"{chain_path}: no certificate {name!r} in this test PKI")
        return chain_path, key_path


def make_test_pki(
    directory: Path, *, key_type: KeyType = KeyType.EC, clock: Clock | None = None
) -> TestPki:
    """Create a CA in ``directory`` and issue the server, node and CLI certificates."""
    authority = CertificateAuthority.create(
        directory, name="flwrmtls test", key_type=key_type, clock=clock
    )
    authority.issue_server("server", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
    authority.issue_node("node-1", organization="Hospital A")
    authority.issue_node("node-2", organization="Hospital B")
    authority.issue_cli("cli-operator", role="operator")
    return TestPki(ca=authority, directory=Path(directory))
