"""Test support for proof."""
