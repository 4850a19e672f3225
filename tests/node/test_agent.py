"""The node's agent against a real link: what ends a node and what it retries.

A handshake the link closes without a word is retried within the node's bounds, naming both
possibilities (a refusal, or a link restarting) and what the node's own check found; a cause
the node finds in its own certificate, or a refusal the link states, ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flwrmtls.errors import LinkUnreachable, Refused
from flwrmtls.link.server import Link
from flwrmtls.node.agent import NodeAgent, RetryPolicy
from flwrmtls.pki import CertificateAuthority, LeafOptions
from flwrmtls.testing.link import mtls_config, node_client, running_link
from flwrmtls.testing.pki import TestPki

QUICK = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.05)


@contextmanager
def started_link(tmp_path: Path, pki: TestPki) -> Iterator[Link]:
    chain, key = pki.paths("server")
    config = mtls_config(
        tmp_path / "link.db", server_chain=chain, server_key=key,
        client_ca=pki.trust_bundle_path, crl=pki.crl_path,
    )  # fmt: skip
    with running_link(config) as link:
        yield link


def give_up(link: Link, pki: TestPki, chain: Path, key: Path) -> Exception:
    """Run a node agent presenting ``chain``/``key`` until it gives up; its error."""
    client, channel = node_client(link, root_certificates=pki.trust_bundle_path, chain=chain,
                                  key=key)  # fmt: skip
    try:
        with pytest.raises((Refused, LinkUnreachable)) as ended:
            asyncio.run(NodeAgent(client, retry=QUICK).run())
    finally:
        channel.close()
    return ended.value


def assert_serves(link: Link, pki: TestPki, name: str) -> None:
    """Control: a node with a good certificate activates on the same link and keeps going."""
    client, channel = node_client(link, root_certificates=pki.trust_bundle_path,
                                  chain=pki.paths(name)[0], key=pki.paths(name)[1])  # fmt: skip
    agent = NodeAgent(client, retry=QUICK)
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(agent.run())
        except Exception as error:  # reported below
            failed.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    deadline = time.monotonic() + 30
    while agent.session is None and not failed and time.monotonic() < deadline:
        time.sleep(0.05)
    agent.request_stop()
    thread.join(timeout=30)
    channel.close()
    assert not failed, failed
    assert agent.session is not None


def retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]


def test_a_certificate_the_link_closes_on_is_retried_within_the_bounds_naming_both(
    tmp_path: Path, fresh_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing tells this node's refusal apart from a link dying mid-handshake: it must not end
    # the node before its bounds (a link restart would otherwise end every node for good).
    stranger = CertificateAuthority.create(tmp_path / "stranger").issue_node("node-1")
    caplog.set_level(logging.WARNING, logger="flwrmtls.node")
    with started_link(tmp_path, fresh_pki) as link:
        error = give_up(link, fresh_pki, stranger.chain_path, stranger.key_path)
        assert_serves(link, fresh_pki, "node-1")
    assert type(error) is LinkUnreachable
    message = str(error)
    assert message.startswith("gave up after 3 attempt(s) over ")
    assert "closed the connection during the handshake: it may have refused this certificate, " \
        "or be restarting" in message  # fmt: skip
    assert "does not chain to a CA in --root-certificates" in message  # its own check
    assert len(retries(caplog)) == 2
    assert all("may have refused this certificate" in line for line in retries(caplog))


def test_a_certificate_that_expired_since_start_up_ends_the_node_at_once_naming_it(
    tmp_path: Path, fresh_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    # The node started with it valid (say); by the time the link closes its handshake, the
    # node's own check finds the definite cause: final, no retry, the cause named.
    now = datetime.now(UTC)
    expired = fresh_pki.ca.issue_node(
        "expired", organization="Hospital A",
        options=LeafOptions(not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)),
    )  # fmt: skip
    caplog.set_level(logging.WARNING, logger="flwrmtls.node")
    with started_link(tmp_path, fresh_pki) as link:
        error = give_up(link, fresh_pki, expired.chain_path, expired.key_path)
        assert_serves(link, fresh_pki, "node-1")
    assert type(error) is Refused
    assert "this client's own certificate explains why: --ssl-client-certfile: certificate " \
        "expired on" in str(error)  # fmt: skip
    assert retries(caplog) == []


def test_a_refusal_the_link_states_ends_the_node_at_once(
    tmp_path: Path, fresh_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    revoked_chain, revoked_key = fresh_pki.paths("node-2")
    fresh_pki.ca.revoke(certificate_file=revoked_chain)
    caplog.set_level(logging.WARNING, logger="flwrmtls.node")
    with started_link(tmp_path, fresh_pki) as link:
        error = give_up(link, fresh_pki, revoked_chain, revoked_key)
        assert_serves(link, fresh_pki, "node-1")
    assert type(error) is Refused
    assert "refused this client: certificate revoked" in str(error)
    assert retries(caplog) == []
