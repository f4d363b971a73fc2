"""cfallow: keep origin-server allowlists in step with Cloudflare's published IP ranges."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # ``__version__`` reads the installed distribution's metadata: only when asked
    # (importlib.metadata costs a timer run more than the rest of its imports).
    if name == "__version__":
        from cfallow._version import installed

        version = installed()
        globals()["__version__"] = version
        return version
    raise AttributeError(name)
