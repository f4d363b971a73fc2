"""The firewalld backend's pure parts: config, ownership checks, the order of its calls."""

from __future__ import annotations

import pytest
from cfallow.backends.firewalld.admin import keep_over_reload, settings_items
from cfallow.backends.firewalld.diff import plan_calls
from cfallow.backends.firewalld.plan import Defaults
from cfallow.backends.firewalld.state import Admin, Seen, SetState, ZoneState
from netaddr import IPNetwork
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build
from cfallow.errors import BackendError, ConfigError
from cfallow.model import family


def backend(**section: object):  # type: ignore[no-untyped-def]
    return build("firewalld", {"bus": "unix:path=/nonexistent", **section}, Context())


def sets(nets: frozenset[IPNetwork]) -> dict[str, SetState]:
    return {
        f"cloudflare-v{v}": SetState("cfallow", "hash:net", fam, family(nets, v))
        for v, fam in ((4, "inet"), (6, "inet6"))
    }


def seen(nets: frozenset[IPNetwork], **kw: object) -> Seen:
    zone = ZoneState(
        "cfallow",
        frozenset({"ipset:cloudflare-v4", "ipset:cloudflare-v6"}),
        frozenset({("443", "tcp")}),
    )
    zones = {"public": ZoneState("Public", services=frozenset({"ssh"})), "cloudflare": zone}
    paths = {"cloudflare-v4": "/p/ipset/1", "cloudflare-v6": "/p/ipset/2"}
    base: dict[str, object] = dict(
        state="RUNNING",
        default_zone="public",
        run_sets=sets(nets),
        perm_sets=sets(nets),
        set_paths=paths,
        run_zones=zones,
        perm_zones=zones,
        zone_paths={"public": "/p/zone/0", "cloudflare": "/p/zone/1"},
    )
    base.update(kw)
    return Seen(**base)  # type: ignore[arg-type]


def test_ports_or_services_not_both() -> None:
    with pytest.raises(ConfigError, match="ports or services"):
        backend(ports=[443], services=["https"])
    with pytest.raises(ConfigError, match="bad service name"):
        backend(services=["https; drop"])
    with pytest.raises(ConfigError, match="unknown key"):
        backend(zones=["public"])


def test_no_change_plans_no_call() -> None:
    b = backend(ports=[443])
    plan = b.diff(seen(CURRENT), CURRENT)
    assert not plan.changed and plan.steps == ()


def test_the_2021_swap_is_bridged_and_new_goes_before_old() -> None:
    b = backend(ports=[443])
    calls = plan_calls(seen(OLD), b.want, CURRENT)
    got = [(c.method, c.args[-1] if c.args else None) for c in calls]
    assert got == [
        ("addSource", "104.16.0.0/13"),
        ("addSource", "104.24.0.0/14"),
        ("removeEntry", "104.16.0.0/12"),
        ("addEntry", "104.16.0.0/13"),
        ("addEntry", "104.24.0.0/14"),
        ("removeSource", "104.16.0.0/13"),
        ("removeSource", "104.24.0.0/14"),
        ("setEntries", got[-1][1]),
    ]
    assert calls[-1].path == "/p/ipset/1", "the permanent set is written in one call, last"


def test_a_plain_addition_needs_no_bridge() -> None:
    b = backend(ports=[443])
    fewer = CURRENT - {IPNetwork("131.0.72.0/22")}
    methods = [c.method for c in plan_calls(seen(fewer), b.want, CURRENT)]
    assert methods == ["addEntry", "setEntries"]


def test_removal_takes_references_out_before_deleting_ipsets() -> None:
    b = backend(ports=[443])
    calls = plan_calls(seen(CURRENT), b.want, None)
    methods = [(c.method, c.path) for c in calls]
    zone_gone = methods.index(("remove", "/p/zone/1"))
    assert zone_gone < methods.index(("remove", "/p/ipset/1"))
    assert zone_gone < methods.index(("remove", "/p/ipset/2"))
    runtime = [c.method for c in calls if c.path == "/org/fedoraproject/FirewallD1"]
    # the emptied zone and ipsets stay in the runtime until a reload: one, last, optional
    assert runtime == ["removeSource", "removeSource", "setEntries", "setEntries", "reload"]
    assert calls[-1].optional


def test_a_reload_that_would_change_the_admins_runtime_is_refused_or_skipped() -> None:
    b = backend(ports=[443])
    port = "zone public ports 8443/tcp"
    lost = Admin(frozenset({port}), frozenset())
    fresh = seen(frozenset(), run_sets={}, perm_sets={}, set_paths={}, admin=lost)
    with pytest.raises(
        BackendError, match=r"runtime-only zone public ports 8443/tcp.*--runtime-to"
    ):
        plan_calls(fresh, b.want, CURRENT)
    removal = b.diff(seen(CURRENT, admin=lost), None)
    assert "reload" not in [getattr(s, "method", "") for s in removal.steps]
    (note,) = [n for n in removal.notes if "not reloading" in n]
    assert "zone cloudflare, ipset cloudflare-v4, ipset cloudflare-v6" in note
    assert "next firewall-cmd --reload" in note and "\n" not in note
    pending = Admin(frozenset(), frozenset({port}))
    with pytest.raises(BackendError, match="apply permanent-only zone public ports 8443/tcp"):
        plan_calls(dict_replace(fresh, admin=pending), b.want, CURRENT)


def dict_replace(s: Seen, **kw: object) -> Seen:
    from dataclasses import replace

    return replace(s, **kw)  # type: ignore[arg-type]


def test_admin_items_leave_cfallows_own_out_and_what_a_reload_keeps() -> None:
    rule = 'rule family="ipv4" source NOT ipset="cloudflare-v4" port port="443" protocol="tcp" drop'
    items = settings_items(
        "zone",
        "public",
        {
            "short": "Public",
            "ports": [("8443", "tcp")],
            "rules_str": [rule],
            "forward": True,
            "masquerade": False,
            "target": "default",
            "interfaces": ["eth0"],
        },
    )
    assert items == {
        "zone public ports 8443/tcp",
        "zone public forward=True",
        "zone public interfaces eth0",
    }
    kept = keep_over_reload(items | {"ipset x entry 1.2.3.4", "direct rule a"}, False, False)
    assert kept == {"zone public ports 8443/tcp", "zone public forward=True"}
    assert keep_over_reload(items, True, True) == items - {"zone public interfaces eth0"}


def test_a_remove_in_restrict_mode_puts_emptied_builtin_zones_back() -> None:
    b = backend(ports=[443], mode="restrict")
    rules = b.want.restrict_rules
    public = ZoneState("Public", services=frozenset({"https"}), rules=rules)
    zones = {"public": public}
    s = seen(CURRENT, run_zones=zones, perm_zones=zones, zone_paths={"public": "/p/zone/0"})
    steps = b.diff(s, None).steps
    kinds = [type(x).__name__ for x in steps]
    assert kinds.index("Defaults") > max(
        i for i, k in enumerate(kinds) if k == "Call" and steps[i].method == "removeRichRule"
    )  # type: ignore[union-attr]
    assert [x for x in steps if isinstance(x, Defaults)] == [Defaults("public", "/p/zone/0")]
    assert not any(isinstance(x, Defaults) for x in b.diff(s, CURRENT).steps)


def test_restrict_rules_come_after_the_entries_and_go_first() -> None:
    b = backend(ports=[443], mode="restrict")
    fresh = seen(frozenset(), run_sets={}, perm_sets={}, set_paths={})
    fresh_calls = plan_calls(fresh, b.want, CURRENT)
    assert [c.method for c in fresh_calls][-1] == "reload"
    assert [c.method for c in fresh_calls].count("addRichRule") == 2
    empty = seen(frozenset())
    calls = plan_calls(empty, b.want, CURRENT)
    methods = [c.method for c in calls if c.path == "/org/fedoraproject/FirewallD1"]
    assert methods.index("setEntries") < methods.index("addRichRule")


def test_someone_elses_ipset_or_a_failed_daemon_is_refused() -> None:
    b = backend(ports=[443])
    theirs = dict(
        sets(CURRENT), **{"cloudflare-v4": SetState("mine", "hash:net", "inet", frozenset())}
    )
    with pytest.raises(BackendError, match="not cfallow's"):
        plan_calls(seen(CURRENT, perm_sets=theirs), b.want, CURRENT)
    wrong = dict(
        sets(CURRENT), **{"cloudflare-v6": SetState("cfallow", "hash:ip", "inet6", frozenset())}
    )
    with pytest.raises(BackendError, match="hash:ip"):
        plan_calls(seen(CURRENT, run_sets=wrong), b.want, CURRENT)
    with pytest.raises(BackendError, match="FAILED"):
        plan_calls(seen(CURRENT, state="FAILED"), b.want, CURRENT)
    admin_zone = {"cloudflare": ZoneState("Public")}
    with pytest.raises(BackendError, match="zone cloudflare exists"):
        plan_calls(seen(CURRENT, perm_zones=admin_zone), b.want, CURRENT)


def test_the_bus_address_comes_from_config_then_the_runners_env() -> None:
    from cfallow.runner import Runner

    ctx = Context(runner=Runner(env={"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/run/x.sock"}))
    assert build("firewalld", {}, ctx).address == "unix:path=/run/x.sock"  # type: ignore[attr-defined]
    configured = build("firewalld", {"bus": "unix:path=/y"}, ctx)
    assert configured.address == "unix:path=/y"  # type: ignore[attr-defined]


def test_restrict_refuses_a_zone_that_takes_no_traffic_and_notes_open_ones() -> None:
    b = backend(ports=[443], mode="restrict", zone="internal")
    zones = {
        "public": ZoneState("Public", services=frozenset({"https"})),
        "internal": ZoneState("Internal"),
    }
    paths = {"public": "/p/zone/0", "internal": "/p/zone/1"}
    idle = seen(CURRENT, run_zones=zones, perm_zones=zones, zone_paths=paths)
    with pytest.raises(BackendError, match="no interface or source"):
        plan_calls(idle, b.want, CURRENT)
    bound = dict(zones, internal=ZoneState("Internal", interfaces=frozenset({"eth0"})))
    active = seen(CURRENT, run_zones=bound, perm_zones=bound, zone_paths=paths)
    plan = b.diff(active, CURRENT)
    assert plan.notes == ("zone public also opens a configured port to everyone (not restricted)",)
