"""The nftables backend: a table (or sets) cfallow owns, changed in one atomic transaction."""

from .backend import NftablesBackend

__all__ = ["NftablesBackend"]
