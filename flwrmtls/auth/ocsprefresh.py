"""The link's OCSP refresher: asks responders off the event loop, for the link's OcspStore.

Rules kept here:

* What to ask and when is the store's (:meth:`~flwrmtls.auth.ocspstore.OcspStore.due`): a
  certificate just admitted, an answer due for refresh, a failed attempt due for a retry. The
  refresher looks when the next question is due (at least once a second), and at once when
  the store wants a new certificate.
* Each question runs in a worker thread, never on the event loop, at most
  :data:`MAX_CONCURRENT` at once (more wait their turn): an HTTP POST of the DER request
  (RFC 6960 A.1) with urllib, through an opener that holds only the http and https handlers
  and the proxy the environment names (``https_proxy``, ``no_proxy``): no redirect is
  followed, and no other scheme (``file:``, ``ftp:``, ``data:``) can be fetched even by
  mistake. Connecting and each read wait at most ``--ocsp-timeout``, the whole answer at most
  that plus one read; at most :data:`MAX_ANSWER_BYTES` are read.
* The answer is verified in the same thread (:func:`~flwrmtls.auth.ocspcheck.verify_response`)
  and handed to the store on the event loop. The responder's bytes are never logged: only what
  was wrong with them.
* When an answer changes how calls of a certificate are judged (revoked, no longer usable,
  usable again), the link judges its open calls again at once (``on_change``).

The deadline of a fetch is real time (``time.monotonic``): it bounds sockets, not a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from flwrmtls.auth.ocspcheck import (
    OcspAnswer,
    OcspResponseRefused,
    build_request,
    verify_response,
)
from flwrmtls.auth.ocspstore import OcspQuery, OcspStore
from flwrmtls.clock import Clock

__all__ = ["MAX_ANSWER_BYTES", "MAX_CONCURRENT", "FetchFailed", "OcspRefresher", "ask", "fetch"]

log = logging.getLogger("flwrmtls.link")

MAX_CONCURRENT = 8
MAX_ANSWER_BYTES = 64 << 10
_TICK = 1.0
_SOONEST = 0.05
_READ = 16 << 10


class FetchFailed(Exception):
    """The responder could not be asked, or did not answer in time; ``str()``: one line."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a 3xx then fails as an HTTP error


def _opener() -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        _NoRedirects(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),  # any other scheme: "unknown url type"
    ):
        opener.add_handler(handler)
    return opener


_OPENER = _opener()


def fetch(url: str, body: bytes, timeout: float, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """POST ``body`` to ``url`` and return the answer's bytes; FetchFailed otherwise."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(  # noqa: S310 - the opener has http(s) handlers only
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/ocsp-request",
            "Accept": "application/ocsp-response",
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > limit:
                raise FetchFailed(f"its answer is {int(length)} bytes, over the {limit} taken")
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read1(_READ):
                size += len(chunk)
                if size > limit:
                    raise FetchFailed(f"its answer is over the {limit} bytes taken")
                if time.monotonic() > deadline:
                    raise FetchFailed(f"no complete answer within {timeout:g} s")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as error:
        raise FetchFailed(f"it answered HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise FetchFailed(f"no answer within {timeout:g} s") from None
        raise FetchFailed(f"it cannot be reached ({error.reason})") from None
    except TimeoutError:
        raise FetchFailed(f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise FetchFailed(f"it cannot be reached ({type(error).__name__}: {error})") from None


def ask(query: OcspQuery, clock: Clock, timeout: float) -> OcspAnswer | str:
    """Ask ``query``'s responder and verify its answer (in a worker thread): the answer, or
    why there is none, in one line."""
    try:
        der = fetch(query.url, build_request(query.subject, query.nonce), timeout)
        return verify_response(
            query.subject,
            der,
            nonce=query.nonce,
            nonce_required=query.nonce_required,
            now=clock.now(),
        )
    except (FetchFailed, OcspResponseRefused) as error:
        return str(error)


class OcspRefresher:
    """Runs :meth:`run` as a task of the link's event loop; :meth:`close` when the link stops."""

    def __init__(self, store: OcspStore, clock: Clock, on_change: Callable[[], object]) -> None:
        self._store = store
        self._clock = clock
        self._on_change = on_change
        self._executor = ThreadPoolExecutor(MAX_CONCURRENT, thread_name_prefix="ocsp")
        self._wake = asyncio.Event()
        self._asking: set[asyncio.Task[None]] = set()
        store.wake = self._wake.set

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                for query in self._store.due(self._clock.now()):
                    task = asyncio.create_task(self._ask(query))
                    self._asking.add(task)
                    task.add_done_callback(self._asking.discard)
            except Exception:  # never stop refreshing: a dead refresher would miss revocations
                log.exception("OCSP: choosing what to ask failed; trying again in a second")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._pause())

    def _pause(self) -> float:
        """Seconds until the next question is due, at most a second (a new certificate wakes
        the refresher at once)."""
        due = self._store.next_due()
        if due is None:
            return _TICK
        wait = (due - self._clock.now()).total_seconds()
        return min(_TICK, max(_SOONEST, wait))

    async def _ask(self, query: OcspQuery) -> None:
        loop = asyncio.get_running_loop()
        timeout = self._store.policy.timeout
        try:
            outcome = await loop.run_in_executor(self._executor, ask, query, self._clock, timeout)
        except Exception as error:  # a bug: the attempt failed, the certificate is not admitted
            log.exception("OCSP: asking %s failed", query.url)
            outcome = f"the link failed to ask ({type(error).__name__})"
        try:
            if self._store.apply(query, outcome, self._clock.now()):
                self._on_change()
        except Exception:
            log.exception("OCSP: taking the answer of %s failed", query.url)

    async def close(self) -> None:
        for task in list(self._asking):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)
