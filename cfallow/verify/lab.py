"""The scratch pair of network namespaces a verify probes in.

``origin`` gets interfaces named and addressed like the host's and the host's
ruleset; ``edge`` holds the probe sources, joined to the origin by a veth pair
whose origin end is named like the host's uplink. Names are
``cfverify-PID-RAND-o`` / ``-e``: a run that was killed (SIGKILL) is recognised
by the prefix and its dead PID, and the next run deletes what it left. Nothing
is created outside the two namespaces (the veth ends are created in them), so
deleting them deletes everything.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from cfallow.errors import VerifyFailed
from cfallow.netfilter import xtables
from cfallow.runner import Runner
from cfallow.verify.overlap import together
from cfallow.verify.snapshot import HostNet

PREFIX = "cfverify-"
NETNS_DIR = "/run/netns"
SCRATCH = {4: "192.0.2.1/32", 6: "fd00:cf::1/128"}  # an uplink address when the host has none
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def alive(pid: int) -> bool:
    """Is a process with this PID running?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers() -> list[str]:
    """Scratch namespaces of runs that are gone (their PID is dead)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            out.append(name)
    return sorted(out)


def delete(runner: Runner, names: Iterable[str]) -> None:
    """Delete namespaces (their interfaces go with them); missing ones are fine."""
    lines = [f"netns delete {name}" for name in names]
    if lines:  # -force: a missing one does not stop the batch
        runner.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", check=False)


def setns(path: str) -> None:
    """Move the calling thread into the network namespace ``path`` (``/run/netns/NAME``)."""
    libc = xtables.libc()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_namespace(path: str, work: Callable[[], T]) -> T:
    """``work()`` on a thread of its own that has entered the network namespace ``path``.

    The thread ends with ``work``: this process's other threads never change namespace,
    and what ``work`` creates (sockets) stays in ``path``'s namespace.
    """

    def body() -> T:
        setns(path)
        return work()

    result: T = together(body)[0]
    return result


#: The RPS CPUs a new device gets (Linux 6.2 on; one per namespace from 6.9).
RPS_DEFAULT_MASK = "/proc/sys/net/core/rps_default_mask"


def in_order(path: str) -> bool:
    """Does a CPU handle the packets it sends into the namespace ``path`` itself, in order?

    It does unless RPS steers them to other CPUs: the scratch veths are new, and a
    new device has RPS only if the namespace's default mask (its ``rps_default_mask``)
    says so. Without that file (before 6.9 it is in the initial
    namespace alone) the answer is yes only before 6.2, which has no default mask.
    """

    def read() -> str:
        with open(RPS_DEFAULT_MASK) as f:
            return f.read()

    try:
        mask = in_namespace(path, read)
    except OSError:
        release = tuple(int(n) for n in re.findall(r"\d+", os.uname().release)[:2])
        return release < (6, 2)
    return not mask.strip().replace(",", "").strip("0")


@dataclass
class Lab:
    """A created scratch pair; :meth:`close` deletes it (idempotent)."""

    runner: Runner
    origin: str
    edge: str
    targets: dict[int, str]  # family -> the origin address the probes connect to
    notes: list[str]

    def exec_prefix(self, which: str = "origin") -> list[str]:
        """What runs a command inside the scratch ``origin`` (or ``edge``)."""
        return ["ip", "netns", "exec", getattr(self, which)]

    def path(self, which: str) -> str:
        """The bind-mount path of ``origin`` or ``edge``."""
        return f"{NETNS_DIR}/{getattr(self, which)}"

    def close(self) -> None:
        """Delete both namespaces."""
        delete(self.runner, [self.origin, self.edge])


ACCEPT_DAD = (
    "/proc/sys/net/ipv6/conf/all/accept_dad",
    "/proc/sys/net/ipv6/conf/default/accept_dad",
)


def _no_dad() -> None:
    for path in ACCEPT_DAD:
        with open(path, "w") as f:
            f.write("0\n")


def _batch(runner: Runner, ns: str | None, lines: list[str]) -> None:
    if not lines:
        return
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    runner.run(argv, input="\n".join(lines) + "\n")


def create(runner: Runner, net: HostNet, sources: dict[int, list[str]]) -> Lab:
    """Build the pair for ``net`` with ``sources`` (family -> addresses) in the edge."""
    tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
    lab = Lab(runner, f"{tag}-o", f"{tag}-e", {}, [])
    try:
        _batch(runner, None, [f"netns add {lab.origin}", f"netns add {lab.edge}"])
        for which in ("origin", "edge"):
            # /proc/sys/net is the namespace of the thread that opens it
            in_namespace(lab.path(which), _no_dad)
        _wire(runner, lab, net, sources)
    except BaseException:
        lab.close()
        raise
    return lab


def _wire(runner: Runner, lab: Lab, net: HostNet, sources: dict[int, list[str]]) -> None:
    links, origin, edge = [], ["link set lo up"], ["link set lo up"]
    for i, iface in enumerate(net.interfaces):
        peer = f"cfv{i}"
        links.append(
            f"link add {iface.name} address {_mac(0, i)} netns {lab.origin} "
            f"type veth peer name {peer} address {_mac(1, i)} netns {lab.edge}"
        )
        origin += [f"addr add {a} dev {iface.name}" + _nodad(a) for a in iface.addresses]
        origin.append(f"link set {iface.name} up")
        edge.append(f"link set {peer} up")
        if iface.name == net.uplink:
            uplink_peer, up = peer, i
    for version, addrs in sources.items():
        target = net.address(version)
        if target is None:
            scratch = SCRATCH[version]
            origin.append(f"addr add {scratch} dev {net.uplink}" + _nodad(scratch))
            target = scratch.split("/")[0]
            lab.notes.append(
                f"the host has no IPv{version} address on {net.uplink}: probing {target}"
            )
        lab.targets[version] = target
        default = "::/0" if version == 6 else "0.0.0.0/0"
        origin.append(f"route replace {default} dev {net.uplink}")
        edge.append(f"route replace {target} dev {uplink_peer}")
        # ARP/ND are not what is probed: fixed neighbours, so only the TCP verdict counts
        edge.append(f"neigh replace {target} lladdr {_mac(0, up)} dev {uplink_peer} nud permanent")
        origin += [
            f"neigh replace {s} lladdr {_mac(1, up)} dev {net.uplink} nud permanent" for s in addrs
        ]
        host = "128" if version == 6 else "32"
        edge += [f"addr add {s}/{host} dev {uplink_peer}" + _nodad(s) for s in addrs]
    _batch(runner, None, links)
    together(lambda: _batch(runner, lab.origin, origin), lambda: _batch(runner, lab.edge, edge))


def _mac(side: int, index: int) -> str:
    return f"02:cf:{side:02x}:00:{index // 256:02x}:{index % 256:02x}"


def _nodad(addr: str) -> str:
    return " nodad" if ":" in addr else ""


class CannotVerify(VerifyFailed):
    """The scratch copy cannot be built or loaded (nothing was proven)."""
