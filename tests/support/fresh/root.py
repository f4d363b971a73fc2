"""A fresh Debian 12 server for tests: what a user's new machine looks like.

Unlike :mod:`support.nspawn` (an overlay of this machine, where everything is
installed already), the root here is a minimal Debian 12 built by
``mmdebstrap --variant=minbase`` with only :data:`INCLUDE`: no compiler, no
firewall tools, no web servers, no ``/etc/nftables.d``. The layers::

    base root      built once per machine (cached tarball in CACHE, keyed by the
                   include list, unpacked once next to it; a file lock makes two
                   xdist workers build it once)
    setup layers   optional upper dirs of earlier setup runs (see :func:`shared_layer`),
                   e.g. "checkout copied, wheels and .debs downloaded", shared by the
                   tests of one run
    the test's     the upper dir in the test's own temp dir: everything the test
    upper dir      does lands here; booting the same upper dir again is a reboot

mounted as one overlayfs (always unmounted). Use::

    server = FreshServer(tmp_path, layers=[prepared])
    with server.mounted():
        server.run("apt-get update", network=True)          # setup: reaches the registries
        server.run(cmd, env=server.offline_env())            # a private network, offline
        res = server.boot_steps("first", [{"name": "install", "sh": text, "cwd": CHECKOUT}])

Network: :meth:`FreshServer.run` with ``network=True`` shares this machine's
network namespace so pip and apt reach the registries (after
:meth:`~FreshServer.allow_registries`): run no firewall command and no cfallow
sync there. Everything else, and every boot, runs with ``--private-network``:
the container sees only its own loopback and the veth pairs it creates. The
pattern for the README's commands: download during setup what they will
install (:meth:`~FreshServer.fetch_wheels` into :data:`WHEELHOUSE`,
:meth:`~FreshServer.fetch_debs` into apt's cache), then run the commands'
text verbatim in a private network with :meth:`~FreshServer.offline_env`
pointing pip at the wheelhouse (apt finds its cache by itself).

Boots reuse :class:`support.nspawn.Machine` (own cgroups per boot, the timeout
and kill, the console log). :meth:`~FreshServer.boot_steps` boots once with
a probe unit (support/fresh/probe.py, on the root's own python3) that runs a
list of steps (shell text, a unit's state and journal, traffic from a client
namespace inside the container) and powers off.

Under ``CI=true`` a missing component (root, mmdebstrap, systemd-nspawn,
overlayfs, the registries) fails the test; elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

from support import need, need_tool
from support.nspawn import PROBE_UNIT, Machine, need_nspawn, probe_unit

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
#: Packages of the base root besides minbase's (a systemd that boots, python3 with venv).
INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "iproute2",
    "ca-certificates",
)
SUITE = "bookworm"
#: Where the base tarball and its unpacked copy are kept between runs.
CACHE = Path(os.environ.get("CFALLOW_TEST_CACHE", "/var/cache/cfallow-test"))
#: Where :meth:`FreshServer.copy_checkout` puts this checkout inside the root (the user's clone).
CHECKOUT = "/root/cfallow"
#: Inside the root: the wheels and sdists :meth:`FreshServer.fetch_wheels` downloaded.
WHEELHOUSE = "/var/cache/cfallow-wheels"
#: This machine's files that let a container reach the package registries.
REGISTRY_FILES = (
    "/etc/resolv.conf",
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pip.conf",
    "/etc/xdg/pip",
)


def need_fresh() -> None:
    """Root, systemd-nspawn, overlayfs, mmdebstrap and tar."""
    need_nspawn()
    need_tool("mmdebstrap", "tar")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created) for the duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _key(include: Sequence[str]) -> str:
    return f"{SUITE}-minbase-" + hashlib.sha256(",".join(include).encode()).hexdigest()[:12]


def base_tarball(include: Sequence[str] = INCLUDE) -> Path:
    """The cached ``mmdebstrap`` tarball for ``include`` (built once per machine)."""
    need_fresh()
    tar = CACHE / f"{_key(include)}.tar"
    with file_lock(CACHE / f"{_key(include)}.lock"):
        if not tar.exists():
            part = tar.with_suffix(".tar.part")
            proc = subprocess.run(
                [
                    "mmdebstrap",
                    "--quiet",
                    "--format=tar",
                    "--variant=minbase",
                    f"--include={','.join(include)}",
                    SUITE,
                    str(part),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            need(proc.returncode == 0, f"Debian's registry for mmdebstrap: {proc.stderr[-800:]}")
            part.rename(tar)
    return tar


def base_root(include: Sequence[str] = INCLUDE) -> Path:
    """The base root, unpacked once from :func:`base_tarball` (read-only use: a lower layer)."""
    tar = base_tarball(include)
    root = CACHE / _key(include)
    stamp = root / ".cfallow-unpacked"
    want = f"{tar.stat().st_mtime_ns} {tar.stat().st_size}"
    with file_lock(CACHE / f"{_key(include)}.lock"):
        if not (stamp.exists() and stamp.read_text() == want):
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            subprocess.run(
                ["tar", "-x", "-p", "--numeric-owner", "-C", str(root), "-f", str(tar)],
                check=True,
                capture_output=True,
            )
            stamp.write_text(want)
    return root


def shared_layer(
    shared: Path, name: str, setup: Callable[[FreshServer], None], *, layers: Sequence[Path] = ()
) -> Path:
    """An upper dir made once per test run by ``setup(server)``, for other servers' ``layers``.

    ``shared`` is a directory all xdist workers of the run see (e.g.
    ``tmp_path_factory.getbasetemp().parent``); the first worker runs ``setup``
    under a file lock, the others wait and reuse its result. A setup that
    failed (or skipped) is not recorded: the next caller tries again.
    """
    home = shared / f"fresh-layer-{name}"
    done = home / "done"
    with file_lock(shared / f"fresh-layer-{name}.lock"):
        if not done.exists():
            shutil.rmtree(home, ignore_errors=True)
            server = FreshServer(home, layers=layers)
            with server.mounted():
                setup(server)
            done.write_text(str(time.time()))
    return home / "upper"


class FreshServer(Machine):
    """A fresh Debian 12 root (see the module doc) under ``base``.

    ``layers``: upper dirs of earlier setups (:func:`shared_layer`), the
    highest first, stacked on the base root. Inherited from
    :class:`~support.nspawn.Machine`: ``path``, ``write``, ``systemctl``
    (``--root``), ``unpack``, ``boot`` (until it powers off; its console text),
    ``boot_probe``.
    """

    def __init__(
        self, base: Path, layers: Sequence[Path] = (), include: Sequence[str] = INCLUDE
    ) -> None:
        super().__init__(base)
        self.layers = list(layers)
        self.include = tuple(include)

    def lowerdir(self) -> str:
        """The setup layers, then the fresh Debian root (built and cached on first use)."""
        return ":".join(str(p) for p in [*self.layers, base_root(self.include)])

    @contextlib.contextmanager
    def mounted(self) -> Iterator[FreshServer]:
        """Mount the layers and this server's upper dir at ``base/root``; always unmount."""
        need_fresh()
        with super().mounted():
            yield self

    def boot_options(self) -> list[str]:
        """Nothing of this machine's goes into a fresh server's boots."""
        return []

    # -- setup and commands --------------------------------------------------------

    def run(
        self,
        command: str | Sequence[str],
        *,
        network: bool = False,
        cwd: str = "/",
        env: Mapping[str, str] | None = None,
        timeout: float = 900,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the root without booting it (``systemd-nspawn --pipe``).

        ``command``: shell text (``/bin/sh -ec TEXT``) or an argv. ``network``:
        share this machine's network (setup only: never a firewall command);
        otherwise ``--private-network``. ``env``: extra environment. A run
        longer than ``timeout`` is killed and fails the test; ``check`` fails
        it on a non-zero exit.
        """
        argv = ["systemd-nspawn", "-q", "-D", str(self.root), "--register=no", "--keep-unit"]
        argv += ["--pipe", f"--chdir={cwd}", "--setenv=HOME=/root"]
        argv += [] if network else ["--private-network"]
        argv += [f"--setenv={k}={v}" for k, v in (env or {}).items()]
        argv.append("--")
        argv += ["/bin/sh", "-ec", command] if isinstance(command, str) else list(command)
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{command!r} did not end within {timeout:g} s") from exc
        if check:
            assert proc.returncode == 0, f"{command!r} -> {proc.returncode}: {proc.stderr[-3000:]}"
        return proc

    def allow_registries(self) -> None:
        """Copy this machine's DNS, CA bundle and pip configuration into the root."""
        for name in REGISTRY_FILES:
            src = Path(name)
            if src.is_dir():
                shutil.copytree(src, self.path(name), dirs_exist_ok=True)
            elif src.exists():
                self.path(name).parent.mkdir(parents=True, exist_ok=True)
                # resolv.conf may be a symlink to a file the root does not have.
                dst = self.path(name)
                if dst.is_symlink():
                    dst.unlink()
                shutil.copyfile(src, dst)

    def copy_checkout(self, dest: str = CHECKOUT) -> None:
        """This checkout's files (git's tracked and untracked-but-not-ignored ones) at ``dest``.

        No ``.git``, no ``.venv``: what a user's fresh clone holds, at this tree's content.
        """
        target = self.path(dest)
        proc = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=False,
        )
        if proc.returncode == 0:
            for rel in filter(None, proc.stdout.decode().split("\0")):
                src = REPO / rel
                if src.is_file() or src.is_symlink():
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, target / rel, follow_symlinks=False)
        else:
            skip = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".*_cache")
            shutil.copytree(REPO, target, ignore=skip, dirs_exist_ok=True)

    def fetch_wheels(self, *specs: str, cwd: str = CHECKOUT) -> None:
        """Download ``specs`` (pip requirement specs or paths, with their
        dependencies) into :data:`WHEELHOUSE`, through the registries.

        pip runs from a throwaway venv of the root's own python3 (removed
        afterwards); an sdist stays an sdist, as a user's pip would get it.
        """
        venv = "/var/tmp/cfallow-fetch-venv"
        quoted = " ".join(f"'{s}'" for s in specs)
        proc = self.run(
            f"python3 -m venv {venv}\n"
            f"{venv}/bin/pip download --disable-pip-version-check -q -d {WHEELHOUSE} {quoted}\n",
            network=True,
            cwd=cwd,
        )
        self.run(["rm", "-rf", venv], check=True)
        need(proc.returncode == 0, f"the package index from a fresh root: {proc.stderr[-1500:]}")

    def fetch_debs(self, *packages: str) -> None:
        """``apt-get update`` and download ``packages`` (what ``apt install`` would
        install) into the root's apt cache, through Debian's registry."""
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        proc = self.run("apt-get update -qq", network=True, env=env)
        need(proc.returncode == 0, f"Debian's registry from a fresh root: {proc.stderr[-1500:]}")
        if packages:
            self.run(
                ["apt-get", "install", "-y", "-qq", "--download-only", *packages],
                network=True,
                env=env,
                check=True,
            )

    @staticmethod
    def offline_env() -> dict[str, str]:
        """The environment that points pip at :data:`WHEELHOUSE` instead of an index."""
        return {
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": WHEELHOUSE,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "DEBIAN_FRONTEND": "noninteractive",
        }

    def enabled_units(self) -> set[str]:
        """Unit files enabled in the root (``systemctl --root list-unit-files --state=enabled``)."""
        proc = subprocess.run(
            [
                "systemctl",
                f"--root={self.root}",
                "list-unit-files",
                "--state=enabled",
                "--no-legend",
                "--no-pager",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}

    # -- boots -----------------------------------------------------------------------

    def boot_steps(
        self, name: str, steps: Sequence[Mapping[str, Any]], timeout: float = 900
    ) -> dict[str, Any]:
        """Boot once (private network), run ``steps`` inside, power off; the record.

        ``steps`` as in support/fresh/probe.py: ``{"name", "sh", "cwd", "env",
        "timeout", "stop_on_failure"}``, ``{"name", "unit"}``, ``{"name",
        "traffic": True}``. Returns ``{"steps": {STEP NAME: result}, "system":
        ..., "failed_units": ..., "console": the console's tail}``; a probe that
        failed itself fails the test.
        """
        self.write("/opt/probe/probe.py", (HERE / "probe.py").read_text())
        self.write("/opt/probe/boot_probe.py", (REPO / "tests/ops/boot_probe.py").read_text())
        self.write("/opt/probe/steps.json", json.dumps({"name": name, "steps": list(steps)}))
        unit = probe_unit(
            f"Run the test's steps ({name}), then power off", python="/usr/bin/python3"
        )
        self.write(f"/etc/systemd/system/{PROBE_UNIT}", unit)
        self.systemctl("enable", PROBE_UNIT)
        try:
            console = self.boot(timeout)
        finally:
            self.systemctl("disable", PROBE_UNIT)
        result = self.path(f"/opt/probe/result-{name}.json")
        assert result.exists(), console[-3000:]
        res: dict[str, Any] = json.loads(result.read_text())
        assert "error" not in res, res["error"]
        res["console"] = console[-3000:]
        return res


README = REPO / "README.md"


def readme_block(name: str, readme: Path = README) -> str:
    """The code block that follows ``<!-- tested: NAME ...-->`` in the README, verbatim.

    Tests run the README's own commands, so the text cannot drift from what is
    tested; a missing or doubled marker fails the test.
    """
    text = readme.read_text()
    marker = f"<!-- tested: {name} "
    assert text.count(marker) == 1, f"README.md: want exactly one {marker!r} marker"
    after = text.split(marker, 1)[1].split("-->", 1)[1].lstrip("\n")
    assert after.startswith("```"), f"README.md: no code block right after {marker!r}"
    body = after.split("\n", 1)[1]
    return body.split("\n```", 1)[0] + "\n"
