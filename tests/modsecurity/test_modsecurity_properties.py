"""The modsecurity backend's pure parts: the diff (a property), the rule scan, the nginx chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfallow.backends.modsecurity.backend import ModsecSeen
from cfallow.backends.modsecurity.nginx import ModsecNginx
from cfallow.backends.modsecurity.rules import scan, with_includes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build
from cfallow.listfile import Seen

POOL = sorted(CURRENT | OLD | {IPNetwork("198.18.0.0/24"), IPNetwork("2001:db8::/48")}, key=str)
nets = st.frozensets(st.sampled_from(POOL))


@pytest.mark.parametrize("server", ["nginx", "apache"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=nets, desired=nets, exists=st.booleans(), notes=st.lists(st.text(max_size=5)))
def test_plan_applied_to_the_file_lists_exactly_the_desired_ranges(
    tmp_path: Path, server: str, first: Any, desired: Any, exists: bool, notes: list[str]
) -> None:
    path = str(tmp_path / "cloudflare.txt")
    backend: Any = build("modsecurity", {"server": server, "path": path}, Context())
    data = backend.render(first, "e0") if exists else None
    owned, etag, problems = backend.parse(data) if data is not None else (frozenset(), None, ())
    seen = ModsecSeen(data, owned, etag, problems, False, notes=tuple(notes))
    plan = backend.diff(seen, desired)
    assert backend.diff(seen, desired) == plan  # pure
    assert plan.notes == tuple(notes)  # the chain is stated in every plan
    new = data
    for step in plan.steps:
        assert step.path == path and step.old == new
        new = step.new
    assert new is not None
    lines = [ln for ln in new.decode().splitlines() if not ln.startswith("#")]
    assert lines == [str(n) for n in sorted(desired, key=lambda n: (n.version, n))]
    assert backend.parse(new)[0] == desired
    now = Seen(new, *backend.parse(new), False)
    assert not backend.diff(now, desired).changed
    removal = backend.diff(now, None)
    assert [(s.path, s.new) for s in removal.steps] == [(path, None)] and not removal.notes


LIST = "/etc/modsecurity/cloudflare.txt"


@pytest.mark.parametrize(
    "rule",
    [
        f'SecRule REMOTE_ADDR "@ipMatchFromFile {LIST}" '
        '"id:1,phase:1,pass,nolog,ctl:ruleEngine=Off"',
        f'SecRule REMOTE_ADDR "@ipMatchF {LIST}" \\\n    "id:1,phase:1,allow,nolog"',
        'SecRule REQUEST_URI "@beginsWith /" "id:1,phase:1,chain,ctl:ruleEngine=DetectionOnly"\n'
        '    SecRule REMOTE_ADDR "@ipMatchFromFile cloudflare.txt" "t:none"',
    ],
)
def test_an_exempting_rule_is_found(rule: str) -> None:
    found = scan([("/etc/modsecurity/admin.conf", rule + "\n")], LIST)
    assert found.uses and found.exemptions


def test_rules_that_only_use_the_list_are_not_exemptions(tmp_path: Path) -> None:
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "a.conf").write_text(
        f'SecRule REMOTE_ADDR "!@ipMatchFromFile {LIST}" '
        "\"id:2,phase:1,deny,status:403,msg:'we allow, ctl:ruleEngine=Off, only these'\"\n"
    )
    root = (str(tmp_path / "main.conf"), "# SecRule REMOTE_ADDR x allow\nInclude more/*.conf\n")
    files = with_includes([root])
    assert [name for name, _ in files] == [root[0], str(tmp_path / "more" / "a.conf")]
    found = scan(files, LIST)
    assert len(found.uses) == 1 and not found.exemptions
    assert not scan(files, "/elsewhere.txt").uses


def _dump(**files: str) -> str:
    return "".join(f"# configuration file {name}:\n{text}\n" for name, text in files.items())


MANAGED = "# Managed by cfallow: ...\nset_real_ip_from 173.245.48.0/20;\n"


@pytest.mark.parametrize(
    ("main", "broken"),
    [
        ("http { real_ip_header CF-Connecting-IP; server { } }", None),
        ("http { server { real_ip_header X-Forwarded-For; } }", None),
        ("http { server { location / { real_ip_header CF-Connecting-IP; } } }", "location block"),
        ("http { server { } }", "no client address"),
        ("http { real_ip_header X-Real-IP; }", "no client address"),
        ("http { # real_ip_header CF-Connecting-IP;\n }", "no client address"),
    ],
)
def test_the_nginx_chain(main: str, broken: str | None) -> None:
    backend: Any = build("modsecurity", {"server": "nginx"}, Context())
    assert isinstance(backend, ModsecNginx)
    why, how = backend.chain(_dump(**{"/n.conf": main, "/c.conf": MANAGED}), [])
    if broken is None:
        assert why is None and "/c.conf" in how
    else:
        assert why is not None and broken in why
    why, _ = backend.chain(_dump(**{"/n.conf": main}), [])
    assert why is not None  # no list cfallow keeps


def test_verify_says_cannot_verify_for_it() -> None:
    from cfallow.verify.command import expectations

    backend = build("modsecurity", {"server": "apache"}, Context())
    wants, notes = expectations([backend])
    assert wants == []
    assert len(notes) == 1 and notes[0].startswith("modsecurity: cannot verify: ModSecurity")
