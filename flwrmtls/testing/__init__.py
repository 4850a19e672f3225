"""Test doubles and fixtures that ship with flwrmtls: a fake clock, a PKI in a directory,
a running link, a federation of real processes (``federation``: the flags the end-to-end
tests and the benchmarks share). Part of the product, so users can test their own
deployments with them."""
