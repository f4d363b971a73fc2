"""Backend ``modsecurity``: Cloudflare's ranges as a data file for ``@ipMatchFromFile``.

cfallow owns one file (``/etc/modsecurity/cloudflare.txt`` by default): one
CIDR a line, IPv4 then IPv6, sorted, a comment head naming cfallow and the
source's etag. The admin's own rules use it (``SecRule REMOTE_ADDR
"@ipMatchFromFile /etc/modsecurity/cloudflare.txt" ...``). ModSecurity reads
the file only when the server loads its configuration, so a change goes
through the kit's list-file cycle (:class:`cfallow.listfile.ListFileBackend`),
as the real-IP backends do: candidate, rename, the server's own configuration
test with the file in place (ModSecurity v3 refuses a bad line, v2 a bad
hex-only one), a confirmed reload, the previous bytes back on any failure, a
pending-reload record for a run stopped in between.

``server = "apache"`` (mod_security2) or ``"nginx"`` (libmodsecurity 3 through
its connector) picks the server: its test, reload and reload confirmation are
the ``apache`` / ``nginx`` backends' own (:mod:`.apache`, :mod:`.nginx` only
add how to find the ModSecurity rules and the real-IP chain in that server's
configuration).

What this backend never does: write a rule. It refuses a configuration that
would exempt Cloudflare's ranges from the WAF, whether asked in cfallow's
config (``exempt = true``, ...) or done by a rule of the admin's that names
the list with ``ctl:ruleEngine=Off`` or ``allow`` (the common workaround,
which switches the WAF off for every proxied request).

Every plan states the chain: whether the server restores the visitor's
address from Cloudflare's header, trusting a list cfallow keeps, before
ModSecurity sees the request. If not, one note says ModSecurity's
per-address rules judge Cloudflare's edges, not visitors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from cfallow.backend import Context
from cfallow.errors import BackendError, ConfigError
from cfallow.listfile import ListFileBackend, Seen, Step, quote
from cfallow.model import Networks, Plan
from cfallow.section import Section

from . import rules

#: The first line of every list cfallow writes (how the chain check knows a list is cfallow's).
MARK = "# Managed by cfallow"
#: Config keys that would ask cfallow to exempt Cloudflare from the WAF: refused, by name.
EXEMPTING_KEYS = ("exempt", "bypass", "rule_engine", "ruleengine", "skip_waf", "whitelist", "rule")
DOCS = "docs/modsecurity.md"


@dataclass(frozen=True)
class ModsecSeen(Seen):
    """:class:`Seen`, plus what the server's configuration says about the chain."""

    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Survey:
    """What one look at the server's configuration found."""

    files: tuple[tuple[str, str], ...]
    #: None: the chain is right; else why ModSecurity judges the edges.
    broken: str | None
    #: How the chain is right (when ``broken`` is None).
    how: str


class ModsecurityBackend(ListFileBackend):
    """The list in a file ModSecurity's ``@ipMatchFromFile`` reads (Apache or nginx).

    Instantiating this class gives the server's subclass (``server`` in the
    section); the entry point names this class.
    """

    name = "modsecurity"
    default_path = "/etc/modsecurity/cloudflare.txt"
    #: No header file: the real-IP chain is the admin's (or the nginx/apache backends').
    default_header = ""
    #: The server's name in config (``server = "..."``).
    kind: ClassVar[str] = ""
    #: What ``cfallow verify`` says for this backend (it probes the kernel only).
    cannot_verify: ClassVar[str] = (
        "ModSecurity decides inside the web server, which verify's scratch copy does not run; "
        "sync's configuration test and confirmed reload, and the chain in status, are what "
        "cfallow checks"
    )
    _servers: ClassVar[dict[str, type[ModsecurityBackend]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            ModsecurityBackend._servers[cls.kind] = cls

    def __new__(cls, section: Section, ctx: Context) -> ModsecurityBackend:
        if cls is ModsecurityBackend:
            choices = tuple(sorted(cls._servers))
            if "server" not in section.data:
                raise ConfigError(
                    f"[{section.where}] server: say which server runs ModSecurity: "
                    + " or ".join(f'"{c}"' for c in choices)
                )
            server = cls._servers[section.get_choice("server", "", choices)]
            return super().__new__(server)
        return super().__new__(cls)

    def configure(self, section: Section) -> None:
        asked = [k for k in section.data if k.lower().replace("-", "_") in EXEMPTING_KEYS]
        if asked:
            raise ConfigError(
                f"[{section.where}] {asked[0]}: cfallow does not exempt Cloudflare's ranges from "
                "ModSecurity (a ctl:ruleEngine=Off rule for them switches the WAF off for every "
                "proxied request); it keeps the list your own rules use: see " + DOCS
            )
        section.get_str("server", self.kind)
        super().configure(section)

    # -- what a server module fills in ---------------------------------------------------

    def rule_files(self, dump: str) -> list[tuple[str, str]]:
        """The ModSecurity rule files (``(path, text)``) the configuration test's output names."""
        raise NotImplementedError

    def chain(self, dump: str, files: Sequence[tuple[str, str]]) -> tuple[str | None, str]:
        """``(why it is broken or None, how it is right)`` from the test's output."""
        raise NotImplementedError

    # -- the list file: one CIDR a line, whatever the server's own list syntax ---------------

    def render_body(self, cidrs: Sequence[str]) -> str:
        return ListFileBackend.render_body(self, cidrs)

    def parse_line(self, line: str) -> str | None:
        return ListFileBackend.parse_line(self, line)

    def head(self) -> str:
        return (
            f"{MARK}: Cloudflare's ranges for ModSecurity's @ipMatchFromFile.\n"
            "# cfallow rewrites this file (edits are lost); remove it with\n"
            f"# cfallow remove --backend {self.name}\n"
        )

    # -- the chain and the exemption check -----------------------------------------------

    def survey(self, dump: str) -> Survey:
        """Rule files and chain from a configuration test's output; refuses an exemption."""
        files = tuple(rules.with_includes(self.rule_files(dump)))
        found = rules.scan(list(files), str(self.path))
        if found.exemptions:
            d = found.exemptions[0]
            raise BackendError(
                f"{d.file}:{d.line}: this rule exempts the addresses in {self.path} from "
                "ModSecurity (ctl:ruleEngine=Off or allow), so every request through Cloudflare "
                "would skip the WAF: cfallow does not keep a list for that; restore the "
                f"visitor's address instead ({DOCS})"
            )
        broken, how = self.chain(dump, files)
        return Survey(files, broken, how)

    def notes_for(self, survey: Survey) -> tuple[str, ...]:
        """The plan's lines about the chain and about rules using the list."""
        out = []
        if survey.broken is None:
            out.append(f"chain: {survey.how}: ModSecurity judges the visitor, not the edge")
        else:
            out.append(
                "ModSecurity's per-address rules will judge Cloudflare's edges, not visitors: "
                f"{survey.broken} ({DOCS})"
            )
        if not rules.scan(list(survey.files), str(self.path)).uses:
            out.append(f"no ModSecurity rule names {self.path} (@ipMatchFromFile): it is only data")
        return tuple(out)

    def read(self) -> ModsecSeen:
        seen = super().read()
        notes = self.look()
        values = {f.name: getattr(seen, f.name) for f in dataclasses.fields(seen)}
        return ModsecSeen(**values, notes=notes)

    def look(self) -> tuple[str, ...]:
        """The chain notes from the configuration as it is now (its test, read only)."""
        try:
            done = self.ctx.runner.run(self.test_command, timeout=self.timeout, check=False)
        except BackendError as exc:  # not found, timed out
            return (f"cannot check the chain: {exc}",)
        if done.returncode != 0 and not self.path.exists():
            return (
                f"chain: checked once {self.path} exists ({self.server}'s configuration "
                "test fails without it: your rules name it)",
            )
        if done.returncode != 0:
            return (
                f"cannot check the chain: {self.server} rejects its configuration now "
                f"({quote(done.stderr)}); sync checks it with the list in place",
            )
        return self.notes_for(self.survey(done.stdout))

    def diff(self, observed: Seen, desired: Networks | None) -> Plan[Step]:
        plan = super().diff(observed, desired)
        if desired is None or not isinstance(observed, ModsecSeen):
            return plan
        return dataclasses.replace(plan, notes=plan.notes + observed.notes)

    def verify(self, output: str) -> None:
        # The server's activate reads its pid file and error log from this output.
        self._dump = output
        if not self.path.exists():
            return  # a removal
        survey = self.survey(output)  # refuses an exemption, also on the first sync
        for note in self.notes_for(survey):
            if not note.startswith("chain: "):
                # The first sync's plan could not see the chain (the rules name a file
                # that did not exist yet): say it now that the test has run with it.
                self.ctx.log.warning("%s: %s", self.name, note)
