"""flwrmtls: an mTLS-first federated-learning runtime.

A link (``flwrmtls-superlink``) trusts a CA chain; nodes (``flwrmtls-supernode``) and the CLI
(``flwrmtls``) present certificates that CA issued. See docs/ for the security model.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
