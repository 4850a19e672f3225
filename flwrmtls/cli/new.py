"""``flwrmtls new``: write a new app from the packaged template."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flwrmtls.app.templates import write_app

__all__ = ["new"]


def new(
    app_dir: Annotated[
        Path, typer.Argument(metavar="APP_DIR", help="The directory to create (absent or empty).")
    ],
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="The project's name (default: from the directory name).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create an app from the template.

    The template is FedAvg of a softmax regression on scikit-learn's digits.
    """
    written = write_app(app_dir, name)
    typer.echo(f"created app {written.name!r} (package {written.package}) in {written.app_dir}:")
    for path in written.files:
        typer.echo(f"  {path.as_posix()}")
    shown = app_dir.as_posix()
    typer.echo(
        "\nnext steps:\n"
        "  start each node with its partition, e.g.\n"
        "    flwrmtls-supernode ... --node-config 'partition-id=0 num-partitions=2'\n"
        f"  flwrmtls run {shown} --stream   # the link and nodes install scikit-learn"
    )
