"""The host's ``-m recent`` lists in the scratch origin.

A legacy ``xt_recent`` rule decides by the addresses its list holds, which the
kernel keeps beside the rules (``/proc/net/xt_recent/NAME``); the rules' blobs
copied alone would meet empty lists. Each address goes into the scratch's list
of the same name with as many hits as the host's list holds times for it, all
at the time of the copy: a rule that asks for hits within ``--seconds`` then
matches at least where the host's matches (its drop or its accept is then
proven, not missed). Not copied: the TTL a list noted (``--rttl``).
"""

from __future__ import annotations

import os
from pathlib import Path

HOST = Path("/proc/net/xt_recent")
#: The calling thread's namespace (``/proc/net`` is the process's first thread's).
HERE = Path("/proc/thread-self/net/xt_recent")

Lists = tuple[tuple[str, tuple[tuple[str, int], ...]], ...]


def read(where: Path = HOST) -> Lists:
    """Each list's addresses and hits (none: no list, or no ``xt_recent``)."""
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return ()
    out = []
    for name in names:
        entries = []
        for line in (where / name).read_text().splitlines():
            words = line.split()
            if not words or not words[0].startswith("src=") or "oldest_pkt:" not in words:
                continue
            stamps = words[words.index("oldest_pkt:") + 2 :]
            entries.append((words[0][4:], max(1, len(stamps))))
        if entries:
            out.append((name, tuple(entries)))
    return tuple(out)


def load(lists: Lists) -> None:
    """Into the lists of the calling thread's namespace (one the copied rules made;
    a list no rule there names is left out: nothing could match it)."""
    for name, entries in lists:
        path = HERE / name
        if not path.exists():
            continue
        for addr, hits in entries:
            for _ in range(hits):  # one command per open: the kernel takes one at offset 0
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, f"+{addr}\n".encode())
                finally:
                    os.close(fd)
