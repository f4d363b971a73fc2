"""A built-in zone back to firewalld's defaults once cfallow's rules are out of it.

firewalld keeps a built-in zone (``/usr/lib/firewalld/zones/NAME.xml``) there
until its first permanent change, which writes a full copy to
``/etc/firewalld/zones/NAME.xml``. Restrict mode's rules are such a change:
after ``remove`` the copy would stay, equal to the built-in zone. When the
copy (as firewalld just wrote it) and the built-in file are the same zone
(parsed, order and whitespace aside), ``loadDefaults`` puts the built-in
zone back; anything of the admin's in the copy keeps the copy. firewalld
moves the copy to ``NAME.xml.old``; that backup is deleted only when it is,
byte for byte, the copy found equal to the built-in zone.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from .bus import Bus

#: firewalld's own (packaged) config: the built-in zones are under zones/.
DEFAULT_DIR = Path("/usr/lib/firewalld")


def canonical(elem: ElementTree.Element) -> tuple[Any, ...]:
    """An element as a comparable value: tag, attributes, text, children in any order."""
    kids = tuple(sorted(canonical(child) for child in elem))
    return (elem.tag, tuple(sorted(elem.attrib.items())), (elem.text or "").strip(), kids)


def same_zone(a: bytes, b: bytes) -> bool:
    """Two zone files say the same (a file that does not parse is never the same)."""
    try:  # root's own files: firewalld's package and what firewalld wrote
        one, two = ElementTree.fromstring(a), ElementTree.fromstring(b)  # noqa: S314
        return canonical(one) == canonical(two)
    except ElementTree.ParseError:
        return False


def restore_builtin(bus: Bus, path: str, default_dir: Path = DEFAULT_DIR) -> bool:
    """``loadDefaults`` on the zone at ``path`` when its copy is the built-in zone; done?"""
    props = bus.config_zone_file(path)
    if props.get("builtin") or props.get("default"):
        return False  # the built-in zone itself, or a zone of the admin's own
    copy = Path(str(props["path"])) / str(props["filename"])
    try:
        mine = copy.read_bytes()
        builtin = (default_dir / "zones" / str(props["filename"])).read_bytes()
    except OSError:
        return False
    if not same_zone(mine, builtin):
        return False
    bus.config_zone_load_defaults(path)
    backup = copy.with_name(copy.name + ".old")
    with contextlib.suppress(OSError):
        if backup.read_bytes() == mine:
            backup.unlink()
    return True
