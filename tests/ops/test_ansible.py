"""The Ansible collection, run by real ``ansible-playbook`` against localhost.

The collection is built with ``ansible-galaxy collection build`` and installed
into a temporary collections path (nothing system-wide). Firewall runs happen
inside a test network namespace (``ip netns exec NS ansible-playbook ...``)
with the iptables backend and the bundled list (a namespace has no route to
anywhere). Each playbook records its registered results in a JSON file; the
assertions are made here, on those results and on ``iptables-save`` output
taken between the steps.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPNetwork
from prometheus_client.parser import text_string_to_metric_families
from support import need, need_tool, ns_exec, sh
from support.cfdata import CURRENT
from support.wheels import wheelhouse

from cfallow.backend import load_class
from cfallow.cli import config
from cfallow.model import as_strings

ROOT = Path(__file__).resolve().parents[2]
#: Stands in for ufw's stock /usr/share/ufw/after.init (the role replaces only that, or its own).
UFW_STOCK = "#!/bin/sh\n# after.init: if executable, called by ufw-init.\nexit 0\n"
BIN = Path(sys.executable).parent
CFALLOW = BIN / "cfallow"
ALL = as_strings(CURRENT)
V4 = [c for c in ALL if ":" not in c]
V6 = [c for c in ALL if ":" in c]
RECAP = re.compile(
    r"^localhost\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)"
    r"\s+skipped=\d+\s+rescued=\d+\s+ignored=(\d+)"
)


@dataclass
class Run:
    """One ansible-playbook run: its output, recap counts and registered results."""

    rc: int
    stdout: str
    changed: int
    failed: int
    ignored: int
    results: dict[str, Any]


class Ansible:
    """ansible-playbook with the collection installed under ``tmp`` only."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.count = 0
        dist, collections = tmp / "dist", tmp / "collections"
        galaxy = str(BIN / "ansible-galaxy")
        sh([galaxy, "collection", "build", str(ROOT / "ansible"), "--output-path", str(dist)])
        (tarball,) = dist.glob("cfallow-cfallow-*.tar.gz")
        sh([galaxy, "collection", "install", str(tarball), "-p", str(collections)])
        cfg = tmp / "ansible.cfg"
        cfg.write_text(
            "[defaults]\n"
            f"collections_path = {collections}\n"
            f"local_tmp = {tmp / 'local-tmp'}\n"
            f"remote_tmp = {tmp / 'remote-tmp'}\n"
            "retry_files_enabled = false\n"
            "nocolor = true\n"
        )
        self.env = {
            "ANSIBLE_CONFIG": str(cfg),
            "ANSIBLE_HOME": str(tmp / "home"),
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(tmp / "home"),
            "LC_ALL": "C.UTF-8",
        }

    def play(
        self,
        tasks: list[dict[str, Any]],
        *,
        ns: str | None = None,
        play_vars: dict[str, Any] | None = None,
        check: bool = False,
    ) -> Run:
        """Run ``tasks`` (each may ``register``) as one play against localhost
        (``check``: the whole run with ``--check``)."""
        self.count += 1
        out = self.tmp / f"results-{self.count}.json"
        names = [t["register"] for t in tasks if "register" in t]
        dump = "{{ {" + ", ".join(f"'{n}': {n}" for n in names) + "} | to_json }}"
        # The harness's own bookkeeping does not count as a change.
        record = {"content": dump, "dest": str(out)}
        tasks = [
            *tasks,
            {"ansible.builtin.copy": record, "changed_when": False, "check_mode": False},
        ]
        play = {
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": sys.executable, **(play_vars or {})},
            "tasks": tasks,
        }
        # JSON is YAML: the playbook as written, without a YAML dumper.
        book = self.tmp / f"play-{self.count}.yml"
        book.write_text(json.dumps([play], indent=2))
        argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", str(book)]
        argv += ["--check"] if check else []
        return self._run(ns_exec(ns, *argv) if ns else argv, out)

    def tool(self, name: str, *args: str) -> str:
        """Run another ansible-* command with this environment; its stdout."""
        proc = subprocess.run(
            [str(BIN / name), *args], env=self.env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def _run(self, argv: list[str], out: Path) -> Run:
        proc = subprocess.run(
            argv, cwd=self.tmp, env=self.env, capture_output=True, text=True, check=False
        )
        text = proc.stdout + proc.stderr
        recaps = [m for m in map(RECAP.match, text.splitlines()) if m]
        assert recaps, text
        changed, failed, ignored = (int(g) for g in recaps[-1].groups())
        results = json.loads(out.read_text()) if out.exists() else {}
        return Run(proc.returncode, text, changed, failed, ignored, results)


@pytest.fixture(scope="module")
def ansible(tmp_path_factory: pytest.TempPathFactory) -> Ansible:
    need_tool(str(BIN / "ansible-playbook"), str(BIN / "ansible-galaxy"))
    return Ansible(tmp_path_factory.mktemp("ansible"))


def need_backend(name: str) -> None:
    try:
        load_class(name)
    except Exception as exc:
        need(False, f"the cfallow backend plugin {name!r} ({exc})")


def module_task(register: str, **args: Any) -> dict[str, Any]:
    extra = {k: args.pop(k) for k in ("check_mode", "diff", "ignore_errors") if k in args}
    return {"register": register, "cfallow.cfallow.cfallow": args, **extra}


def save_task(register: str) -> dict[str, Any]:
    """Both families' ruleset, as the kernel in this namespace has it."""
    return {
        "register": register,
        "ansible.builtin.shell": "iptables-save; ip6tables-save",
        "changed_when": False,
    }


def rules(saved: dict[str, Any]) -> list[str]:
    """iptables-save output without comments and packet counters."""
    return [
        re.sub(r"\[\d+:\d+\]", "", line)
        for line in saved["stdout"].splitlines()
        if not line.startswith("#")
    ]


def owned(saved: dict[str, Any]) -> set[str]:
    """Source networks of the rules in cfallow's chain."""
    return {
        str(IPNetwork(m.group(1)).cidr)
        for line in rules(saved)
        if (m := re.match(r"-A CFALLOW -s (\S+) ", line))
    }


def metrics(path: Path) -> dict[tuple[str, tuple[str, ...]], float]:
    """The metrics file through prometheus_client's parser: (name, label values) -> value."""
    return {
        (s.name, tuple(s.labels[k] for k in sorted(s.labels))): s.value
        for fam in text_string_to_metric_families(path.read_text())
        for s in fam.samples
    }


def diff_of(result: dict[str, Any], backend: str) -> tuple[list[str], list[str]]:
    (d,) = [d for d in result["diff"] if d["before_header"].startswith(backend)]
    return d["before"].splitlines(), d["after"].splitlines()


def test_module_documentation_parses(ansible: Ansible) -> None:
    doc = json.loads(ansible.tool("ansible-doc", "--json", "cfallow.cfallow.cfallow"))[
        "cfallow.cfallow.cfallow"
    ]["doc"]
    assert set(doc["options"]) == {
        "state",
        "backends",
        "config",
        "state_dir",
        "force",
        "source",
        "lock_timeout",
        "executable",
        "verify",
        "ranges",
        "source_options",
    }


def test_module_idempotency_matrix_in_a_namespace(
    ansible: Ansible, netns: str, tmp_path: Path
) -> None:
    need_backend("iptables")
    need_tool("iptables-save", "ip6tables-save")
    config = tmp_path / "config.toml"
    config.write_text("[backends.iptables]\nports = [80, 443]\n")
    state = tmp_path / "state"
    common = {
        "config": str(config),
        "state_dir": str(state),
        "executable": str(CFALLOW),
    }
    synced = {**common, "source": "bundled", "backends": ["iptables"]}
    # The admin's own firewall, which cfallow must leave as it is.
    for tool in ("iptables", "ip6tables"):
        sh(ns_exec(netns, tool, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"))
    run = ansible.play(
        [
            save_task("s0"),
            module_task("check1", **synced, check_mode=True, diff=True),
            {"register": "files1", "ansible.builtin.find": {"paths": str(state), "hidden": True}},
            save_task("s1"),
            module_task("apply1", **synced),
            save_task("s2"),
            module_task("check2", **synced, check_mode=True),
            module_task("apply2", **synced, diff=True, lock_timeout=5),
            save_task("s3"),
            module_task("check_absent", **common, state="absent", check_mode=True),
            save_task("s4"),
            module_task("absent1", **common, state="absent", diff=True),
            save_task("s5"),
            module_task("absent2", **common, state="absent"),
        ],
        ns=netns,
    )
    assert run.rc == 0 and run.failed == 0, run.stdout
    r = run.results

    # check mode: changed, nothing written (ruleset and state dir untouched)
    assert r["check1"]["changed"] is True
    assert rules(r["s1"]) == rules(r["s0"])
    assert r["files1"]["files"] == []
    assert not owned(r["s1"])
    before, after = diff_of(r["check1"], "iptables")
    assert before == [] and after == ALL
    (plan,) = r["check1"]["backends"]
    assert plan["name"] == "iptables" and plan["add"] == ALL and plan["current"] == []

    # apply: changed, the ranges are in the namespace's firewall
    assert r["apply1"]["changed"] is True
    assert owned(r["s2"]) == set(ALL)

    # check mode and apply again: not changed, nothing rewritten
    assert r["check2"]["changed"] is False
    assert r["apply2"]["changed"] is False
    assert rules(r["s3"]) == rules(r["s2"])
    before, after = diff_of(r["apply2"], "iptables")
    assert before == after == ALL

    # --diff on screen: the before/after lists, as Ansible shows them
    assert "+104.16.0.0/13" in run.stdout.splitlines()
    assert "-2400:cb00::/32" in run.stdout.splitlines()

    # state: absent -- check mode would change and writes nothing; then removes
    assert r["check_absent"]["changed"] is True
    assert rules(r["s4"]) == rules(r["s2"])
    assert r["absent1"]["changed"] is True
    before, after = diff_of(r["absent1"], "iptables")
    assert before == ALL and after == []
    assert not any("CFALLOW" in line or "cfallow" in line for line in rules(r["s5"]))
    assert rules(r["s5"]) == rules(r["s0"])
    assert r["absent2"]["changed"] is False


def api(v4: list[str], v6: list[str]) -> dict[str, Any]:
    result = {"ipv4_cidrs": v4, "ipv6_cidrs": v6, "etag": f"e{len(v4)}"}
    return {"result": result, "success": True, "errors": [], "messages": []}


def test_module_fetches_once_and_hosts_apply_the_pushed_list(
    ansible: Ansible, tmp_path: Path, httpserver: Any
) -> None:
    """``state: fetched`` once (run_once, delegated), ``ranges`` to every host: one
    request; check mode fetches nothing and reads no live source."""
    need_backend("fake")
    httpserver.expect_request("/full").respond_with_json(api(V4, V6))
    source = {
        "api_url": httpserver.url_for("/full"),
        "text_urls": [httpserver.url_for("/v4"), httpserver.url_for("/v6")],
    }
    config = tmp_path / "config.toml"
    config.write_text(
        "[source]\n"
        f'api_url = "{httpserver.url_for("/unused")}"\n'  # a host that fetched would fail
        f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n'
    )
    fetch = {
        "register": "cf",
        "cfallow.cfallow.cfallow": {
            "state": "fetched",
            "source_options": source,
            "executable": str(CFALLOW),
        },
        "run_once": True,
        "delegate_to": "localhost",
    }
    host = {"config": str(config), "state_dir": str(tmp_path / "state"), "executable": str(CFALLOW)}
    sync = module_task("synced", **host, ranges="{{ cf.ranges | default(omit) }}")

    preview = ansible.play([fetch, sync], check=True)  # nothing installed yet: the snapshot
    assert preview.rc == 0 and preview.failed == 0, preview.stdout
    assert preview.results["cf"]["ranges"] is None and httpserver.log == []
    assert "last-known-good" in preview.results["synced"]["cmd"]

    first = ansible.play([fetch, sync])
    assert first.rc == 0 and first.failed == 0, first.stdout
    assert len(httpserver.log) == 1
    assert first.results["cf"]["changed"] is False
    assert sorted(first.results["cf"]["ranges"]["ipv4"]) == sorted(V4)
    got = first.results["synced"]
    assert got["changed"] is True and "--source-file" in got["cmd"]
    assert got["source"]["fetched_at"] == first.results["cf"]["ranges"]["fetched_at"]

    again = ansible.play([fetch, sync], check=True)
    assert again.rc == 0 and again.changed == 0, again.stdout
    assert "last-known-good" in again.results["synced"]["cmd"]  # no live source
    assert len(httpserver.log) == 1
    second = ansible.play([fetch, sync])
    assert second.rc == 0 and second.changed == 0, second.stdout
    assert len(httpserver.log) == 2


def test_module_failures_name_the_backend_or_the_refusal(
    ansible: Ansible, tmp_path: Path, httpserver: Any
) -> None:
    """A failing backend and refused ranges are task failures that say which and why."""
    need_backend("fake")
    httpserver.expect_request("/full").respond_with_json(api(V4, V6))
    httpserver.expect_request("/shrunk").respond_with_json(api(V4[:2], V6[:1]))
    target = tmp_path / "target.json"

    def config(name: str, api_path: str, fail: str = "") -> str:
        path = tmp_path / f"{name}.toml"
        path.write_text(
            "[source]\n"
            f'api_url = "{httpserver.url_for(api_path)}"\n'
            f'text_urls = ["{httpserver.url_for("/v4")}", "{httpserver.url_for("/v6")}"]\n'
            "attempts = 1\ntimeout = 5\n"
            f'[backends.fake]\npath = "{target}"\n' + (f'fail = "{fail}"\n' if fail else "")
        )
        return str(path)

    common = {"state_dir": str(tmp_path / "state"), "executable": str(CFALLOW)}
    run = ansible.play(
        [
            module_task("full", **common, config=config("full", "/full"), backends=["fake"]),
            module_task("shrunk", **common, config=config("shrunk", "/shrunk"), ignore_errors=True),
            {"register": "kept", "ansible.builtin.slurp": {"src": str(target)}},
            module_task("forced", **common, config=config("forced", "/shrunk"), force=True),
            module_task(
                "broken", **common, config=config("broken", "/full", "apply"), ignore_errors=True
            ),
        ]
    )
    r = run.results
    assert r["full"]["changed"] is True and not r["full"].get("failed")
    assert r["full"]["source"]["kind"] == "live"

    shrunk = r["shrunk"]
    assert shrunk["failed"] is True and shrunk["rc"] == 4
    assert shrunk["msg"].startswith(
        "cfallow sync: ranges unavailable or refused, backends held at the last-known-good list"
    )
    assert "max_shrink" in shrunk["msg"] and "--force" in shrunk["msg"]
    kept = json.loads(base64.b64decode(r["kept"]["content"]))
    assert kept["owned"] == ALL and kept["writes"] == 1  # nothing changed

    forced = r["forced"]
    assert forced["changed"] is True and not forced.get("failed")
    assert sorted(forced["backends"][0]["remove"]) == sorted(set(ALL) - {*V4[:2], *V6[:1]})

    broken = r["broken"]
    assert broken["failed"] is True and broken["rc"] == 1
    assert broken["failed_backends"] == ["fake"]
    assert broken["msg"] == "cfallow sync: backend failed: fake: fake: apply failed on purpose"
    assert (run.failed, run.ignored) == (0, 2)  # the two expected failures, nothing else


def test_role_installs_configures_syncs_and_is_idempotent(
    ansible: Ansible, netns: str, tmp_path: Path
) -> None:
    need_backend("iptables")
    need_tool("iptables-save")
    house = wheelhouse(tmp_path / "build")
    root = tmp_path / "root"
    for d in ("bin", "systemd", "metrics", "ufw"):
        (root / d).mkdir(parents=True)
    stock = root / "ufw-stock-after.init"  # ufw's stock hook: the role replaces it
    stock.write_text(UFW_STOCK)
    shutil.copy(stock, root / "ufw" / "after.init")
    (root / "ufw" / "ufw.conf").write_text("# ufw.conf\nENABLED=yes\nLOGLEVEL=low\n")
    role_vars = {
        "cfallow_pip_spec": str(next(house.glob("cfallow-*.whl"))),
        "cfallow_pip_args": f"--no-index --find-links {house}",
        "cfallow_python": sys._base_executable,  # type: ignore[attr-defined]
        "cfallow_venv": str(root / "venv"),
        "cfallow_link": str(root / "bin" / "cfallow"),
        "cfallow_config_path": str(root / "etc" / "cfallow" / "config.toml"),
        "cfallow_state_dir": str(root / "state"),
        "cfallow_systemd_dir": str(root / "systemd"),
        "cfallow_systemd": False,
        "cfallow_docker_dropin": True,
        "cfallow_ufw_dir": str(root / "ufw"),
        "cfallow_ufw_stock": str(stock),
        "cfallow_metrics_file": str(root / "metrics" / "cfallow.prom"),
        "cfallow_source": {"attempts": 2, "max_shrink": 0.5},
        "cfallow_backends": {"iptables": {"ports": [80, 443, "8000-8080"]}},
        "cfallow_sync_source": "bundled",
    }
    role = [{"ansible.builtin.include_role": {"name": "cfallow.cfallow.cfallow"}}]
    tasks = [*role, save_task("saved")]
    # --check on a host without cfallow: would change, fails nowhere, writes nothing.
    preview = ansible.play(role, ns=netns, play_vars=role_vars, check=True)
    assert preview.rc == 0 and preview.failed == 0, preview.stdout
    assert preview.changed > 0
    assert not (root / "venv").exists() and not (root / "etc").exists()
    assert sorted(p.name for p in (root / "systemd").iterdir()) == []
    assert (root / "ufw" / "after.init").read_text() == UFW_STOCK

    first = ansible.play(tasks, ns=netns, play_vars=role_vars)
    assert first.rc == 0 and first.failed == 0, first.stdout
    assert first.changed > 0
    assert owned(first.results["saved"]) == set(ALL)
    assert (root / "bin" / "cfallow").resolve() == (root / "venv" / "bin" / "cfallow").resolve()
    for unit in ("cfallow.service", "cfallow.timer", "cfallow-restore.service"):
        assert (root / "systemd" / unit).read_bytes() == (ROOT / "systemd" / unit).read_bytes()
    dropin = "docker.service.d/cfallow.conf"
    assert (root / "systemd" / dropin).read_bytes() == (ROOT / "systemd" / dropin).read_bytes()
    hook = root / "ufw" / "after.init"
    shipped = (ROOT / "contrib" / "ufw" / "after.init").read_text()
    link = root / "bin" / "cfallow"
    assert hook.read_text() == shipped.replace("/usr/local/bin/cfallow", str(link))
    assert hook.stat().st_mode & 0o777 == 0o755

    cfg = config.load(root / "etc" / "cfallow" / "config.toml")
    assert cfg.backends == {"iptables": {"ports": [80, 443, "8000-8080"]}}
    assert cfg.source.attempts == 2 and cfg.source.max_shrink == 0.5
    assert cfg.metrics_file == root / "metrics" / "cfallow.prom"

    prom = root / "metrics" / "cfallow.prom"
    first_metrics = metrics(prom)
    assert first_metrics[("cfallow_backend_changes_applied", ("add", "iptables"))] == len(ALL)
    assert first_metrics[("cfallow_backend_entries", ("iptables",))] == len(ALL)
    assert first_metrics[("cfallow_ranges", ("ipv4",))] == len(V4)

    # --check where all is in place: nothing would change (the pip install included).
    again = ansible.play(role, ns=netns, play_vars=role_vars, check=True)
    assert again.rc == 0 and again.failed == 0, again.stdout
    assert again.changed == 0, again.stdout

    second = ansible.play(tasks, ns=netns, play_vars=role_vars)
    assert second.rc == 0 and second.failed == 0, second.stdout
    assert second.changed == 0, second.stdout
    assert rules(second.results["saved"]) == rules(first.results["saved"])
    second_metrics = metrics(prom)
    assert second_metrics[("cfallow_backend_changes_applied", ("add", "iptables"))] == 0
    assert second_metrics[("cfallow_backend_entries", ("iptables",))] == len(ALL)
    assert second_metrics[("cfallow_last_run_success", ())] == 1

    # An after.init with the admin's own commands is theirs: left alone, with a message.
    own = "#!/bin/sh\n# the admin's own hook\nlogger ufw-hook-ran\nexit 0\n"
    hook.write_text(own)
    third = ansible.play(tasks, ns=netns, play_vars=role_vars)
    assert third.rc == 0 and third.failed == 0, third.stdout
    assert third.changed == 0, third.stdout
    assert hook.read_text() == own
    assert "after.init has your own commands" in third.stdout, third.stdout


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "cfallow",
        "cfallow[aws]",
        "cfallow==0.1.0",
        "https://example.invalid/cfallow-0.1.0-py3-none-any.whl",  # no hash
        "relative/cfallow-0.1.0-py3-none-any.whl",
        # ansible.builtin.pip splits on commas: the second item would be a bare name
        "/srv/wheels/cfallow-0.1.0-py3-none-any.whl,cfallow",
        "/srv/wheels/cfallow-0.1.0-py3-none-any.whl cfallow",
        "https://example.invalid/cfallow.whl#sha256=" + "0" * 64 + ",cfallow",
    ],
)
def test_role_refuses_a_spec_an_index_could_answer(
    ansible: Ansible, tmp_path: Path, spec: str
) -> None:
    """Nothing is installed from a bare name: cfallow is on no package index."""
    venv = tmp_path / "venv"
    role_vars = {
        "cfallow_pip_spec": spec,
        "cfallow_venv": str(venv),
        "cfallow_systemd": False,
        "cfallow_ufw_hook": False,
        "cfallow_sync_now": False,
    }
    run = ansible.play(
        [{"ansible.builtin.include_role": {"name": "cfallow.cfallow.cfallow"}}],
        play_vars=role_vars,
    )
    assert run.rc != 0 and run.failed == 1, run.stdout
    assert "cfallow_pip_spec must name exactly what to install" in run.stdout
    assert not venv.exists(), "the role installed something before refusing the spec"


def test_role_installs_the_ufw_hook_only_where_ufw_is_enabled(
    ansible: Ansible, tmp_path: Path
) -> None:
    """ufw installed but not enabled: its stock after.init stays; enabled: cfallow's hook."""
    ufw = tmp_path / "ufw"
    ufw.mkdir()
    stock = tmp_path / "stock-after.init"
    stock.write_text(UFW_STOCK)
    shutil.copy(stock, ufw / "after.init")
    conf = ufw / "ufw.conf"
    conf.write_text("ENABLED=no\nLOGLEVEL=low\n")
    (tmp_path / "systemd").mkdir()
    role_vars = {
        "cfallow_install": "none",
        "cfallow_executable": str(CFALLOW),
        "cfallow_link": "",
        "cfallow_config_path": str(tmp_path / "etc" / "config.toml"),
        "cfallow_systemd_dir": str(tmp_path / "systemd"),
        "cfallow_systemd": False,
        "cfallow_ufw_dir": str(ufw),
        "cfallow_ufw_stock": str(stock),
        "cfallow_sync_now": False,
    }
    role = [{"ansible.builtin.include_role": {"name": "cfallow.cfallow.cfallow"}}]
    off = ansible.play(role, play_vars=role_vars)
    assert off.rc == 0 and off.failed == 0, off.stdout
    assert (ufw / "after.init").read_text() == UFW_STOCK
    assert "has your own commands" not in off.stdout

    conf.write_text("ENABLED=yes\nLOGLEVEL=low\n")
    on = ansible.play(role, play_vars=role_vars)
    assert on.rc == 0 and on.failed == 0, on.stdout
    hook = (ufw / "after.init").read_text()
    assert "from cfallow" in hook and f"CFALLOW={CFALLOW}\n" in hook


def test_module_idempotency_matrix_for_a_network_acl(
    ansible: Ansible,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """check -> changed, apply -> changed, check -> not, apply -> not, then absent, against one
    network ACL on moto_server (127.0.0.1): the ACL read back with a plain client."""
    from support.aws.harness import aws_env, shared_server
    from support.aws.nacl import NaclWorld, verdict

    need_backend("aws-nacl")
    aws_env(monkeypatch)
    server = shared_server(request, tmp_path_factory)
    world = NaclWorld(server)
    world.add_foreign()
    acl = world.acls[0]
    before = world.entries(acl), world.snapshot(acl)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[backends.aws-nacl]\nregion = "{world.region}"\nnetwork_acl_ids = ["{acl}"]\n'
        f'ports = [443]\nrules_per_acl = 40\nendpoint_url = "{server.url}"\n'
    )
    common = {
        "config": str(config),
        "state_dir": str(tmp_path / "state"),
        "executable": str(CFALLOW),
    }
    synced = {**common, "source": "bundled", "backends": ["aws-nacl"]}
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }

    def task(register: str, **args: Any) -> dict[str, Any]:
        return {**module_task(register, **args), "environment": env}

    def writes() -> int:
        return len(server.cfallow_writes())

    check1 = ansible.play([task("check1", **synced, check_mode=True)])
    assert check1.rc == 0, check1.stdout
    assert check1.results["check1"]["changed"] is True
    assert writes() == 0 and world.entries(acl) == before[0]

    applied = ansible.play(
        [
            task("apply1", **synced),
            task("check2", **synced, check_mode=True),
            task("apply2", **synced),
        ]
    )
    assert applied.rc == 0 and applied.failed == 0, applied.stdout
    r = applied.results
    assert r["apply1"]["changed"] is True
    assert (r["check2"]["changed"], r["apply2"]["changed"]) == (False, False)
    assert writes() == 1 + 24  # the tag, then 22 allows and 2 denies; nothing more
    entries = world.entries(acl)
    assert all(verdict(entries, str(n[1]), 443) == "allow" for n in CURRENT)
    assert verdict(entries, "198.51.100.77", 443) == "deny"
    assert world.snapshot(acl) == before[1]

    absent = ansible.play(
        [
            task("check_absent", **common, state="absent", check_mode=True),
            task("absent1", **common, state="absent"),
            task("absent2", **common, state="absent"),
        ]
    )
    assert absent.rc == 0 and absent.failed == 0, absent.stdout
    r = absent.results
    assert (r["check_absent"]["changed"], r["absent1"]["changed"]) == (True, True)
    assert r["absent2"]["changed"] is False
    assert (world.entries(acl), world.snapshot(acl)) == before
    assert writes() == 2 * 25
