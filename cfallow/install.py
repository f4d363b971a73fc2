"""How to add an optional dependency to the install the user actually has.

cfallow is not on a public package index, so installing it by name with an extra
would install whatever someone else publishes under that name. The hint names
this interpreter's own pip and the extra's real requirement instead, or the
wheel or checkout the user installed from.
"""

from __future__ import annotations

import shlex
import sys


def extra_hint(extra: str, requirement: str) -> str:
    """``add the aws extra to this install: /opt/cfallow/bin/python -m pip install 'boto3>=1.28'
    (or reinstall your wheel or checkout as 'PATH[aws]')``."""
    pip = f"{shlex.quote(sys.executable)} -m pip install {shlex.quote(requirement)}"
    return (
        f"add the {extra} extra to this install: {pip} "
        f"(or reinstall the cfallow wheel or checkout you installed from as 'PATH[{extra}]')"
    )
