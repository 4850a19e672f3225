"""A run's log: entries stored in the link's state, followers woken when one is added."""

from __future__ import annotations

from flwrmtls.clock import Clock
from flwrmtls.runs.notify import Notifier
from flwrmtls.state.runtable import RunTable

__all__ = ["RunLog"]


class RunLog:
    def __init__(self, runs: RunTable, notifier: Notifier, clock: Clock) -> None:
        self._runs = runs
        self._notifier = notifier
        self._clock = clock

    def add(self, run_id: int, source: str, text: str) -> int:
        seq = self._runs.add_log(run_id, source, text.rstrip("\n"), self._clock.now().timestamp())
        self._notifier.notify(("logs", run_id))
        return seq
