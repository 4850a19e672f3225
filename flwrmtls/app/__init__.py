"""What app authors import: records, messages, the ServerApp and ClientApp, strategies.

::

    from flwrmtls.app import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

See docs/apps.md for how to write, bundle and run an app.

The names are imported on first use (PEP 562), so that what only needs
``flwrmtls.app.bundle`` or ``flwrmtls.app.bundling`` (the CLI bundling an app, the link
checking one, a node reading one) does not pay for numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flwrmtls.app.clientapp import ClientApp
    from flwrmtls.app.context import Context
    from flwrmtls.app.grid import Grid, NotEnoughNodes
    from flwrmtls.app.message import Error, ErrorCode, Message, MessageType, Metadata
    from flwrmtls.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from flwrmtls.app.serverapp import ServerApp
    from flwrmtls.app.strategy import FedAvg, Result, StrategyError

_HOMES = {
    "ArrayRecord": "flwrmtls.app.records",
    "ClientApp": "flwrmtls.app.clientapp",
    "ConfigRecord": "flwrmtls.app.records",
    "Context": "flwrmtls.app.context",
    "Error": "flwrmtls.app.message",
    "ErrorCode": "flwrmtls.app.message",
    "FedAvg": "flwrmtls.app.strategy",
    "Grid": "flwrmtls.app.grid",
    "Message": "flwrmtls.app.message",
    "MessageType": "flwrmtls.app.message",
    "Metadata": "flwrmtls.app.message",
    "MetricRecord": "flwrmtls.app.records",
    "NotEnoughNodes": "flwrmtls.app.grid",
    "RecordDict": "flwrmtls.app.records",
    "Result": "flwrmtls.app.strategy",
    "ServerApp": "flwrmtls.app.serverapp",
    "StrategyError": "flwrmtls.app.strategy",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flwrmtls.app' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "ArrayRecord",
    "ClientApp",
    "ConfigRecord",
    "Context",
    "Error",
    "ErrorCode",
    "FedAvg",
    "Grid",
    "Message",
    "MessageType",
    "Metadata",
    "MetricRecord",
    "NotEnoughNodes",
    "RecordDict",
    "Result",
    "ServerApp",
    "StrategyError",
]
