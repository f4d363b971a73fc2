"""The iptables backend: Cloudflare's ranges in a chain cfallow owns (iptables-nft or -legacy)."""

from .backend import IptablesBackend

__all__ = ["IptablesBackend"]
