"""``cfallow check`` against the installed units, and ``cfallow prepare``.

systemd drops a ``-`` ``ReadWritePaths=`` entry whose path does not exist when
the unit starts, so a directory created later by the run stays read-only
(``/etc/nftables.d`` on a fresh host): ``check`` counts such an entry only if
the unit creates the path before the sandbox is set up (``ExecStartPre=+``).
Runs the real CLI with the nftables backend's file in a temp dir.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from support import need_tool
from support.cli_helpers import Result, run_cli

from cfallow.cli.check import unit_grants

UNITS = Path(__file__).resolve().parents[2] / "systemd"


class Host:
    """A config whose nftables file lives in ``tmp/nftables.d`` (absent), and units."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nftd = tmp / "nftables.d"
        self.state = tmp / "state"
        self.lock = tmp / "cfallow.lock"
        self.conf = tmp / "config.toml"
        self.conf.write_text(f'[backends.nftables]\nports = [443]\nfile = "{self.nftd}/cf.nft"\n')
        self.units = tmp / "system"
        self.units.mkdir()
        # what systemd (StateDirectory=) and the shipped ExecStartPre=+touch make
        self.state.mkdir()
        self.lock.touch()

    def unit(self, name: str, text: str | None = None) -> Path:
        """Install ``name`` (the shipped unit, or ``text``) with a drop-in granting the
        test's state directory, lock and nftables directory (all ``-``, as shipped)."""
        path = self.units / name
        path.write_text(text if text is not None else (UNITS / name).read_text())
        dropin = self.units / f"{name}.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "paths.conf").write_text(
            f"[Service]\nReadWritePaths=-{self.state} -{self.lock} -{self.nftd}\n"
        )
        return path

    def cli(self, capsys: pytest.CaptureFixture[str], *args: str) -> Result:
        return run_cli(capsys, "--config", str(self.conf), "--state-dir", str(self.state), *args)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    need_tool("nft")  # the nftables backend's preflight
    monkeypatch.setenv("CFALLOW_FIREWALL_LOCK", str(tmp_path / "cfallow.lock"))
    return Host(tmp_path)


def _without_prepare(name: str) -> str:
    """The unit as it shipped before ``cfallow prepare``."""
    text = (UNITS / name).read_text()
    return re.sub(r"^ExecStartPre=\+\S+ prepare\n", "", text, flags=re.M)


def test_the_shipped_units_count_a_missing_directory_that_prepare_creates(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    units = [host.unit("cfallow.service"), host.unit("cfallow-restore.service")]
    r = host.cli(capsys, "check", *(f"--unit={u}" for u in units))
    assert r.rc == 0, r.out
    for u in units:
        assert f"ok    unit: {u}: ReadWritePaths cover every path" in r.out
    assert not host.nftd.exists(), "check created a directory"


@pytest.mark.parametrize("name", ["cfallow.service", "cfallow-restore.service"])
def test_a_dropped_optional_entry_fails_in_one_line_naming_unit_path_and_fix(
    host: Host, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    good = host.unit("cfallow.service" if name != "cfallow.service" else "cfallow-restore.service")
    bad = host.unit(name, _without_prepare(name))
    r = host.cli(capsys, "check", f"--unit={good}", f"--unit={bad}")
    assert r.rc == 2, r.out
    failed = [ln for ln in r.out.splitlines() if ln.startswith("FAIL")]
    assert failed == [
        f"FAIL  unit: {name}: ReadWritePaths=-{host.nftd} does not exist, so systemd drops it "
        f"and the run cannot write nftables path {host.nftd}: create it (mkdir -p {host.nftd}), "
        "or install the shipped unit (its ExecStartPre=+ runs `cfallow prepare`)"
    ], r.out
    host.nftd.mkdir()
    assert host.cli(capsys, "check", f"--unit={good}", f"--unit={bad}").rc == 0


def test_a_path_outside_every_entry_is_named(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = host.units / "cfallow-restore.service"
    unit.write_text((UNITS / "cfallow-restore.service").read_text())
    r = host.cli(capsys, "check", f"--unit={unit}")
    assert r.rc == 2
    assert f"nftables path {host.nftd} is not in cfallow-restore.service's ReadWritePaths" in r.out


def test_prepare_creates_the_backends_own_directories_only(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    r = host.cli(capsys, "prepare")
    assert (r.rc, r.out) == (0, f"created {host.nftd}\n"), r
    assert host.nftd.is_dir() and (host.nftd.stat().st_mode & 0o777) == 0o755
    assert host.cli(capsys, "prepare").out == ""  # nothing more to do
    shutil.rmtree(host.nftd)
    deep = host.tmp / "no-parent" / "nftables.d"
    host.conf.write_text(f'[backends.nftables]\nports = [443]\nfile = "{deep}/cf.nft"\n')
    assert host.cli(capsys, "prepare").out == ""
    assert not deep.parent.exists()


def test_unit_parsing(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text(
        "[Service]\n"
        "ExecStartPre=+touch /run/a.lock /run/b.lock\n"
        "ExecStartPre=mkdir -p /etc/inside\n"  # inside the sandbox: creates nothing
        "ExecStartPre=+/usr/bin/cfallow prepare\n"
        "StateDirectory=cfallow\n"
        "ProtectSystem=strict\n"
        "ReadWritePaths=-/etc/a /etc/b\n"
    )
    g = unit_grants(unit)
    assert g.strict and g.prepares
    assert g.created == (Path("/run/a.lock"), Path("/run/b.lock"))
    assert g.paths == (
        (Path("/var/lib/cfallow"), False),
        (Path("/etc/a"), True),
        (Path("/etc/b"), False),
    )
    dropin = tmp_path / "x.service.d"
    dropin.mkdir()
    (dropin / "z.conf").write_text(
        "[Service]\nReadWritePaths=\nReadWritePaths=-/srv\nExecStartPre=\nProtectSystem=full\n"
    )
    g = unit_grants(unit)
    assert (g.paths, g.created, g.prepares, g.strict) == (((Path("/srv"), True),), (), False, False)


def test_the_default_units_are_found_where_systemd_finds_them(
    host: Host, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Debian package installs its units in /lib/systemd/system; the admin's drop-ins
    (``systemctl edit``) live in /etc/systemd/system: check reads both, as systemd does."""
    etc, lib = host.tmp / "etc-system", host.tmp / "lib-system"
    for d in (etc, lib):
        d.mkdir()
    monkeypatch.setattr("cfallow.cli.check.UNIT_DIRS", (etc, lib))
    for name in ("cfallow.service", "cfallow-restore.service"):
        (lib / name).write_text((UNITS / name).read_text())
    r = host.cli(capsys, "check")
    assert r.rc == 2, r.out  # the shipped units do not grant the test's temp paths
    assert "is not in cfallow.service's ReadWritePaths" in r.out
    assert "not installed" not in r.out
    for name in ("cfallow.service", "cfallow-restore.service"):
        dropin = etc / f"{name}.d"
        dropin.mkdir()
        (dropin / "override.conf").write_text(
            f"[Service]\nReadWritePaths=-{host.state} -{host.lock} -{host.nftd}\n"
        )
    r = host.cli(capsys, "check")
    assert r.rc == 0, r.out
    for name in ("cfallow.service", "cfallow-restore.service"):
        assert f"ok    unit: {lib / name}: ReadWritePaths cover every path" in r.out
    # An admin's full copy in /etc wins over the package's, with the same drop-ins.
    (etc / "cfallow.service").write_text((UNITS / "cfallow.service").read_text())
    assert f"ok    unit: {etc / 'cfallow.service'}: ReadWritePaths" in host.cli(capsys, "check").out


def test_no_installed_unit_is_said_not_skipped_silently(
    host: Host, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = host.tmp / "etc-system"
    etc.mkdir()
    monkeypatch.setattr("cfallow.cli.check.UNIT_DIRS", (etc,))
    r = host.cli(capsys, "check")
    assert f"{etc / 'cfallow.service'} not installed: sandbox not checked" in r.out


def test_a_path_through_a_symlink_is_granted_by_its_target(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    """fail2ban's default socket is under /var/run; the units grant /run, which systemd
    reaches through the symlink, as ``check`` does."""
    (host.tmp / "var-run").symlink_to(host.tmp)  # like /var/run -> /run
    host.conf.write_text(
        f'[backends.nftables]\nports = [443]\nfile = "{host.tmp}/var-run/nftables.d/cf.nft"\n'
    )
    host.nftd.mkdir()
    unit = host.unit("cfallow.service")
    r = host.cli(capsys, "check", "--unit", str(unit))
    assert f"ok    unit: {unit}: ReadWritePaths cover every path" in r.out, r.out
