"""Test support for fail2ban."""
