"""Why an iptables tool failed, in one line; the save text parser is the netfilter library's."""

from __future__ import annotations

from cfallow.errors import BackendError, CommandFailed, CommandNotFound, Unavailable
from cfallow.netfilter.save import Table, parse_save, parse_tables, target_of
from cfallow.runner import missing

__all__ = ["Table", "explain", "failure", "parse_save", "parse_tables", "target_of"]


def failure(tool: str, exc: BackendError, module: str) -> BackendError:
    """The one-line error for an iptables tool that failed (or is not installed)."""
    if isinstance(exc, CommandNotFound):
        return Unavailable(missing(tool, "iptables"))
    if isinstance(exc, CommandFailed):
        return BackendError(explain(tool, exc.stderr, module))
    return exc


def explain(tool: str, stderr: str, module: str) -> str:
    """One line for a failed iptables tool: privileges, kernel support, or its own message."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    detail = lines[-1] if lines else "no message"
    low = stderr.lower()
    if "exec of" in low and "no such file" in low:  # a wrapper (ip netns exec) did not find it
        return missing(tool, "iptables")
    if "permission denied" in low or "must be root" in low or "not permitted" in low:
        return f"{tool}: permission denied (needs root, or CAP_NET_ADMIN and CAP_NET_RAW)"
    if any(
        s in low
        for s in ("protocol not supported", "does not exist", "insmod", "modprobe", "not supported")
    ):
        return f"{tool}: kernel support missing (module {module}?): {detail}"
    return f"{tool}: {detail}"
