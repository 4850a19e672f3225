"""The Enrollment API on the link: a new site's certificate request with a join token.

Rules kept here:

* This is the only API a caller reaches without credentials, so every call first pays the
  rate of its peer address (a token bucket per IPv4 address or IPv6 /64, as one host holds a
  whole /64: :func:`~flwrmtls.auth.ratelimit.address_block`; ``--enroll-rate`` calls a
  minute, the same burst): over it, the call is refused (``enroll-rate-limited``,
  UNAVAILABLE) before anything is parsed, and the link logs the address once a minute at
  most. Link replicas sharing a database share the budget: each call paid is announced to
  the others (:mod:`flwrmtls.link.replication`), so an address gets one budget for the
  federation. The listener's own limits (:mod:`flwrmtls.link.server`: a 16 KiB message, few streams)
  come first.
* A token is judged in one order (:meth:`_token_of`, then :meth:`_usable`): its text
  (bounded, then parsed), its id, its secret (constant time), its state. An unknown id and
  a wrong secret get the same answer; used, expired and revoked are said only to the holder
  of the secret.
* A certificate request is judged (:func:`~flwrmtls.enroll.csrcheck.check_request`) before
  the token is used: a request the link does not sign leaves the token usable, so the site
  can correct it. Then the token is used (one conditional UPDATE: one request wins) and the
  certificate signed with the link's sub-CA (:mod:`flwrmtls.enroll.issuer`).
* Every certificate request, and every refused token description or collection, is one
  audit entry: the token id (or the peer's host), the outcome (``ok`` or the refusal code),
  and the Subject, key fingerprint and serial, or why it was refused. Retention ``enrollment``
  only for a caller that proved a token's secret (whatever came of the call); a call without
  one (no token, an unknown id, a wrong secret) goes with the other refusals (``refusal``),
  so nobody without a token can push the record of real enrollments out of the trail,
  however many addresses it calls from. Calls refused for the rate are only counted in the
  log line.
* Each refusal is :class:`~flwrmtls.wire.refusals.CallRefused`, answered by the catalogue.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import grpc
import grpc.aio

from flwrmtls.auth.audit import OUTCOME_OK, AuditRecord, AuditSink, Retention
from flwrmtls.auth.ratelimit import FailureBudget, FailureLimiter, address_block, peer_host
from flwrmtls.clock import Clock
from flwrmtls.enroll.config import EnrollMode
from flwrmtls.enroll.csrcheck import CsrRefused, check_request
from flwrmtls.enroll.issuer import EnrollmentIssuer
from flwrmtls.enroll.requests import LINK_DECIDES, RequestStore, issue
from flwrmtls.enroll.tokens import (
    TOKEN_REFUSALS,
    TokenRecord,
    binding_of,
    parse_token,
    secret_matches,
    state_of,
)
from flwrmtls.proto import enrollment_pb2, enrollment_pb2_grpc
from flwrmtls.state.enrolltable import RequestRecord, RequestState
from flwrmtls.wire.refusals import CallRefused, Refusal

__all__ = ["EnrollmentServicer", "TokenStore", "rate_budget"]

_Context = grpc.aio.ServicerContext[Any, Any]
_PREFIX = "/flwrmtls.proto.Enrollment/"
_UNKNOWN = "unknown join token (or a wrong secret): check the token file, or ask the operator"
_LOGGED_HOSTS = 10_000


class TokenStore(RequestStore, Protocol):
    """Where the link keeps tokens and requests (:mod:`flwrmtls.state.enrolltable`)."""

    def submit(
        self,
        token_id: str,
        now: datetime,
        *,
        csr_der: bytes,
        key_fingerprint: str,
        days: int,
        peer: str,
    ) -> int | None: ...

    def request(self, request_id: int) -> RequestRecord | None: ...


def rate_budget(per_minute: int) -> FailureBudget:
    """``per_minute`` calls a minute per address, as many at once."""
    return FailureBudget(burst=per_minute, per_second=per_minute / 60.0)


@dataclass(frozen=True, slots=True)
class _Attempt:
    method: str
    peer: str
    who: str


class EnrollmentServicer(enrollment_pb2_grpc.EnrollmentServicer):
    def __init__(
        self,
        tokens: TokenStore,
        issuer: EnrollmentIssuer,
        clock: Clock,
        *,
        mode: EnrollMode = EnrollMode.SIGN,
        ca_certificates_pem: bytes,
        certificate_days: int,
        per_minute: int,
        audit: AuditSink | None = None,
        log: Callable[[str], None] = lambda line: None,
        limiter: FailureLimiter | None = None,
    ) -> None:
        """``limiter``: the rate per address (the link's, which its replicas share; a new
        one of ``per_minute`` when None)."""
        self._tokens = tokens
        self._issuer = issuer
        self._mode = mode
        self._clock = clock
        self._ca_pem = ca_certificates_pem
        self._max_days = certificate_days
        self._limiter = limiter or FailureLimiter(clock.monotonic, rate_budget(per_minute))
        self._audit = audit
        self._log = log
        self._logged: OrderedDict[str, float] = OrderedDict()
        """Host -> when its going over the rate was last logged."""

    # --- the calls --------------------------------------------------------------------------

    async def GetCaCertificates(
        self, request: enrollment_pb2.GetCaCertificatesRequest, context: _Context
    ) -> enrollment_pb2.GetCaCertificatesResponse:
        self._pay(context)
        return enrollment_pb2.GetCaCertificatesResponse(ca_certificates_pem=self._ca_pem)

    async def DescribeToken(
        self, request: enrollment_pb2.DescribeTokenRequest, context: _Context
    ) -> enrollment_pb2.DescribeTokenResponse:
        attempt = self._pay(context, "DescribeToken")
        token_id = ""
        try:
            record = self._token_of(request.token)
            token_id = record.token_id
            self._usable(record)
        except CallRefused as refused:
            self._record(attempt, refused.refusal.value, refused.details, token_id=token_id)
            raise
        binding = binding_of(record)
        return enrollment_pb2.DescribeTokenResponse(
            common_name=binding.common_name,
            organization=binding.organization,
            organizational_unit=binding.organizational_unit,
            spiffe_id=binding.spiffe_id,
            subject=binding.subject().rfc4514_string(),
            expires_at=record.expires_at.timestamp(),
            max_days=self._max_days,
        )

    async def RequestCertificate(
        self, request: enrollment_pb2.RequestCertificateRequest, context: _Context
    ) -> enrollment_pb2.RequestCertificateResponse:
        attempt = self._pay(context, "RequestCertificate")
        token_id = ""
        try:
            record = self._token_of(request.token)
            token_id = record.token_id
            self._usable(record)
            binding = binding_of(record)
            try:
                signing = check_request(
                    request.csr_der, binding, days=request.days, max_days=self._max_days
                )
            except CsrRefused as error:
                raise CallRefused(Refusal.CSR_REFUSED, str(error)) from None
            now = self._clock.now()
            request_id = self._tokens.submit(
                record.token_id, now, csr_der=request.csr_der,
                key_fingerprint=signing.key_fingerprint, days=signing.days, peer=attempt.peer,
            )  # fmt: skip
            if request_id is None:  # another request won the race for the token
                current = self._tokens.get(record.token_id) or record
                reason = TOKEN_REFUSALS[state_of(current, now)] or "this join token was used"
                raise CallRefused(Refusal.TOKEN_REFUSED, f"join token {token_id}: {reason}")
        except CallRefused as refused:
            self._record(attempt, refused.refusal.value, refused.details, token_id=token_id)
            raise
        what = f"{binding.describe()} to key {signing.key_fingerprint}"
        if self._mode is EnrollMode.APPROVE:
            self._record(attempt, OUTCOME_OK, f"request {request_id} pending: {what}",
                         token_id=token_id)  # fmt: skip
            self._log(
                f"certificate request {request_id} for {what} (join token {token_id}, from "
                f"{attempt.peer}) waits for an operator: flwrmtls enroll approve {request_id}"
            )
            return enrollment_pb2.RequestCertificateResponse(
                state=RequestState.PENDING.value, key_fingerprint=signing.key_fingerprint,
                request_id=request_id,
            )  # fmt: skip
        stored = self._tokens.request(request_id)
        assert stored is not None
        issued = issue(self._tokens, self._issuer, stored, now, by=LINK_DECIDES,
                       max_days=self._max_days)  # fmt: skip
        assert issued is not None, "a request the link just stored is pending"
        certificate = issued.certificate
        self._record(
            attempt,
            OUTCOME_OK,
            f"request {request_id} issued: serial {certificate.serial_number:x} until "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC for {what}",
            token_id=token_id,
        )
        self._log(
            f"enrolled {certificate.subject.rfc4514_string()} with join token {token_id} "
            f"(key {signing.key_fingerprint}, serial {certificate.serial_number:x}, from "
            f"{attempt.peer})"
        )
        return enrollment_pb2.RequestCertificateResponse(
            state=RequestState.ISSUED.value, certificate_chain_pem=issued.chain_pem,
            key_fingerprint=signing.key_fingerprint, request_id=request_id,
        )  # fmt: skip

    async def CollectCertificate(
        self, request: enrollment_pb2.CollectCertificateRequest, context: _Context
    ) -> enrollment_pb2.RequestCertificateResponse:
        attempt = self._pay(context, "CollectCertificate")
        token_id = ""
        try:
            record = self._token_of(request.token)
            token_id = record.token_id
            stored = self._tokens.request(request.request_id)
            if stored is None or stored.token_id != record.token_id:
                raise CallRefused(
                    Refusal.TOKEN_REFUSED,
                    f"join token {record.token_id} made no request {request.request_id}",
                )
            if stored.state is RequestState.DENIED:
                raise CallRefused(
                    Refusal.REQUEST_DENIED,
                    f"certificate request {stored.request_id} was denied by "
                    f"{stored.decided_by}: {stored.reason or 'no reason given'}",
                )
        except CallRefused as refused:
            self._record(attempt, refused.refusal.value, refused.details, token_id=token_id)
            raise
        return enrollment_pb2.RequestCertificateResponse(
            state=stored.state.value, certificate_chain_pem=stored.chain_pem,
            key_fingerprint=stored.key_fingerprint, request_id=stored.request_id,
        )  # fmt: skip

    # --- what every call goes through -------------------------------------------------------

    def _pay(self, context: _Context, method: str = "GetCaCertificates") -> _Attempt:
        """Take one call from the peer address's budget, or refuse it (not audited)."""
        peer = str(context.peer())
        host = address_block(peer_host(peer))
        wait = self._limiter.wait(host, b"")
        if wait is not None:
            now = self._clock.monotonic()
            last = self._logged.get(host)
            if last is None or now - last >= 60.0:
                self._logged[host] = now
                self._logged.move_to_end(host)
                if len(self._logged) > _LOGGED_HOSTS:
                    self._logged.popitem(last=False)
                self._log(f"enrollment calls from {host} over the rate: refused for {wait:.0f} s")
            raise CallRefused(
                Refusal.ENROLL_RATE_LIMITED,
                f"too many enrollment requests from {host}: retry in {wait:.0f} s",
            )
        self._limiter.failed(host, b"")  # every call costs, whatever comes of it
        return _Attempt(_PREFIX + method, peer, peer_host(peer))

    def _token_of(self, text: str) -> TokenRecord:
        """The token ``text`` names, if its secret is right (whatever its state)."""
        parsed = parse_token(text)
        if parsed is None:
            raise CallRefused(
                Refusal.TOKEN_REFUSED,
                "not a join token (it reads <8 hex digits>.<43 characters>): check the token file",
            )
        token_id, secret = parsed
        record = self._tokens.get(token_id)
        if record is None or not secret_matches(record, secret):
            raise CallRefused(Refusal.TOKEN_REFUSED, _UNKNOWN)
        return record

    def _usable(self, record: TokenRecord) -> None:
        """Refuse a token (its secret proven) that is used, expired or revoked."""
        refusal = TOKEN_REFUSALS[state_of(record, self._clock.now())]
        if refusal is not None:
            raise CallRefused(Refusal.TOKEN_REFUSED, f"join token {record.token_id}: {refusal}")

    def _record(self, attempt: _Attempt, outcome: str, detail: str, *, token_id: str) -> None:
        """One audit entry; ``token_id``: the token whose secret the caller proved (empty:
        none, and the entry goes with the other refusals, see the module)."""
        if self._audit is None:
            return
        record = AuditRecord(
            timestamp=self._clock.now().timestamp(),
            identity=f"join token {token_id}" if token_id else attempt.who,
            auth_method="token",
            method=attempt.method,
            outcome=outcome,
            detail=detail,
            peer=attempt.peer,
            retention=Retention.ENROLLMENT if token_id else Retention.REFUSAL,
        )
        try:
            self._audit(record)
        except Exception as error:  # the trail must not take the call down with it
            self._log(f"audit trail: cannot record {attempt.method} by {record.identity}: {error}")
