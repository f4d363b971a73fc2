"""``cfallow verify``: prove with the real kernel, in scratch namespaces, what the host lets in.

:func:`prove` snapshots the host (read-only), builds a scratch origin/edge pair
(:mod:`.lab`), loads the snapshot, optionally applies a plan there first (for
``sync --verify``), probes every port and family from Cloudflare and outsider
sources (:mod:`.probe`) and names the rule that decided each probe
(:mod:`.trace`). The host itself is only read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from netaddr import IPNetwork

from cfallow import progress
from cfallow.errors import CommandFailed
from cfallow.model import Networks
from cfallow.netfilter import nat as hostfw_nat
from cfallow.netfilter import xtables
from cfallow.runner import Runner
from cfallow.verify import ipsets, nftrace, probe, recent, sample, snapshot, trace, xpath
from cfallow.verify import lab as labmod
from cfallow.verify.lab import CannotVerify, Lab
from cfallow.verify.overlap import together

__all__ = ["CannotVerify", "Expectation", "Probe", "Report", "prove"]


@dataclass(frozen=True)
class Expectation:
    """What one backend promises: its mode on its ports and families."""

    backend: str
    mode: str  # "allow" | "lockdown"
    ports: tuple[int, ...]
    families: tuple[int, ...]
    allowed: tuple[str, ...] = ()  # also allowed besides Cloudflare (no outsider probes there)


@dataclass
class Probe:
    """One connection attempt and what came of it."""

    version: int
    port: int
    source: str
    kind: str  # "cloudflare" | "outsider"
    want: str  # "accept" | "refuse" | "any"
    verdict: str = ""
    decided: str = ""
    net: str = ""  # the Cloudflare range the source stands for

    @property
    def ok(self) -> bool:
        """Did the kernel do what the mode promises?"""
        if self.want == "accept":
            return self.verdict == "accept"
        if self.want == "refuse":
            return self.verdict in ("drop", "reject")
        return True

    def to_json(self) -> dict[str, object]:
        """One probe in the ``--json`` report."""
        return {
            "family": f"ipv{self.version}",
            "port": self.port,
            "source": self.source,
            "kind": self.kind,
            **({"range": self.net} if self.net else {}),
            "expected": self.want,
            "verdict": self.verdict,
            "decided_by": self.decided,
            "ok": self.ok,
        }


@dataclass
class Report:
    """The outcome of one verify."""

    probes: list[Probe] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    expectations: list[Expectation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Did every probe come out as promised?"""
        return all(p.ok for p in self.probes)

    def failures(self) -> list[str]:
        """One line per failed probe, naming what decided."""
        out = []
        for p in self.probes:
            if not p.ok:
                want = "accepted" if p.want == "accept" else "refused"
                kind = f"{p.kind} {p.net}" if p.net else p.kind
                out.append(
                    f"IPv{p.version} port {p.port} from {p.source} ({kind}): {p.verdict}, "
                    f"should be {want}; decided by {p.decided}"
                )
        return out

    def to_json(self) -> dict[str, object]:
        """The ``--json`` document."""
        return {
            "ok": self.ok,
            "expectations": [e.__dict__ for e in self.expectations],
            "probes": [p.to_json() for p in self.probes],
            "failures": self.failures(),
            "notes": self.notes,
        }


def _probes(
    desired: Networks, wants: list[Expectation]
) -> tuple[list[Probe], dict[int, list[str]]]:
    """Every range's first and last address (accept), public outsiders (refuse under lockdown)."""
    probes: list[Probe] = []
    sources: dict[int, list[str]] = {}
    avoid = frozenset(IPNetwork(a) for e in wants for a in e.allowed)
    for version in sorted({v for e in wants for v in e.families}):
        cf = sample.cloudflare_sources(desired, version)
        outs = sample.outsiders(desired, version, avoid)
        sources[version] = [a for a, _ in cf] + outs
        for port in sorted({p for e in wants if version in e.families for p in e.ports}):
            covering = [e for e in wants if version in e.families and port in e.ports]
            lock = any(e.mode == "lockdown" for e in covering)
            probes += [Probe(version, port, a, "cloudflare", "accept", net=str(n)) for a, n in cf]
            probes += [
                Probe(version, port, a, "outsider", "refuse" if lock else "any") for a in outs
            ]
    return probes, sources


def _load(runner: Runner, lab: Lab, snap: snapshot.Snapshot) -> None:
    inside = Runner(prefix=lab.exec_prefix(), env=runner.env)
    if snap.ipsets.strip():
        index = dict(snap.ipset_index)
        try:
            inside.run(["ipset", "restore"], input=ipsets.restore_script(snap.ipsets, index))
        except CommandFailed as exc:
            raise CannotVerify(f"cannot verify: the host's ipsets do not load: {exc}") from None
        try:
            there = labmod.in_namespace(lab.path("origin"), lambda: ipsets.indexes(list(index)))
        except OSError as exc:
            raise CannotVerify(
                f"cannot verify: the scratch ipsets: {exc.strerror or exc}"
            ) from None
        if there != index:  # a legacy rule would match another set than the host's
            raise CannotVerify(
                "cannot verify: the host's ipsets do not keep their numbers here "
                f"(host {index}, here {there})"
            )
    if snap.ruleset.strip():
        try:
            inside.run(["nft", "-f", "-"], input=_unowned(snap.ruleset))
        except CommandFailed as exc:
            _load_split(inside, snap, snapshot.xt_nft(runner), exc)
    if snap.legacy:

        def load() -> None:
            for blob in snap.legacy:
                xtables.load_table(blob)

        try:
            labmod.in_namespace(lab.path("origin"), load)
        except OSError as exc:
            raise CannotVerify(
                f"cannot verify: the legacy x_tables do not load: {exc.strerror or exc}"
            ) from None
    if snap.recent:  # after the rules that make the lists
        try:
            labmod.in_namespace(lab.path("origin"), lambda: recent.load(snap.recent))
        except OSError as exc:
            raise CannotVerify(
                f"cannot verify: the host's recent lists do not load: {exc.strerror or exc}"
            ) from None


def _unowned(ruleset: str) -> str:
    """``ruleset`` with no table owned by a process: loaded as printed, a table with
    ``flags owner`` would belong to the ``nft`` loading it and go when it exits, and
    the scratch copy would lack what the host's kernel holds. Each other flag on a
    line of its own (nft 1.0.6 prints ``flags dormant,owner`` but reads no comma)."""
    out = []
    for line in ruleset.splitlines():
        if line.startswith("\tflags "):  # a table's flags (a set's are indented deeper)
            flags = [f.strip() for f in line[len("\tflags ") :].split(",")]
            out += [f"\tflags {f}" for f in flags if f not in ("owner", "persist")]
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _load_split(
    inside: Runner, snap: snapshot.Snapshot, saved: dict[int, str], first: CommandFailed
) -> None:
    """The ruleset did not load as a whole: iptables-nft's tables through its own restore."""
    xt = {v: text for v, text in saved.items() if text.strip()}
    why = first.stderr.strip()
    if not xt:
        raise CannotVerify(f"cannot verify: the host's ruleset does not load here: {why}")
    owned = {
        (f, line[1:].strip())
        for v, text in xt.items()
        for f in [("ip", "ip6")[v == 6]]
        for line in text.splitlines()
        if line.startswith("*")
    }
    rest = _without_tables(_unowned(snap.ruleset), owned)
    try:
        if rest.strip():
            inside.run(["nft", "-f", "-"], input=rest)
        for version, text in xt.items():
            inside.run(
                [("iptables-nft-restore", "ip6tables-nft-restore")[version == 6]], input=text
            )
    except CommandFailed as exc:
        raise CannotVerify(
            f"cannot verify: the host's ruleset does not load here: {why}; "
            f"and split: {exc.stderr.strip()}"
        ) from None


def _without_tables(ruleset: str, drop: set[tuple[str, str]]) -> str:
    out, skip = [], False
    for line in ruleset.splitlines():
        if line.startswith("table "):
            parts = line.split()
            skip = (parts[1], parts[2]) in drop
        if not skip:
            out.append(line)
        if line.startswith("}"):
            skip = False
    return "\n".join(out) + "\n"


def prove(
    runner: Runner,
    desired: Networks,
    wants: list[Expectation],
    *,
    uplink: str | None = None,
    timeout: float = 0.5,
    before_probe: Callable[[Lab], list[str]] | None = None,
) -> Report:
    """Snapshot, build, load, (``before_probe``: apply a plan in the scratch), probe, report."""
    labmod.delete(runner, labmod.leftovers())
    snap = snapshot.read(runner, uplink)
    probes, sources = _probes(desired, wants)
    report = Report(probes=probes, expectations=wants)
    if not probes:
        report.notes.append("nothing to probe: no host firewall backend is configured")
        return report
    lab = labmod.create(runner, snap.net, sources)
    try:
        report.notes += lab.notes
        _load(runner, lab, snap)
        if before_probe is not None:
            report.notes += before_probe(lab)
        inside = Runner(prefix=lab.exec_prefix(), env=runner.env)
        _probe(inside, lab, probes, timeout=timeout, legacy=bool(snap.legacy))
    finally:
        lab.close()
    return report


def _probe(inside: Runner, lab: Lab, probes: list[Probe], *, timeout: float, legacy: bool) -> None:
    """Send every probe, judge each by the kernel's trace, and name the legacy x_tables
    rule of each kind of failure."""
    # reads and loads that do not depend on each other: their commands overlap
    # (legacy x_tables: the trace table's late chain shows which SYNs x_tables let through;
    # the edge is kept quiet for the counters that name a legacy rule)
    edge_runner = Runner(prefix=lab.exec_prefix("edge"), env=inside.env)
    landing, _, rules, _ = together(
        lambda: nat_ports(inside, legacy),
        lambda: inside.run(
            ["nft", "-f", "-"], input=trace.LEGACY_RULESET if legacy else trace.TRACE_RULESET
        ),
        lambda: inside.run(["nft", "-a", "list", "ruleset"]).stdout,
        lambda: legacy and edge_runner.run(["nft", "-f", "-"], input=xpath.EDGE_RULESET),
    )
    ports = sorted({p.port for p in probes} | set(landing))
    families = sorted({p.version for p in probes})
    origin, edge = lab.path("origin"), lab.path("edge")
    progress.probing(len(probes), timeout)
    texts = nftrace.rule_texts(rules)
    # the probes into the origin and its answers into the edge: each handled by the CPU
    # that sent it, in order
    late = legacy and labmod.in_order(origin) and labmod.in_order(edge)
    with probe.session(
        origin, edge, ports, families, texts, timeout=timeout, legacy=legacy, late=late
    ) as session:

        def targets(which: list[Probe]) -> list[probe.Target]:
            return [
                probe.Target(p.version, p.port, p.source, lab.targets[p.version]) for p in which
            ]

        sent = session.send(targets(probes))
        _judge(probes, sent, legacy=legacy)
        # a probe with no trace (or one lost), or one cut short, is sent once more (all of
        # them together)
        again = [p for p in probes if p.decided.startswith(("not traced", "not an nftables"))]
        if again:
            _judge(again, session.send(targets(again)), legacy=legacy)
        paths: dict[tuple[int, int, str, str], str] = {}
        for p in probes:  # one probe alone per kind of failure: its path stands for the others
            if not p.ok and p.decided.startswith("legacy x_tables"):
                key = (p.version, p.port, p.kind, p.verdict)
                if key not in paths:
                    paths[key] = xpath.attribute(inside, session, targets([p])[0])
                p.decided = paths[key]


#: At most this many ports of one NAT target range get a listener.
MAX_LANDING = 64


def nat_ports(inside: Runner, legacy: bool) -> list[int]:
    """The local ports the scratch origin's DNAT/redirect rules send connections to.

    A probe to 443 that the host redirects to 8443 lands on 8443: the verdict
    must be the firewall's, not "nothing listens there".
    """
    rules = list(hostfw_nat.read(inside, "legacy" if legacy else "nft"))
    if legacy:
        rules += hostfw_nat.read(inside, "nft")
    ports: set[int] = set()
    for r in rules:
        for pr in r.to_port or ():
            ports.update(range(pr.first, min(pr.last, pr.first + MAX_LANDING - 1) + 1))
    return sorted(ports)


def _judge(probes: list[Probe], sent: probe.Sent, *, legacy: bool) -> None:
    traced = trace.parse(sent.lines)
    for p, verdict in zip(probes, sent.verdicts):
        pkt = traced.get((p.source, p.port))
        if sent.lost and pkt is not None and not _dropped(pkt):
            # events were lost: this path may lack the chain that decided; a traced drop
            # is whole (nothing follows a drop)
            pkt = None
        p.decided = _decided(pkt, verdict, legacy)
        found = pkt.decided() if pkt else None
        # a traced reject: the probe is decided by the trace before its RST or ICMP
        # error lands (and an ICMPv6 error that lands while connect() holds the socket
        # is dropped by TCP, LockDroppedIcmps): the traced rule says what the kernel did
        rejected = found is not None and found[2] == "drop" and "reject" in found[1]
        p.verdict = "reject" if verdict == "drop" and rejected else verdict


def _dropped(pkt: trace.Packet) -> bool:
    found = pkt.decided()
    return found is not None and found[2] == "drop"


def _decided(pkt: trace.Packet | None, verdict: str, legacy: bool) -> str:
    """Name what decided: the nftables rule or policy, or the legacy x_tables."""
    found = pkt.decided() if pkt else None
    text = f"{found[0]}: {found[1]}" if found else ""
    if found is not None and found[2] == "drop":
        return text
    if legacy:
        seen = f" (nftables: {text})" if text else ""
        return f"legacy x_tables (iptables-legacy){seen}"
    if pkt is None:
        return "not traced"
    if verdict == "accept":
        return text or "no nftables base chain on the path"
    return f"not an nftables rule (after {text})" if text else "not an nftables rule"


run = prove  # 0.1's name (deprecated): a proof, not a run over the backends
