"""A node's certificate changes under it (cert-manager, a reissue): continue with the new one.

Rules:

* The certificate and key files are polled by content every few seconds
  (:mod:`flwrmtls.filewatch`), so a rewrite, a replacement or Kubernetes' atomic ``..data``
  symlink swap is noticed.
* A new pair is checked first (PEM, key matches, dates, usage). A broken or half-written pair
  is reported once and the node keeps the certificate it has; the next poll tries again.
* A good new pair gets a new channel; the agent then activates again over it. The node id
  derives from the Subject, so a reissued certificate is the same node, and runs in progress go
  on (their ClientApps are untouched).
* The node warns when its certificate expires within ``--cert-expiry-warning-days``
  (:mod:`flwrmtls.expiry`), at start and then once a day (on the injected clock).
* The watcher is a task on the node's event loop (:meth:`CertificateWatcher.run`); reading
  two small files every few seconds does not hold the loop up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from flwrmtls.clock import Clock, SystemClock
from flwrmtls.errors import InputError
from flwrmtls.expiry import ExpiryWarning
from flwrmtls.filewatch import FileWatch
from flwrmtls.wire.credentials import TlsIdentity, check_client_certificate, load_tls_identity

__all__ = ["CertificateWatcher", "expiry_warning"]

log = logging.getLogger("flwrmtls.node.rotation")

_POLL_SECONDS = 2.0
_WARN_EVERY = 86400.0


def expiry_warning(identity: TlsIdentity, now: datetime, warning_days: float) -> str | None:
    """A warning line if the certificate expires within ``warning_days``, else None."""
    return ExpiryWarning(warning_days).line(
        "this node's certificate", identity.leaf.not_valid_after_utc, now
    )


class CertificateWatcher:
    def __init__(
        self,
        certfile: Path,
        keyfile: Path,
        identity: TlsIdentity,
        *,
        on_change: Callable[[TlsIdentity], None],
        warning_days: float = 14.0,
        clock: Clock | None = None,
    ) -> None:
        self._certfile = certfile
        self._keyfile = keyfile
        self.identity = identity
        self._on_change = on_change
        self._warning_days = warning_days
        self._clock = clock or SystemClock()
        self._files = FileWatch((certfile, keyfile))
        self._warned_at: float | None = None

    async def run(self) -> None:
        """Warn now if the certificate expires soon; then look at the files every few
        seconds, until cancelled."""
        self.warn_if_expiring()
        while True:
            await asyncio.sleep(_POLL_SECONDS)
            self.poll()
            self.warn_if_expiring()

    def warn_if_expiring(self) -> None:
        now = self._clock.monotonic()
        if self._warned_at is not None and now - self._warned_at < _WARN_EVERY:
            return
        warning = expiry_warning(self.identity, self._clock.now(), self._warning_days)
        if warning is not None:
            log.warning(warning)
            self._warned_at = now

    def poll(self) -> bool:
        """Check the files; True when a new, valid certificate was taken into use."""
        if not self._files.changed():
            return False
        try:
            identity = load_tls_identity(
                self._certfile, self._keyfile,
                cert_flag="--ssl-client-certfile", key_flag="--ssl-client-keyfile",
            )  # fmt: skip
            check_client_certificate(identity, self._clock.now(), cert_flag="--ssl-client-certfile")
        except InputError as error:
            log.error("certificate files changed but cannot be used, keeping the current: %s",
                      error)  # fmt: skip
            return False
        old, new = self.identity.leaf, identity.leaf
        self.identity = identity
        self._warned_at = None
        log.info(
            "certificate changed: serial %x -> %x (%s), valid until %s UTC; reconnecting",
            old.serial_number, new.serial_number, new.subject.rfc4514_string(),
            f"{new.not_valid_after_utc:%Y-%m-%d %H:%M}",
        )  # fmt: skip
        self._on_change(identity)
        return True
