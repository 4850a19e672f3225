"""A real OCSP responder on 127.0.0.1 for tests: openssl answers every request.

Rules kept here:

* Every answer is made and signed by ``openssl ocsp`` in its responder mode (``-index``,
  ``-CA``, ``-rsigner``, ``-rkey``, ``-nmin``), from an index file in openssl's own format
  written from the certificates a test registers and their status. Nothing here builds or
  signs an OCSP response.
* openssl reads each request from a file (``-reqin``) rather than listening itself
  (``-port``): its listener binds every interface and the tests bind 127.0.0.1 only. A small
  HTTP front in this process (``http.server``, one thread per request) takes each POST on
  127.0.0.1 and hands its body to openssl.
* A test switches what the responder does while the link runs: ``revoke`` a certificate;
  ``delay`` every answer (a slow responder); ``stop`` listening and ``start`` again on the
  same port (a responder that is down); ``about`` another certificate (the request openssl
  sees names it, keeping the link's nonce: an answer for the wrong certificate); ``sign_with``
  another certificate and key (a delegated responder, allowed or not); ``replay`` the first
  answer it gave for every later request (an attacker replaying a captured answer).
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

__all__ = ["OpensslResponder"]


@dataclass
class _Status:
    certificate: x509.Certificate
    revoked_at: datetime | None = None
    reason: str = "keyCompromise"


@dataclass
class _Behaviour:
    delay: float = 0.0
    about: tuple[x509.Certificate, x509.Certificate] | None = None
    replay: bool = False
    replayed: bytes | None = None
    requests: int = 0
    statuses: dict[int, _Status] = field(default_factory=dict)


def _openssl_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%y%m%d%H%M%SZ")


class OpensslResponder:
    """``openssl ocsp`` answering for ``ca_certificate``'s certificates on 127.0.0.1."""

    def __init__(
        self,
        directory: Path,
        *,
        ca_certificate: Path,
        signer_certificate: Path,
        signer_key: Path,
        next_update_minutes: int | None = 5,
    ) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("the openssl CLI is not on PATH: install OpenSSL 3 to run this")
        self._openssl = openssl
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index = self.directory / "index.txt"
        (self.directory / "index.txt.attr").write_text("unique_subject = no\n")
        self._ca = ca_certificate
        self._signer = (signer_certificate, signer_key)
        self._next_update = next_update_minutes
        self._behaviour = _Behaviour()
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._write_index()

    # --- what a test changes ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def requests(self) -> int:
        """How many requests the responder has received (answered or not)."""
        return self._behaviour.requests

    def register(self, *certificates: x509.Certificate) -> None:
        """Certificates the responder knows (good until revoked); others are 'unknown'."""
        with self._lock:
            for certificate in certificates:
                self._behaviour.statuses.setdefault(certificate.serial_number, _Status(certificate))
            self._write_index()

    def revoke(self, certificate: x509.Certificate, reason: str = "keyCompromise") -> None:
        with self._lock:
            status = self._behaviour.statuses.setdefault(
                certificate.serial_number, _Status(certificate)
            )
            status.revoked_at, status.reason = datetime.now(UTC), reason
            self._write_index()

    def delay(self, seconds: float) -> None:
        self._behaviour.delay = seconds

    def about(self, certificate: x509.Certificate | None, issuer: x509.Certificate | None) -> None:
        """Answer about ``certificate`` (of ``issuer``) whatever is asked; None: as asked."""
        self._behaviour.about = (certificate, issuer) if certificate and issuer else None

    def sign_with(self, certificate: Path, key: Path) -> None:
        self._signer = (certificate, key)

    def replay(self, on: bool = True) -> None:
        """Answer every request with the first answer given from now on."""
        self._behaviour.replay, self._behaviour.replayed = on, None

    # --- listening ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on 127.0.0.1 (the port of the last start, else one the OS picks)."""
        responder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                answer = responder._answer(body)
                if answer is None:
                    self.send_error(500, "openssl ocsp failed")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                return None

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening: the port refuses connections until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> OpensslResponder:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- answering ---------------------------------------------------------------------------

    def _write_index(self) -> None:
        lines = []
        for serial, status in sorted(self._behaviour.statuses.items()):
            expiry = _openssl_time(status.certificate.not_valid_after_utc)
            subject = "/CN=" + str(serial)
            if status.revoked_at is None:
                lines.append(f"V\t{expiry}\t\t{serial:X}\tunknown\t{subject}")
            else:
                revoked = f"{_openssl_time(status.revoked_at)},{status.reason}"
                lines.append(f"R\t{expiry}\t{revoked}\t{serial:X}\tunknown\t{subject}")
        self._index.write_text("".join(line + "\n" for line in lines))

    def _rewritten(self, body: bytes) -> bytes:
        """The request as openssl sees it: about another certificate, if the test says so,
        with the link's nonce kept."""
        about = self._behaviour.about
        if about is None:
            return body
        certificate, issuer = about
        builder = ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer, hashes.SHA1())  # noqa: S303
        try:
            nonce = ocsp.load_der_ocsp_request(body).extensions.get_extension_for_class(
                x509.OCSPNonce
            )
            builder = builder.add_extension(nonce.value, critical=False)
        except (ValueError, x509.ExtensionNotFound):
            pass
        return builder.build().public_bytes(serialization.Encoding.DER)

    def _answer(self, body: bytes) -> bytes | None:
        behaviour = self._behaviour
        behaviour.requests += 1
        if behaviour.delay:
            time.sleep(behaviour.delay)  # a slow responder: the link must not wait for it
        if behaviour.replay and behaviour.replayed is not None:
            return behaviour.replayed
        with tempfile.TemporaryDirectory(dir=self.directory) as scratch:
            request, response = Path(scratch) / "req.der", Path(scratch) / "resp.der"
            request.write_bytes(self._rewritten(body))
            certificate, key = self._signer
            with self._lock:
                result = subprocess.run(
                    [
                        self._openssl, "ocsp", "-index", str(self._index), "-CA", str(self._ca),
                        "-rsigner", str(certificate), "-rkey", str(key),
                        "-reqin", str(request), "-respout", str(response),
                        *(["-nmin", str(self._next_update)] if self._next_update else []),
                    ],
                    capture_output=True, text=True, check=False, timeout=60,
                )  # fmt: skip
            if result.returncode != 0 or not response.exists():
                return None
            answer = response.read_bytes()
        if behaviour.replay and behaviour.replayed is None:
            behaviour.replayed = answer
        return answer
