"""The firewalld backend: ipsets and rich rules cfallow owns, through firewalld's D-Bus API."""

from .backend import FirewalldBackend

__all__ = ["FirewalldBackend"]
