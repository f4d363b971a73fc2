"""cfallow: keep origin-server allowlists in step with Cloudflare's published IP ranges."""

from __future__ import annotations

from cfallow import _moved

# 0.1's module paths (deprecated, removed in the next release).
_moved.install(
    {
        "cfallow.cadence": "cfallow.fetch.cadence",
        "cfallow.check": "cfallow.cli.check",
        "cfallow.cli": "cfallow.cli.commands",
        "cfallow.cli_args": "cfallow.cli.args",
        "cfallow.cli_verify": "cfallow.cli.verify",
        "cfallow.config": "cfallow.cli.config",
        "cfallow.guard": "cfallow.fetch.guard",
        "cfallow.hostfw": "cfallow.netfilter.host",
        "cfallow.hostfw_advice": "cfallow.netfilter.advice",
        "cfallow.hostfw_eval": "cfallow.netfilter.evaluate",
        "cfallow.hostfw_nat": "cfallow.netfilter.nat",
        "cfallow.http": "cfallow.fetch.http",
        "cfallow.metrics": "cfallow.report.metrics",
        "cfallow.notify": "cfallow.report.notify",
        "cfallow.ranges": "cfallow.fetch.ranges",
        "cfallow.resolve": "cfallow.fetch.resolve",
        "cfallow.sources": "cfallow.fetch.sources",
        "cfallow.state": "cfallow.fetch.state",
        "cfallow.validate": "cfallow.fetch.validate",
        "cfallow.xtables": "cfallow.netfilter.xtables",
    }
)


def __getattr__(name: str) -> str:
    # ``__version__`` reads the installed distribution's metadata: only when asked
    # (importlib.metadata costs a timer run more than the rest of its imports).
    if name == "__version__":
        from cfallow._version import installed

        version = installed()
        globals()["__version__"] = version
        return version
    raise AttributeError(name)
