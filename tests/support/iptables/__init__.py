"""Test support for iptables."""
