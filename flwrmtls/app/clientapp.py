"""ClientApp: what a node does with each message of a run.

::

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        ...
        return Message(content, reply_to=msg)

Rules:

- One handler per message type (``train``, ``evaluate``, ``query``); a second one for the same
  type is an error.
- :meth:`ClientApp.handle` dispatches on ``msg.metadata.message_type``. A type without a
  handler gets an ``UNKNOWN_MESSAGE_TYPE`` error reply.
- A handler must return a reply to the message it was given (``TypeError``/``ValueError``
  otherwise). Exceptions from handlers propagate: the process that runs the ClientApp turns
  them into ``CLIENT_APP_RAISED`` error replies carrying the traceback.
"""

from __future__ import annotations

from collections.abc import Callable

from flwrmtls.app.context import Context
from flwrmtls.app.message import Error, ErrorCode, Message, MessageType

__all__ = ["ClientApp", "Handler"]

Handler = Callable[[Message, Context], Message]


class ClientApp:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def _register(self, message_type: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            if not callable(fn):
                raise TypeError(f"@app.{message_type}() decorates a function taking (msg, context)")
            if message_type in self._handlers:
                existing = self._handlers[message_type].__name__
                raise ValueError(
                    f"this ClientApp already handles {message_type!r} with {existing}; "
                    "register one handler per message type"
                )
            self._handlers[message_type] = fn
            return fn

        return register

    def train(self) -> Callable[[Handler], Handler]:
        """Decorator: handle ``train`` messages."""
        return self._register(MessageType.TRAIN)

    def evaluate(self) -> Callable[[Handler], Handler]:
        """Decorator: handle ``evaluate`` messages."""
        return self._register(MessageType.EVALUATE)

    def query(self) -> Callable[[Handler], Handler]:
        """Decorator: handle ``query`` messages."""
        return self._register(MessageType.QUERY)

    @property
    def message_types(self) -> list[str]:
        """The message types this app handles, in registration order."""
        return list(self._handlers)

    def handle(self, message: Message, context: Context) -> Message:
        message_type = message.metadata.message_type
        handler = self._handlers.get(message_type)
        if handler is None:
            handled = ", ".join(self._handlers) or "none"
            return message.create_error_reply(
                Error(
                    ErrorCode.UNKNOWN_MESSAGE_TYPE,
                    f"this ClientApp does not handle {message_type!r} messages "
                    f"(it handles: {handled})",
                )
            )
        reply = handler(message, context)
        if not isinstance(reply, Message):
            raise TypeError(
                f"the {message_type} handler {handler.__name__} returned "
                f"{type(reply).__name__}, not a Message (return Message(content, reply_to=msg))"
            )
        if reply.metadata.reply_to_message_id != message.metadata.message_id:
            raise ValueError(
                f"the {message_type} handler {handler.__name__} returned a message that is "
                "not a reply to the one it was given (use Message(content, reply_to=msg))"
            )
        return reply
