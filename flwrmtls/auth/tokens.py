"""Per-run tokens for app processes (ServerApp beside the link, ClientApp beside a node).

Rules:

* A token is 256 random bits (``secrets.token_urlsafe(32)``), handed to the child process on
  its standard input, never on its command line or in its environment.
* Only the token's SHA-256 is stored; a presented token is hashed, looked up by hash, and the
  stored hash compared with ``hmac.compare_digest`` (constant time).
* A token names one run and one kind of process. It stops working when its run ends (the
  store deletes the run's hashes) and never works for another run or the other API.
* Every AppIo call carries it in the ``flwrmtls-run-token`` metadata; a call without one, or
  with an unknown one, is refused UNAUTHENTICATED by the same interceptor as certificates.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from datetime import datetime

from flwrmtls.auth.authenticator import (
    AuthenticationFailed,
    AuthMethod,
    CallCredentials,
    Principal,
    RefusalReason,
)
from flwrmtls.auth.identity import PrincipalKind
from flwrmtls.wire.metadata import RUN_TOKEN_KEY

__all__ = [
    "TOKEN_METADATA_KEY",
    "MemoryTokenStore",
    "TokenAuthenticator",
    "TokenRecord",
    "new_token",
    "token_hash",
]

TOKEN_METADATA_KEY = RUN_TOKEN_KEY

TokenRecord = tuple[bytes, int, str]
"""(stored SHA-256, run id, kind: "serverapp" or "clientapp")."""


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


_KINDS = {"serverapp": PrincipalKind.SERVERAPP, "clientapp": PrincipalKind.CLIENTAPP}


class TokenAuthenticator:
    """Authenticate app processes by their run token."""

    name = "run-token"

    def __init__(self, lookup: Callable[[bytes], TokenRecord | None]) -> None:
        self._lookup = lookup

    def authenticate(self, call: CallCredentials, now: datetime) -> Principal:
        if not call.token:
            raise AuthenticationFailed(
                RefusalReason.NO_TOKEN, f"missing run token ({TOKEN_METADATA_KEY} metadata)"
            )
        digest = token_hash(call.token)
        found = self._lookup(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise AuthenticationFailed(
                RefusalReason.INVALID_TOKEN, "invalid run token, or its run has ended"
            )
        _, run_id, kind = found
        principal_kind = _KINDS[kind]
        return Principal(
            kind=principal_kind,
            auth_method=AuthMethod.TOKEN,
            identity=f"{kind} of run {run_id}",
            organisation="",
            node_id=None,
            not_after=None,
            fingerprint="",
            run_id=run_id,
        )

    def recheck(self, call: CallCredentials, principal: Principal, now: datetime) -> None:
        """The token is still valid: its run has not ended."""
        self.authenticate(call, now)


class MemoryTokenStore:
    """Token hashes held in memory (a node's ClientApp tokens)."""

    def __init__(self) -> None:
        self._by_hash: dict[bytes, TokenRecord] = {}
        self._lock = threading.Lock()

    def issue(self, run_id: int, kind: str) -> str:
        token = new_token()
        digest = token_hash(token)
        with self._lock:
            self._by_hash[digest] = (digest, run_id, kind)
        return token

    def end_run(self, run_id: int) -> None:
        with self._lock:
            for digest in [d for d, record in self._by_hash.items() if record[1] == run_id]:
                del self._by_hash[digest]

    def lookup(self, digest: bytes) -> TokenRecord | None:
        return self._by_hash.get(digest)
