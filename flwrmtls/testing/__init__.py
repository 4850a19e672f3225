"""Test doubles and fixtures that ship with flwrmtls: a fake clock, a PKI in a directory,
a running link. Part of the product, so users can test their own deployments with them."""
