"""The one long-poll loop (Notifier.long_poll), driven by notifications and the fake clock."""

from __future__ import annotations

import asyncio

from flwrmtls.runs.notify import Notifier
from flwrmtls.testing.clock import FakeClock


def test_an_answer_ready_at_once_is_returned_without_waiting() -> None:
    looks: list[int] = []

    def look() -> list[int]:
        looks.append(1)
        return [7]

    found = asyncio.run(Notifier().long_poll(("node", 1), 30.0, look, clock=FakeClock()))
    assert found == [7]
    assert len(looks) == 1


def test_a_notification_makes_it_look_again() -> None:
    notifier = Notifier()
    stored: list[str] = []

    async def scenario() -> list[str]:
        poll = asyncio.create_task(
            notifier.long_poll(("node", 1), 30.0, lambda: list(stored), clock=FakeClock())
        )
        await asyncio.sleep(0)  # it looked: nothing yet, now it waits
        assert not poll.done()
        notifier.notify(("node", 2))  # another node's news: it keeps waiting
        await asyncio.sleep(0)
        assert not poll.done()
        stored.append("message")
        notifier.notify(("node", 1))
        return await asyncio.wait_for(poll, 5)

    assert asyncio.run(scenario()) == ["message"]


def test_when_its_time_is_up_it_answers_with_what_it_found_last() -> None:
    clock = FakeClock()
    looks: list[int] = []

    def look() -> int:
        looks.append(len(looks))
        clock.advance(8)  # each look finds time has passed
        return len(looks)

    found = asyncio.run(
        Notifier().long_poll(
            ("run", 1), 20.0, look, clock=clock, ready=lambda n: n >= 10, recheck_in=lambda: 0.0
        )
    )
    assert found == 3  # at 8 s and 16 s it was not ready; at 24 s the 20 s were up
    assert asyncio.run(Notifier().long_poll(("nodes",), 0.0, list, clock=clock)) == []


def test_a_recheck_looks_again_without_a_notification() -> None:
    looks: list[int] = []

    def look() -> bool:
        looks.append(1)
        return len(looks) == 3  # e.g. a node found offline on the third look

    found = asyncio.run(
        Notifier().long_poll(("run", 1), 30.0, look, clock=FakeClock(), recheck_in=lambda: 0.0)
    )
    assert found is True
    assert len(looks) == 3
