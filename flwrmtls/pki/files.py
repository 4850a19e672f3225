"""Where the CA keeps its files, and how they are written and read.

Rules kept here:

* The layout of a CA directory is :class:`CaFiles`: ``ca.crt`` (the root, the trust anchor),
  ``crl.pem``, ``ca/root.key``, ``ca/issuing.crt``, ``ca/issuing.key``, ``ca/revoked.json``,
  ``ca/.lock``,
  and one ``<name>.pem`` (leaf + issuing CA) and ``<name>.key`` per issued certificate.
* Every file is written to a temporary file in the same directory and moved into place, so a
  reader never sees half a file. Private keys are created with mode 0600 (``mkstemp``), so they
  are never readable by others, not even for an instant; other files get 0644.
* An existing file is replaced only with ``force``; otherwise InputError names it and says to
  pass ``--force``. Without force the final step is a hard link, which fails if the file
  appeared meanwhile. A file can also be staged (written and synced beside its place) and
  committed later, so that two files change in the order their consistency needs.
* Every read-modify-write of the revocation record holds the CA's lock (``ca/.lock``, flock),
  so concurrent commands cannot lose each other's changes.
* Reading a file that is missing, unreadable or not PEM is an InputError naming the file.
* The CA's own keys are read only through :func:`read_ca_key_file`, which refuses a key file
  that group or others may use (:func:`flwrmtls.keyfiles.check_ca_key_file`).
* Key material is never put into a message.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from flwrmtls.errors import InputError
from flwrmtls.keyfiles import check_ca_key_file
from flwrmtls.pki.privatekeys import PrivateKey

__all__ = [
    "CaFiles",
    "StagedFile",
    "ca_lock",
    "check_writable",
    "ensure_directory",
    "read_ca_key_file",
    "read_ca_material",
    "read_certificate_file",
    "read_certificates_file",
    "read_private_key_file",
    "stage_file",
    "validate_file_name",
    "write_file",
]

log = logging.getLogger("flwrmtls.pki")

_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_MAX_FILE_NAME = 200
_LINK_UNSUPPORTED = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


@dataclass(frozen=True, slots=True)
class CaFiles:
    """The paths of one CA directory."""

    directory: Path

    @property
    def trust_bundle(self) -> Path:
        """``ca.crt``: the root CA certificate that links and nodes trust."""
        return self.directory / "ca.crt"

    @property
    def private_directory(self) -> Path:
        return self.directory / "ca"

    @property
    def root_key(self) -> Path:
        return self.private_directory / "root.key"

    @property
    def issuing_certificate(self) -> Path:
        return self.private_directory / "issuing.crt"

    @property
    def issuing_key(self) -> Path:
        return self.private_directory / "issuing.key"

    @property
    def revocation_record(self) -> Path:
        return self.private_directory / "revoked.json"

    @property
    def lock(self) -> Path:
        """``ca/.lock``: held while a command reads and rewrites the revocation record."""
        return self.private_directory / ".lock"

    @property
    def crl(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def ca_outputs(self) -> tuple[Path, ...]:
        """Every file ``ca init`` writes."""
        return (
            self.trust_bundle,
            self.root_key,
            self.issuing_certificate,
            self.issuing_key,
            self.revocation_record,
            self.crl,
        )

    def leaf_paths(self, name: str, out_dir: Path | None = None) -> tuple[Path, Path]:
        """``(<name>.pem, <name>.key)`` in ``out_dir`` (default: the CA directory)."""
        validate_file_name(name)
        target = self.directory if out_dir is None else out_dir
        chain_path, key_path = target / f"{name}.pem", target / f"{name}.key"
        reserved = {self.trust_bundle.absolute(), self.crl.absolute()}
        if chain_path.absolute() in reserved:
            raise InputError(
                f"certificate name {name!r} would overwrite the CA's {chain_path}; "
                "choose another name"
            )
        return chain_path, key_path


def validate_file_name(name: str) -> str:
    """Return ``name`` if it can be a file name stem: letters, digits, ``._-``, not hidden."""
    if not name or len(name) > _MAX_FILE_NAME or not _FILE_NAME.match(name):
        raise InputError(
            f"certificate name {name!r} is not usable as a file name; use letters, digits, "
            "'.', '_' and '-' (not starting with '.' or '-')"
        )
    return name


def check_writable(paths: Iterable[Path], *, force: bool) -> None:
    """Raise InputError for the first path that exists when ``force`` is False."""
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise InputError(f"{path} already exists; pass --force to overwrite it")


def ensure_directory(directory: Path, *, private: bool) -> None:
    try:
        directory.mkdir(mode=0o700 if private else 0o755, parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"cannot create directory {directory}: {error.strerror}; check its parent"
        ) from None
    if not directory.is_dir():
        raise InputError(f"{directory} is not a directory; choose another --dir")


def _cannot_write(path: Path, error: OSError) -> InputError:
    return InputError(f"cannot write {path}: {error.strerror}; check the directory's permissions")


class StagedFile:
    """New content for ``path``, written and synced beside it but not yet in place.

    :meth:`commit` renames it over ``path`` (atomic: a reader sees the old or the new file);
    :meth:`discard` removes it. Lets a caller write a file only once everything else that must
    change with it has changed (the CRL after the revocation record).
    """

    def __init__(self, path: Path, temporary: Path) -> None:
        self.path = path
        self._temporary = temporary

    def commit(self, *, replace: bool = True) -> None:
        """Move the new content into place; InputError (content discarded) if that fails.

        With ``replace`` False an existing file is an InputError and stays untouched: the
        final step is a hard link, which fails if the file appeared meanwhile.
        """
        try:
            if replace:
                os.replace(self._temporary, self.path)
            else:
                self._link_into_place()
        except OSError as error:
            raise _cannot_write(self.path, error) from None
        finally:
            self.discard()

    def _link_into_place(self) -> None:
        try:
            os.link(self._temporary, self.path)
        except FileExistsError:
            raise InputError(f"{self.path} already exists; pass --force to overwrite it") from None
        except OSError as error:
            if error.errno not in _LINK_UNSUPPORTED:
                raise
            check_writable([self.path], force=False)  # no hard links here: check, then replace
            os.replace(self._temporary, self.path)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()


def stage_file(path: Path, content: bytes, *, secret: bool) -> StagedFile:
    """Write ``content`` to a temporary file beside ``path`` (0600 if ``secret``, else 0644),
    synced, to be committed over ``path`` later. InputError (nothing left) if it cannot be."""
    ensure_directory(path.parent, private=False)
    try:
        descriptor, temporary_name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as error:
        raise _cannot_write(path, error) from None
    staged = StagedFile(path, Path(temporary_name))
    try:
        with os.fdopen(descriptor, "wb") as stream:
            if not secret:
                os.fchmod(stream.fileno(), 0o644)
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        staged.discard()
        raise _cannot_write(path, error) from None
    return staged


def write_file(path: Path, content: bytes, *, secret: bool, force: bool) -> None:
    """Write ``content`` to ``path`` atomically: mode 0600 if ``secret`` else 0644.

    Without ``force`` an existing ``path`` is an InputError and is left untouched.
    """
    ensure_directory(path.parent, private=False)
    check_writable([path], force=force)
    stage_file(path, content, secret=secret).commit(replace=force)


@contextlib.contextmanager
def ca_lock(files: CaFiles) -> Iterator[None]:
    """Hold the CA's lock (``ca/.lock``, flock) for a read-modify-write of its record.

    Concurrent ``flwrmtls ca`` commands on one CA run one after the other; one that has to wait
    says so (a warning line) instead of hanging silently. The kernel releases the lock when the
    process ends, however it ends.
    """
    ensure_directory(files.private_directory, private=True)
    try:
        descriptor = os.open(files.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise InputError(
            f"cannot open the CA's lock file {files.lock}: {error.strerror}; check the "
            "directory's permissions"
        ) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(
                "waiting for %s: another `flwrmtls ca` command is changing this CA", files.lock
            )
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing the last descriptor releases the lock


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory, not a file; check the path") from None
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror}") from None


def read_certificates_file(path: Path, what: str = "certificate file") -> list[x509.Certificate]:
    """Every certificate in a PEM file (or the one in a DER file), in file order."""
    data = _read_bytes(path, what)
    if b"-----BEGIN CERTIFICATE-----" in data:
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError:
            raise InputError(
                f"{what} {path} holds a PEM certificate that cannot be parsed; "
                "check that the file is not truncated"
            ) from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise InputError(
            f"{what} {path} is not a PEM or DER certificate; "
            "pass a file with a '-----BEGIN CERTIFICATE-----' block"
        ) from None


def read_certificate_file(path: Path, what: str = "certificate file") -> x509.Certificate:
    """The first certificate of a PEM or DER file: the leaf of a chain file."""
    return read_certificates_file(path, what)[0]


def read_private_key_file(path: Path, what: str = "private key") -> PrivateKey:
    """An unencrypted PEM EC or RSA private key (PKCS#8, SEC1 or PKCS#1)."""
    data = _read_bytes(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InputError(
            f"{what} {path} is not an unencrypted PEM private key; check the file"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InputError(f"{what} {path} is neither an EC nor an RSA key")
    return key


def read_ca_key_file(path: Path, what: str) -> PrivateKey:
    """A CA key (``root.key``, ``issuing.key``): refused if group or others may use the file."""
    check_ca_key_file(path, what)
    return read_private_key_file(path, what)


def read_ca_material(
    files: CaFiles,
) -> tuple[x509.Certificate, x509.Certificate, PrivateKey]:
    """``(root certificate, issuing certificate, issuing key)`` of a CA directory.

    InputError if the directory holds no CA or an incomplete one; the files are not checked
    against each other here.
    """
    if not files.trust_bundle.exists():
        raise InputError(
            f"{files.directory} holds no CA (no {files.trust_bundle.name}); create one with "
            f"`flwrmtls ca init --dir {files.directory}` or pass the right --dir"
        )
    for required in (files.issuing_certificate, files.issuing_key):
        if not required.exists():
            raise InputError(
                f"the CA in {files.directory} is incomplete: {required} is missing; "
                "restore it from a backup or create a new CA with `flwrmtls ca init --force`"
            )
    return (
        read_certificate_file(files.trust_bundle, "root CA certificate"),
        read_certificate_file(files.issuing_certificate, "issuing CA certificate"),
        read_ca_key_file(files.issuing_key, "issuing CA key"),
    )
