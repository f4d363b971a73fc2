"""iptables-nft I/O: read with ``*-nft-save``, write one ``*-nft-restore --noflush`` batch.

A restore batch is one nf_tables transaction: the kernel applies all of it or
none of it, so a range swap never opens a gap (measured: zero refused
connections while the list changes). Declaring ``:CHAIN - [0:0]`` with
``--noflush`` flushes only that chain, inside the same transaction. Nothing
outside the lines cfallow writes is touched. With the mangle guard (parent
``DOCKER-USER``) the batch has a ``*mangle`` section after ``*filter``: the
tool commits each table when it reads its ``COMMIT`` (checked: a bad line in
the mangle section leaves the filter part committed), so the two parts are
two transactions in one process, filter first; each part alone is a whole
lockdown and a drop in either table is final, so no moment in between lets
more in than before or after.
"""

from __future__ import annotations

from collections.abc import Callable

from cfallow.errors import BackendError
from cfallow.netfilter.save import COMMAND
from cfallow.netfilter.save import RESTORE as RESTORE_TOOLS
from cfallow.netfilter.save import SAVE as SAVE_TOOLS
from cfallow.runner import Runner

from .diff import Ops
from .save import Table, failure, parse_tables

SAVE = SAVE_TOOLS["nft"]
RESTORE = RESTORE_TOOLS["nft"]
LIST = COMMAND["nft"]
MODULE = "nf_tables"


def _failed(tool: str, exc: BackendError) -> BackendError:
    return failure(tool, exc, MODULE)


class NftIO:
    """Reads and writes one family's filter table through the iptables-nft tools."""

    kind = "nft"

    def __init__(self, runner: Runner, *, mangle: bool = False) -> None:
        self.runner = runner
        self.mangle = mangle  # read the mangle table too (parent DOCKER-USER)

    def read(self, version: int) -> str:
        """``iptables-nft-save -t filter`` (an absent table reads as empty), then ``-t mangle``
        when asked (reading creates nothing)."""
        tool = SAVE[version]
        try:
            return "".join(
                self.runner.run([tool, "-t", name]).stdout
                for name in ("filter", "mangle")[: 1 + self.mangle]
            )
        except BackendError as exc:
            raise _failed(tool, exc) from None

    def list_chain(self, version: int, chain: str) -> str:
        """``iptables-nft -S CHAIN``: its policy (``-P``) or ``-N``, then its rules as
        ``*-save`` prints them."""
        tool = LIST[version]
        try:
            return self.runner.run([tool, "-S", chain]).stdout
        except BackendError as exc:
            raise _failed(tool, exc) from None

    def parse(self, version: int, text: str) -> Table:
        """The filter table of a read (and the mangle table, when read)."""
        return parse_tables(text, self.mangle)

    def transact(
        self, version: int, compute: Callable[[Table], Ops], basis: Table | None = None
    ) -> bool:
        """Compute the transaction from ``basis`` (else a fresh read); one restore batch.

        False if there is nothing to do.
        """
        ops = compute(basis if basis is not None else self.parse(version, self.read(version)))
        if ops.empty:
            return False
        tool = RESTORE[version]
        try:
            self.runner.run([tool, "--noflush"], input=ops.restore_script())
        except BackendError as exc:
            raise _failed(tool, exc) from None
        return True
