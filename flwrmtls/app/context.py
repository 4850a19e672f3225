"""Context: what an app function knows about where it runs.

``node_config`` is the node's ``--node-config`` (empty on the ServerApp side, whose node id is
0); ``run_config`` is the app's ``[tool.flwrmtls.app.config]`` with the run's overrides applied.
``state`` is the app's own scratch space: on a node it lasts from message to message of one
run, so a ClientApp can keep, for example, a local optimizer's state in it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flwrmtls.app.records import RecordDict
from flwrmtls.keyvalues import Value

__all__ = ["Context", "UserConfigValue"]

UserConfigValue = Value
"""A node or run config value: what TOML and ``key=value`` flags give."""


@dataclass
class Context:
    run_id: int
    node_id: int
    node_config: dict[str, UserConfigValue]
    run_config: dict[str, UserConfigValue]
    state: RecordDict = field(default_factory=RecordDict)
