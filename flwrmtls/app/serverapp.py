"""ServerApp: the function that runs on the link's side for one run.

::

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        ...

One ``main`` per app; registering a second one is an error. Calling the app runs it.
"""

from __future__ import annotations

from collections.abc import Callable

from flwrmtls.app.context import Context
from flwrmtls.app.grid import Grid

__all__ = ["ServerApp", "ServerAppMain"]

ServerAppMain = Callable[[Grid, Context], object]
"""``main(grid, context)``; what it returns (e.g. a strategy Result) is kept as the run's result."""


class ServerApp:
    def __init__(self) -> None:
        self._main: ServerAppMain | None = None

    def main(self) -> Callable[[ServerAppMain], ServerAppMain]:
        """Decorator: register ``fn(grid, context)`` as what this app does."""

        def register(fn: ServerAppMain) -> ServerAppMain:
            if not callable(fn):
                raise TypeError("@app.main() decorates a function taking (grid, context)")
            if self._main is not None:
                raise ValueError(
                    f"this ServerApp already has a main function ({self._main.__name__}); "
                    "register one only"
                )
            self._main = fn
            return fn

        return register

    def __call__(self, grid: Grid, context: Context) -> object:
        if self._main is None:
            raise RuntimeError("this ServerApp has no main function: decorate one with @app.main()")
        return self._main(grid, context)
