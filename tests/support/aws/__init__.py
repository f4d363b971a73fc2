"""Test support for aws."""
