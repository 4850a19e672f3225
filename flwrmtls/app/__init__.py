"""What app authors import: records, messages, the ServerApp and ClientApp, strategies.

::

    from flwrmtls.app import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict

See docs/apps.md for how to write, bundle and run an app.
"""

from flwrmtls.app.clientapp import ClientApp
from flwrmtls.app.context import Context
from flwrmtls.app.grid import Grid, NotEnoughNodes
from flwrmtls.app.message import Error, ErrorCode, Message, MessageType, Metadata
from flwrmtls.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwrmtls.app.serverapp import ServerApp
from flwrmtls.app.strategy import FedAvg, Result, StrategyError

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
