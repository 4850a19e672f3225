"""The revisions (see :mod:`flwrmtls.state.migrations`)."""
