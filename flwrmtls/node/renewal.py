"""An enrolled node renews its certificate before it expires, authenticated by it.

Rules:

* Only a node started with a join token (it enrolled, now or before) renews; a certificate
  from ``flwrmtls ca`` or another CA is renewed by whoever issued it.
* When: once less than ``--renew-before`` is left (default: a third of the certificate's
  lifetime, as kubelet renews at about 70%). A failed attempt (the link down, or refusing)
  is tried again after :data:`RETRY` (sooner if the certificate would expire first), so
  the node keeps its current certificate meanwhile and says why, once per attempt.
* How: a new EC P-256 key and a CSR for the current identity (Subject and SPIFFE ID as the
  certificate carries them), sent on the node's own mTLS channel (``RenewCertificate``); the
  chain answered is checked as at enrollment (its own key, that identity, clientAuth). The
  chain is written and synced beside its file, then the new key and the chain are moved
  into place one after the other (the pair is mismatched only between two renames); the
  node's certificate watcher (:mod:`flwrmtls.node.rotation`) then takes the pair into use
  like any rotation. The old key is replaced, never sent.
* The new key is pending until then: written (0600, synced) to ``<keyfile>.next`` before
  the CSR is sent, and every attempt after a failed or lost answer, in this process or
  after a restart, sends a CSR for that same key. The link answers a certificate that
  renewed already again only for the key it renewed for (:mod:`flwrmtls.enroll.renewal`),
  so a node whose answer was lost gets it on its next attempt instead of being locked out.
  The pending key becomes the key file by that rename (so it is gone once the renewal is
  installed); one found that group or others may read, that cannot be read, or that is
  the current certificate's own key (never a new one) is replaced by a new one, saying so.
  Key material is never logged: only the key's SHA-256.
* The schedule is a pure function (:func:`renew_at`); the renewer is a task on the node's
  event loop (:meth:`CertificateRenewer.run`) that only sleeps until then. The renewal
  itself (a key, a call to the link, two files) runs in a worker thread, as the node's other
  calls to the link do, so the loop is never held up.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.clock import Clock
from flwrmtls.enroll.client import build_csr, check_chain
from flwrmtls.enroll.csrcheck import key_fingerprint
from flwrmtls.enroll.renewal import RenewalRefused as NotRenewable
from flwrmtls.enroll.renewal import binding_of_certificate
from flwrmtls.errors import FlwrmtlsError, InputError
from flwrmtls.pki.certsigning import public_key_bytes
from flwrmtls.pki.files import read_private_key_file, stage_file
from flwrmtls.pki.privatekeys import KeyEncoding, encode_private_key

__all__ = ["RETRY", "CertificateRenewer", "renew_at"]

log = logging.getLogger("flwrmtls.node")

RETRY = timedelta(minutes=10)


def renew_at(certificate: x509.Certificate, renew_before: timedelta | None) -> datetime:
    """When to renew ``certificate``: ``renew_before`` ahead of its expiry (default: a third
    of its lifetime ahead)."""
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    ahead = renew_before if renew_before is not None else (end - start) / 3
    return end - ahead


class CertificateRenewer:
    """Renews the certificate in ``certfile`` (key in ``keyfile``) through ``renew``, which
    sends a CSR on the node's mTLS channel and returns the chain (PEM)."""

    def __init__(
        self,
        certfile: Path,
        keyfile: Path,
        renew: Callable[[bytes], bytes],
        clock: Clock,
        *,
        renew_before: timedelta | None = None,
    ) -> None:
        self._certfile = certfile
        self._keyfile = keyfile
        self._renew = renew
        self._clock = clock
        self._renew_before = renew_before

    def _current(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self._certfile.read_bytes())

    async def run(self) -> None:
        """Renew the certificate whenever it is due, until cancelled."""
        while True:
            try:
                current = self._current()
            except (OSError, ValueError) as error:
                log.error("cannot read %s to renew it: %s", self._certfile, error)
                await asyncio.sleep(RETRY.total_seconds())
                continue
            due = renew_at(current, self._renew_before)
            wait = (due - self._clock.now()).total_seconds()
            if wait > 0:
                log.info(
                    "this node's certificate (serial %x) is renewed at %s UTC",
                    current.serial_number, f"{due:%Y-%m-%d %H:%M}",
                )  # fmt: skip
                await asyncio.sleep(min(wait, 86400.0))
                continue
            if not await asyncio.to_thread(self.renew_once, current):
                left = (current.not_valid_after_utc - self._clock.now()).total_seconds()
                await asyncio.sleep(max(1.0, min(RETRY.total_seconds(), left / 2)))

    @property
    def pending_keyfile(self) -> Path:
        """Where the key of a renewal not yet installed is kept: ``<keyfile>.next``."""
        return self._keyfile.with_name(f"{self._keyfile.name}.next")

    def _pending_key(self, current: x509.Certificate) -> ec.EllipticCurvePrivateKey:
        """The key of the renewal in progress: the one kept in :attr:`pending_keyfile` from
        an earlier attempt, else a new one written there (0600, synced) before it is used."""
        path = self.pending_keyfile
        if path.exists():
            try:
                if path.stat().st_mode & 0o077:
                    raise InputError(f"pending renewal key {path} may be read by others")
                key = read_private_key_file(path, "pending renewal key")
            except (InputError, OSError) as error:
                log.warning("%s; making a new key for this renewal", error)
            else:
                if isinstance(key, ec.EllipticCurvePrivateKey) and public_key_bytes(
                    key.public_key()
                ) != public_key_bytes(current.public_key()):
                    log.info(
                        "renewing with the key kept in %s (%s) from an attempt that got no "
                        "certificate", path, key_fingerprint(key.public_key()),
                    )  # fmt: skip
                    return key
        key = ec.generate_private_key(ec.SECP256R1())
        stage_file(path, encode_private_key(key, KeyEncoding.PKCS8), secret=True).commit()
        return key

    def renew_once(self, current: x509.Certificate) -> bool:
        """One renewal of ``current``: True when the new pair was written."""
        try:
            binding = binding_of_certificate(current)
        except NotRenewable as error:
            log.error("cannot renew this node's certificate: %s", error)
            return False
        try:
            key = self._pending_key(current)
            chain = self._renew(build_csr(key, binding))
            leaf = check_chain(chain, key, binding)
        except FlwrmtlsError as error:
            left = current.not_valid_after_utc - self._clock.now()
            log.error(
                "renewing this node's certificate failed (it expires in %s; trying again in "
                "%s): %s", _duration(left), _duration(RETRY), error,
            )  # fmt: skip
            return False
        # The chain written and synced beside its file first, then the pending key and the
        # chain moved into place one after the other: the pair is mismatched only between
        # two renames, and the pending key is gone with the first.
        new_chain = stage_file(self._certfile, chain, secret=False)
        try:
            os.replace(self.pending_keyfile, self._keyfile)
        except OSError as error:
            new_chain.discard()
            raise InputError(
                f"cannot move the renewed key {self.pending_keyfile} to {self._keyfile}: "
                f"{error.strerror}; check the directory's permissions"
            ) from None
        new_chain.commit()
        log.info(
            "renewed this node's certificate: serial %x, valid until %s UTC (was serial %x)",
            leaf.serial_number, f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M}",
            current.serial_number,
        )  # fmt: skip
        return True


def _duration(span: timedelta) -> str:
    seconds = max(0, int(span.total_seconds()))
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds // 60} min"
