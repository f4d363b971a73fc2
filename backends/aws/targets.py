"""Where an aws mode writes: targets, each a region and an optional role to assume.

A section names its resources either once (``region`` + the ids) or as a list
of targets::

    targets = [
      { region = "eu-west-1", network_acl_ids = ["acl-0123456789abcdef0"] },
      { region = "us-east-1", role_arn = "arn:aws:iam::222233334444:role/cfallow",
        network_acl_ids = ["acl-0fedcba9876543210"] },
    ]

Credentials come from boto3's standard chain only; a target with ``role_arn``
gets temporary credentials from one ``sts:AssumeRole`` per run. Targets are
read concurrently (a bounded pool) and each target's trouble stays its own:
:func:`each` returns a result or the error per target. Every API call is
counted per target (:class:`Clients.calls`). boto3 is imported on first use.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import cfallow
from cfallow.errors import BackendError, ConfigError, Unavailable
from cfallow.install import extra_hint
from cfallow.section import Section

from .client import Ec2

ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
#: At most this many targets are read at once.
WORKERS = 8
T = TypeVar("T")
log = logging.getLogger("cfallow")


@dataclass(frozen=True)
class Target:
    """One region (and account, through ``role_arn``) and the resources there."""

    region: str
    role_arn: str
    ids: tuple[str, ...]

    @property
    def label(self) -> str:
        """``eu-west-1``, or ``eu-west-1/222233334444`` for a target with a role."""
        match = ROLE_ARN.fullmatch(self.role_arn)
        return f"{self.region or 'default region'}" + (f"/{match.group(1)}" if match else "")


def _ids(section: Section, key: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    ids = section.get_strings(key, [])
    if not ids:
        raise ConfigError(f"[{section.where}] {key}: name at least one {what}")
    for item in ids:
        if not pattern.fullmatch(item):
            raise ConfigError(f"[{section.where}] {key}: not a {what} id: {item!r}")
    return tuple(dict.fromkeys(ids))


def _target(section: Section, key: str, pattern: re.Pattern[str], what: str) -> Target:
    region = section.get_str("region", "")
    if region and not REGION.fullmatch(region):
        raise ConfigError(f"[{section.where}] region: not an AWS region: {region!r}")
    role = section.get_str("role_arn", "")
    if role and not ROLE_ARN.fullmatch(role):
        raise ConfigError(f"[{section.where}] role_arn: not an IAM role ARN: {role!r}")
    return Target(region, role, _ids(section, key, pattern, what) if key else ())


def parse_targets(
    section: Section, key: str, pattern: re.Pattern[str], what: str
) -> tuple[Target, ...]:
    """The section's targets: ``targets = [...]``, or ``region`` (+ ``role_arn``) and ``key``
    (``key`` empty: targets name no resources, only where)."""
    raw = section.raw("targets", None)
    if raw is None:
        return (_target(section, key, pattern, what),)
    if any(k in section.data for k in ("region", "role_arn", key) if k):
        raise ConfigError(
            f"[{section.where}] targets: give either targets or region/role_arn/{key}, not both"
        )
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"[{section.where}] targets: expected a non-empty list of tables")
    targets = []
    for i, item in enumerate(raw):
        sub = Section(f"{section.where}.targets[{i}]", item)
        target = _target(sub, key, pattern, what)
        sub.finish()
        if not target.region:
            raise ConfigError(f"[{sub.where}] region: required in a target")
        targets.append(target)
    seen: dict[tuple[str, str, str], int] = {}
    for i, t in enumerate(targets):
        for rid in t.ids:
            account = t.role_arn.split(":")[4] if t.role_arn else ""
            if (t.region, account, rid) in seen:
                raise ConfigError(
                    f"[{section.where}] targets: {rid} in {t.label} named twice"
                    f" (targets[{seen[(t.region, account, rid)]}] and targets[{i}])"
                )
            seen[(t.region, account, rid)] = i
    return tuple(targets)


def _config() -> Any:
    from botocore.config import Config

    return Config(
        retries={"total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=30,
        user_agent_extra=f"cfallow/{cfallow.__version__}",
    )


#: ``(target, service, region) -> boto3 client``: tests and embedders replace it.
ClientFactory = Callable[[Target, str, str], Any]


class Clients:
    """boto3 clients per target (one session each, a role assumed once per run),
    every call counted per target label."""

    def __init__(self, endpoint_url: str, *, attempts: int, backoff: float) -> None:
        self.endpoint_url = endpoint_url
        self.attempts = attempts
        self.backoff = backoff
        self.calls: Counter[str] = Counter()
        self.factory: ClientFactory = self._boto_client
        self._sessions: dict[Target, Any] = {}
        self._clients: dict[tuple[Target, str, str], Ec2] = {}
        self._lock = threading.Lock()

    def preflight(self, target: Target) -> Any:
        """The target's base session: a region and credentials in boto3's chain (no call)."""
        try:
            import boto3
        except ImportError as exc:
            raise BackendError(
                f"boto3 is not installed ({extra_hint('aws', 'boto3>=1.28')})"
            ) from exc
        base = boto3.session.Session(region_name=target.region or None)
        if not base.region_name:
            raise BackendError("no AWS region: set region (or AWS_DEFAULT_REGION)")
        if base.get_credentials() is None:
            raise BackendError(
                "no AWS credentials in boto3's chain (environment, shared profile, instance role)"
            )
        return base

    def _session(self, target: Target) -> Any:
        import boto3

        with self._lock:
            found = self._sessions.get(target)
        if found is not None:
            return found
        base = self.preflight(target)
        session = base
        if target.role_arn:
            sts = self._count(
                target,
                base.client("sts", endpoint_url=self.endpoint_url or None, config=_config()),
            )
            creds = Ec2(sts, attempts=self.attempts, backoff=self.backoff).call(
                "assume_role", RoleArn=target.role_arn, RoleSessionName="cfallow"
            )["Credentials"]
            session = boto3.session.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                region_name=base.region_name,
            )
        with self._lock:
            self._sessions.setdefault(target, session)
            return self._sessions[target]

    def _boto_client(self, target: Target, service: str, region: str) -> Any:
        session = self._session(target)
        return session.client(
            service,
            region_name=region or session.region_name,
            endpoint_url=self.endpoint_url or None,
            config=_config(),
        )

    def _count(self, target: Target, client: Any) -> Any:
        label = target.label

        def count(**_: Any) -> None:
            with self._lock:
                self.calls[label] += 1

        client.meta.events.register("before-call", count)
        return client

    def get(self, target: Target, service: str, region: str = "") -> Ec2:
        """The client of ``service`` for ``target`` (``region``: another than the target's)."""
        key = (target, service, region)
        with self._lock:
            found = self._clients.get(key)
        if found is not None:
            return found
        client = self._count(target, self.factory(target, service, region))
        api = Ec2(client, attempts=self.attempts, backoff=self.backoff)
        with self._lock:
            self._clients.setdefault(key, api)
            return self._clients[key]


def parse_endpoint(section: Section) -> str:
    """``endpoint_url`` (a stand-in such as moto_server), or ``""`` for AWS's own."""
    url = section.get_str("endpoint_url", "")
    if url and not url.startswith(("https://", "http://")):
        raise ConfigError(f"[{section.where}] endpoint_url: expected an http(s) URL")
    return url


def check_ready(clients: Clients, targets: Iterable[Target]) -> None:
    """boto3, a region and credentials for every target (no API call)."""
    if importlib.util.find_spec("boto3") is None:
        raise Unavailable(f"boto3 is not installed ({extra_hint('aws', 'boto3>=1.28')})")
    for target in targets:
        clients.preflight(target)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """One target's result, or the one-line reason it failed."""

    target: Target
    value: T | None
    error: str | None


def each(
    targets: Sequence[Target], fn: Callable[[Target], T], *, workers: int = WORKERS
) -> list[Outcome[T]]:
    """``fn`` for every target, at most ``workers`` at once, in the targets' order.

    An AWS error, or a :class:`BackendError`, fails only its own target.
    """
    from .client import aws_errors, error_code

    def one(target: Target) -> Outcome[T]:
        try:
            return Outcome(target, fn(target), None)
        except BackendError as exc:
            return Outcome(target, None, str(exc))
        except aws_errors() as exc:
            return Outcome(target, None, error_code(exc))

    if len(targets) <= 1:
        return [one(t) for t in targets]
    with ThreadPoolExecutor(max_workers=min(workers, len(targets))) as pool:
        return list(pool.map(one, targets))


def counts_line(calls: Counter[str], targets: Iterable[Target]) -> str:
    """``eu-west-1: 2 calls, us-east-1/222233334444: 3 calls`` (for the debug log)."""
    return ", ".join(f"{t.label}: {calls[t.label]} calls" for t in dict.fromkeys(targets))
