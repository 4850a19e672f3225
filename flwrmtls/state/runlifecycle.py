"""The run lifecycle: one table of legal transitions.

Rules:

* A run is ``pending`` from StartRun until its ServerApp process has started, then
  ``running``; it ends ``completed`` (ServerApp returned), ``failed`` (ServerApp raised or exited
  non-zero, could not start, or the link stopped or restarted under it) or ``stopped``
  (``flwrmtls stop``).
* Ended runs never change again; every transition is recorded in the status history with
  its reason and time; an illegal transition raises and changes nothing.
* A run's tokens stop working the moment it ends.
"""

from __future__ import annotations

import enum

__all__ = ["FINAL_STATUSES", "TRANSITIONS", "IllegalTransition", "RunStatus", "check_transition"]


class RunStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


FINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED})

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.STOPPED}),
    RunStatus.RUNNING: frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED}),
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.STOPPED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, run_id: int, current: RunStatus, wanted: RunStatus) -> None:
        super().__init__(f"run {run_id} is {current.value}; it cannot become {wanted.value}")
        self.current = current


def check_transition(run_id: int, current: RunStatus, wanted: RunStatus) -> None:
    if wanted not in TRANSITIONS[current]:
        raise IllegalTransition(run_id, current, wanted)
