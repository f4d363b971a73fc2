"""cfallow: keep origin-server allowlists in step with Cloudflare's published IP ranges."""

__version__ = "0.1.0"
