"""The failed-authentication budget per peer address, as pure calls with a clock that jumps.

Each refusal sits beside its control: another address, a proven credential, the budget back.
(Through the real link: tests/auth/test_eckey_flood.py.)
"""

from __future__ import annotations

import pytest

from flwrmtls.auth.ratelimit import FailureBudget, FailureLimiter, address_block, peer_host
from flwrmtls.testing.clock import FakeClock

FLOODER = "ipv4:203.0.113.7"
HONEST = "ipv4:198.51.100.2"


def limiter(clock: FakeClock, **budget: float) -> FailureLimiter:
    return FailureLimiter(clock.monotonic, FailureBudget(**budget))  # type: ignore[arg-type]


def test_an_address_over_its_budget_waits_and_other_addresses_do_not() -> None:
    clock = FakeClock()
    limits = limiter(clock, burst=3, per_second=0.5)
    for i in range(3):
        assert limits.wait(FLOODER, f"key-{i}".encode()) is None
        limits.failed(FLOODER, f"key-{i}".encode())
    assert limits.wait(FLOODER, b"key-3") == pytest.approx(2.0)  # one token back in 2 s
    assert limits.wait(HONEST, b"node") is None  # control: another address
    clock.advance(2.0)
    assert limits.wait(FLOODER, b"key-4") is None  # control: its budget came back


def test_success_costs_nothing_and_a_proven_credential_gets_through_a_block() -> None:
    clock = FakeClock()
    limits = limiter(clock, burst=2, per_second=0.1)
    for _ in range(100):
        limits.succeeded(FLOODER, b"honest node")  # a node behind the flooder's NAT
    limits.failed(FLOODER, b"fresh-1")
    limits.failed(FLOODER, b"fresh-2")
    assert limits.wait(FLOODER, b"fresh-3") is not None
    assert limits.wait(FLOODER, b"honest node") is None
    assert limits.wait(FLOODER, b"") is not None  # no credential: nothing to prove
    # Presenting the honest key with a bad signature un-proves it: one verification, not more.
    limits.failed(FLOODER, b"honest node")
    assert limits.wait(FLOODER, b"honest node") is not None
    # The same credential is not proven from another address.
    limits.succeeded(HONEST, b"other")
    limits.failed(HONEST, b"x")
    limits.failed(HONEST, b"y")
    assert limits.wait(HONEST, b"other") is None
    assert limits.wait(HONEST, b"unproven") is not None


def test_memory_is_bounded_by_addresses() -> None:
    clock = FakeClock()
    limits = limiter(clock, burst=1, per_second=0.001, addresses=10)
    for i in range(1000):
        limits.failed(f"ipv4:10.0.{i // 256}.{i % 256}", f"k{i}".encode())
        limits.succeeded(f"ipv4:10.1.{i // 256}.{i % 256}", f"k{i}".encode())
    assert len(limits._buckets) == 10
    assert len(limits._proven) == 10
    assert limits.wait("ipv4:10.0.3.231", b"again") is not None  # the newest are kept


def test_peer_host_drops_the_port_only() -> None:
    assert peer_host("ipv4:127.0.0.1:50412") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:50412") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/socket") == "unix:/tmp/socket"
    with pytest.raises(ValueError, match="positive"):
        FailureBudget(burst=0)


def test_an_address_block_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert address_block("ipv4:203.0.113.7") == "ipv4:203.0.113.7"
    assert address_block("ipv6:[2001:db8:1:2:aaaa::1]") == "ipv6:[2001:db8:1:2::]/64"
    assert address_block("ipv6:[2001:db8:1:2:ffff:ffff:ffff:ffff]") == "ipv6:[2001:db8:1:2::]/64"
    assert address_block("ipv6:[2001:db8:1:3::1]") == "ipv6:[2001:db8:1:3::]/64"
    assert address_block("ipv6:[::ffff:203.0.113.7]") == "ipv4:203.0.113.7"
    assert address_block("ipv6:[fe80::1%eth0]") == "ipv6:[fe80::]/64"
    assert address_block("ipv6:[::1]") == "ipv6:[::]/64"
    assert address_block("unix:/tmp/socket") == "unix:/tmp/socket"
    assert address_block("ipv6:[not an address]") == "ipv6:[not an address]"
