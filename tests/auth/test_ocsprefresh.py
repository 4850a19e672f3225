"""How the link fetches an OCSP answer: real HTTP on 127.0.0.1, each hostile server beside
one that answers plainly.

The URLs a link fetches come from certificates a trusted CA signed (or its operator), but the
server behind one may still be hostile or broken: it must not lead the link elsewhere
(redirects), fill its memory (a huge answer) or hold a worker for long (a trickle).
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from flwrmtls.auth.ocsprefresh import MAX_ANSWER_BYTES, FetchFailed, fetch

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


@contextmanager
def serving(answer: Handler) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 answering every POST with ``answer``: (its URL, the paths
    it was asked for)."""
    asked: list[str] = []

    class RequestHandler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            asked.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer(self)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ocsp", asked
    finally:
        server.shutdown()
        server.server_close()


def plain(body: bytes, *, length: bool = True) -> Handler:
    """Answer ``body``, announced with a Content-Length or (``length=False``) not: then the
    answer ends when the server closes the connection."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/ocsp-response")
        if length:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def redirect(location: str) -> Handler:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def test_a_plain_answer_is_read_whole() -> None:
    with serving(plain(b"\x30\x03\x0a\x01\x00")) as (url, asked):
        assert fetch(url, b"request", timeout=5) == b"\x30\x03\x0a\x01\x00"
        assert asked == ["/ocsp"]


@pytest.mark.parametrize("target", ["file:///etc/passwd", "http://127.0.0.1:{port}/elsewhere"])
def test_a_redirect_is_never_followed(target: str) -> None:
    """As a responder sending the link elsewhere: a local file, or another address."""
    with serving(plain(b"never asked for")) as (elsewhere, asked_elsewhere):
        port = elsewhere.split(":")[2].split("/")[0]
        with (
            serving(redirect(target.format(port=port))) as (url, _),
            pytest.raises(FetchFailed, match="HTTP 302"),
        ):
            fetch(url, b"request", timeout=5)
        assert asked_elsewhere == []


def test_only_http_and_https_can_be_fetched_at_all() -> None:
    """Even a URL that slipped past the checks cannot read a file: the link's opener has no
    handler for it."""
    with pytest.raises(FetchFailed, match="unknown url type"):
        fetch("file:///etc/passwd", b"request", timeout=5)


@pytest.mark.parametrize("length", [True, False], ids=["announced", "unannounced"])
def test_an_answer_over_the_bound_is_not_read(length: bool) -> None:
    with (
        serving(plain(b"x" * (MAX_ANSWER_BYTES + 1), length=length)) as (url, _),
        pytest.raises(FetchFailed, match="over the"),
    ):
        fetch(url, b"request", timeout=5)
    with serving(plain(b"x" * MAX_ANSWER_BYTES, length=length)) as (url, _):
        assert len(fetch(url, b"request", timeout=5)) == MAX_ANSWER_BYTES


def test_a_trickling_answer_is_given_up_at_the_deadline() -> None:
    """As a responder sending a byte at a time, each just inside the read timeout: the
    whole answer has a deadline, not only each read."""

    def trickle(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        try:
            for _ in range(1000):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:
            return  # the link hung up

    with (
        serving(trickle) as (url, _),
        pytest.raises(FetchFailed, match="no complete answer within 1 s"),
    ):
        fetch(url, b"request", timeout=1)


def test_a_server_that_does_not_answer_in_time_is_given_up_on() -> None:
    def silent(handler: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(3)

    with (
        serving(silent) as (url, _),
        pytest.raises(FetchFailed, match=r"no answer within 0\.5 s"),
    ):
        fetch(url, b"request", timeout=0.5)
