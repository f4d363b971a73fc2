"""The legacy kernel's own entries of a ``filter`` table, raw, with their fields named.

``iptables-legacy-save`` prints a rule from its entry but cannot show
everything that decides a match (an interface mask of ``0x01`` bytes prints
as the same ``-i lo`` as one of ``0xff`` bytes). This reads the entries
themselves: the kernel's table blob (one ``IPT_SO_GET_ENTRIES`` getsockopt,
:func:`cfallow.netfilter.xtables.read_table`, through ctypes: no compiler, no
python-iptables), cut into chains the way libiptc does, each entry's fields
named (:func:`entry_fields`: ``iniface_mask``, ``proto``, ``match 1 (multiport
rev 1) data``, ...). The field layout is the kernel's UAPI (``linux/netfilter_ipv4/ip_tables.h``,
``netfilter_ipv6/ip6_tables.h``, ``x_tables.h``), written out in
:data:`cfallow.netfilter.xtables.HEADER` (the digest walks the same entries).

It works on the calling process's own network namespace and needs
``CAP_NET_RAW`` (as ``iptables-legacy-save`` does). Used by the legacy
backend's mask check, and by the byte-level oracle test
(``tests/iptables/test_iptables_oracle.py``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cfallow.netfilter.xtables import HEADER, HEADER_SIZE, HOOKS, field_at, read_table


@dataclass(frozen=True)
class Entries:
    """One family's filter table as the kernel holds it: built-in policies, rules per chain."""

    version: int
    policies: tuple[tuple[str, str], ...]
    chains: tuple[tuple[str, tuple[bytes, ...]], ...]


#: A standard target's verdict for a built-in policy (``-NF_<VERDICT> - 1``).
VERDICTS = {-1: "DROP", -2: "ACCEPT", -4: "QUEUE"}
OFFSETS_AT = {v: field_at(v, "target_offset") for v in HEADER}  # then next_offset


def read_entries(version: int, table: str = "filter") -> Entries:
    """Table ``table`` (filter; mangle for the guard) of this process's network namespace,
    entry by entry.

    A built-in chain runs from its hook entry to its underflow entry (the
    policy); a user chain from the entry after its ``ERROR`` head (whose data
    is the chain's name) to the one before its ``RETURN`` tail; the table ends
    with an ``ERROR`` entry named ``ERROR``. Raises ``OSError`` when the kernel
    refuses the read.
    """
    blob = read_table(version, table)
    valid = [h for h in range(len(HOOKS)) if blob.valid_hooks & (1 << h)]
    starts = {blob.hook_entry[h]: HOOKS[h] for h in valid}
    ends = {blob.underflow[h] for h in valid}
    data = blob.entries
    chains: list[tuple[str, tuple[bytes, ...]]] = []
    policies: list[tuple[str, str]] = []
    name: str | None = None
    user = False
    rules: list[bytes] = []

    def close() -> None:
        if name is not None:
            chains.append((name, tuple(rules[:-1] if user else rules)))  # not the RETURN tail

    pos = 0
    while pos < len(data):
        target_offset, next_offset = struct.unpack_from("=HH", data, pos + OFFSETS_AT[version])
        raw = data[pos : pos + next_offset]
        target = _cstr(raw[target_offset + 2 : target_offset + 31])
        if pos in starts:
            close()
            name, user, rules = starts[pos], False, []
        if target == "ERROR":
            close()
            label = _cstr(raw[target_offset + 32 : target_offset + 64])
            if label == "ERROR":
                break
            name, user, rules = label, True, []
        elif pos in ends and name is not None and not user:
            verdict = struct.unpack_from("=i", raw, target_offset + 32)[0]
            policies.append((name, VERDICTS.get(verdict, str(verdict))))
            close()
            name = None
        else:
            rules.append(raw)
        pos += next_offset
    return Entries(version, tuple(policies), tuple(chains))


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _name(raw: bytes) -> bytes:
    """A match or target name field (29 bytes), then its revision byte.

    The kernel copies a name out only up to its NUL; the rest of the field is
    whatever the reader's buffer held before, so it is zeroed here.
    """
    name = raw[:29].split(b"\0", 1)[0]
    return name.ljust(29, b"\0") + raw[29:30]


def entry_fields(version: int, raw: bytes) -> list[tuple[str, bytes]]:
    """Every byte of one entry, in named fields: the header, each match, the target."""
    fields = [(name, raw[off : off + size]) for name, off, size in HEADER[version]]
    target_offset, next_offset = (
        struct.unpack_from("=HH", raw, 88 if version == 4 else 140) if raw else (0, 0)
    )
    pos, index = HEADER_SIZE[version], 1
    while pos < target_offset:
        size = struct.unpack_from("=H", raw, pos)[0]
        what = f"match {index} ({_cstr(raw[pos + 2 : pos + 31])} rev {raw[pos + 31]})"
        fields += [(f"{what} size", raw[pos : pos + 2]), (f"{what} name", _name(raw[pos + 2 :]))]
        fields.append((f"{what} data", raw[pos + 32 : pos + max(size, 32)]))
        pos, index = pos + max(size, 32), index + 1
    what = f"target ({_cstr(raw[target_offset + 2 : target_offset + 31])})"
    fields += [
        (f"{what} size", raw[target_offset : target_offset + 2]),
        (f"{what} name", _name(raw[target_offset + 2 :])),
        (f"{what} data", raw[target_offset + 32 : next_offset]),
    ]
    return fields


def iface_mask(name: str) -> bytes:
    """The ``iniface_mask`` ``iptables -i NAME`` writes (``+`` at the end: a prefix match)."""
    size = len(name) - 1 if name.endswith("+") else len(name) + 1
    return (b"\xff" * size).ljust(16, b"\0")


def wrong_masks(version: int, chain: str, specs: tuple[str, ...]) -> dict[int, str]:
    """Rules of ``chain`` whose kernel interface mask is not what their ``-i NAME`` says.

    Index in the chain -> the mask found (hex). Reads this namespace's table.
    """
    found = dict(read_entries(version).chains).get(chain, ())
    if len(found) != len(specs):
        return {}  # the table moved since ``specs`` were read: the next read decides
    out: dict[int, str] = {}
    for i, (spec, raw) in enumerate(zip(specs, found)):
        tokens = spec.split()
        if "-i" not in tokens[:-1]:
            continue
        mask = dict(entry_fields(version, raw))["iniface_mask"]
        if mask != iface_mask(tokens[tokens.index("-i") + 1]):
            out[i] = mask.hex(" ")
    return out
