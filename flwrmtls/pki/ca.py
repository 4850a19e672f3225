"""The built-in CA: a root, an issuing CA under it, and the leaves it signs.

Rules kept here (extensions are in :mod:`~flwrmtls.pki.certprofiles`, Subjects, SANs and validity
windows in :mod:`~flwrmtls.pki.certsigning`, file writing in :mod:`~flwrmtls.pki.files`):

* ``create`` makes a self-signed root ``CN=<name> Root CA`` and an issuing CA ``CN=<name>
  Issuing CA`` signed by it, both valid for ``days``; the root key is written, and read again
  only by ``cross_sign`` (a CA rollover). ``load`` reads the root, the issuing CA and its key,
  and checks that they belong together.
* The issuing CA signs every leaf and CRL. A leaf's key type defaults to the CA's; its key file
  is PKCS#8 unless asked otherwise; its chain file ``<name>.pem`` is the leaf then the issuing
  CA. Every output is checked (``force``) before anything is written; the key goes first.
  What a leaf's issuing may choose beyond its Subject and SANs (validity, key type and
  encoding, where it goes, overwriting) is one record, :class:`LeafOptions`.
* ``issue`` of a node or CLI certificate reports the unrevoked certificates of this CA whose
  identity (Subject or SPIFFE ID) the new one takes (:mod:`~flwrmtls.pki.holders`), without
  refusing: rotation is exactly that. The command line prints each as a warning.
* ``revoke`` and ``crl`` hold the CA's lock (``ca/.lock``) while they read and rewrite the
  revocation record, so concurrent commands never lose a revocation. The CRL is staged before
  the record is saved and moved into place after it; if the move fails the previous record is
  saved back, so the record never lists a revocation that ``crl.pem`` lacks, and ``revoke``
  of a recorded serial that ``crl.pem`` lacks rewrites the CRL.
* The CA's keys are read only if group and others have no permission on them
  (:func:`~flwrmtls.pki.files.read_ca_key_file`).
* Time comes only from the injected clock.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from flwrmtls.clock import Clock, SystemClock
from flwrmtls.errors import InputError
from flwrmtls.pki.certprofiles import PROFILES, CertificateProfile, ProfileName
from flwrmtls.pki.certsigning import (
    CLOCK_SKEW_ALLOWANCE,
    IssuedCertificate,
    cli_subject,
    common_name_subject,
    node_subject,
    pem_bundle,
    public_key_bytes,
    server_subject_alternative_names,
    sign_certificate,
    spiffe_subject_alternative_names,
    validity_window,
)
from flwrmtls.pki.crl import (
    RevocationReason,
    RevocationRecord,
    RevokedSerial,
    crl_lists,
    publish_crl,
)
from flwrmtls.pki.files import (
    CaFiles,
    ca_lock,
    check_writable,
    ensure_directory,
    read_ca_key_file,
    read_ca_material,
    read_certificate_file,
    write_file,
)
from flwrmtls.pki.holders import SameIdentity, certificates_in, same_identity
from flwrmtls.pki.privatekeys import (
    KeyEncoding,
    KeyType,
    PrivateKey,
    check_key_encoding,
    encode_private_key,
    generate_private_key,
    key_type_of,
)

__all__ = [
    "CA_MAX_DAYS",
    "CRL_VALIDITY_DAYS",
    "DEFAULT_LEAF_OPTIONS",
    "CertificateAuthority",
    "LeafOptions",
]

log = logging.getLogger("flwrmtls.pki")

CRL_VALIDITY_DAYS = 7
"""A CRL's default next-update: a week, renewed daily (see docs/operations.md): RFC 5280
leaves it to the CA; a week is common practice and leaves six days to notice a failed
renewal before links start refusing (they fail closed when it lapses)."""

_CLIENT_PROFILES = frozenset({ProfileName.NODE, ProfileName.CLI})

CA_MAX_DAYS = 36500
"""A hundred years: beyond what any X.509 date needs, short of what Python dates hold."""


@dataclass(frozen=True, slots=True)
class LeafOptions:
    """How a leaf is issued, whatever its profile (server, node, CLI): the one record of the
    choices ``issue_server``, ``issue_node`` and ``issue_cli`` share."""

    days: int = 365
    """Validity from now (or from ``not_before``), within the issuing CA's."""
    key_type: KeyType | None = None
    """The leaf key's type; None: the CA's."""
    out_dir: Path | None = None
    """Where the chain and key files go; None: the CA directory."""
    force: bool = False
    """Overwrite existing files."""
    not_before: datetime | None = None
    not_after: datetime | None = None
    """An explicit validity window (tests, and reissuing to a date)."""
    key_encoding: KeyEncoding = KeyEncoding.PKCS8
    extended_key_usages: Sequence[x509.ObjectIdentifier] | None = None
    """In place of the profile's EKU (tests of certificates a link must refuse)."""


DEFAULT_LEAF_OPTIONS = LeafOptions()


class CertificateAuthority:
    """A CA directory: use :meth:`create` or :meth:`load`, then issue, revoke, write the CRL."""

    def __init__(
        self,
        *,
        files: CaFiles,
        root_certificate: x509.Certificate,
        issuing_certificate: x509.Certificate,
        issuing_key: PrivateKey,
        clock: Clock,
    ) -> None:
        self.files = files
        self.root_certificate = root_certificate
        self.issuing_certificate = issuing_certificate
        self._issuing_key = issuing_key
        self._clock = clock

    @property
    def directory(self) -> Path:
        return self.files.directory

    @property
    def trust_bundle_path(self) -> Path:
        """``ca.crt``: the root certificate links and nodes are told to trust."""
        return self.files.trust_bundle

    @property
    def crl_path(self) -> Path:
        return self.files.crl

    @property
    def key_type(self) -> KeyType:
        return key_type_of(self._issuing_key)

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        name: str = "flwrmtls",
        key_type: KeyType = KeyType.EC,
        days: int = 3650,
        force: bool = False,
        clock: Clock | None = None,
        rsa_bits: int = 2048,
    ) -> CertificateAuthority:
        """Create a root and an issuing CA in ``directory``, write an empty CRL, return the CA."""
        clock = clock or SystemClock()
        files = CaFiles(Path(directory))
        if not 1 <= days <= CA_MAX_DAYS:
            raise InputError(
                f"--days {days}: a CA is valid for 1 to {CA_MAX_DAYS} days (default 3650)"
            )
        if not force and files.trust_bundle.exists():
            raise InputError(
                f"{files.directory} already holds a CA ({files.trust_bundle}); pass --force to "
                "replace it (certificates it issued will no longer verify)"
            )
        check_writable(files.ca_outputs, force=force)
        now = clock.now()
        not_before, not_after = now - CLOCK_SKEW_ALLOWANCE, now + timedelta(days=days)
        root_key = generate_private_key(key_type, rsa_bits=rsa_bits)
        root_certificate = sign_certificate(
            PROFILES[ProfileName.ROOT_CA],
            subject=common_name_subject(f"{name} Root CA"),
            public_key=root_key.public_key(),
            signing_key=root_key,
            issuer_certificate=None,
            not_before=not_before,
            not_after=not_after,
        )
        issuing_key = generate_private_key(key_type, rsa_bits=rsa_bits)
        issuing_certificate = sign_certificate(
            PROFILES[ProfileName.ISSUING_CA],
            subject=common_name_subject(f"{name} Issuing CA"),
            public_key=issuing_key.public_key(),
            signing_key=root_key,
            issuer_certificate=root_certificate,
            not_before=not_before,
            not_after=not_after,
        )
        ensure_directory(files.directory, private=False)
        ensure_directory(files.private_directory, private=True)
        for key_path, key in ((files.root_key, root_key), (files.issuing_key, issuing_key)):
            key_pem = encode_private_key(key, KeyEncoding.PKCS8)
            write_file(key_path, key_pem, secret=True, force=force)
        for certificate_path, certificate in (
            (files.issuing_certificate, issuing_certificate),
            (files.trust_bundle, root_certificate),
        ):
            write_file(certificate_path, pem_bundle(certificate), secret=False, force=force)
        RevocationRecord.empty().save(files.revocation_record)
        authority = cls(
            files=files,
            root_certificate=root_certificate,
            issuing_certificate=issuing_certificate,
            issuing_key=issuing_key,
            clock=clock,
        )
        authority.write_crl()
        return authority

    @classmethod
    def load(cls, directory: Path, *, clock: Clock | None = None) -> CertificateAuthority:
        """Load the CA in ``directory``; InputError if it has none or it is incomplete."""
        files = CaFiles(Path(directory))
        root_certificate, issuing_certificate, issuing_key = read_ca_material(files)
        if public_key_bytes(issuing_key.public_key()) != public_key_bytes(
            issuing_certificate.public_key()
        ):
            raise InputError(
                f"{files.issuing_key} does not belong to {files.issuing_certificate}; "
                "restore the matching pair from a backup"
            )
        try:
            issuing_certificate.verify_directly_issued_by(root_certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise InputError(
                f"{files.issuing_certificate} was not signed by the root in "
                f"{files.trust_bundle}; restore the matching pair from a backup"
            ) from None
        return cls(
            files=files,
            root_certificate=root_certificate,
            issuing_certificate=issuing_certificate,
            issuing_key=issuing_key,
            clock=clock or SystemClock(),
        )

    def cross_sign(self, successor: x509.Certificate) -> x509.Certificate:
        """A cross-certificate: ``successor`` root's Subject and key, signed by this root's key.

        In a link's client CA bundle beside both roots it makes the successor the same
        authority as this root (:mod:`flwrmtls.auth.authority`), so certificates reissued by
        the successor keep their identities and node ids during a CA rollover.
        """
        try:
            successor.verify_directly_issued_by(successor)
            is_ca = successor.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            is_ca = False
        if not is_ca:
            raise InputError(
                "the successor must be a self-signed CA certificate (the ca.crt of the new CA)"
            )
        root = self.root_certificate
        if public_key_bytes(successor.public_key()) == public_key_bytes(root.public_key()):
            raise InputError("the successor has this CA's own root key: nothing to cross-sign")
        root_key = read_ca_key_file(self.files.root_key, "root CA key")
        if public_key_bytes(root_key.public_key()) != public_key_bytes(root.public_key()):
            raise InputError(
                f"{self.files.root_key} does not belong to {self.files.trust_bundle}; "
                "restore the matching pair from a backup"
            )
        now = self._clock.now()
        not_after = min(root.not_valid_after_utc, successor.not_valid_after_utc)
        if not_after <= now:
            raise InputError("the old or the successor root has expired: nothing to cross-sign")
        return sign_certificate(
            PROFILES[ProfileName.CROSS_CA],
            subject=successor.subject,
            public_key=successor.public_key(),  # type: ignore[arg-type]
            signing_key=root_key,
            issuer_certificate=root,
            not_before=now - CLOCK_SKEW_ALLOWANCE,
            not_after=not_after,
        )

    def _issue(
        self,
        profile: CertificateProfile,
        name: str,
        subject: x509.Name,
        options: LeafOptions,
        subject_alternative_names: Sequence[x509.GeneralName] = (),
    ) -> IssuedCertificate:
        chain_path, key_path = self.files.leaf_paths(name, options.out_dir)
        leaf_key_type = self.key_type if options.key_type is None else KeyType(options.key_type)
        check_key_encoding(leaf_key_type, options.key_encoding)
        start, end = validity_window(
            self._clock.now(),
            days=options.days,
            not_before=options.not_before,
            not_after=options.not_after,
            issuer_not_after=self.issuing_certificate.not_valid_after_utc,
        )
        force = options.force
        check_writable([chain_path, key_path], force=force)
        takes_over = (
            self._same_identity(subject, subject_alternative_names, options.out_dir)
            if profile.name in _CLIENT_PROFILES  # a link's own certificate names no client
            else []
        )
        leaf_key = generate_private_key(leaf_key_type)
        certificate = sign_certificate(
            profile,
            subject=subject,
            public_key=leaf_key.public_key(),
            signing_key=self._issuing_key,
            issuer_certificate=self.issuing_certificate,
            not_before=start,
            not_after=end,
            subject_alternative_names=subject_alternative_names,
            extended_key_usages=options.extended_key_usages,
        )
        write_file(
            key_path, encode_private_key(leaf_key, options.key_encoding), secret=True, force=force
        )
        write_file(
            chain_path, pem_bundle(certificate, self.issuing_certificate), secret=False, force=force
        )
        return IssuedCertificate(
            certificate=certificate,
            chain_path=chain_path,
            key_path=key_path,
            serial=certificate.serial_number,
            takes_over=tuple(takes_over),
        )

    def _same_identity(
        self,
        subject: x509.Name,
        subject_alternative_names: Sequence[x509.GeneralName],
        out_dir: Path | None,
    ) -> list[SameIdentity]:
        try:
            record = RevocationRecord.load(self.files.revocation_record)
        except InputError:  # issuing does not need the record: report every holder then
            record = RevocationRecord.empty()
        directories = [self.directory] if out_dir is None else [self.directory, out_dir]
        return same_identity(
            certificates_in(directories),
            issuer=self.issuing_certificate,
            subject=subject,
            subject_alternative_names=subject_alternative_names,
            revoked_serials=frozenset(entry.serial for entry in record.revoked),
            now=self._clock.now(),
        )

    def issue_server(
        self,
        name: str,
        *,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = ("127.0.0.1",),
        options: LeafOptions = DEFAULT_LEAF_OPTIONS,
    ) -> IssuedCertificate:
        """A link's certificate: ``CN=<name>``, EKU serverAuth, SAN of the DNS names and IPs."""
        return self._issue(
            PROFILES[ProfileName.SERVER],
            name,
            common_name_subject(name),
            options,
            server_subject_alternative_names(dns_names, ip_addresses),
        )

    def issue_node(
        self,
        name: str,
        *,
        common_name: str | None = None,
        organization: str | None = None,
        organizational_unit: str | None = None,
        spiffe_id: str | None = None,
        options: LeafOptions = DEFAULT_LEAF_OPTIONS,
    ) -> IssuedCertificate:
        """A node's certificate: Subject ``O, OU, CN`` (CN defaults to ``name``), EKU
        clientAuth, and a single URI SAN only when ``spiffe_id`` is given."""
        return self._issue(
            PROFILES[ProfileName.NODE],
            name,
            node_subject(common_name or name, organization, organizational_unit),
            options,
            spiffe_subject_alternative_names(spiffe_id),
        )

    def issue_cli(
        self,
        name: str,
        *,
        role: str,
        common_name: str | None = None,
        organization: str | None = None,
        options: LeafOptions = DEFAULT_LEAF_OPTIONS,
    ) -> IssuedCertificate:
        """A CLI user's certificate: Subject ``O, CN, role`` with role ``operator`` or ``user``
        (the X.520 role attribute, UTF8String), EKU clientAuth, no SAN."""
        return self._issue(
            PROFILES[ProfileName.CLI], name, cli_subject(common_name or name, role, organization),
            options,
        )  # fmt: skip

    def _serial_of_issued_file(self, certificate_file: Path) -> int:
        certificate = read_certificate_file(certificate_file)
        try:
            certificate.verify_directly_issued_by(self.issuing_certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise InputError(
                f"{certificate_file} was not issued by the CA in {self.directory} "
                f"(its issuer is {certificate.issuer.rfc4514_string()}); revoke it with its own CA"
            ) from None
        return certificate.serial_number

    def revoke(
        self,
        *,
        certificate_file: Path | None = None,
        serial: int | None = None,
        reason: RevocationReason = RevocationReason.UNSPECIFIED,
        crl_days: int = CRL_VALIDITY_DAYS,
    ) -> int:
        """Record a revocation (by chain file or serial, exactly one), rewrite the CRL, and
        return the serial. A serial is recorded once: revoking it again is an InputError
        ("nothing changed"), unless ``crl.pem`` does not list it; then the CRL is rewritten
        (with a warning) and the serial returned."""
        if (certificate_file is None) == (serial is None):
            raise InputError("pass either a certificate file or --serial (exactly one of them)")
        if certificate_file is not None:
            serial = self._serial_of_issued_file(Path(certificate_file))
        elif serial is None:
            raise InputError("pass a certificate file or --serial")
        if serial < 1:
            raise InputError(f"--serial {serial} is not a certificate serial (must be positive)")
        with ca_lock(self.files):
            record = RevocationRecord.load(self.files.revocation_record)
            previous = record.find(serial)
            if previous is not None and not crl_lists(
                self.files.crl, self.issuing_certificate, serial
            ):
                # Recorded, but the CRL does not say so (a CRL write that failed before this
                # rule existed, or crl.pem replaced by hand): publish it now.
                log.warning(
                    "serial %#x was already recorded as revoked on %s (%s) but %s did not list "
                    "it: rewriting %s",
                    serial, previous.revoked_at.isoformat(), previous.reason.value,
                    self.files.crl, self.files.crl,
                )  # fmt: skip
                self._publish(record, crl_days)
                return serial
            updated = record.with_revoked(
                RevokedSerial(
                    serial=serial, revoked_at=self._clock.now(), reason=RevocationReason(reason)
                )
            )
            self._publish(updated, crl_days, previous_record=record)
        return serial

    def write_crl(self, *, days: int = CRL_VALIDITY_DAYS) -> Path:
        """(Re)write ``crl.pem`` from the revocation record, valid for ``days`` from now."""
        with ca_lock(self.files):
            return self._publish(RevocationRecord.load(self.files.revocation_record), days)

    def _publish(
        self,
        record: RevocationRecord,
        days: int,
        *,
        previous_record: RevocationRecord | None = None,
    ) -> Path:
        """:func:`~flwrmtls.pki.crl.publish_crl` by this issuing CA, now."""
        return publish_crl(
            record,
            crl_path=self.files.crl,
            record_path=self.files.revocation_record,
            issuer_certificate=self.issuing_certificate,
            issuer_key=self._issuing_key,
            now=self._clock.now(),
            days=days,
            previous_record=previous_record,
        )
