"""``moto_server`` with one fidelity fix, for the aws backend's tests.

Run as ``python tests/support/aws/moto_server.py -H 127.0.0.1 -p PORT`` (the same
arguments as ``moto_server``). moto 5.2 drops the ``Description`` of a
security-group rule that references a prefix list (AWS keeps and reports it,
as it does for CIDR rules); cfallow's ownership test needs it, so it is kept
here. With IAM checks on (``/moto-api/reset-auth``), moto answers a refused
request of a JSON service (WAFv2, Service Quotas) with EC2's XML error, which
botocore reads as the code ``403``; AWS answers ``AccessDeniedException`` in
JSON, and so does this server. Nothing else differs from ``moto_server``.
"""

from __future__ import annotations

import sys
from typing import Any


def _keep_prefix_list_descriptions() -> None:
    from moto.ec2.models import security_groups as sg

    cls: Any = sg.SecurityGroupRule
    original_init = cls.__init__
    original_description = cls.description

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        ref = kwargs.get("prefix_list_id", args[7] if len(args) > 7 else None)
        self._pl_description = ref.get("Description") if isinstance(ref, dict) else None

    def description(self: Any) -> str | None:
        value: str | None = original_description.fget(self)
        return value if value is not None else getattr(self, "_pl_description", None)

    cls.__init__ = init
    cls.description = property(description)


def _json_access_denied() -> None:
    from moto.core.exceptions import JsonRESTError
    from moto.iam.access_control import IAMRequest

    class AccessDeniedException(JsonRESTError):
        code = 403

    cls: Any = IAMRequest
    original = cls._raise_access_denied

    def raise_access_denied(self: Any) -> None:
        if self._service in ("wafv2", "servicequotas"):
            raise AccessDeniedException(
                "AccessDeniedException",
                f"User: {self._access_key.arn} is not authorized to perform: {self._action}",
            )
        original(self)

    cls._raise_access_denied = raise_access_denied


if __name__ == "__main__":
    _keep_prefix_list_descriptions()
    _json_access_denied()
    from moto.server import main

    main(sys.argv[1:])
