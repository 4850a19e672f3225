"""The node process (``flwrmtls-supernode``).

grpc's C core prints its own INFO lines (e.g. every failed TLS handshake) to stderr; a node
reports failures itself in one line, so it quiets them unless the user set GRPC_VERBOSITY.
This must happen before grpc is first imported, hence here.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
