"""The AWS backend: security-group rules (and managed prefix lists) cfallow owns."""

from .backend import AwsBackend

__all__ = ["AwsBackend"]
