"""Pure values: canonical networks, the diff, and the :class:`Plan`.

Networks are canonical :class:`netaddr.IPNetwork` values (no host bits) kept in
frozensets, so the diff is plain set algebra at the entry level. ``IPSet`` is
not used for the diff: it merges adjacent blocks and would hide a rule change a
firewall needs (it is used for coverage checks instead).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from netaddr import AddrFormatError, IPNetwork, cidr_merge

from cfallow.errors import ValidationError

Networks = frozenset[IPNetwork]
FAMILIES = (4, 6)
FAMILY_NAME = {4: "IPv4", 6: "IPv6"}
S = TypeVar("S")


class Desired(frozenset[IPNetwork]):
    """The desired list as the engine hands it to every backend: a frozenset of networks
    like any :data:`Networks` (set operations give plain frozensets), and the source's
    etag, which a backend may keep in its own record (a comment in a file) but never
    diffs on (:func:`etag_of`)."""

    __slots__ = ("_etag",)
    _etag: str | None

    def __new__(cls, nets: Iterable[IPNetwork] = (), etag: str | None = None) -> Desired:
        self = super().__new__(cls, nets)
        self._etag = etag
        return self

    @property
    def etag(self) -> str | None:
        """The source's etag of this list (``None``: unknown, e.g. the text lists)."""
        return self._etag

    def __reduce__(self) -> tuple[type[Desired], tuple[tuple[IPNetwork, ...], str | None]]:
        return (type(self), (tuple(self), self._etag))


def etag_of(desired: Networks | None) -> str | None:
    """The source's etag that ``desired`` carries (``None`` for a plain set)."""
    return desired.etag if isinstance(desired, Desired) else None


def sort_key(net: IPNetwork) -> tuple[int, int, int]:
    """Address order, IPv4 first."""
    return (net.version, int(net.network), net.prefixlen)


def ordered(nets: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Networks in address order, IPv4 first."""
    return sorted(nets, key=sort_key)


def as_strings(nets: Iterable[IPNetwork]) -> list[str]:
    """CIDR strings in address order, IPv4 first."""
    return [str(n) for n in ordered(nets)]


def family(nets: Iterable[IPNetwork], version: int) -> Networks:
    """The networks of one IP version."""
    return frozenset(n for n in nets if n.version == version)


def by_family(nets: Iterable[IPNetwork]) -> dict[int, Networks]:
    """``{4: IPv4 networks, 6: IPv6 networks}``."""
    split: dict[int, set[IPNetwork]] = {4: set(), 6: set()}
    for net in nets:
        split[net.version].add(net)
    return {v: frozenset(n) for v, n in split.items()}


def parse_cidr(text: str, version: int | None = None) -> IPNetwork:
    """Parse one strict CIDR (``a.b.c.d/n`` or ``x::/n``) with no host bits.

    Raises :class:`ValidationError` naming the entry. Only values that pass
    here may reach a firewall argv.
    """
    if not isinstance(text, str) or "/" not in text or text != text.strip() or not text.isascii():
        raise ValidationError(f"not a CIDR: {text!r}")
    addr, _, plen = text.partition("/")
    if not plen.isdigit() or len(plen) > 3:
        raise ValidationError(f"not a CIDR: {text!r}")
    want = version or (6 if ":" in addr else 4)
    if want == 4 and (addr.count(".") != 3 or ":" in addr):
        raise ValidationError(f"not an IPv4 CIDR: {text!r}")
    if want == 4 and any(len(octet) > 1 and octet.startswith("0") for octet in addr.split(".")):
        # netaddr 1.x refuses these; Debian 12's netaddr 0.8 (the .deb's) reads them as decimal.
        raise ValidationError(f"not a CIDR: {text!r}")
    if want == 6 and ":" not in addr:
        raise ValidationError(f"not an IPv6 CIDR: {text!r}")
    try:
        # netaddr >= 1.0 refuses the legacy short forms ("10/8", "1.2.3", "01.2.3.4").
        net = IPNetwork(text, version=want)
    except (AddrFormatError, ValueError, TypeError) as exc:
        raise ValidationError(f"not a CIDR: {text!r}") from exc
    if net.version != want:
        raise ValidationError(f"not an IPv{want} CIDR: {text!r}")
    if net.ip != net.network:
        raise ValidationError(f"host bits set in {text!r} (did you mean {net.cidr}?)")
    return net.cidr


def canonical(nets: Iterable[IPNetwork]) -> Networks:
    """Merge once (``cidr_merge``) into the canonical desired set."""
    return frozenset(n.cidr for n in cidr_merge(list(nets)))


def diff(
    desired: Networks, current: Networks, covered: Networks = frozenset()
) -> tuple[Networks, Networks]:
    """Entry-level diff: ``(add, remove)``.

    ``covered`` holds entries something the admin owns already provides: they
    are never added (and, not being cfallow's, never removed).
    """
    add = desired - current - covered
    remove = current - desired
    return frozenset(add), frozenset(remove)


@dataclass(frozen=True)
class Plan(Generic[S]):
    """What one backend would do: a pure value, computed without writing.

    ``current`` is what cfallow owns on the target before the change; ``drift``
    names settings on the target that differ from config (ports, mode, a
    hand-edited rule) and so need a write even when ``add``/``remove`` are
    empty. ``steps`` are the backend's own typed steps for ``apply`` (frozen
    values: everything ``apply`` needs, so a backend keeps no state between
    ``diff`` and ``apply``).
    """

    backend: str
    current: Networks = frozenset()
    add: Networks = frozenset()
    remove: Networks = frozenset()
    drift: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    steps: tuple[S, ...] = ()
    #: Targets of this backend that fail (one line each: over a quota, unreadable) while
    #: the others are applied: the engine reports them as the backend's error, dry runs too.
    failed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """True when applying would write anything."""
        return bool(self.add or self.remove or self.drift)

    @property
    def kept(self) -> Networks:
        """Owned entries that stay."""
        return self.current - self.remove

    @property
    def after(self) -> Networks:
        """Owned entries once applied."""
        return self.kept | self.add

    def summary(self) -> str:
        """``name: +2 -1 =20`` (and the drift, if any)."""
        line = f"{self.backend}: +{len(self.add)} -{len(self.remove)} ={len(self.kept)}"
        if self.drift:
            line += " (drift: " + "; ".join(self.drift) + ")"
        return line


def make_plan(
    backend: str,
    desired: Networks,
    current: Networks,
    *,
    covered: Networks = frozenset(),
    drift: Iterable[str] = (),
    notes: Iterable[str] = (),
    steps: Iterable[S] = (),
    failed: Iterable[str] = (),
) -> Plan[S]:
    """Diff ``desired`` against ``current`` and wrap the result in a :class:`Plan`."""
    add, remove = diff(desired, current, covered)
    return Plan(
        backend,
        frozenset(current),
        add,
        remove,
        tuple(drift),
        tuple(notes),
        tuple(steps),
        tuple(failed),
    )


def combine(
    backend: str,
    parts: Iterable[Plan[object]],
    *,
    drift: Iterable[str] = (),
    notes: Iterable[str] = (),
    steps: Iterable[S] = (),
) -> Plan[S]:
    """One plan from per-target plans (a jail, a group), each made by :func:`make_plan`.

    For a backend whose targets each want their own part of the list: the
    entries are the unions of the parts', the steps the backend's own.
    """
    current: set[IPNetwork] = set()
    add: set[IPNetwork] = set()
    remove: set[IPNetwork] = set()
    for part in parts:
        current |= part.current
        add |= part.add
        remove |= part.remove
    return Plan(
        backend,
        frozenset(current),
        frozenset(add),
        frozenset(remove),
        tuple(drift),
        tuple(notes),
        tuple(steps),
    )
