"""Test support for nftables."""
