"""Test support for firewalld."""
