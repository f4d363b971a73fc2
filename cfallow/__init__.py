"""cfallow: keep origin-server allowlists in step with Cloudflare's published IP ranges."""

from cfallow._version import installed as _installed

__version__ = _installed()
