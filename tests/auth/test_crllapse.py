"""When a CRL in force is said to lapse soon, and how often the link says so.

As the machine (a renewal job that stopped): the warning must come days before the link fails
closed, and never for a CRL renewed on a sane schedule (the control beside each warning).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from flwrmtls.auth.crlcoverage import CoverageRow, CoverageState
from flwrmtls.auth.crllapse import (
    DEFAULT_LAPSE_WARNING,
    LapseLog,
    lapse_warning,
    lapse_window,
    with_lapse_warning,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def row(
    *, issued: timedelta, lifetime: timedelta, state: CoverageState = CoverageState.CURRENT
) -> CoverageRow:
    """A CRL issued ``issued`` ago, valid for ``lifetime``."""
    this_update = NOW - issued
    return CoverageRow(
        issuer="CN=Issuing CA", scope="all certificates", kind="complete", sources=("crl.pem",),
        crl_number=7, delta_crl_number=None, this_update=this_update,
        next_update=this_update + lifetime, state=state, detail="",
    )  # fmt: skip


def test_the_window_is_at_most_a_quarter_of_the_lifetime() -> None:
    assert lapse_window(NOW, NOW + 7 * DAY, DEFAULT_LAPSE_WARNING) == 42 * HOUR
    assert lapse_window(NOW, NOW + DAY, DEFAULT_LAPSE_WARNING) == 6 * HOUR
    assert lapse_window(NOW, NOW + 30 * DAY, DEFAULT_LAPSE_WARNING) == 48 * HOUR
    assert lapse_window(None, NOW + DAY, DEFAULT_LAPSE_WARNING) == 48 * HOUR


@pytest.mark.parametrize(
    ("issued", "lifetime", "warns"),
    [
        (1 * DAY, 7 * DAY, False),  # renewed daily (the documented schedule): never warns
        (5 * DAY, 7 * DAY, False),  # 48 h left, window 42 h
        (5 * DAY + 7 * HOUR, 7 * DAY, True),  # 41 h left: the renewal stopped five days ago
        (6 * DAY + 23 * HOUR, 7 * DAY, True),  # an hour left
        (17 * HOUR, DAY, False),  # a day-long CRL renewed hourly: 7 h left, window 6 h
        (19 * HOUR, DAY, True),  # ... and 5 h left
        (28 * DAY, 30 * DAY, True),  # a monthly CRL: 48 h left, window 48 h
    ],
)
def test_when_a_crl_in_force_warns(issued: timedelta, lifetime: timedelta, warns: bool) -> None:
    warning = lapse_warning(row(issued=issued, lifetime=lifetime), NOW, DEFAULT_LAPSE_WARNING)
    assert (warning is not None) is warns
    if warning is not None:
        assert warning.startswith("expires in ")
        assert "renew it before (`flwrmtls ca crl`, or your CA's)" in warning


@pytest.mark.parametrize(
    ("state", "warns"),
    [
        (CoverageState.CURRENT, True),
        (CoverageState.KEPT, True),  # its file vanished: in force until next update, then out
        (CoverageState.EXPIRED, False),  # already refusing: revocation.py logs that
        (CoverageState.FAILING_CLOSED, False),
        (CoverageState.NOT_CHECKED, False),
    ],
)
def test_only_crls_in_force_warn(state: CoverageState, warns: bool) -> None:
    lapsing = row(issued=6 * DAY + 20 * HOUR, lifetime=7 * DAY, state=state)
    assert (lapse_warning(lapsing, NOW, DEFAULT_LAPSE_WARNING) is not None) is warns


def test_a_shorter_flag_narrows_the_window() -> None:
    lapsing = row(issued=5 * DAY + 12 * HOUR, lifetime=7 * DAY)  # 36 h left
    assert lapse_warning(lapsing, NOW, DEFAULT_LAPSE_WARNING) is not None
    assert lapse_warning(lapsing, NOW, 24 * HOUR) is None


def test_the_link_logs_on_entry_then_hourly_until_renewed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lapse_log = LapseLog()
    lapsing = with_lapse_warning(row(issued=6 * DAY, lifetime=7 * DAY), NOW, DEFAULT_LAPSE_WARNING)
    fresh = with_lapse_warning(row(issued=HOUR, lifetime=7 * DAY), NOW, DEFAULT_LAPSE_WARNING)
    assert fresh.expiry_warning == ""  # the control
    with caplog.at_level(logging.WARNING, logger="flwrmtls.auth.revocation"):
        assert len(lapse_log.log_due([lapsing, fresh], NOW)) == 1
        assert lapse_log.log_due([lapsing, fresh], NOW + 59 * timedelta(minutes=1)) == []
        assert len(lapse_log.log_due([lapsing], NOW + HOUR)) == 1
        assert lapse_log.log_due([fresh], NOW + 2 * HOUR) == []  # renewed: quiet
        assert len(lapse_log.log_due([lapsing], NOW + 2 * HOUR)) == 1  # lapsing again: at once
    assert len(caplog.records) == 3
    assert caplog.records[0].getMessage() == (
        "CRL for issuer CN=Issuing CA (all certificates) expires in 24 h (next update "
        "2030-01-02 00:00 UTC): renew it before (`flwrmtls ca crl`, or your CA's), or the link "
        "refuses every certificate of this issuer from then on"
    )
