"""gRPC health checking (``grpc.health.v1.Health``) for the link and the nodes.

Rules:

* Health has a listener of its own (``--health-api-address``, off by default), in plaintext
  and serving nothing but ``grpc.health.v1.Health``: Kubernetes' ``grpc`` probes (the
  kubelet) speak neither TLS nor client certificates, so they cannot use the mTLS listeners,
  and the app-process APIs stay on loopback where the kubelet does not reach.
  It answers "serving or not" and, for a service that is not, nothing more: no identity,
  no key, no file name (those go to the process's log, once per change).
* The services, one table (:data:`SERVICES`): ``liveness`` is SERVING while the process
  serves at all (its answering proves the event loop or thread is alive); ``readiness`` and
  the empty name (what a probe without ``service`` asks) are SERVING only when every
  readiness check passes: certificates loaded and within their dates, state open,
  serving (the link's listeners started; a node's session with the link active).
* Readiness is judged when asked (each Check; Watch streams are told of changes found then)
  by the checks the process hands in, each a function returning None or what is wrong.
  A check that raises is a failed check, never a crash of the health service.
* On shutdown every service turns NOT_SERVING before the listeners close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer

from flwrmtls.wire.listen import ServerLimits, check_bindable

__all__ = [
    "LIVENESS",
    "READINESS",
    "SERVICES",
    "Check",
    "HealthListener",
    "Verdict",
    "judge",
]

log = logging.getLogger("flwrmtls.health")

Check = Callable[[], str | None]
"""A readiness check: None when it passes, else one line saying what is wrong."""

LIVENESS = "liveness"
READINESS = "readiness"

SERVICES: Mapping[str, str] = {"": READINESS, READINESS: READINESS, LIVENESS: LIVENESS}
"""Service name a probe asks for -> what answers it."""

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

_LIMITS = ServerLimits(max_connections=64, max_concurrent_streams=8, max_receive_bytes=4096)
"""The health listener needs little: a probe's connection, a Watch or two."""


@dataclass(frozen=True, slots=True)
class Verdict:
    ready: bool
    problems: tuple[str, ...]
    """One line per failed check, ``name: what is wrong``."""


def judge(checks: Mapping[str, Check]) -> Verdict:
    """Run every readiness check (pure over their answers); a check that raises fails."""
    problems = []
    for name, check in checks.items():
        try:
            problem = check()
        except Exception as error:  # a broken check is a failed check, not a dead service
            problem = f"the check raised {type(error).__name__}: {error}"
        if problem is not None:
            problems.append(f"{name}: {problem}")
    return Verdict(not problems, tuple(problems))


class _Judge:
    """The readiness checks of one process, logging each change of verdict once."""

    def __init__(self, checks: Mapping[str, Check], what: str) -> None:
        self._checks = dict(checks)
        self._what = what
        self._last: Verdict | None = None

    def statuses(self, alive: bool) -> dict[str, health_pb2.HealthCheckResponse.ServingStatus]:
        verdict = judge(self._checks) if alive else Verdict(False, ("shutting down",))
        if verdict != self._last:
            if verdict.ready:
                log.info("%s ready", self._what)
            else:
                log.warning("%s not ready: %s", self._what, "; ".join(verdict.problems))
            self._last = verdict
        ready = _SERVING if verdict.ready else _NOT_SERVING
        live = _SERVING if alive else _NOT_SERVING
        answers = {READINESS: ready, LIVENESS: live}
        return {service: answers[kind] for service, kind in SERVICES.items()}


class _AsyncServicer(AsyncHealthServicer):  # type: ignore[misc]
    def __init__(self, judge_: _Judge) -> None:
        super().__init__()
        self._judge = judge_
        self.alive = True

    async def refresh(self) -> None:
        for service, status in self._judge.statuses(self.alive).items():
            await self.set(service, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)


class HealthListener:
    """The health listener of the link or a node: a grpc.aio server in the process's event
    loop (both are one asyncio program)."""

    def __init__(self, address: str, checks: Mapping[str, Check], what: str = "link") -> None:
        check_bindable(address)
        self._servicer = _AsyncServicer(_Judge(checks, what))
        self._server = grpc.aio.server(options=_LIMITS.options())
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")

    async def start(self) -> None:
        await self._servicer.refresh()
        await self._server.start()

    async def stop(self, grace: float = 1.0) -> None:
        self._servicer.alive = False
        await self._servicer.refresh()
        await self._servicer.enter_graceful_shutdown()
        await self._server.stop(grace)
