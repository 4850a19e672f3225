"""Not used: the scale section's nodes are simulated (harness/simnodes.py); a bundle needs one."""

from __future__ import annotations

from flwrmtls.app import ClientApp

app = ClientApp()
