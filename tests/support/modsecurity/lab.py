"""Private Apache + mod_security2 + CRS and nginx + libmodsecurity 3 + CRS, for ``modsecurity``.

The real-IP test servers (:mod:`support.realip.apache`, :mod:`support.realip.nginx`),
with ModSecurity on, the Debian Core Rule Set, and the admin's own rules:

* 10001: ``REMOTE_ADDR @ipMatch 203.0.113.66``: deny 403 (a visitor the admin blocks);
* 10002 (after :meth:`ModsecLab.use_list`): ``REMOTE_ADDR @ipMatchFromFile`` cfallow's
  list: deny 429, i.e. "ModSecurity judged a Cloudflare address as the client".

So a status says what ModSecurity judged: 403 the blocked visitor, 429 a
Cloudflare edge (or an address the list holds), 200 anything else. The
real-IP chain is the ``nginx`` / ``apache`` backends' own files
(:meth:`ModsecLab.sync_realip`), or absent (``realip=False``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from cfallow.backend import Context, build
from cfallow.engine import run_backend
from support import need
from support.cfdata import CURRENT
from support.realip.apache import Apache
from support.realip.lab import SERVER_ADDR, SERVER_ADDR6, Server
from support.realip.nginx import Nginx

BLOCKED = "203.0.113.66"
CRS_SETUP = Path("/etc/modsecurity/crs/crs-setup.conf")
CRS_RULES = Path("/usr/share/modsecurity-crs/rules")
MOD_SECURITY2 = Path("/usr/lib/apache2/modules/mod_security2.so")
NGX_MODSECURITY = Path("/usr/share/nginx/modules/ngx_http_modsecurity_module.so")
ADMIN_BLOCK = (
    f'SecRule REMOTE_ADDR "@ipMatch {BLOCKED}" '
    "\"id:10001,phase:1,deny,status:403,log,msg:'lab: a visitor the admin blocks'\"\n"
)


def use_rule(path: Path) -> str:
    return (
        f'SecRule REMOTE_ADDR "@ipMatchFromFile {path}" '
        "\"id:10002,phase:1,deny,status:429,log,msg:'lab: a Cloudflare address as the client'\"\n"
    )


class ModsecLab(Server):
    """What both servers add: ModSecurity's files, the chain, status-code requests."""

    name = "modsecurity"
    root: Path

    def __init__(self, root: Path, *, realip: bool = True, **kw: Any) -> None:
        #: Load the real-IP module (the chain's first half); the list is :meth:`sync_realip`'s.
        self.realip = realip
        super().__init__(root, **kw)

    @property
    def list_path(self) -> Path:
        return self.root / "modsec" / "cloudflare.txt"

    @property
    def admin_rules(self) -> Path:
        return self.root / "modsec" / "admin.rules"

    def write_rules(self) -> None:
        need(CRS_RULES.is_dir() and CRS_SETUP.exists(), "the Core Rule Set (modsecurity-crs)")
        d = self.root / "modsec"
        (d / "data").mkdir(parents=True, exist_ok=True)
        (d / "data").chmod(0o777)  # Apache's children (www-data) write collections there
        (d / "main.conf").write_text(
            "SecRuleEngine On\nSecRequestBodyAccess On\nSecAuditEngine Off\n"
            f"SecTmpDir {d}/data\nSecDataDir {d}/data\n"
            f"Include {CRS_SETUP}\nInclude {CRS_RULES}/*.conf\nInclude {self.admin_rules}\n"
        )
        self.admin_rules.write_text(ADMIN_BLOCK)

    def use_list(self) -> None:
        """The admin's rule naming cfallow's list (the server is not reloaded)."""
        self.admin_rules.write_text(ADMIN_BLOCK + use_rule(self.list_path))

    def realip_name(self) -> str:
        raise NotImplementedError

    def realip_section(self) -> dict[str, Any]:
        raise NotImplementedError

    def sync_realip(self, desired: frozenset[IPNetwork] = CURRENT) -> None:
        """The chain: the real-IP backend's own files, synced (and reloaded) by cfallow."""
        backend = build(self.realip_name(), self.realip_section(), Context(runner=_runner()))
        result = run_backend(backend, desired, dry_run=False)
        assert result.error is None, result.error

    def status(self, path: str = "/", *, src: str, header: str | None = None) -> int:
        """The HTTP status of one request from ``src`` (in the client namespace)."""
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
        if header is not None:
            argv += ["-H", f"CF-Connecting-IP: {header}"]
        host = f"[{SERVER_ADDR6}]" if ":" in src else SERVER_ADDR
        argv += ["--interface", src, f"http://{host}:{self.port}{path}"]
        assert self.client_ns is not None
        out = subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *argv],
            capture_output=True,
            text=True,
            check=False,
        )
        return int(out.stdout or "0")


def _runner() -> Any:
    from cfallow.runner import Runner

    return Runner()


class ModsecApache(ModsecLab, Apache):
    """Apache (event MPM) with mod_security2, mod_unique_id and, if ``realip``, mod_remoteip."""

    kind = "apache"

    def write_config(self) -> None:
        need(MOD_SECURITY2.exists(), "mod_security2 (libapache2-mod-security2)")
        super().write_config()
        self.write_rules()
        mods = "/usr/lib/apache2/modules"
        text = self.conf.read_text()
        text = text.replace(
            "LoadModule remoteip_module",
            f"LoadModule unique_id_module {mods}/mod_unique_id.so\n"
            f"LoadModule security2_module {MOD_SECURITY2}\n"
            + ("LoadModule remoteip_module" if self.realip else "#LoadModule remoteip_module"),
        )
        text += f"Include {self.root}/modsec/main.conf\n"
        self.conf.write_text(text)

    def realip_name(self) -> str:
        return "apache"

    def realip_section(self) -> dict[str, Any]:
        sec = Apache.section(self)
        sec["path"] = str(self.root / "cfallow-realip.list")
        return sec

    def section(self) -> dict[str, Any]:
        sec = Apache.section(self)
        del sec["header_file"]
        return {"server": "apache", **sec, "path": str(self.list_path)}

    def extra_paths(self) -> list[Path]:
        return []


class ModsecNginx(ModsecLab, Nginx):
    """nginx with the libmodsecurity 3 connector (``modsecurity on`` in ``http``)."""

    kind = "nginx"

    def write_config(self) -> None:
        need(NGX_MODSECURITY.exists(), "nginx's ModSecurity connector")
        super().write_config()
        self.write_rules()
        text = self.conf.read_text().replace(
            "http {\n",
            "http {\n    modsecurity on;\n"
            f"    modsecurity_rules_file {self.root}/modsec/main.conf;\n",
            1,
        )
        self.conf.write_text(f"load_module {NGX_MODSECURITY};\n" + text)

    def realip_name(self) -> str:
        return "nginx"

    def realip_section(self) -> dict[str, Any]:
        return {
            "path": str(self.root / "conf.d" / "cfallow-realip.conf"),
            "header_file": str(self.root / "conf.d" / "cfallow-realip-header.conf"),
            "options": self.options(),
        }

    def section(self) -> dict[str, Any]:
        return {"server": "nginx", "path": str(self.list_path), "options": self.options()}

    def extra_paths(self) -> list[Path]:
        return []
