"""Test support for realip."""
