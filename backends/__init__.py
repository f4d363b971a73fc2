"""cfallow's built-in backends (installed as ``cfallow.backends``).

Each module here is a plugin registered in the ``cfallow.backends``
entry-point group; the core never imports them directly.
"""
