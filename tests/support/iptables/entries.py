"""Two legacy tables compared field by field (for the byte-level oracle tests)."""

from __future__ import annotations

from cfallow.backends.iptables.entries import Entries, entry_fields

IGNORED = ("counters",)  # traffic, not meaning


def differences(mine: Entries, theirs: Entries, labels: tuple[str, str]) -> list[str]:
    """Every field where two tables differ, named (counters left out); empty if none."""
    a, b = labels
    out: list[str] = []
    if mine.policies != theirs.policies:
        out.append(f"policies: {a} {mine.policies}, {b} {theirs.policies}")
    names_a, names_b = [c for c, _ in mine.chains], [c for c, _ in theirs.chains]
    if names_a != names_b:
        out.append(f"chains: {a} {names_a}, {b} {names_b}")
    for (chain, rules_a), (_, rules_b) in zip(mine.chains, theirs.chains):
        if len(rules_a) != len(rules_b):
            out.append(f"{chain}: {a} has {len(rules_a)} rules, {b} {len(rules_b)}")
        for i, (ra, rb) in enumerate(zip(rules_a, rules_b), 1):
            fa, fb = entry_fields(mine.version, ra), entry_fields(theirs.version, rb)
            for (name, va), (name_b, vb) in zip(fa, fb):
                if name in IGNORED or (name == name_b and va == vb):
                    continue
                out.append(
                    f"{chain} rule {i}: {name}: {a} {va.hex(' ')}"
                    + (f", {b} {vb.hex(' ')}" if name == name_b else f", {b} has {name_b}")
                )
            if len(fa) != len(fb):
                out.append(f"{chain} rule {i}: {a} has {len(fa)} fields, {b} {len(fb)}")
    return out
