"""The real Cloudflare lists, as the core sees them (the contract's own copy)."""

from __future__ import annotations

from cfallow.testing import ADDED_2021, CURRENT, OLD, REMOVED_2021

__all__ = ["ADDED_2021", "CURRENT", "OLD", "REMOVED_2021"]

assert CURRENT - OLD == ADDED_2021 and OLD - CURRENT == REMOVED_2021
