"""The built-in CA tool: a root and an issuing CA in a directory, and the server, node and CLI
certificates, CRL and key files a deployment needs.

Submodules, each with the rules it keeps in its docstring:

* :mod:`~flwrmtls.pki.ca`: :class:`CertificateAuthority` (create, load, issue, revoke,
  CRL), :class:`LeafOptions` (how a leaf is issued)
* :mod:`~flwrmtls.pki.certprofiles`: the extensions each kind of certificate carries (one table)
* :mod:`~flwrmtls.pki.certsigning`: Subjects, SANs, validity windows and signing
* :mod:`~flwrmtls.pki.privatekeys`: key types and key file encodings
* :mod:`~flwrmtls.pki.crl`: the revocation record and the CRL built from it
* :mod:`~flwrmtls.pki.files`: the directory layout; atomic, 0600-for-keys file writing
* :mod:`~flwrmtls.pki.describe`: what a certificate says and the identity the link gives it
"""

from flwrmtls.pki.ca import CRL_VALIDITY_DAYS, CertificateAuthority, LeafOptions
from flwrmtls.pki.certprofiles import PROFILES, CertificateProfile, ProfileName
from flwrmtls.pki.certsigning import CLI_ROLES, CLOCK_SKEW_ALLOWANCE, IssuedCertificate
from flwrmtls.pki.crl import RevocationReason
from flwrmtls.pki.describe import CertificateDescription, describe_certificate
from flwrmtls.pki.files import CaFiles, read_certificate_file, read_private_key_file
from flwrmtls.pki.privatekeys import KeyEncoding, KeyType

__all__ = [
    "CLI_ROLES",
    "CLOCK_SKEW_ALLOWANCE",
    "CRL_VALIDITY_DAYS",
    "PROFILES",
    "CaFiles",
    "CertificateAuthority",
    "CertificateDescription",
    "CertificateProfile",
    "IssuedCertificate",
    "KeyEncoding",
    "KeyType",
    "LeafOptions",
    "ProfileName",
    "RevocationReason",
    "describe_certificate",
    "read_certificate_file",
    "read_private_key_file",
]
