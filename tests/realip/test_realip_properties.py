"""Property: each real-IP backend's pure diff, applied to the file it read, gives a file that
lists exactly the desired ranges in the server's own syntax, and a second diff is empty."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfallow.backends.realip.base import Seen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build

POOL = sorted(CURRENT | OLD | {IPNetwork("198.18.0.0/24"), IPNetwork("2001:db8::/48")}, key=str)
nets = st.frozensets(st.sampled_from(POOL))


def _seen(backend: Any, data: bytes | None, header: bool) -> Seen:
    owned, etag, problems = backend.parse(data) if data is not None else (frozenset(), None, ())
    return Seen(data, owned, etag, problems, header)


@pytest.mark.parametrize("server", ["nginx", "apache", "haproxy", "caddy"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=nets, desired=nets, header=st.booleans(), exists=st.booleans())
def test_plan_applied_to_the_file_lists_exactly_the_desired_ranges(
    tmp_path: Path, server: str, first: Any, desired: Any, header: bool, exists: bool
) -> None:
    backend: Any = build(server, {"path": str(tmp_path / "list")}, Context())
    data = backend.render(first, "e0") if exists else None
    seen = _seen(backend, data, header)
    plan = backend.diff(seen, desired)
    assert backend.diff(seen, desired) == plan  # pure
    files = {str(tmp_path / "list"): data}
    for step in plan.steps:
        assert files.get(step.path, step.old) == step.old or step.keep_if_edited
        files[step.path] = step.new
    new = files[str(tmp_path / "list")]
    assert new is not None
    owned, _, problems = backend.parse(new)
    assert owned == desired and problems == ()
    again = backend.diff(_seen(backend, new, header or backend.header_path is not None), desired)
    assert not again.changed, again
    removal = backend.diff(_seen(backend, new, header), None)
    gone = {s.path: s.new for s in removal.steps}
    assert gone[str(tmp_path / "list")] is None
