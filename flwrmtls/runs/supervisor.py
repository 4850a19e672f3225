"""How the link and the node start an app process (a ServerApp's, a ClientApp's).

Rules:

* An app process starts isolated (:func:`app_process_command`): ``python -I`` (no current
  or script directory on ``sys.path``, no ``PYTHON*`` variables, no user site-packages) and
  ``-u`` (its output reaches the run's log line by line), in the working directory ``/``
  (:data:`APP_PROCESS_CWD`). A ``grpc.py`` left in the link's or node's working directory is
  never imported. What it does once it has its run is :mod:`flwrmtls.appio.process`.
* It runs with the interpreter of its run's app environment when its app's requirements
  needed one (:mod:`flwrmtls.runs.appenvs`), else with the link's or node's own.
* The run token goes to it on standard input, never on its command line or in its
  environment.
"""

from __future__ import annotations

import sys

__all__ = ["APP_PROCESS_CWD", "app_process_command"]

APP_PROCESS_CWD = "/"
"""Where an app process starts: a directory nobody else can write, before it has a run."""


def app_process_command(module: str, *args: str, python: str = "") -> list[str]:
    """The command line that starts the app process ``module`` isolated (see the rules), with
    ``python``: the interpreter of the run's app environment (:mod:`flwrmtls.runs.appenvs`),
    by default the one running here."""
    return [python or sys.executable, "-I", "-u", "-m", module, *args]
