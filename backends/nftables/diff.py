"""Pure: the nftables backend's steps from what was read to what is wanted."""

from __future__ import annotations

from netaddr import IPNetwork

from cfallow.errors import BackendError
from cfallow.files import ManagedFile
from cfallow.model import Networks, family

from . import render
from .apply import Seen, Step, basis_of

Want = dict[int, frozenset[IPNetwork]]
Result = tuple[tuple[Step, ...], Networks, list[str]]


def _good(st: object, version: int) -> bool:
    return (
        st is not None
        and getattr(st, "type", None) == render.SET_TYPE[version]
        and getattr(st, "flags", None) == ("interval",)
    )


def _file_drift(seen: Seen, file: ManagedFile, data: bytes) -> list[str]:
    if seen.file == data:
        return []
    state = "missing" if seen.file is None else "differs from the ruleset cfallow applies"
    return [f"{file.path}: {state}"]


def _structure(seen: Seen, s: render.Settings) -> list[str]:
    """Lockdown: what in cfallow's own table differs from config (besides Cloudflare elements)."""
    drift = []
    expect_sets = {s.set_name(v): v for v in s.families}
    expect_sets.update({render.also_name(v): v for v in s.families})
    for name, version in expect_sets.items():
        if not _good(seen.set(name), version):
            drift.append(
                f"set {name}: missing or not type {render.SET_TYPE[version]}, flags interval"
            )
    extra = sorted({st.name for st in seen.sets} - set(expect_sets))
    if extra:
        drift.append(f"sets not cfallow's in {s.table}: {', '.join(extra)}")
    for v in s.families:
        st = seen.set(render.also_name(v))
        if st is not None and st.elements != family(s.also_allow, v):
            drift.append(f"also_allow (IPv{v}) differs from config")
    tags = render.chain_tags(s)
    for c in seen.chains:
        want = tags.get(c.name)
        got = tuple(_comment(r.expr) for r in c.rules)
        if want is None:
            drift.append(f"chain {c.name}: not cfallow's")
        elif (c.hook, c.priority, c.policy, got) != (c.name, s.priority, "accept", want):
            drift.append(
                f"chain {c.name} differs from config (ports, protocol, priority or a hand edit)"
            )
    for name in sorted(set(tags) - {c.name for c in seen.chains}):
        drift.append(f"chain {name} missing")
    return drift


def _comment(expr: tuple[object, ...]) -> str:
    # nft -j puts a rule's comment on the rule, not in expr; read_seen keeps it as the
    # last pseudo-expression {"comment": ...} (see hostfw.parse_ruleset)
    for e in expr:
        if isinstance(e, dict) and "comment" in e:
            return str(e["comment"])
    return ""


def lockdown_steps(seen: Seen, s: render.Settings, want: Want, file: ManagedFile) -> Result:
    """Element ops when only elements differ; the whole table (one transaction) otherwise."""
    names = [s.set_name(v) for v in s.families]
    current = frozenset(n for name in names for n in _elements(seen, name))
    data = render.lockdown_table(s, want).encode()
    drift = _structure(seen, s) if seen.table else []
    if seen.table and seen.dormant:  # loading the table anew wakes it
        drift.insert(0, f"table {s.table} is dormant (flags dormant): its rules saw no packet")
    if not seen.table or drift:
        lines = [data.decode()]
    else:
        lines = []
        for v, name in zip(s.families, names):
            have = _elements(seen, name)
            lines += render.element_ops(s.table, name, want[v] - have, have - want[v])
    if seen.table:
        drift += _file_drift(seen, file, data)
    step = Step(render.script(lines) if lines else "", data, basis_of(seen, names))
    return (step,), current, drift


def _elements(seen: Seen, name: str) -> frozenset[IPNetwork]:
    st = seen.set(name)
    return st.elements if st is not None else frozenset()


def _written_by_cfallow(seen: Seen, name: str) -> bool:
    # a set created before sets carried the mark: cfallow's own include file declares it
    text = (seen.file or b"").decode(errors="replace")
    return text.startswith(render.HEADER) and f"\nset {name} {{\n" in f"\n{text}"


def refuse_foreign_sets(seen: Seen, s: render.Settings) -> None:
    """Sets mode: a set of the configured name that is not cfallow's is an error (unless adopted).

    cfallow's sets carry ``comment "cfallow"``; one without it is the admin's, and a
    sync would replace its elements (``remove`` would empty or delete it).
    """
    if s.adopt_set:
        return
    for v in s.families:
        st = seen.set(s.set_name(v))
        if st is None or st.comment == render.SET_MARK or _written_by_cfallow(seen, st.name):
            continue
        raise BackendError(
            f"set {s.table} {st.name} exists and is not cfallow's (no comment "
            f'"{render.SET_MARK}"; {len(st.elements)} element(s)): name another with '
            "set_v4/set_v6, or set adopt_set = true to let cfallow take it over"
        )


def sets_steps(seen: Seen, s: render.Settings, want: Want, file: ManagedFile) -> Result:
    """Sets mode: the admin's table must exist; sets are created if missing, never retyped."""
    if not seen.table:
        raise BackendError(
            f'table {s.table} not found: mode = "sets" manages sets inside your own table '
            "(create it in /etc/nftables.conf, see docs/nftables.md, or set table = ...)"
        )
    lines, drift = [], []
    for v in s.families:
        name = s.set_name(v)
        st = seen.set(name)
        if st is None:
            lines.append(render.add_set(s.table, name, v))
            drift.append(f"set {s.table} {name} missing")
        elif not _good(st, v):
            raise BackendError(
                f"set {s.table} {name} is type {st.type}, flags {','.join(st.flags) or 'none'}: "
                f"cfallow needs type {render.SET_TYPE[v]}; flags interval (no auto-merge); "
                "delete it or name another with set_v4/set_v6"
            )
        have = _elements(seen, name)
        lines += render.element_ops(s.table, name, want[v] - have, have - want[v])
    current = frozenset(n for v in s.families for n in _elements(seen, s.set_name(v)))
    data = render.sets_include(s, want).encode()
    if not drift:
        drift += _file_drift(seen, file, data)
    names = [s.set_name(v) for v in s.families]
    return (Step(render.script(lines), data, basis_of(seen, names)),), current, drift
