"""flwrmtls.expiry: one rule for when a certificate expires soon, one line to say so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flwrmtls.expiry import ExpiryWarning

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_soon_is_less_than_the_warning_left_expired_included() -> None:
    warning = ExpiryWarning(14)
    assert not warning.soon(NOW + timedelta(days=14), NOW)  # exactly the warning left
    assert warning.soon(NOW + timedelta(days=14) - timedelta(seconds=1), NOW)
    assert warning.soon(NOW - timedelta(days=3), NOW)  # expired
    assert not ExpiryWarning(0).soon(NOW + timedelta(seconds=1), NOW)
    assert ExpiryWarning(0.5).soon(NOW + timedelta(hours=11), NOW)


def test_the_line_names_whose_when_how_long_and_what_to_do() -> None:
    warning = ExpiryWarning(14)
    assert warning.line("this node's certificate", NOW + timedelta(days=20), NOW) is None
    line = warning.line("this node's certificate", NOW + timedelta(days=2, hours=12), NOW)
    assert line == (
        "this node's certificate expires on 2030-01-04 00:00 UTC (in 2.5 days): have it reissued"
    )
    expired = warning.line("node CN=a: its certificate", NOW - timedelta(days=1), NOW)
    assert expired == (
        "node CN=a: its certificate expires on 2029-12-31 12:00 UTC (in 0.0 days): have it reissued"
    )
