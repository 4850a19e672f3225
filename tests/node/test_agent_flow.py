"""The node's agent on its own: a fake Fleet client, fake runs and the fake clock.

The agent against a real link is tests/node/test_agent.py's (what ends a node, what it
retries, over real TLS) and tests/node/test_handoff.py's; here its flow, step by step: it
activates, heartbeats at the link's interval, pulls, hands work over and keeps what it could
not hand over, retries an unreachable link within its bounds (decided on the fake clock), and
stops cleanly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from flwrmtls.errors import LinkUnreachable, Refused
from flwrmtls.fleet.client import Pulled, RunUnavailable, Session, SessionEnded
from flwrmtls.node.agent import NodeAgent, RetryPolicy
from flwrmtls.proto import common_pb2
from flwrmtls.testing.clock import FakeClock

QUICK = RetryPolicy(max_retries=3, initial_delay=0.001, max_delay=0.002)


def session(number: int = 1, interval: float = 0.02) -> Session:
    return Session(node_id=7, session_id=f"s{number}", identity="CN=n", heartbeat_interval=interval)


def message(message_id: str, run_id: int = 1) -> common_pb2.Message:
    return common_pb2.Message(message_id=message_id, run_id=run_id)


@dataclass
class FakeFleet:
    """The link as the agent sees it: scripted answers, every call recorded."""

    clock: FakeClock = field(default_factory=FakeClock)
    activations: list[Session | Exception] = field(default_factory=list)
    pulls: list[Pulled | Exception] = field(default_factory=list)
    heartbeats: list[float | Exception] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    acked: list[list[str]] = field(default_factory=list)
    activate_takes: float = 0.0
    """Seconds each activation takes on the fake clock."""
    idle: threading.Event = field(default_factory=threading.Event)
    """Set when the pull script has run out (the agent then waits in a long poll)."""

    def activate(self) -> Session:
        self.calls.append("activate")
        self.clock.advance(self.activate_takes)
        answer = self.activations.pop(0) if self.activations else session()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def heartbeat(self, session: Session) -> float:
        self.calls.append(f"heartbeat {session.session_id}")
        answer = self.heartbeats.pop(0) if self.heartbeats else session.heartbeat_interval
        if isinstance(answer, Exception):
            raise answer
        return answer

    def pull(
        self,
        session: Session,
        *,
        wait: float,
        active_run_ids: Sequence[int],
        acked: Sequence[str] = (),
        cancel: Sequence[threading.Event] = (),
    ) -> Pulled | None:
        self.calls.append(f"pull {session.session_id}")
        self.acked.append(list(acked))
        if self.pulls:
            answer = self.pulls.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        self.idle.set()
        for _ in range(200):  # a long poll with nothing to hand out, cut by a cancel
            if any(event.is_set() for event in cancel):
                return None
            threading.Event().wait(0.01)
        return Pulled([], [])

    def deactivate(self, session: Session) -> None:
        self.calls.append(f"deactivate {session.session_id}")


@dataclass
class FakeRuns:
    """The node's runs as the agent sees them."""

    session: Session | None = None
    delivered: list[str] = field(default_factory=list)
    refuse: dict[str, Exception] = field(default_factory=dict)
    """Message id -> what delivering it raises (once)."""
    ended: list[int] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    stopped: bool = False

    def active_run_ids(self) -> list[int]:
        return [1]

    def pending_acks(self, limit: int = 1000) -> list[str]:
        return list(self.acks)

    def acks_sent(self, message_ids: list[str]) -> None:
        self.acks = [a for a in self.acks if a not in message_ids]

    def end_runs(self, run_ids: list[int]) -> None:
        self.ended += run_ids

    async def deliver(self, message: common_pb2.Message) -> bool:
        problem = self.refuse.pop(message.message_id, None)
        if problem is not None:
            raise problem
        self.delivered.append(message.message_id)
        return True

    async def shutdown(self) -> None:
        self.stopped = True


async def serve(agent: NodeAgent, fleet: FakeFleet, until: str) -> None:
    """Run the agent until ``until`` holds (then stop it), at most 10 s."""
    task = asyncio.create_task(agent.run())
    for _ in range(1000):
        if until == "idle" and fleet.idle.is_set():
            break
        if until == "ended" and task.done():
            break
        await asyncio.sleep(0.01)
    agent.request_stop()
    await asyncio.wait_for(task, 10)


def test_it_activates_heartbeats_pulls_and_leaves_cleanly() -> None:
    fleet, runs = FakeFleet(heartbeats=[0.02, 0.02]), FakeRuns(acks=["m0"])
    agent = NodeAgent(fleet, apps=runs, retry=QUICK, clock=fleet.clock)
    fleet.pulls = [Pulled([message("m1")], [3])]

    async def scenario() -> None:
        task = asyncio.create_task(agent.run())
        while fleet.calls.count("heartbeat s1") < 2:
            await asyncio.sleep(0.01)
        assert agent.connected
        agent.request_stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert fleet.calls[0] == "activate"
    assert runs.session == session()
    assert fleet.acked[0] == ["m0"]  # what was handed off, acknowledged with the next pull
    assert runs.delivered == ["m1"]
    assert runs.ended == [3]  # the link said run 3 ended
    assert fleet.calls[-1] == "deactivate s1"
    assert runs.stopped
    assert not agent.connected


def test_an_unreachable_link_is_retried_then_given_up_on_within_max_retries() -> None:
    down = LinkUnreachable("no link is listening")
    fleet = FakeFleet(activations=[down, down, down, down, down])
    agent = NodeAgent(fleet, retry=QUICK, clock=fleet.clock)
    with pytest.raises(LinkUnreachable, match="gave up after 4 attempt"):
        asyncio.run(agent.run())
    assert fleet.calls == ["activate"] * 4
    # The control: back before the retries run out, the node serves.
    fleet = FakeFleet(activations=[down, down, session()])
    agent = NodeAgent(fleet, retry=QUICK, clock=fleet.clock)
    asyncio.run(serve(agent, fleet, "idle"))
    assert fleet.calls[:4] == ["activate", "activate", "activate", "pull s1"]


def test_max_wait_time_is_measured_on_the_clock() -> None:
    down = LinkUnreachable("no link is listening")
    fleet = FakeFleet(activations=[down] * 10, activate_takes=10.0)
    policy = RetryPolicy(max_wait_time=25.0, initial_delay=0.001, max_delay=0.002)
    agent = NodeAgent(fleet, retry=policy, clock=fleet.clock)
    with pytest.raises(LinkUnreachable, match=r"gave up after 4 attempt\(s\) over 30s"):
        asyncio.run(agent.run())


def test_a_session_the_link_forgot_is_activated_again_a_superseded_one_ends_the_node() -> None:
    fleet = FakeFleet(activations=[session(1), session(2)])
    fleet.pulls = [SessionEnded("unknown session", superseded=False)]
    agent = NodeAgent(fleet, retry=QUICK, clock=fleet.clock)
    asyncio.run(serve(agent, fleet, "idle"))
    assert fleet.calls[:4] == ["activate", "pull s1", "activate", "pull s2"]
    fleet = FakeFleet(pulls=[SessionEnded("superseded by another", superseded=True)])
    agent = NodeAgent(fleet, retry=QUICK, clock=fleet.clock)
    with pytest.raises(SessionEnded, match="superseded"):
        asyncio.run(agent.run())


def test_a_failed_heartbeat_cuts_the_long_poll_and_the_node_activates_again() -> None:
    fleet = FakeFleet(activations=[session(1), session(2, interval=60.0)])
    fleet.heartbeats = [LinkUnreachable("the link went away")]
    agent = NodeAgent(fleet, retry=QUICK, clock=fleet.clock)

    async def scenario() -> None:
        task = asyncio.create_task(agent.run())
        while "pull s2" not in fleet.calls:
            await asyncio.sleep(0.01)
        agent.request_stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert fleet.calls[:5] == ["activate", "pull s1", "heartbeat s1", "activate", "pull s2"]


def test_a_refused_heartbeat_ends_the_node() -> None:
    fleet = FakeFleet(heartbeats=[Refused("revoked")])
    agent = NodeAgent(fleet, retry=QUICK, clock=fleet.clock)
    with pytest.raises(Refused, match="revoked"):
        asyncio.run(agent.run())


def test_what_could_not_be_handed_over_is_kept_and_handed_over_first() -> None:
    fleet = FakeFleet(activations=[session(1), session(2)])
    fleet.pulls = [Pulled([message("m1"), message("m2"), message("x", run_id=9)], [])]
    runs = FakeRuns(refuse={"m1": LinkUnreachable("the link went away")})
    agent = NodeAgent(fleet, apps=runs, retry=QUICK, clock=fleet.clock)
    asyncio.run(serve(agent, fleet, "idle"))
    # m1 failed with the link: the batch was kept, and handed over once active again, in order.
    assert runs.delivered == ["m1", "m2", "x"]
    assert fleet.calls[:4] == ["activate", "pull s1", "activate", "pull s2"]
    # A run the link says is over for this node: its held messages go, the others stay.
    fleet = FakeFleet(activations=[session(1), session(2)])
    fleet.pulls = [Pulled([message("a", run_id=4), message("b", run_id=4), message("c")], [])]
    runs = FakeRuns(refuse={"a": RunUnavailable("run 4 is not active", ended=True)})
    agent = NodeAgent(fleet, apps=runs, retry=QUICK, clock=fleet.clock)
    asyncio.run(serve(agent, fleet, "idle"))
    assert runs.delivered == ["c"]
    assert fleet.calls[:3] == ["activate", "pull s1", "pull s1"]  # the session went on
