"""The Fail2Ban backend: Cloudflare's ranges in jails' ignoreip, live and in a drop-in."""

from .backend import Fail2banBackend

__all__ = ["Fail2banBackend"]
