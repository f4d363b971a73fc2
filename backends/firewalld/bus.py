"""firewalld's D-Bus API, the few calls cfallow needs (jeepney, blocking).

Runtime calls go to ``/org/fedoraproject/FirewallD1``, permanent ones to the
config objects under ``/org/fedoraproject/FirewallD1/config``. Every call
names its D-Bus signature; a firewalld error becomes one
:class:`~cfallow.errors.BackendError` line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from cfallow.errors import BackendError, Unavailable
from cfallow.install import extra_hint

NAME = "org.fedoraproject.FirewallD1"
ROOT = "/org/fedoraproject/FirewallD1"
CONFIG = ROOT + "/config"
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
PROPS = "org.freedesktop.DBus.Properties"

#: An ipset's permanent settings: (version, short, description, type, options, entries).
IPSetSettings = tuple[str, str, str, str, dict[str, str], list[str]]


def bus_address(configured: str = "", env: Mapping[str, str] | None = None) -> str:
    """The configured address, else ``DBUS_SYSTEM_BUS_ADDRESS`` (the Runner's env, then the
    process's), else the system bus."""
    key = "DBUS_SYSTEM_BUS_ADDRESS"
    return configured or (env or {}).get(key, "") or os.environ.get(key, "") or SYSTEM_BUS


class Bus:
    """One connection to firewalld; ``writes`` counts the calls that change something."""

    def __init__(self, address: str, timeout: float = 30.0) -> None:
        try:
            from jeepney.io.blocking import open_dbus_connection
        except ImportError as exc:
            raise Unavailable(
                "firewalld: the Python package jeepney is missing "
                f"({extra_hint('firewalld', 'jeepney>=0.8')})"
            ) from exc
        self.address = address
        self.timeout = timeout
        self.writes = 0
        try:
            self._conn = open_dbus_connection(bus=address)
        except (OSError, ValueError) as exc:
            raise Unavailable(
                f"firewalld: cannot reach the system bus at {address}: {exc}"
            ) from exc

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        path: str,
        iface: str,
        method: str,
        sig: str = "",
        args: Sequence[Any] = (),
        *,
        dest: str = NAME,
    ) -> tuple[Any, ...]:
        """One method call; the reply body, or a one-line :class:`BackendError`."""
        from jeepney import DBusAddress, MessageType, new_method_call

        addr = DBusAddress(path, bus_name=dest, interface=iface)
        msg = new_method_call(addr, method, sig or None, tuple(args))
        try:
            reply = self._conn.send_and_get_reply(msg, timeout=self.timeout)
        except TimeoutError as exc:
            raise BackendError(
                f"firewalld: no answer to {method} within {self.timeout:g} s"
            ) from exc
        if reply.header.message_type == MessageType.error:
            name = str(reply.header.fields.get(4, "error"))  # 4 = ERROR_NAME
            text = str(reply.body[0]).strip().splitlines()[-1] if reply.body else name
            if name in {
                "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner",
            }:
                raise Unavailable("firewalld is not running (nothing owns its D-Bus name)")
            raise BackendError(f"firewalld refused {method}: {text}")
        return tuple(reply.body)

    def write(
        self, path: str, iface: str, method: str, sig: str = "", args: Sequence[Any] = ()
    ) -> tuple[Any, ...]:
        """:meth:`call` for a call that changes the firewall (counted)."""
        self.writes += 1
        return self.call(path, iface, method, sig, args)

    def name_has_owner(self, name: str) -> bool:
        """Whether some process owns ``name`` on this bus (the bus daemon's answer)."""
        bus = "org.freedesktop.DBus"
        reply = self.call("/org/freedesktop/DBus", bus, "NameHasOwner", "s", (name,), dest=bus)
        return bool(reply[0])

    # -- runtime ---------------------------------------------------------

    def state(self) -> str:
        """``RUNNING``, ``FAILED`` or ``INIT``."""
        (value,) = self.call(ROOT, PROPS, "Get", "ss", (NAME, "state"))
        return str(value[1])

    def default_zone(self) -> str:
        return str(self.call(ROOT, NAME, "getDefaultZone")[0])

    def runtime_ipsets(self) -> list[str]:
        return [str(s) for s in self.call(ROOT, NAME + ".ipset", "getIPSets")[0]]

    def runtime_ipset(self, name: str) -> IPSetSettings:
        return _ipset(self.call(ROOT, NAME + ".ipset", "getIPSetSettings", "s", (name,))[0])

    def runtime_set_entries(self, name: str, entries: Sequence[str]) -> None:
        self.write(ROOT, NAME + ".ipset", "setEntries", "sas", (name, list(entries)))

    def runtime_zones(self) -> list[str]:
        return [str(z) for z in self.call(ROOT, NAME + ".zone", "getZones")[0]]

    def runtime_zone(self, zone: str) -> dict[str, Any]:
        (raw,) = self.call(ROOT, NAME + ".zone", "getZoneSettings2", "s", (zone,))
        return {k: v[1] for k, v in raw.items()}

    def reload(self) -> None:
        self.write(ROOT, NAME, "reload")

    # -- permanent -------------------------------------------------------

    def config_names(self, method: str) -> list[str]:
        """``getIPSetNames`` / ``getZoneNames``: the permanent objects' names."""
        return [str(n) for n in self.call(CONFIG, NAME + ".config", method)[0]]

    def config_path(self, method: str, name: str) -> str:
        """``getIPSetByName`` / ``getZoneByName``: one permanent object's D-Bus path."""
        return str(self.call(CONFIG, NAME + ".config", method, "s", (name,))[0])

    def config_ipset_path(self, name: str) -> str | None:
        if name not in self.call(CONFIG, NAME + ".config", "getIPSetNames")[0]:
            return None
        return str(self.call(CONFIG, NAME + ".config", "getIPSetByName", "s", (name,))[0])

    def config_ipset(self, path: str) -> IPSetSettings:
        return _ipset(self.call(path, NAME + ".config.ipset", "getSettings")[0])

    def config_ipset_set_entries(self, path: str, entries: Sequence[str]) -> None:
        self.write(path, NAME + ".config.ipset", "setEntries", "as", (list(entries),))

    def config_remove(self, path: str, kind: str) -> None:
        """Delete a permanent ipset or zone (``kind`` ``ipset`` / ``zone``)."""
        self.write(path, f"{NAME}.config.{kind}", "remove")

    def config_zone_path(self, zone: str) -> str | None:
        if zone not in self.call(CONFIG, NAME + ".config", "getZoneNames")[0]:
            return None
        return str(self.call(CONFIG, NAME + ".config", "getZoneByName", "s", (zone,))[0])

    def config_zone(self, path: str) -> dict[str, Any]:
        (raw,) = self.call(path, NAME + ".config.zone", "getSettings2")
        return {k: v[1] for k, v in raw.items()}

    def config_zone_file(self, path: str) -> dict[str, Any]:
        """A permanent zone's ``name``, ``filename``, ``path``, ``default``, ``builtin``."""
        (raw,) = self.call(path, PROPS, "GetAll", "s", (NAME + ".config.zone",))
        return {str(k): v[1] for k, v in raw.items()}

    def config_zone_load_defaults(self, path: str) -> None:
        """Back to the built-in zone: firewalld renames its /etc copy to ``.old``."""
        self.write(path, NAME + ".config.zone", "loadDefaults")


def _ipset(raw: Sequence[Any]) -> IPSetSettings:
    version, short, desc, typ, options, entries = raw
    return (
        str(version),
        str(short),
        str(desc),
        str(typ),
        {str(k): str(v) for k, v in options.items()},
        [str(e) for e in entries],
    )
