"""A run's app environment on this node, and the lines it sends to the run's log on the link.

Rules:

* A run's app may need packages (its bundle's ``[project] dependencies``): they are judged
  when the run is opened (:class:`~flwrmtls.runs.appenvs.AppEnvs`; :meth:`RunEnvs.plan`).
  Met here, the ClientApp runs with the node's interpreter (and its spare process).
  Otherwise its environment is prepared in a worker thread (installed once per set of
  requirements, reused after; :meth:`RunEnvs.prepare`), while its messages wait in its
  queue. When the requirements cannot be met here (installing disabled and one is missing, a
  requirement refused, the install failed), the run is unusable on this node
  (``NodeRun.unusable``, naming the cause). An install in progress is cancelled when its run
  ends or the node stops (``NodeRun.cancel``).
* Each line of progress goes to the node's log and to the run's log on the link
  (``PushLogs``, on the node's current session: ``flwrmtls log`` shows it under the node's
  identity). Best effort: with the link unreachable the rest stay in the node's log only, and
  once the link refuses a run's lines none more are sent (``NodeRun.logs_refused``).
* Everything but the install and the sending of a line runs on the node's event loop, which
  alone changes a run; those two run in worker threads and touch no run.
"""

from __future__ import annotations

import asyncio
import logging

from flwrmtls.app.bundle import bundle_app_config
from flwrmtls.errors import FlwrmtlsError, LinkUnreachable
from flwrmtls.fleet.client import FleetClient, Session, SessionEnded
from flwrmtls.node.linkcalls import LinkCalls
from flwrmtls.node.noderun import NodeRun
from flwrmtls.objects.store import ObjectStore
from flwrmtls.runs.appenvs import AppEnvs, EnvError, EnvPlan

__all__ = ["RunEnvs"]

log = logging.getLogger("flwrmtls.node.clientapps")  # the runs' log


class RunEnvs:
    """Judges and prepares the runs' app environments (``envs`` None: apps run with the
    node's interpreter, their requirements not looked at)."""

    def __init__(
        self, envs: AppEnvs | None, objects: ObjectStore, client: FleetClient, link: LinkCalls
    ) -> None:
        self.envs = envs
        self._objects = objects
        self._client = client
        self._link = link

    async def plan(self, run: NodeRun) -> EnvPlan | None:
        """Judge the run's requirements here: None when its ClientApp can start at once (with
        ``run.python``), the plan of the environment to prepare otherwise (``run.python``
        None); a run that cannot run here is marked ``unusable``, with the reason."""
        envs = self.envs
        if envs is None:
            return None

        def judge() -> EnvPlan:  # reads the bundle, and what is installed here: blocks
            dependencies = bundle_app_config(self._objects.read(run.bundle_hash)).dependencies
            return envs.plan(dependencies, "the bundle's pyproject.toml")

        try:
            plan = await asyncio.to_thread(judge)
        except (FlwrmtlsError, OSError) as error:
            run.unusable = f"cannot run the app: {error}"
            log.error("run %d: %s", run.run_id, run.unusable)
            await self.push_log(run, run.unusable)
            return None
        if envs.ready(plan):
            run.python = envs.python(plan)
            if plan.needs_env:
                line = f"app dependencies: reusing environment {plan.label}"
                log.info("run %d: %s", run.run_id, line)
                await self.push_log(run, line)
            return None
        run.python = None
        return plan

    async def prepare(self, run: NodeRun, plan: EnvPlan) -> None:
        """Build the run's app environment (in a worker thread): then ``run.python`` is its
        interpreter, or, if it failed while the run goes on, ``run.unusable`` says why."""
        assert self.envs is not None
        refused = [run.logs_refused]
        lost = [False]

        def progress(line: str) -> None:  # on pip's thread: the run is the loop's, not touched
            log.info("run %d: %s", run.run_id, line)
            session = self._link.session  # the newest: a rotation may change it meanwhile
            if session is None or refused[0] or lost[0]:
                return
            sent = self.send_log(session, run.run_id, line)
            refused[0] = sent is False
            lost[0] = sent is None  # unreachable: no more waits; the node's log has the lines

        try:
            python = await asyncio.to_thread(self.envs.prepare, plan, progress, run.cancel)
        except (EnvError, OSError) as error:
            run.logs_refused = refused[0]
            if run.ended:
                return
            run.unusable = f"installing the app's dependencies failed: {error}"
            log.error("run %d: %s", run.run_id, run.unusable)
            await self.push_log(run, run.unusable)
            return
        run.logs_refused = refused[0]
        run.python = python

    async def push_log(self, run: NodeRun, line: str) -> None:
        """``line`` to the run's log on the link (best effort: the node's log has it)."""
        session = self._link.session
        if run.logs_refused or session is None:
            return
        sent = await asyncio.to_thread(self.send_log, session, run.run_id, line)
        run.logs_refused = run.logs_refused or sent is False

    def send_log(self, session: Session, run_id: int, line: str) -> bool | None:
        """Send ``line`` to run ``run_id``'s log on the link (blocks): True when sent (or its
        session ended meanwhile: the line is skipped), False when the link refused it (then no
        more are sent), None when the link cannot be reached."""
        try:
            self._client.push_logs(session, run_id, [line])
        except SessionEnded:
            return True
        except LinkUnreachable:
            return None
        except FlwrmtlsError as error:
            log.warning("run %d: the link refused this node's log lines: %s", run_id, error)
            return False
        return True
