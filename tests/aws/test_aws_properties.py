"""Property: the aws backend's pure diff, applied to what it read, gives exactly the wanted rules.

Random security-group states (cfallow's rules and the admin's, on the same and
other ports and CIDRs) and random desired lists; the plan is applied in a pure
model of a group. Afterwards every desired CIDR x port is allowed in every
group, cfallow owns nothing else, and no rule of the admin's is ever revoked.
"""

from __future__ import annotations

from typing import Any

from cfallow.backends.aws.backend import AwsSeen, AwsWork
from cfallow.backends.aws.rules import Key, Rule
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build

GROUPS = ("sg-0aaaaaaaaaaaaaaa1", "sg-0bbbbbbbbbbbbbbb2")
POOL = sorted(CURRENT | OLD | {IPNetwork("198.18.0.0/24"), IPNetwork("2001:db8::/48")}, key=str)
PORTS = (80, 443, 8443)

nets = st.frozensets(st.sampled_from(POOL))
keys = st.builds(
    lambda n, p: Key("tcp", p, p, str(n)), st.sampled_from(POOL), st.sampled_from(PORTS)
)
group_rules = st.lists(st.tuples(keys, st.booleans()), max_size=25)


def _seen(raw: dict[str, list[tuple[Key, bool]]]) -> AwsSeen:
    rules = {
        g: [Rule(f"sgr-{g[-1]}{i:016x}", k, owned) for i, (k, owned) in enumerate(items)]
        for g, items in raw.items()
    }
    return AwsSeen(rules, (), {}, {}, ())


def _apply(seen: AwsSeen, work: AwsWork) -> dict[str, set[tuple[Key, bool]]]:
    after = {g: {(r.key, r.owned) for r in rules} for g, rules in seen.rules.items()}
    for change in work.groups:
        after[change.group] -= {(r.key, r.owned) for r in change.revoke}
        after[change.group] |= {(k, True) for k in change.authorize}
    return after


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({g: group_rules for g in GROUPS}), nets)
def test_plan_applied_to_the_read_gives_exactly_the_desired_rules(
    raw: dict[str, list[tuple[Key, bool]]], desired: frozenset[IPNetwork]
) -> None:
    backend: Any = build(
        "aws",
        {"security_group_ids": list(GROUPS), "ports": [80, 443], "rules_per_group": 1000},
        Context(),
    )
    seen = _seen(raw)
    plan = backend.diff(seen, desired)
    assert backend.diff(seen, desired) == plan  # pure
    after = _apply(seen, plan.steps[0]) if plan.steps else _apply(seen, AwsWork((), (), (), ()))
    wanted = {Key("tcp", p, p, str(n)) for n in desired for p in (80, 443)}
    for g in GROUPS:
        before = {(r.key, r.owned) for r in seen.rules[g]}
        assert {k for k, owned in before if not owned} <= {k for k, _ in after[g]}, (
            "admin's rule lost"
        )
        allowed = {k for k, _ in after[g]}
        assert wanted <= allowed
        owned_after = {k for k, owned in after[g] if owned}
        assert owned_after <= wanted, "cfallow keeps a rule it does not want"
    for change in plan.steps[0].groups if plan.steps else ():
        assert all(r.owned for r in change.revoke)
    removal = backend.diff(seen, None)
    left = (
        _apply(seen, removal.steps[0]) if removal.steps else _apply(seen, AwsWork((), (), (), ()))
    )
    for g in GROUPS:
        assert all(not owned for _, owned in left[g])
        assert {(r.key, False) for r in seen.rules[g] if not r.owned} == left[g]
