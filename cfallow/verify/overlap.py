"""Commands that do not depend on each other, run side by side."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def together(*work: Callable[[], Any]) -> list[Any]:
    """Each of ``work`` on a thread of its own (each runs commands, which then overlap);
    their results in order. Once all have ended, the failure of the first in order that
    failed is raised (as if they had run one after the other)."""
    results: list[Any] = [None] * len(work)
    failed: dict[int, BaseException] = {}

    def one(i: int) -> None:
        try:
            results[i] = work[i]()
        except BaseException as exc:  # handed to the caller's thread
            failed[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise failed[min(failed)]
    return results
