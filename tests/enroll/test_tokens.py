"""Join tokens as values, and as the link's table keeps them."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import pytest

from flwrmtls.durations import parse_duration
from flwrmtls.enroll.tokens import (
    MAX_TOKEN_TEXT,
    Binding,
    TokenState,
    binding_of,
    new_token,
    parse_token,
    secret_matches,
    state_of,
)
from flwrmtls.errors import InputError
from flwrmtls.state.database import DatabaseError
from flwrmtls.state.enrolltable import RequestState
from flwrmtls.state.linkstate import LinkState

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
SITE = Binding("site-1", organization="Hospital C")


def test_a_token_is_its_id_and_a_secret_and_only_the_right_secret_matches() -> None:
    issued = new_token(SITE, NOW, timedelta(hours=1), "operator")
    parsed = parse_token(issued.text + "\n")  # as a file holds it
    assert parsed is not None
    token_id, secret = parsed
    assert token_id == issued.record.token_id
    assert secret_matches(issued.record, secret)
    other = new_token(SITE, NOW, timedelta(hours=1), "operator")
    assert not secret_matches(issued.record, other.text.split(".")[1])
    assert secret.encode() not in issued.record.secret_hash


@pytest.mark.parametrize(
    "text",
    ["", "0123abcd", "0123abcd.", "0123ABCD." + "a" * 43, "0123abcd." + "a" * 42,
     "0123abcd." + "a" * 43 + "!", "x" * (MAX_TOKEN_TEXT + 1), "0123abcd." + "+" * 43],
)  # fmt: skip
def test_anything_but_a_token_is_no_token(text: str) -> None:
    assert parse_token(text) is None


def test_the_state_of_a_token() -> None:
    record = new_token(SITE, NOW, timedelta(hours=1), "operator").record
    assert state_of(record, NOW) is TokenState.ACTIVE
    assert state_of(record, NOW + timedelta(hours=1)) is TokenState.EXPIRED
    assert state_of(dataclasses.replace(record, used_at=NOW), NOW) is TokenState.USED
    revoked = dataclasses.replace(record, revoked_at=NOW)
    assert state_of(revoked, NOW + timedelta(days=1)) is TokenState.REVOKED


def test_a_token_lives_at_most_a_week_and_binds_only_what_the_ca_would_issue() -> None:
    with pytest.raises(InputError):
        new_token(SITE, NOW, timedelta(days=8), "operator")
    with pytest.raises(InputError):
        new_token(SITE, NOW, timedelta(0), "operator")
    bad: dict[str, str]
    for bad in (
        {"common_name": ""},
        {"common_name": "x" * 65},
        {"common_name": "a", "organizational_unit": "operator"},
        {"common_name": "a", "spiffe_id": "spiffe://td/a/"},
    ):
        with pytest.raises(InputError):
            Binding(**bad)
    spiffe = Binding("a", spiffe_id="spiffe://td/site")
    assert spiffe.describe() == "CN=a, SPIFFE ID spiffe://td/site"


def test_durations() -> None:
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration(" 2D ") == timedelta(days=2)
    for bad in ("", "1", "h", "1.5h", "-1h", "1h30m"):
        with pytest.raises(InputError):
            parse_duration(bad)


def test_a_token_is_used_once_and_a_revoked_or_expired_one_never(database: str) -> None:
    """The table's conditional UPDATE, on both engines: the first use wins, the second finds
    it used; a revoked or expired token cannot be used, and a used one cannot be revoked."""
    state = LinkState(database)
    try:
        first = new_token(SITE, NOW, timedelta(hours=1), "operator").record
        assert state.enroll.add(first)
        assert not state.enroll.add(first)  # its id is taken
        assert state.enroll.use(first.token_id, NOW)
        assert not state.enroll.use(first.token_id, NOW)
        assert not state.enroll.revoke(first.token_id, NOW)
        kept = state.enroll.get(first.token_id)
        assert kept is not None
        assert kept.used_at == NOW
        assert binding_of(kept) == SITE
        revoked = new_token(SITE, NOW, timedelta(hours=1), "operator").record
        state.enroll.add(revoked)
        assert state.enroll.revoke(revoked.token_id, NOW)
        assert not state.enroll.use(revoked.token_id, NOW)
        expired = new_token(SITE, NOW, timedelta(hours=1), "operator").record
        state.enroll.add(expired)
        later = NOW + timedelta(hours=1)
        assert not state.enroll.use(expired.token_id, later)
        assert not state.enroll.revoke(expired.token_id, later)
        assert not state.enroll.use("0badc0de", NOW)
        assert [record.token_id for record in state.enroll.all()] == sorted(
            [first.token_id, revoked.token_id, expired.token_id]
        )
    finally:
        state.close()


def test_two_link_replicas_racing_with_every_token_use_each_once(database: str) -> None:
    """Two link processes on one database (PostgreSQL: several replicas; SQLite: two
    connections to one file), each on its own thread, try every token at once: each token is
    used by exactly one of them (the loser's UPDATE waits for the winner's and then matches
    nothing), and the two together use them all."""
    tokens = [new_token(SITE, NOW, timedelta(hours=1), "operator").record for _ in range(40)]
    replicas = [LinkState(database), LinkState(database)]
    try:
        for record in tokens:
            assert replicas[0].enroll.add(record)
        start = threading.Barrier(len(replicas))
        won: list[list[str]] = [[] for _ in replicas]

        def race(index: int) -> None:
            start.wait(timeout=30)
            for record in tokens:
                if replicas[index].enroll.use(record.token_id, NOW):
                    won[index].append(record.token_id)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(replicas))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        assert sorted(won[0] + won[1]) == sorted(record.token_id for record in tokens)
        assert not set(won[0]) & set(won[1])
    finally:
        for replica in replicas:
            replica.close()


def test_a_request_uses_its_token_in_one_transaction_and_is_decided_once(database: str) -> None:
    """On both engines: a request is kept only with its token used (a second request with the
    token keeps nothing), and is decided once, by the first of two link replicas; a request
    whose INSERT fails leaves its token usable (one transaction)."""
    replicas = [LinkState(database), LinkState(database)]
    try:
        record = new_token(SITE, NOW, timedelta(hours=1), "operator").record
        assert replicas[0].enroll.add(record)

        def submit(replica: LinkState, token_id: str, csr_der: bytes = b"csr") -> int | None:
            return replica.enroll.submit(
                token_id, NOW, csr_der=csr_der, key_fingerprint="ab" * 32, days=30, peer="ipv4:x"
            )

        request_id = submit(replicas[0], record.token_id)
        assert request_id is not None
        assert submit(replicas[1], record.token_id) is None
        assert [r.request_id for r in replicas[1].enroll.requests()] == [request_id]
        assert replicas[1].enroll.decide(
            request_id, RequestState.DENIED, NOW, by="operator-b", reason="not ours"
        )
        assert not replicas[0].enroll.decide(
            request_id, RequestState.ISSUED, NOW, by="operator-a", chain_pem=b"chain", serial="1"
        )
        kept = replicas[0].enroll.request(request_id)
        assert kept is not None
        assert (kept.state, kept.decided_by, kept.reason, kept.chain_pem) == (
            RequestState.DENIED, "operator-b", "not ours", b"",
        )  # fmt: skip
        second = new_token(SITE, NOW, timedelta(hours=1), "operator").record
        assert replicas[0].enroll.add(second)
        with pytest.raises(DatabaseError):  # a NOT NULL column left out: the INSERT fails
            submit(replicas[0], second.token_id, csr_der=None)  # type: ignore[arg-type]
        usable = replicas[1].enroll.get(second.token_id)
        assert usable is not None
        assert usable.used_at is None
        assert submit(replicas[1], second.token_id) is not None
    finally:
        for replica in replicas:
            replica.close()


def test_two_link_replicas_keep_one_renewal_of_an_identity_per_interval(database: str) -> None:
    """Renewals racing for one identity at two link processes on one database: exactly one
    is kept per interval (the other learns when); another identity is not held up, and after
    the interval the identity renews again."""
    replicas = [LinkState(database), LinkState(database)]
    interval = timedelta(minutes=10)
    try:
        start = threading.Barrier(len(replicas))
        outcomes: list[list[datetime | None]] = [[] for _ in replicas]

        def race(index: int) -> None:
            start.wait(timeout=30)
            for attempt in range(20):
                outcomes[index].append(
                    replicas[index].enroll.renewed(
                        "CN=site-1,O=Hospital C",
                        NOW,
                        since=NOW - interval,
                        old_serial="1",
                        new_serial=f"{index}-{attempt}",
                        key_fingerprint="ab",
                        chain_pem=b"",
                        peer="ipv4:127.0.0.1:1",
                    )
                )

        threads = [threading.Thread(target=race, args=(i,)) for i in range(len(replicas))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        kept = [outcome for both in outcomes for outcome in both if outcome is None]
        assert len(kept) == 1
        assert {outcome for both in outcomes for outcome in both if outcome is not None} == {NOW}
        assert replicas[1].enroll.renewed(
            "CN=site-2,O=Hospital C", NOW, since=NOW - interval, old_serial="2",
            new_serial="3", key_fingerprint="cd", peer="ipv4:127.0.0.1:2", chain_pem=b"",
        ) is None  # fmt: skip
        later = NOW + interval + timedelta(seconds=1)
        assert replicas[0].enroll.renewed(
            "CN=site-1,O=Hospital C", later, since=later - interval, old_serial="1",
            new_serial="4", key_fingerprint="ef", peer="ipv4:127.0.0.1:1", chain_pem=b"",
        ) is None  # fmt: skip
        assert replicas[1].enroll.last_renewal("CN=site-1,O=Hospital C") == later
    finally:
        for replica in replicas:
            replica.close()
