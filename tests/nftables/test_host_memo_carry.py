"""A changing sync keeps the host analysis past cfallow's own commit, when it provably can.

cfallow's transaction for a changed list only adds and deletes elements of its own
sets, which the analysis never reads; when the generation proves nothing else
committed (before the transaction it is the one the analysis is kept under,
after it exactly one more), the next run does not list the admin's rules again,
and its notes are those of an analysis made afresh. Anything else (another
commit before or after cfallow's, a failed transaction, a rewrite of cfallow's
table) leaves the next run to analyse again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import namespace, ns_exec
from support.cfdata import CURRENT, OLD
from support.nftables.helpers import ADMIN_DROP, SET_RULES, Nft

from cfallow.backend import AnyBackend, Context, build
from cfallow.errors import BackendError
from cfallow.model import Networks
from cfallow.runner import Completed, Runner

pytestmark = pytest.mark.root

LISTS = (
    OLD,
    CURRENT,
    CURRENT - {IPNetwork("2c0f:f248::/32")},
    CURRENT,
    CURRENT - {IPNetwork("198.41.128.0/17")},
    CURRENT,
)


@dataclass
class HookedRunner(Runner):
    """The namespace's runner; ``after_commit`` runs right after cfallow's ``nft -f -``, and
    ``spoil`` makes that transaction fail (a line nft refuses: nothing is committed)."""

    after_commit: list[Sequence[str]] = field(default_factory=list)
    spoil: bool = False

    def run(self, argv: Sequence[str], **kw: object) -> Completed:
        commit = list(argv) == ["nft", "-f", "-"]
        if commit and self.spoil:
            kw["input"] = f"{kw.get('input') or ''}add element inet nowhere none {{ 1.2.3.4 }}\n"
        done = super().run(argv, **kw)  # type: ignore[arg-type]
        if commit:
            for extra in self.after_commit:
                super().run(extra)
        return done


class Host:
    def __init__(self, ns: str, tmp: Path, mode: str) -> None:
        self.ns, self.tmp, self.mode = ns, tmp, mode
        self.nft = Nft(ns)
        self.runner = HookedRunner(prefix=ns_exec(ns))
        (tmp / "state").mkdir(exist_ok=True)

    def backend(self, state: str = "state") -> AnyBackend:
        (self.tmp / state).mkdir(exist_ok=True)
        ctx = Context(runner=self.runner, state_dir=self.tmp / state)
        section: dict[str, object] = {"mode": self.mode, "file": str(self.tmp / "cfallow.nft")}
        return build("nftables", section, ctx)

    def sync(self, networks: Networks) -> bool:
        """One run (a new backend, as each timer run is); whether it changed anything."""
        b = self.backend()
        plan = b.plan(networks)
        b.apply(plan)
        return bool(plan.changed)

    def analysed(self) -> bool:
        """Whether a read now lists the admin's rules (the analysis runs)."""
        self.runner.calls.clear()
        self.backend().read()
        listed = {("table", "inet", "filter"), ("chain", "inet", "filter")}
        return any(
            c[:1] == ("nft",) and any(c[i : i + 3] in listed for i in range(len(c)))
            for c in self.runner.calls
        )

    def notes(self, state: str = "state") -> tuple[str, ...]:
        b = self.backend(state)
        return tuple(b.diff(b.read(), CURRENT).notes)


@pytest.fixture(params=["lockdown", "sets"])
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    with namespace("nftcarry") as ns:
        h = Host(ns, tmp_path, request.param)
        h.nft.load(ADMIN_DROP % "")
        h.sync(CURRENT)  # creates cfallow's table or sets: a new structure, analysed again
        if request.param == "sets":  # the admin's rules use the sets (an admin commit)
            for rule in SET_RULES.strip().splitlines():
                h.nft("add", "rule", "inet", "filter", "input", *rule.split())
        assert h.analysed()
        assert not h.analysed()
        yield h


def test_a_changing_sync_keeps_the_analysis_of_the_admins_rules(host: Host) -> None:
    for networks in LISTS:
        assert host.sync(networks)
        assert not host.analysed(), "the analysis carried past cfallow's own commit"
        assert host.notes() == host.notes(state="afresh"), "the answer of a new analysis"
        (host.tmp / "afresh" / "nftables-host.json").unlink()
    assert not host.sync(CURRENT)


def test_an_admin_commit_between_read_and_commit_is_analysed(host: Host) -> None:
    b = host.backend()
    plan = b.plan(OLD)
    host.nft("add", "table", "ip", "admin")  # after cfallow's read, before its commit
    b.apply(plan)
    assert host.analysed()


def test_a_commit_right_after_cfallows_is_analysed(host: Host) -> None:
    host.runner.after_commit.append(["nft", "add", "table", "ip", "admin"])
    assert host.sync(OLD)
    host.runner.after_commit.clear()
    assert host.analysed(), "the generation moved by two"


def test_a_failed_transaction_is_not_carried(host: Host) -> None:
    host.runner.spoil = True
    with pytest.raises(BackendError):
        host.sync(OLD)
    host.runner.spoil = False
    assert not host.analysed(), "nothing committed: the analysis kept still holds"
    assert host.sync(OLD)
    assert not host.analysed()


def test_a_rewrite_of_cfallows_table_is_analysed_again(host: Host) -> None:
    if host.mode == "sets":
        host.nft("delete", "rule", "inet", "filter", "input", "handle", _handle(host))
        host.nft("delete", "set", "inet", "filter", "cloudflare_v6")  # created again: a new set
    else:
        host.nft("flush", "chain", "inet", "cfallow", "input")  # drift: the table rewritten
    assert host.sync(OLD)
    assert host.analysed()


def test_an_admin_deletion_after_a_carried_sync_is_repaired(host: Host) -> None:
    assert host.sync(OLD)
    table = "inet cfallow" if host.mode == "lockdown" else "inet filter"
    host.nft("delete", "element", *table.split(), "cloudflare_v4", "{ 173.245.48.0/20 }")
    assert host.sync(OLD), "the missing element is seen and put back"
    listed = host.nft("list", "set", *table.split(), "cloudflare_v4")
    assert "173.245.48.0/20" in listed
    assert not host.sync(OLD)


def _handle(host: Host) -> str:
    """The handle of the admin's rule using the IPv6 set."""
    for line in host.nft("-a", "list", "chain", "inet", "filter", "input").splitlines():
        if "@cloudflare_v6" in line:
            return str(line.rsplit("handle ", 1)[1].strip())
    raise AssertionError("no rule uses @cloudflare_v6")
