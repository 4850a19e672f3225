"""Tests of flwrmtls.link."""
