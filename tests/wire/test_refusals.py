"""The error catalogue answers what a handler raises, in one place, through a real grpc.aio
server on 127.0.0.1:0: a refusal with its row's status and its code in the trailer, a failure
of the link's storage with its one line (and no code), anything else untouched.

(The node's mapping of the codes: tests/fleet/test_refusals.py; the refusals of each API
through the real link: tests/fleet/test_rejections.py, tests/e2e/test_control_api.py.)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psycopg
import pytest
import sqlalchemy.exc

from flwrmtls.wire.metadata import REFUSAL_KEY
from flwrmtls.wire.refusals import (
    REFUSALS,
    CallRefused,
    Refusal,
    RefusalInterceptor,
    refusal_in,
)

_SERVICE = "flwrmtls.test.Catalogue"


def _serve_and_call(
    raised: BaseException, *, streamed: bool, interceptor: RefusalInterceptor
) -> grpc.aio.AioRpcError:
    """Call a handler that raises ``raised`` behind ``interceptor``; the client's error."""

    async def unary(request: bytes, context: Any) -> bytes:
        raise raised

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"first"
        raise raised

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }

    async def run() -> grpc.aio.AioRpcError:
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    if streamed:
                        call = channel.unary_stream(f"/{_SERVICE}/Stream", None, None)(b"")
                        async for _ in call:
                            pass
                    else:
                        await channel.unary_unary(f"/{_SERVICE}/Unary", None, None)(b"")
                except grpc.aio.AioRpcError as error:
                    return error
                raise AssertionError("the call succeeded")
        finally:
            await server.stop(0)

    return asyncio.run(run())


def _trailer(error: grpc.aio.AioRpcError) -> str:
    trailers: Any = error.trailing_metadata() or ()
    return next((str(value) for key, value in trailers if key == REFUSAL_KEY), "")


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("refusal", list(Refusal))
def test_a_refusal_is_answered_with_its_rows_status_and_its_code(
    refusal: Refusal, streamed: bool
) -> None:
    error = _serve_and_call(
        CallRefused(refusal, "what the handler said"),
        streamed=streamed,
        interceptor=RefusalInterceptor(),
    )
    assert error.code() is REFUSALS[refusal].status
    assert error.details() == "what the handler said"
    assert _trailer(error) == refusal.value
    assert refusal_in(error) is refusal  # what every client reads


def test_without_details_a_refusal_says_its_rows_meaning() -> None:
    error = _serve_and_call(
        CallRefused(Refusal.UNKNOWN_SESSION), streamed=False, interceptor=RefusalInterceptor()
    )
    assert error.details() == REFUSALS[Refusal.UNKNOWN_SESSION].meaning


def test_every_row_is_a_refusal_status_and_every_code_distinct() -> None:
    assert set(REFUSALS) == set(Refusal)
    assert len({refusal.value for refusal in Refusal}) == len(Refusal)
    for row in REFUSALS.values():
        assert row.status not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN)
        assert row.apis
        assert row.meaning


@pytest.mark.parametrize(
    ("failure", "status", "line"),
    [
        (  # SQLite's failure as the state meets it (SQLAlchemy's wrapping): never the SQL
            sqlalchemy.exc.OperationalError(
                "UPDATE nodes SET secret = ?",
                ("s3cr3t",),
                sqlite3.OperationalError("disk I/O error"),
            ),
            grpc.StatusCode.UNAVAILABLE,
            "the link's database failed: disk I/O error; see the link's log",
        ),
        (
            sqlalchemy.exc.IntegrityError(
                "INSERT INTO runs", {}, sqlite3.IntegrityError("UNIQUE constraint failed")
            ),
            grpc.StatusCode.INTERNAL,
            "the link's database failed: UNIQUE constraint failed; see the link's log",
        ),
        (  # PostgreSQL's: a lock held by another link past the lock timeout
            sqlalchemy.exc.OperationalError(
                "SELECT pg_advisory_xact_lock(:key)",
                {},
                psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
            ),
            grpc.StatusCode.UNAVAILABLE,
            "the link's database failed: canceling statement due to lock timeout; see the "
            "link's log",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            grpc.StatusCode.UNAVAILABLE,
            "the link's object storage failed: No space left on device; see the link's log",
        ),
    ],
)
def test_a_failure_of_the_links_storage_is_one_line_logged_once_and_carries_no_code(
    failure: Exception,
    status: grpc.StatusCode,
    line: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    interceptor = RefusalInterceptor(storage_owner="link", caller=lambda: "CN=node-1")
    with caplog.at_level(logging.ERROR, logger="flwrmtls.link"):
        error = _serve_and_call(failure, streamed=False, interceptor=interceptor)
    assert (error.code(), error.details()) == (status, line)
    assert refusal_in(error) is None  # the status says what to do: retry, or not
    [logged] = [r.getMessage() for r in caplog.records if " failed during " in r.getMessage()]
    assert re.search(r"failed during Unary by CN=node-1: .*; answered " + status.name, logged)
    for statement in ("s3cr3t", "UPDATE", "INSERT", "SELECT"):  # nor in the answer's line
        assert statement not in logged
        assert statement not in (error.details() or "")


def _unknown(raised: BaseException, interceptor: RefusalInterceptor) -> grpc.aio.AioRpcError:
    return _serve_and_call(raised, streamed=False, interceptor=interceptor)


def test_any_other_error_goes_through_as_it_is() -> None:
    """A bug must not pass for a refusal or for the machine's trouble."""
    link = RefusalInterceptor(storage_owner="link")
    assert _unknown(ValueError("a bug"), link).code() is grpc.StatusCode.UNKNOWN
    # An OSError that is no disk trouble (a missing file) is no storage failure.
    assert _unknown(FileNotFoundError(errno.ENOENT, "gone"), link).code() is (
        grpc.StatusCode.UNKNOWN
    )
    # The node's ClientAppIo has no storage rows: its storage errors go through, as before.
    node = RefusalInterceptor()
    assert _unknown(sqlite3.OperationalError("x"), node).code() is grpc.StatusCode.UNKNOWN
    # Control: the same interceptor answers a refusal.
    assert _unknown(CallRefused(Refusal.NO_RUN), node).code() is grpc.StatusCode.NOT_FOUND


def _places(pattern: str, allowed: Callable[[Path], bool]) -> list[str]:
    package = Path(__file__).resolve().parents[2] / "flwrmtls"
    found = []
    for path in package.rglob("*.py"):
        if "_pb2" in path.name or allowed(path.relative_to(package)):
            continue
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern in text:
                found.append(f"{path.relative_to(package)}:{number}: {text.strip()}")
    return found


def test_servicers_raise_refusals_and_one_place_answers_them() -> None:
    """No servicer aborts a call itself; only the catalogue does (and the auth interceptor,
    for the credential refusals it answers before any handler runs)."""
    answering = {Path("wire/refusals.py"), Path("auth/interceptor.py")}
    assert _places("context.abort(", lambda path: path in answering) == []
    assert _places('AssertionError("unreachable")', lambda path: False) == []
