"""Test support for fresh."""
