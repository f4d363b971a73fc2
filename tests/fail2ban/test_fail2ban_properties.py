"""Property: the fail2ban backend's pure diff, applied to what it read, gives the wanted lists.

Random jails (the admin's base ignore list, cfallow's drop-in entries, its
record of live entries, the live list with leaks and gaps, running or not)
and random desired lists. Applying the plan in a pure model: every running
managed jail's live list is exactly its base plus the desired ranges, the
drop-in lists exactly what the base lacks, the admin's entries are never in a
removal, and removal leaves each running jail with its base list alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cfallow.backends.fail2ban import dropin
from cfallow.backends.fail2ban.backend import Seen
from cfallow.backends.fail2ban.client import ConfigDump
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build
from cfallow.model import as_strings

POOL = sorted(CURRENT | OLD | {IPNetwork("198.18.0.0/24"), IPNetwork("2001:db8::/48")}, key=str)
JAILS = ("alpha", "beta", "gamma")
nets = st.frozensets(st.sampled_from(POOL), max_size=8)
jail_state = st.fixed_dictionaries(
    {"base": nets, "owned": nets, "recorded": nets, "live_extra": nets, "running": st.booleans()}
)


def _seen(state: dict[str, dict[str, Any]]) -> Seen:
    admin = ConfigDump({j: as_strings(s["base"]) for j, s in state.items()}, set(state))
    owned = {j: s["owned"] - s["base"] for j, s in state.items()}
    running = {j for j, s in state.items() if s["running"]}
    lists = {
        j: tuple(as_strings(s["base"] | owned[j] | s["recorded"] | s["live_extra"]))
        for j, s in state.items()
        if j in running
    }
    recorded = {j: s["recorded"] for j, s in state.items() if s["recorded"]}
    text = dropin.render(owned, admin.defined)
    return Seen(text, recorded, admin, frozenset(running), "", lists, ())


def _live_after(seen: Seen, plan: Any) -> dict[str, frozenset[IPNetwork]]:
    live = {j: frozenset(IPNetwork(c) for c in v) for j, v in seen.lists.items()}
    for work in plan.steps:
        for change in work.live:
            now = live[change.jail] | {IPNetwork(c) for c in change.add}
            live[change.jail] = now - {IPNetwork(c) for c in change.remove}
    return live


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({j: jail_state for j in JAILS}), nets)
def test_plan_applied_to_the_read_gives_exactly_the_wanted_lists(
    state: dict[str, dict[str, Any]], desired: frozenset[IPNetwork]
) -> None:
    backend: Any = build("fail2ban", {"config_dir": "/nonexistent"}, Context(state_dir=Path("/x")))
    seen = _seen(state)
    plan = backend.diff(seen, desired)
    assert backend.diff(seen, desired) == plan  # pure
    live = _live_after(seen, plan)
    new_text = next((w.dropin.new for w in plan.steps if w.dropin), seen.dropin)
    owned_after, problems = dropin.parse(new_text) if new_text else ({}, [])
    assert problems == []
    for jail, s in state.items():
        assert owned_after.get(jail, frozenset()) == desired - s["base"]
        if s["running"]:
            assert live[jail] == s["base"] | desired | (
                s["live_extra"] - s["owned"] - s["recorded"]
            )
        for work in plan.steps:
            for change in work.live:
                if change.jail == jail:
                    assert not {IPNetwork(c) for c in change.remove} & s["base"], "admin's entry"

    removal = backend.diff(seen, None)
    left = _live_after(seen, removal)
    for jail, s in state.items():
        if s["running"]:
            assert left[jail] == s["base"] | (s["live_extra"] - s["owned"] - s["recorded"])
