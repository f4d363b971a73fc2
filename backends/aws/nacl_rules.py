"""Network ACL entries for the ``aws-nacl`` backend: ownership, layout, placement, quota.

Pure functions over what ``DescribeNetworkAcls`` returned; no AWS call happens
here. A network ACL is stateless and evaluated in rule-number order (1-32766,
lowest first, first match wins); an entry cannot be edited, only created and
deleted by number. cfallow owns the inbound entries inside its band of rule
numbers once the ACL carries its tag (``cfallow:rule-numbers = "FIRST-LAST"``);
nothing outside the band, and no outbound entry, is ever touched. When
``rule_numbers`` changes, the entries of the tagged band are still cfallow's:
they move into the new band (made before broken) and the tag follows.

Inside the band, the allows for Cloudflare's ranges grow from the bottom and
the denies (everyone else, on the same ports) sit at the top, so a new range
always finds a free number below the denies: a change creates its new entries
first and deletes the old ones after (no moment a kept range is missing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from netaddr import IPNetwork

from cfallow.model import Networks, ordered
from cfallow.section import PortRange

TAG_KEY = "cfallow:rule-numbers"
PROTOCOLS = {"tcp": "6", "udp": "17"}
WORLD = {4: "0.0.0.0/0", 6: "::/0"}
#: The default deny entries AWS lists (``*`` in the console): 32767 IPv4, 32768 IPv6.
DEFAULT_DENY = (32767, 32768)
DEFAULT_QUOTA = 20
MAX_QUOTA = 40
QUOTA_NAME = "'Rules per network ACL' (Service Quotas vpc L-2AEEBF1A)"
#: Ports a client answers on: what return traffic to Cloudflare goes to.
EPHEMERAL = PortRange(1024, 65535)
_SAMPLE_PORTS = (1024, 32768, 49152, 65535)


@dataclass(frozen=True, order=True)
class Spec:
    """What an entry does, without its number."""

    egress: bool
    protocol: str  # "6", "17", "-1" (all) or another number
    first: int  # -1/-1: every port (or the protocol has none)
    last: int
    cidr: str
    allow: bool

    @property
    def version(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.cidr else 4

    @property
    def ports(self) -> str:
        """``80``, ``80-443`` or ``all``."""
        if self.first < 0:
            return "all"
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"

    def covers_port(self, port: int) -> bool:
        """Does a packet to ``port`` fall in this entry's port range?"""
        return self.first < 0 or self.first <= port <= self.last

    def text(self) -> str:
        """``allow tcp/443 from 173.245.48.0/20``."""
        proto = {v: k for k, v in PROTOCOLS.items()}.get(self.protocol, self.protocol)
        way = "to" if self.egress else "from"
        return f"{'allow' if self.allow else 'deny'} {proto}/{self.ports} {way} {self.cidr}"


@dataclass(frozen=True, order=True)
class Entry:
    """One entry as AWS lists it."""

    number: int
    spec: Spec


@dataclass(frozen=True)
class Band:
    """The rule numbers cfallow owns in every configured ACL (inclusive)."""

    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"

    def __contains__(self, number: object) -> bool:
        return isinstance(number, int) and self.first <= number <= self.last

    @property
    def size(self) -> int:
        """How many numbers the band holds."""
        return self.last - self.first + 1


def parse_band(text: str) -> Band | None:
    """``"1-99"`` -> Band(1, 99); None when malformed or outside 1-32766."""
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit()):
        return None
    band = Band(int(first), int(last))
    return band if 1 <= band.first <= band.last <= 32766 else None


@dataclass(frozen=True)
class Acl:
    """One network ACL as read: its entries (both directions) and cfallow's tag."""

    acl_id: str
    entries: tuple[Entry, ...]
    tag: str | None  # the band recorded on the ACL, or None (not cfallow's yet)
    subnets: int


def parse_entry(raw: Mapping[str, Any]) -> Entry:
    """An entry of ``DescribeNetworkAcls`` (the CIDR canonical)."""
    cidr = raw.get("CidrBlock") or raw.get("Ipv6CidrBlock") or "0.0.0.0/0"
    ports = raw.get("PortRange") or {}
    spec = Spec(
        bool(raw.get("Egress")),
        str(raw.get("Protocol", "-1")),
        int(ports.get("From", -1)),
        int(ports.get("To", -1)),
        str(IPNetwork(cidr).cidr),
        raw.get("RuleAction") == "allow",
    )
    return Entry(int(raw["RuleNumber"]), spec)


def parse_acl(raw: Mapping[str, Any]) -> Acl:
    """One ACL of ``DescribeNetworkAcls``."""
    tags = {t.get("Key"): t.get("Value") for t in raw.get("Tags") or []}
    entries = tuple(sorted(parse_entry(e) for e in raw.get("Entries") or []))
    return Acl(
        str(raw["NetworkAclId"]), entries, tags.get(TAG_KEY), len(raw.get("Associations") or [])
    )


# -- what cfallow wants ----------------------------------------------------------


def port_groups(ports: Sequence[PortRange], layout: str) -> tuple[PortRange, ...]:
    """The port ranges of the allow entries: one per configured range (``per-port``),
    or one spanning them all (``span``)."""
    if layout == "span":
        return (PortRange(min(p.first for p in ports), max(p.last for p in ports)),)
    return tuple(ports)


def wanted(
    desired: Networks, ports: Sequence[PortRange], protocol: str, layout: str
) -> tuple[tuple[Spec, ...], tuple[Spec, ...]]:
    """``(allows, denies)``: Cloudflare's ranges on the ports, then everyone else denied
    on the configured ports (per family present in ``desired``)."""
    proto = PROTOCOLS[protocol]
    allows = tuple(
        Spec(False, proto, g.first, g.last, str(n), True)
        for n in ordered(desired)
        for g in port_groups(ports, layout)
    )
    families = sorted({n.version for n in desired})
    denies = tuple(
        Spec(False, proto, p.first, p.last, WORLD[v], False) for v in families for p in ports
    )
    return allows, denies


def span_cost(ports: Sequence[PortRange]) -> str:
    """What ``layout = "span"`` opens beyond the configured ports (``""``: nothing)."""
    spans = sorted((p.first, p.last) for p in ports)
    gaps = [
        f"{a_last + 1}-{b_first - 1}" if b_first - a_last > 2 else str(a_last + 1)
        for (_, a_last), (b_first, _) in zip(spans, spans[1:])
        if b_first > a_last + 1
    ]
    return ", ".join(gaps)


# -- owned entries and the change ---------------------------------------------------


def owned(acl: Acl) -> list[Entry]:
    """cfallow's entries: inbound, inside the band the ACL's tag records."""
    tagged = parse_band(acl.tag or "")
    if tagged is None:
        return []
    return [e for e in acl.entries if not e.spec.egress and e.number in tagged]


def squatters(acl: Acl, band: Band) -> list[Entry]:
    """Inbound entries inside ``band`` that are not cfallow's: the admin's."""
    mine = set(owned(acl))
    return [e for e in acl.entries if not e.spec.egress and e.number in band and e not in mine]


@dataclass(frozen=True)
class AclChange:
    """The writes for one ACL, in order: tag, creates, deletes (or deletes first)."""

    acl_id: str
    label: str
    create: tuple[Entry, ...] = ()
    delete: tuple[Entry, ...] = ()
    tag: str | None = None  # set this tag first
    untag: bool = False  # remove cfallow's tag last (removal)
    delete_first: bool = False  # both at once exceed the quota

    @property
    def empty(self) -> bool:
        """Nothing to write."""
        return not (self.create or self.delete or self.tag or self.untag)


class Unplaceable(Exception):
    """The band has no room for make-before-break (carries the one-line reason)."""


def _overlap(a: Spec, b: Spec) -> bool:
    if a.version != b.version:
        return False
    if a.first < 0 or b.first < 0:
        return True
    return a.first <= b.last and b.first <= a.last


def place(
    band: Band,
    used: Iterable[int],
    kept: Sequence[Entry],
    allows: Sequence[Spec],
    denies: Sequence[Spec],
) -> tuple[Entry, ...]:
    """Numbers for the new entries: allows at the lowest free numbers, denies at the
    highest; every allow below every deny of its family and ports (kept ones included).

    Raises :class:`Unplaceable` when the band is too full for that.
    """
    taken = set(used)
    free = [n for n in range(band.first, band.last + 1) if n not in taken]
    need = len(allows) + len(denies)
    if need > len(free):
        raise Unplaceable(
            f"band {band} has {len(free)} free rule numbers, the change needs {need}"
            f" beside the {band.size - len(free)} in use (make-before-break): widen rule_numbers"
        )
    new = [Entry(n, s) for n, s in zip(free, allows)]
    new += [Entry(n, s) for n, s in zip(reversed(free), denies)]
    everything = [*kept, *new]
    for a in (e for e in everything if e.spec.allow):
        for d in (e for e in everything if not e.spec.allow):
            if _overlap(a.spec, d.spec) and a.number > d.number:
                raise Unplaceable(
                    f"band {band}: no free number for {a.spec.text()} below rule {d.number}"
                    f" ({d.spec.text()}): widen rule_numbers"
                )
    return tuple(sorted(new))


def change(
    acl: Acl, label: str, band: Band, allows: Sequence[Spec], denies: Sequence[Spec]
) -> AclChange:
    """Create what is wanted and missing, delete owned entries not wanted (denies first).

    Raises :class:`Unplaceable` when the band cannot hold the change.
    """
    mine = owned(acl)
    want = set(allows) | set(denies)
    kept = [e for e in mine if e.spec in want and e.number in band]
    have = {e.spec for e in kept}
    stale = [e for e in mine if e not in kept]
    used = [e.number for e in acl.entries if not e.spec.egress]
    new_allows = [s for s in allows if s not in have]
    try:
        create = place(band, used, kept, new_allows, [s for s in denies if s not in have])
    except Unplaceable as first:
        # No free number below the denies: make the denies anew above everything, and
        # delete the old ones (the denies first) once the new entries are in.
        try:
            create = place(band, used, [e for e in kept if e.spec.allow], new_allows, denies)
        except Unplaceable:
            raise first from None
        kept = [e for e in kept if e.spec.allow]
        stale = [e for e in mine if e not in kept]
    delete = tuple(sorted(stale, key=lambda e: (e.spec.allow, e.number)))
    # A first write tags the ACL; a moved band (rule_numbers changed) is re-tagged.
    moved = acl.tag is not None and acl.tag != str(band)
    tag = str(band) if moved or (acl.tag is None and (create or delete)) else None
    return AclChange(acl.acl_id, label, create, delete, tag)


def removal(acl: Acl, label: str) -> AclChange:
    """Delete every owned entry (denies first), then cfallow's tag."""
    stale = sorted(owned(acl), key=lambda e: (e.spec.allow, e.number))
    return AclChange(acl.acl_id, label, delete=tuple(stale), untag=acl.tag is not None)


# -- quota ------------------------------------------------------------------------------


def inbound_count(entries: Iterable[Entry]) -> int:
    """Inbound entries as AWS counts them against the quota, the default deny included."""
    inbound = [e for e in entries if not e.spec.egress]
    numbered = sum(1 for e in inbound if e.number not in DEFAULT_DENY)
    return numbered + max(1, sum(1 for e in inbound if e.number in DEFAULT_DENY))


@dataclass(frozen=True)
class Count:
    """One ACL's inbound entries after a change, split by whose they are."""

    ours: int
    other: int
    default: int
    peak: int  # while both the new and the old entries exist

    @property
    def total(self) -> int:
        """What AWS counts."""
        return self.ours + self.other + self.default


def count(acl: Acl, ch: AclChange) -> Count:
    """Inbound entries once ``ch`` is applied, and at its peak (make-before-break)."""
    inbound = [e for e in acl.entries if not e.spec.egress]
    mine = {e.number for e in owned(acl)}
    gone = {e.number for e in ch.delete}
    ours = sum(1 for e in inbound if e.number in mine and e.number not in gone) + len(ch.create)
    default = max(1, sum(1 for e in inbound if e.number in DEFAULT_DENY))
    other = sum(1 for e in inbound if e.number not in mine and e.number not in DEFAULT_DENY)
    peak = inbound_count(inbound) + len(ch.create)
    return Count(ours, other, default, peak)


def densest(
    *,
    desired: Networks,
    ports: Sequence[PortRange],
    protocol: str,
    layout: str,
    other: int,
    default: int,
) -> str:
    """The proposal a refusal carries: the layout with the fewest entries, and its cost."""
    if layout == "span" or len(ports) == 1:
        return ""
    allows, denies = wanted(desired, ports, protocol, "span")
    need = len(allows) + len(denies) + other + default
    gaps = span_cost(ports)
    cost = f"also opens {gaps} to Cloudflare" if gaps else "the ports are contiguous: no cost"
    return f', or the densest layout: layout = "span" needs {need} ({cost})'


def refusal(label: str, acl_id: str, n: Count, quota: int, proposal: str) -> str:
    """One line: the exact count, the quota, the increase to request."""
    most = "" if n.total <= MAX_QUOTA else f" (AWS allows at most {MAX_QUOTA}: fewer ports)"
    return (
        f"{acl_id} ({label}): {n.total} inbound rules needed ({n.ours} cfallow + {n.other}"
        f" other + {n.default} default deny), quota {quota}: request {QUOTA_NAME} of"
        f" {n.total}{most}{proposal}"
    )


# -- what the admin's entries mean ---------------------------------------------------------


def _first_match(
    entries: Sequence[Entry], egress: bool, proto: str, net: IPNetwork, port: int
) -> Entry | None:
    for e in sorted(entries):
        s = e.spec
        if s.egress != egress or s.version != net.version:
            continue
        if s.protocol not in ("-1", proto) or not s.covers_port(port):
            continue
        if net in IPNetwork(s.cidr):
            return e
    return None


def return_traffic(acl: Acl, label: str, desired: Networks, protocol: str) -> list[str]:
    """A note when outbound entries do not let answers reach Cloudflare's ephemeral ports.

    The ACL is stateless: the answer to a request on 443 leaves to the client's
    port (1024-65535), and only an outbound allow lets it out.
    """
    proto = PROTOCOLS[protocol]
    blocked = [
        n
        for n in ordered(desired)
        if any(
            (m := _first_match(acl.entries, True, proto, n, p)) is None or not m.spec.allow
            for p in _SAMPLE_PORTS
        )
    ]
    if not blocked:
        return []
    return [
        f"{acl.acl_id} ({label}): outbound entries do not let replies reach {len(blocked)}"
        f" Cloudflare range(s) (e.g. {blocked[0]}): the ACL is stateless; add an outbound"
        f" rule allowing {protocol} {EPHEMERAL.first}-{EPHEMERAL.last} to them (or to"
        f" {WORLD[blocked[0].version]}) below any outbound deny"
    ]


def shadowed(
    acl: Acl, label: str, band: Band, ports: Sequence[PortRange], protocol: str
) -> list[str]:
    """Notes for the admin's entries below the band that decide a managed port first."""
    proto = PROTOCOLS[protocol]
    notes = []
    for e in acl.entries:
        s = e.spec
        if s.egress or e.number >= band.first or s.protocol not in ("-1", proto):
            continue
        if any(
            s.covers_port(p.first) or (s.first >= 0 and s.first <= p.last and p.first <= s.last)
            for p in ports
        ):
            notes.append(
                f"{acl.acl_id} ({label}): rule {e.number} ({s.text()}) comes before band {band}"
                " and decides those packets first"
            )
    return notes
