"""The host's ipsets in the scratch origin, each under the number the host gave it.

A legacy x_tables rule names its ipset by the set's index in the namespace
(``xt_set``'s ``ip_set_id_t``), not by its name, and the blob verify copies holds
that index. ``ipset restore`` numbers the sets it makes from the first free index,
so on a host where a set was destroyed (fail2ban's, at each restart) a plain
restore would put another set under the number the host's rule names: the
scratch copy would then match what the host's kernel does not. The sets are
made in the order of their host index, with a placeholder in each gap (destroyed
once the rest is made), and the numbers are checked after.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from cfallow.netfilter.xtables import getsockopt

SO_IP_SET = 83
IP_SET_OP_GET_BYNAME = 0x00000006
IPSET_PROTOCOL = 6  # the least the kernel takes (IPSET_PROTOCOL_MIN)
IPSET_INVALID_ID = 65535
_REQUEST = struct.Struct("=II32s")  # struct ip_set_req_get_set: op, version, name/index
GAP = "cfallow-verify-gap-"


def indexes(names: list[str]) -> dict[str, int]:
    """Each named set's index in this thread's network namespace (absent: left out)."""
    if not names:
        return {}
    out: dict[str, int] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        for name in names:
            buf = ctypes.create_string_buffer(
                _REQUEST.pack(IP_SET_OP_GET_BYNAME, IPSET_PROTOCOL, name.encode()), _REQUEST.size
            )
            getsockopt(sock, 4, SO_IP_SET, buf)  # IPv4's level: SOL_IP
            (index,) = struct.unpack_from("=H", buf.raw, 8)
            if index != IPSET_INVALID_ID:
                out[name] = index
    return out


def names(save: str) -> list[str]:
    """The sets ``ipset save`` printed, in its order."""
    return [ln.split()[1] for ln in save.splitlines() if ln.startswith("create ")]


def restore_script(save: str, index: dict[str, int]) -> str:
    """``save`` for ``ipset restore`` into an empty namespace so that each set gets
    ``index[name]``: every ``create`` first, in index order, a placeholder in each
    gap; then the rest of ``save`` as it was; then the placeholders destroyed."""
    creates = {ln.split()[1]: ln for ln in save.splitlines() if ln.startswith("create ")}
    rest = [ln for ln in save.splitlines() if ln.strip() and not ln.startswith("create ")]
    by_index = {i: n for n, i in index.items() if n in creates}
    out, gaps = [], []
    for i in range(max(by_index, default=-1) + 1):
        if i in by_index:
            out.append(creates[by_index[i]])
        else:
            gaps.append(f"{GAP}{i}")
            out.append(f"create {gaps[-1]} hash:ip")
    out += [ln for n, ln in creates.items() if n not in index]  # raced: any number
    out += rest
    out += [f"destroy {g}" for g in gaps]
    return "\n".join(out) + "\n"
