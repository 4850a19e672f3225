"""The ``flwrmtls`` command line: one module per command group, joined in main.py.

grpc's C core prints its own INFO lines to stderr; the CLI reports failures itself in one
line, so it quiets them unless the user set GRPC_VERBOSITY (before grpc is first imported).
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
