"""The fail2ban backend: server down, jail choice, drift, hand edits, new jails, bad config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import namespace, need_root, need_tool
from support.cfdata import CURRENT
from support.fail2ban.harness import JAILS, F2bHarness, running_server
from support.fail2ban.server import BETA_IGNORE, DEFAULT_IGNORE, F2bServer, nets

from cfallow.backend import Context, build
from cfallow.engine import run_backend
from cfallow.errors import ConfigError, ValidationError
from cfallow.runner import Runner

pytestmark = pytest.mark.root

BASE = {"alpha": nets(DEFAULT_IGNORE), "beta": nets(BETA_IGNORE)}
GAMMA = "\n[gamma]\nenabled = true\nfilter = cfa-test\nlogpath = {logs}/alpha.log\n"


@pytest.fixture(scope="module")
def f2b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[F2bServer]:
    need_root()
    need_tool("fail2ban-client", "fail2ban-server", "ip")
    with running_server(tmp_path_factory.mktemp("f2b")) as srv:
        yield srv


@pytest.fixture
def harness(f2b: F2bServer, tmp_path: Path) -> F2bHarness:
    f2b.reset()
    return F2bHarness(f2b, tmp_path)


def test_server_down_writes_dropin_and_says_live_lists_were_not_updated(tmp_path: Path) -> None:
    need_root()
    need_tool("fail2ban-client", "fail2ban-server", "ip")
    srv = F2bServer(tmp_path / "down")  # configured, not started
    h = F2bHarness(srv, tmp_path)
    result = run_backend(h.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert result.applied and result.plan is not None
    assert any("live ignore lists not updated" in n for n in result.plan.notes), result.plan
    assert h.live_writes() == []
    # Every jail the configuration enables, found without a server.
    assert set(srv.dropin_ranges()) == set(JAILS)
    # The drop-in takes effect when the server starts.
    with namespace("f2bdown") as ns:
        srv.netns = ns
        srv.start()
        try:
            for jail in JAILS:
                assert srv.live(jail) == BASE[jail] | CURRENT
            again = run_backend(h.backend(), CURRENT, dry_run=False)
            assert again.error is None and not again.changed, again.plan
        finally:
            srv.stop()


def test_only_the_configured_jails(harness: F2bHarness) -> None:
    srv = harness.srv
    result = run_backend(harness.backend(jails=["beta"]), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert set(srv.dropin_ranges()) == {"beta"}
    assert srv.live("alpha") == BASE["alpha"]
    assert srv.live("beta") == BASE["beta"] | CURRENT
    # Back to every jail, then narrowed again: alpha's entries leave, live and persisted.
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert srv.live("alpha") == BASE["alpha"] | CURRENT
    assert run_backend(harness.backend(jails=["beta"]), CURRENT, dry_run=False).error is None
    assert srv.live("alpha") == BASE["alpha"] and set(srv.dropin_ranges()) == {"beta"}

    missing = run_backend(harness.backend(jails=["nosuch"]), CURRENT, dry_run=False)
    assert missing.error is not None and "nosuch" in missing.error


def test_a_new_jail_is_covered_at_the_next_run(harness: F2bHarness) -> None:
    srv = harness.srv
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    srv.write_jail_local(extra=GAMMA.format(logs=srv.logs))
    srv.reload()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None and result.changed, result.plan
    assert result.plan is not None and "jail gamma: +22 -0" in result.plan.notes
    assert srv.live("gamma") == BASE["alpha"] | CURRENT
    assert srv.live("alpha") == BASE["alpha"] | CURRENT


def test_live_drift_and_hand_edits_are_repaired(harness: F2bHarness) -> None:
    srv = harness.srv
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    good = srv.dropin.read_text()
    srv.client("set", "alpha", "delignoreip", "104.16.0.0/13")
    status = run_backend(harness.backend(), CURRENT, dry_run=True)
    assert status.changed and status.plan is not None
    assert any("alpha: live list lacks 1" in d for d in status.plan.drift), status.plan
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert srv.live("alpha") == BASE["alpha"] | CURRENT

    # A hand edit: a range deleted, junk added. Junk never reaches an argv.
    edited = good.replace("    104.24.0.0/14\n", "    1.2.3.4/40\n    evil;rm\n", 1)
    srv.dropin.write_text(edited)
    harness.clear()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None and result.applied, result.plan
    assert result.plan is not None and result.plan.drift
    assert srv.dropin.read_text() == good
    sent = [*harness.runner.calls, *harness.sent()]
    assert not any("evil;rm" in c or "1.2.3.4/40" in c for c in sent)


def test_a_range_the_admin_takes_over_stays_theirs(harness: F2bHarness) -> None:
    srv = harness.srv
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    srv.write_jail_local(default_ignore=(*DEFAULT_IGNORE, "131.0.72.0/22"))
    srv.reload()
    harness.clear()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None and result.plan.remove == {IPNetwork("131.0.72.0/22")}
    assert IPNetwork("131.0.72.0/22") not in srv.dropin_ranges()["alpha"]
    assert harness.live_writes() == [], "the admin's range was touched live"
    assert IPNetwork("131.0.72.0/22") in srv.live("alpha")
    assert run_backend(harness.backend(), None, dry_run=False).error is None
    assert srv.live("alpha") == BASE["alpha"] | {IPNetwork("131.0.72.0/22")}


def test_nothing_unvalidated_reaches_the_client(harness: F2bHarness) -> None:
    from cfallow.backends.fail2ban.client import Client  # the installed plugin module

    runner = Runner()
    client = Client(runner, "fail2ban-client", harness.srv.conf, harness.srv.socket)
    bad = frozenset({IPNetwork("104.16.0.1/13")})
    with pytest.raises(ValidationError):
        client.change([("alpha", bad, frozenset())])
    with pytest.raises(ValidationError):
        client.change([("alpha", frozenset(), bad)])
    assert runner.calls == [] and client.sent == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"jails": ["bad]name"]}, "jails"),
        ({"jail_dir": "/tmp/elsewhere"}, "jail_dir"),
        ({"sockett": "/x"}, "unknown key: sockett"),
        ({"jails": "alpha"}, "jails"),
    ],
)
def test_bad_configuration_is_refused(
    harness: F2bHarness, extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build("fail2ban", harness.config(**extra), Context(state_dir=harness.state_dir))


def test_a_file_read_after_the_dropin_is_detected(harness: F2bHarness) -> None:
    srv = harness.srv
    # jail.d/*.local files are read in name order: this one would silently undo the drop-in.
    (srv.conf / "jail.d" / "zzz-admin.local").write_text("[alpha]\nignoreip = 127.0.0.1/8\n")
    srv.reload()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is not None and "read after zz-cfallow.local" in result.error
    assert not srv.dropin.exists() and harness.live_writes() == []


def test_a_jail_without_any_ignoreip(harness: F2bHarness) -> None:
    srv = harness.srv
    # Debian's stock configuration: no ignoreip anywhere for alpha, so %(known/ignoreip)s
    # would be an interpolation error there.
    srv.write_jail_local(default_ignore=None)
    srv.reload()
    assert srv.live("alpha") == frozenset()
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    srv.reload()
    assert srv.live("alpha") == CURRENT and srv.live("beta") == BASE["beta"] | CURRENT
    assert "[alpha]\nignoreip =\n" in srv.dropin.read_text()
    # The admin adds an ignoreip to DEFAULT: the next run extends it instead of hiding it.
    srv.write_jail_local()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None and result.changed, result.plan
    srv.reload()
    assert srv.live("alpha") == BASE["alpha"] | CURRENT
