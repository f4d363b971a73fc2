"""The EC2 client of the ``aws`` backend and its one retry policy.

boto3 is imported here, inside functions, so that importing any cfallow module
never loads it. Retries live in one layer, this one (tenacity): botocore's own
retries are switched off (``total_max_attempts = 1``), so attempts do not
multiply (botocore's 3 x ours), the codes retried are exactly the ones listed
here (``RequestLimitExceeded`` is EC2's throttling code), and the path a
stubbed test drives is the path production takes (botocore's retry handler
never sees a stubbed response).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

import cfallow
from cfallow.errors import BackendError
from cfallow.install import extra_hint

#: Error codes worth another try: throttling, then transient server faults.
RETRIED = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
    }
)

#: Error codes of an IAM refusal: EC2's, and the other services' (STS, WAFv2, Service Quotas).
DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
#: How AWS names the refused action in the message ("... is not authorized to perform: ec2:X").
_PERFORM = re.compile(r"not authorized to perform:? ([a-z0-9-]+:[A-Za-z0-9]+)")

log = logging.getLogger("cfallow")


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore error (or the exception's class name).

    An IAM refusal also names the action to allow: ``UnauthorizedOperation:
    ec2:AuthorizeSecurityGroupIngress not allowed`` (the action AWS names in its
    message, else the one called).
    """
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code")
        if code in DENIED:
            named = _PERFORM.search(str(error.get("Message") or ""))
            action = named.group(1) if named else getattr(exc, "iam_action", "")
            return f"{code}: {action} not allowed" if action else str(code)
        if code:
            return str(code)
    return type(exc).__name__


def aws_errors() -> tuple[type[BaseException], ...]:
    """botocore's error classes (imported on first use, never at module import)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def _retryable(exc: BaseException) -> bool:
    if error_code(exc) in RETRIED:
        return True
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
    except ImportError:  # pragma: no cover - boto3 is there whenever this runs
        return False
    return isinstance(exc, BotoConnectionError)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info(
        "aws: %s, retrying (attempt %d)", error_code(exc) if exc else "?", state.attempt_number + 1
    )


def make_client(region: str, endpoint_url: str) -> Any:
    """An EC2 client: credentials from boto3's standard chain only."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise BackendError(f"boto3 is not installed ({extra_hint('aws', 'boto3>=1.28')})") from exc
    session = boto3.session.Session(region_name=region or None)
    if not session.region_name:
        raise BackendError("no AWS region: set region in [backends.aws] or AWS_DEFAULT_REGION")
    if session.get_credentials() is None:
        raise BackendError(
            "no AWS credentials in boto3's chain (environment, shared profile, instance role)"
        )
    config = Config(
        retries={"total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=30,
        user_agent_extra=f"cfallow/{cfallow.__version__}",
    )
    return session.client("ec2", endpoint_url=endpoint_url or None, config=config)


class Ec2:
    """Calls to one EC2 client, each retried on throttling and transient faults."""

    def __init__(self, client: Any, *, attempts: int = 6, backoff: float = 0.5) -> None:
        self.client = client
        self.attempts = attempts
        self.backoff = backoff

    def _retrying(self) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.backoff, max=20),
            retry=retry_if_exception(_retryable),
            before_sleep=_log_retry,
            reraise=True,
        )

    def _named(self, exc: BaseException) -> None:
        """Mark an error with the IAM action of the call (``ec2:DescribeNetworkAcls``)."""
        operation = getattr(exc, "operation_name", "")
        service = getattr(getattr(self.client, "meta", None), "service_model", None)
        prefix = getattr(service, "signing_name", "")
        if operation and isinstance(prefix, str) and prefix:
            exc.iam_action = f"{prefix}:{operation}"  # type: ignore[attr-defined]

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One API call, e.g. ``call("authorize_security_group_ingress", GroupId=...)``."""
        method: Callable[..., dict[str, Any]] = getattr(self.client, operation)
        try:
            result: dict[str, Any] = self._retrying()(method, **kwargs)
        except aws_errors() as exc:
            self._named(exc)
            raise
        return result

    def pages(self, operation: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every item under ``key`` of a paginated call (all pages re-read on a retry)."""

        def read() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            for page in self.client.get_paginator(operation).paginate(**kwargs):
                items.extend(page.get(key, []))
            return items

        try:
            result: list[dict[str, Any]] = self._retrying()(read)
        except aws_errors() as exc:
            self._named(exc)
            raise
        return result
