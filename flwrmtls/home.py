"""``$FLWRMTLS_HOME``: where flwrmtls keeps what no flag places, for every program alike.

Rules: the environment variable when set, else ``~/.flwrmtls``; ``~`` expanded; read each time
(a test or a wrapper may set it after import). The link keeps its default database and app
environments there, each node its state directory (``supernode/<name>``), the CLI its
``config.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["flwrmtls_home"]


def flwrmtls_home() -> Path:
    """``$FLWRMTLS_HOME``, default ``~/.flwrmtls``."""
    return Path(os.environ.get("FLWRMTLS_HOME", "~/.flwrmtls")).expanduser()
