"""The Cloudflare range list as the core carries it."""

from __future__ import annotations

from dataclasses import dataclass

from cfallow.model import Desired, Networks, as_strings, canonical


@dataclass(frozen=True)
class Ranges:
    """A validated list and where it came from."""

    ipv4: Networks
    ipv6: Networks
    kind: str  # "live" or "bundled"
    url: str | None = None
    etag: str | None = None
    fetched_at: float | None = None  # epoch seconds (bundled: the snapshot's date)

    @property
    def desired(self) -> Desired:
        """Both families, merged once: exactly what every backend diffs against (with
        the list's etag, for a backend's own record)."""
        return Desired(canonical(self.ipv4) | canonical(self.ipv6), self.etag)

    def to_json(self) -> dict[str, object]:
        """The ``source`` object of the JSON contract."""
        return {
            "kind": self.kind,
            "url": self.url,
            "etag": self.etag,
            "ipv4": as_strings(self.ipv4),
            "ipv6": as_strings(self.ipv6),
            "fetched_at": self.fetched_at,
        }
