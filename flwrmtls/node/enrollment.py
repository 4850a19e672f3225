"""A node that starts with a join token: its own key, its certificate from the link, then on
as any node (docs/enrollment.md).

Rules:

* The token comes from ``--enroll-token-file`` (whitespace around it ignored) or the
  ``FLWRMTLS_ENROLL_TOKEN`` variable, never from the command line; both at once are refused.
  The node logs the token's id only, never its secret.
* Enrollment runs only while ``--ssl-client-certfile`` does not exist: a node enrolled
  before starts as any node and leaves its token unused, so a restart never needs a second
  token.
* The key: ``--ssl-client-keyfile`` if it exists (this site's own, say from an enrollment
  cut short), else a new EC P-256 key written there first, 0600, PKCS#8. It is never sent:
  the CSR carries its public key and is signed with it.
* The CA: ``--root-certificates``; with ``--ca-cert-hash``, that flag names where the CA
  found by its hash (:func:`~flwrmtls.enroll.client.discover_ca`) is written, once: a file
  already there must hold a CA with that hash, and is then used as it is.
* The chain answered is checked (:func:`~flwrmtls.enroll.client.check_chain`) and written to
  ``--ssl-client-certfile`` atomically; the node then joins over mTLS with it, as any node.
* With ``--enroll-mode approve`` on the link the request waits for an operator: the node says
  so with the request's id and its key's SHA-256 (to compare with ``flwrmtls enroll ls``),
  asks again every 10 seconds, repeats the line every minute, and goes on once approved; a
  denial ends it with the operator's reason.
* A pending request outlives the node: its id and the identity it asks for are kept beside
  the key (``<keyfile>.request``, 0600), so a node stopped (or restarted by its supervisor)
  while it waits asks about the same request when it starts again, with the same key and
  token; the token, used by that request, is not sent for a new one. The file goes once the
  request is issued or denied.
* SIGINT or SIGTERM while enrolling stops the node cleanly (:class:`EnrollmentStopped`,
  exit 0); what it made (its key, a pending request) is kept for the next start.
* A link that is down or busy is retried within ``--max-retries``/``--max-wait-time``; a
  refusal (the token, the request, a denial) ends the node with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from flwrmtls.clock import SystemClock
from flwrmtls.enroll.client import (
    Answer,
    EnrollmentClient,
    EnrollmentRefused,
    build_csr,
    check_chain,
    discover_ca,
    parse_ca_hash,
    spki_sha256,
)
from flwrmtls.enroll.csrcheck import key_fingerprint
from flwrmtls.enroll.tokens import MAX_TOKEN_TEXT, Binding, parse_token
from flwrmtls.errors import InputError, LinkUnreachable
from flwrmtls.node.agent import RetryPolicy
from flwrmtls.pki.files import read_private_key_file, write_file
from flwrmtls.pki.privatekeys import KeyEncoding, PrivateKey, encode_private_key
from flwrmtls.wire.credentials import load_ca_bundle

__all__ = [
    "DEFAULT_ENROLLMENT_PORT",
    "TOKEN_VARIABLE",
    "EnrollmentStopped",
    "enroll",
    "enrollment_address",
    "pending_file",
]

log = logging.getLogger("flwrmtls.node")

TOKEN_VARIABLE = "FLWRMTLS_ENROLL_TOKEN"  # noqa: S105 - the variable's name
DEFAULT_ENROLLMENT_PORT = 9095
_POLL_SECONDS = 10.0
"""How often a pending request is asked about (within the link's default rate of 10 a
minute per address)."""
_PROGRESS_EVERY = 60.0
_T = TypeVar("_T")


class EnrollmentStopped(Exception):
    """A signal stopped the node while it enrolled: not an error."""


def pending_file(keyfile: Path) -> Path:
    """Where a node keeps the request that waits for an operator: beside its key."""
    return keyfile.with_name(keyfile.name + ".request")


def _keep_pending(keyfile: Path, request_id: int, binding: Binding) -> None:
    record = {"request_id": request_id, **dataclasses.asdict(binding)}
    write_file(pending_file(keyfile), json.dumps(record).encode(), secret=True, force=True)


def _pending(keyfile: Path) -> tuple[int, Binding] | None:
    """The request this node made before and still waits for, if any."""
    path = pending_file(keyfile)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_bytes())
        request_id = int(record.pop("request_id"))
        return request_id, Binding(**record)
    except (OSError, ValueError, TypeError, KeyError, InputError) as error:
        raise InputError(
            f"{path}: not a pending certificate request this node kept ({error}): remove it "
            "to enroll with a new join token"
        ) from None


def enrollment_address(args: argparse.Namespace) -> str:
    """``--enrollment-address``, or ``--superlink``'s host on port 9095."""
    if args.enrollment_address:
        return str(args.enrollment_address)
    host = str(args.superlink).rpartition(":")[0] or "127.0.0.1"
    return f"{host}:{DEFAULT_ENROLLMENT_PORT}"


def _token(args: argparse.Namespace, environ: dict[str, str]) -> str | None:
    from_env = environ.get(TOKEN_VARIABLE)
    if args.enroll_token_file is not None and from_env is not None:
        raise InputError(
            f"give the join token once: --enroll-token-file or {TOKEN_VARIABLE}, not both"
        )
    if args.enroll_token_file is not None:
        path = Path(args.enroll_token_file)
        try:
            with path.open("rb") as stream:
                text = stream.read(MAX_TOKEN_TEXT + 1).decode("ascii", errors="replace")
        except OSError as error:
            raise InputError(f"--enroll-token-file {path}: {error.strerror}") from None
        where = f"--enroll-token-file {path}"
    elif from_env is not None:
        text, where = from_env, TOKEN_VARIABLE
    else:
        return None
    if parse_token(text) is None:
        raise InputError(
            f"{where} holds no join token (it reads <8 hex digits>.<43 characters>, as "
            "`flwrmtls enroll token create` prints it)"
        )
    return text.strip()


def _retrying(retry: RetryPolicy, stop: threading.Event, call: Callable[[], _T]) -> _T:
    clock = SystemClock()
    failures, started = 0, clock.monotonic()
    while True:
        try:
            return call()
        except LinkUnreachable as error:
            failures += 1
            waited = clock.monotonic() - started
            if retry.exhausted(failures, waited):
                raise LinkUnreachable(
                    f"gave up enrolling after {failures} attempt(s) over {waited:.0f}s: {error}"
                ) from None
            delay = retry.delay(failures)
            log.warning("%s; retrying in %.0fs", error, delay)
            if stop.wait(delay):
                raise EnrollmentStopped from None


def _ca(args: argparse.Namespace, address: str, retry: RetryPolicy, stop: threading.Event) -> None:
    """With ``--ca-cert-hash``: the CA at ``--root-certificates``, found and written if absent."""
    if args.ca_cert_hash is None:
        return
    expected = parse_ca_hash(args.ca_cert_hash)
    if args.root_certificates is None:
        raise InputError(
            "--ca-cert-hash needs --root-certificates FILE: where the node keeps the CA it "
            "verifies by that hash"
        )
    path = Path(args.root_certificates)
    if path.exists():
        _, certificates = load_ca_bundle(path, "--root-certificates")
        if not any(spki_sha256(certificate) == expected for certificate in certificates):
            raise InputError(
                f"--root-certificates {path} holds no CA with the public key hash {expected} "
                "(--ca-cert-hash): remove the file to find the CA again, or fix the hash"
            )
        return
    log.info("finding the link's CA with public key hash %s at %s", expected, address)
    pem = _retrying(retry, stop, lambda: discover_ca(address, expected))
    write_file(path, pem, secret=False, force=False)
    subject = x509.load_pem_x509_certificate(pem).subject.rfc4514_string()
    log.info("verified the link's CA %s by its hash; wrote it to %s", subject, path)


def _key(path: Path) -> PrivateKey:
    if path.exists():
        key = read_private_key_file(path, "--ssl-client-keyfile")
        log.info("using this site's key in %s (%s)", path, key_fingerprint(key.public_key()))
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    write_file(path, encode_private_key(key, KeyEncoding.PKCS8), secret=True, force=False)
    log.info("made this site's key in %s (%s): it never leaves this machine", path,
             key_fingerprint(key.public_key()))  # fmt: skip
    return key


def _wait_for_approval(
    client: EnrollmentClient,
    token: str,
    answer: Answer,
    identity: str,
    retry: RetryPolicy,
    stop: threading.Event,
) -> bytes:
    """Poll a pending request until an operator decides it, with a progress line now and
    every :data:`_PROGRESS_EVERY` seconds; a denial is EnrollmentRefused."""
    clock = SystemClock()
    started = last = clock.monotonic()
    request_id = answer.request_id
    log.info(
        "waiting for an operator to approve certificate request %d for %s, key %s (on the "
        "link: flwrmtls enroll approve %d)", request_id, identity, answer.key_fingerprint,
        request_id,
    )  # fmt: skip
    while True:
        if stop.wait(_POLL_SECONDS):
            log.info(
                "stopped while certificate request %d waits; started again, this node asks "
                "about it again", request_id,
            )  # fmt: skip
            raise EnrollmentStopped
        current = _retrying(retry, stop, lambda: client.collect(token, request_id))
        if current.chain_pem is not None:
            log.info("certificate request %d approved", request_id)
            return current.chain_pem
        now = clock.monotonic()
        if now - last >= _PROGRESS_EVERY:
            last = now
            log.info(
                "still waiting for an operator to approve certificate request %d (%.0f min): "
                "key %s", request_id, (now - started) / 60, answer.key_fingerprint,
            )  # fmt: skip


def enroll(
    args: argparse.Namespace,
    retry: RetryPolicy,
    stop: threading.Event,
    environ: dict[str, str] | None = None,
) -> bool:
    """Enroll this node if it was given a join token and has no certificate yet (see the
    module); then ``--ssl-client-certfile``/``--ssl-client-keyfile`` and
    ``--root-certificates`` hold what the node joins with. True for a node given a token
    (enrolled now or before): it renews its certificate itself."""
    token = _token(args, dict(os.environ) if environ is None else environ)
    address = enrollment_address(args)
    if token is None and args.ca_cert_hash is None:
        return False
    if args.insecure:
        raise InputError("enrollment needs TLS: drop --insecure")
    _ca(args, address, retry, stop)
    if token is None:
        return False
    certfile, keyfile = args.ssl_client_certfile, args.ssl_client_keyfile
    if certfile is None or keyfile is None:
        raise InputError(
            "a join token needs --ssl-client-certfile and --ssl-client-keyfile: where the node "
            "writes the certificate it gets and the key it makes"
        )
    token_id = token.split(".")[0]
    if Path(certfile).exists():
        log.info("%s exists: this node enrolled before; join token %s is not used", certfile,
                 token_id)  # fmt: skip
        return True
    if args.root_certificates is None:
        raise InputError(
            "enrollment needs the CA that verifies the link: --root-certificates FILE, or "
            "--ca-cert-hash sha256:... with --root-certificates naming where to keep it"
        )
    roots, _ = load_ca_bundle(Path(args.root_certificates), "--root-certificates")
    pending = _pending(Path(keyfile)) if Path(keyfile).exists() else None
    key = _key(Path(keyfile))
    client = EnrollmentClient(address, roots)
    try:
        if pending is not None:
            request_id, binding = pending
            log.info("asking %s again about certificate request %d for %s (made before this "
                     "node stopped)", address, request_id, binding.describe())  # fmt: skip
            answer = Answer(request_id, None, key_fingerprint(key.public_key()))
        else:
            described = _retrying(retry, stop, lambda: client.describe(token))
            binding = described.binding
            log.info("join token %s allows %s; asking %s for a certificate", token_id,
                     binding.describe(), address)  # fmt: skip
            csr = build_csr(key, binding)
            answer = _retrying(retry, stop, lambda: client.request(token, csr))
        chain = answer.chain_pem
        if chain is None:
            if pending is None:
                _keep_pending(Path(keyfile), answer.request_id, binding)
            try:
                chain = _wait_for_approval(client, token, answer, binding.describe(), retry, stop)
            except EnrollmentRefused:  # denied: a new token starts afresh
                pending_file(Path(keyfile)).unlink(missing_ok=True)
                raise
    finally:
        client.close()
    leaf = check_chain(chain, key, binding)
    write_file(Path(certfile), chain, secret=False, force=False)
    pending_file(Path(keyfile)).unlink(missing_ok=True)
    log.info(
        "enrolled as %s: certificate serial %x, valid until %s UTC, written to %s",
        leaf.subject.rfc4514_string(), leaf.serial_number,
        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M}", certfile,
    )  # fmt: skip
    return True
