"""Real systemd as PID 1: boot this machine's own file system in ``systemd-nspawn``.

The container's root is an overlayfs with ``lowerdir=/`` and the upper and
work directories in a test's temp dir, so nothing of the host's changes; a
second :meth:`Machine.boot` of the same upper dir is a faithful reboot (files
kept, a fresh network namespace, so a fresh kernel ruleset). Every boot runs
with ``--private-network``: the container sees only its own loopback and the
veth pairs it creates itself. cfallow is installed under ``/opt/cfallow``
(a virtualenv on this test run's packages; units with ``PrivateTmp=yes``
cannot exec anything under ``/tmp``) and linked to ``/usr/local/bin/cfallow``.
The overlay is always unmounted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support import need, need_root, need_tool

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
# Units the host has enabled that have no business in these boots.
MASK = (
    "apache2.service",
    "caddy.service",
    "containerd.service",
    "docker.service",
    "docker.socket",
    "firewalld.service",
    "haproxy.service",
    "nginx.service",
    "postgresql.service",
    "ufw.service",
    "e2scrub_reap.service",
    "systemd-timesyncd.service",
    "getty@tty1.service",
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
)


def _cgroups(name: str) -> list[Path]:
    """``name`` below this process's cgroup in the name=systemd and unified hierarchies."""
    mounts = {"name=systemd": Path("/sys/fs/cgroup/systemd"), "": Path("/sys/fs/cgroup")}
    if Path("/sys/fs/cgroup/unified/cgroup.procs").exists():
        mounts[""] = Path("/sys/fs/cgroup/unified")
    out = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        root = mounts.get(controllers)
        if root is not None and (root / "cgroup.procs").exists():
            out.append(root / rel.lstrip("/") / name)
    return out


_ENTER = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1"; shift; n=$((n-1)); done; exec "$@"'


@contextlib.contextmanager
def own_cgroups(name: str) -> Iterator[list[Path]]:
    """Cgroups of one boot's own (removed afterwards, bottom up).

    With ``--keep-unit`` the container's systemd takes the cgroup of the
    process that started it as its root. Two containers booted from the same
    cgroup (two xdist workers on a host whose PID 1 is not systemd) would then
    build their ``system.slice`` in the same place and kill each other's units
    (``219/CGROUP``, "Failed to kill control group"): each boot gets its own.
    """
    made = _cgroups(name)
    for d in made:
        d.mkdir(exist_ok=True)
    try:
        yield made
    finally:
        for d in made:
            for sub, _, _ in sorted(os.walk(d), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(sub)


#: ``[source]`` of a config that fetches from :meth:`Machine.add_upstream`'s stand-in.
SOURCE = """\
[source]
api_url = "http://127.0.0.1:8080/client/v4/ips"
text_urls = ["http://127.0.0.1:8080/ips-v4", "http://127.0.0.1:8080/ips-v6"]
attempts = 1
timeout = 2
"""
UPSTREAM_UNIT = "cfallow-test-upstream.service"
_UPSTREAM = """\
import http.server, pathlib
BODY = pathlib.Path("/opt/probe/api-ips.json").read_bytes()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/client/v4/ips"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(BODY if ok else b"")
http.server.HTTPServer(("127.0.0.1", 8080), H).serve_forever()
"""
_UPSTREAM_UNIT = """\
[Unit]
Description=Cloudflare API stand-in on 127.0.0.1:8080
Before=cfallow.service
[Service]
ExecStart=/opt/cfallow/bin/python /opt/probe/upstream.py
[Install]
WantedBy=multi-user.target
"""
PROBE_UNIT = "cfallow-test-probe.service"


def probe_unit(
    description: str, after: str = "basic.target", python: str = "/opt/cfallow/bin/python"
) -> str:
    """The unit that runs /opt/probe/probe.py with ``python`` once the boot is up (powers off)."""
    return (
        f"[Unit]\nDescription={description}\nAfter={after}\n[Service]\nType=simple\n"
        f"ExecStart={python} /opt/probe/probe.py\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def need_nspawn() -> None:
    """Root, systemd-nspawn and overlayfs."""
    need_root()
    need_tool("systemd-nspawn", "systemctl", "mount", "umount")
    with open("/proc/filesystems") as fh:
        need("overlay" in fh.read(), "overlayfs in the kernel")


class Machine:
    """An overlay of ``/`` under ``base`` and the boots of it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.upper, self.work, self.root = base / "upper", base / "work", base / "root"
        self.boots = 0

    def lowerdir(self) -> str:
        """The overlay's lower layers (``lowerdir=``): this machine's own ``/``."""
        return "/"

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Machine]:
        """Mount the overlay for the duration; always unmount."""
        for d in (self.upper, self.work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={self.lowerdir()},upperdir={self.upper},workdir={self.work}"
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)],
            check=True,
            capture_output=True,
        )
        try:
            yield self
        finally:
            if subprocess.run(["umount", str(self.root)], check=False).returncode != 0:
                time.sleep(1)
                subprocess.run(["umount", "-l", str(self.root)], check=False)

    def path(self, inside: str) -> Path:
        """A path inside the container, through the mounted overlay."""
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> Path:
        """Write a file inside the container (creating its directory)."""
        path = self.path(inside)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
        return path

    def unpack(self, *packages: str) -> None:
        """Unpack Debian packages into the container only (``dpkg-deb -x``, no scripts).

        For packages the host must not have: netfilter-persistent conflicts with
        ufw, which the host's other tests need. The .deb comes from apt's cache,
        else ``apt-get download`` fetches it into this machine's temp dir.
        """
        need_tool("dpkg-deb", "apt-get", "tar")
        for pkg in packages:
            found = sorted(Path("/var/cache/apt/archives").glob(f"{pkg}_*.deb"))
            if not found:
                where = self.base / "debs"
                where.mkdir(exist_ok=True)
                subprocess.run(
                    ["apt-get", "download", "-q", pkg], cwd=where, check=True, capture_output=True
                )
                found = sorted(where.glob(f"{pkg}_*.deb"))
            need(bool(found), f"the Debian package {pkg}")
            # Through tar, keeping the root's /lib -> usr/lib style links (merged /usr).
            tarball = subprocess.run(
                ["dpkg-deb", "--fsys-tarfile", str(found[-1])], check=True, capture_output=True
            ).stdout
            subprocess.run(
                ["tar", "-x", "--keep-directory-symlink", "-C", str(self.root)],
                input=tarball,
                check=True,
                capture_output=True,
            )

    def systemctl(self, *args: str) -> None:
        """``systemctl --root=ROOT ARGS`` (enable, disable, mask: before a boot).

        SysV scripts are left alone (``SYSTEMCTL_SKIP_SYSV``): only the unit
        symlinks matter to systemd, and update-rc.d need not exist.
        """
        env = {**os.environ, "SYSTEMCTL_SKIP_SYSV": "1"}
        proc = subprocess.run(
            ["systemctl", f"--root={self.root}", "--quiet", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, f"systemctl {' '.join(args)}: {proc.stderr}"

    def install_cfallow(self) -> None:
        """A virtualenv at /opt/cfallow on this run's packages, and the shipped units."""
        venv = self.path("/opt/cfallow")
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
        (pyver,) = (venv / "lib").iterdir()
        # Units with PrivateTmp see a /tmp of their own, and this checkout (and its venv)
        # may live under /tmp: cfallow goes in as a wheel under /opt, its dependencies come
        # from this run's site-packages bind-mounted read-only at /opt/cfallow-site.
        self._install_wheel(self.path("/opt/cfallow-pkg"))
        (venv / "lib" / pyver.name / "site-packages" / "zz-cfallow-test.pth").write_text(
            "import site, sys; site.addsitedir('/opt/cfallow-site'); "
            "sys.path.insert(0, '/opt/cfallow-pkg')\n"
        )
        self.write(
            "/opt/cfallow/bin/cfallow",
            "#!/opt/cfallow/bin/python\nimport sys\nfrom cfallow.__main__ import main\n"
            "sys.exit(main())\n",
            0o755,
        )
        link = self.path("/usr/local/bin/cfallow")
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink("/opt/cfallow/bin/cfallow", link)
        for unit in sorted(UNITS.glob("cfallow*")):
            self.write(f"/etc/systemd/system/{unit.name}", unit.read_text())
        self.systemctl("mask", *MASK)

    def _install_wheel(self, target: Path) -> None:
        """This checkout as a wheel, installed (no dependencies) into ``target``."""
        work = self.base / "wheel"
        src = work / "src"
        src.mkdir(parents=True, exist_ok=True)
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            shutil.copy(REPO / name, src / name)
        for pkg in ("cfallow", "backends"):
            shutil.rmtree(src / pkg, ignore_errors=True)
            shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
        subprocess.run(
            [
                *pip,
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                str(src),
                "-w",
                str(work / "dist"),
            ],
            check=True,
            capture_output=True,
        )
        (wheel,) = (work / "dist").glob("cfallow-*.whl")
        subprocess.run(
            [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
            check=True,
            capture_output=True,
        )

    def add_upstream(self) -> None:
        """A Cloudflare API stand-in on the container's 127.0.0.1:8080, enabled
        (:data:`UPSTREAM_UNIT`; disable it to make Cloudflare unreachable)."""
        self.write("/opt/probe/upstream.py", _UPSTREAM)
        shutil.copy(
            REPO / "tests" / "fixtures" / "cloudflare" / "api-ips.json",
            self.path("/opt/probe/api-ips.json"),
        )
        self.write(f"/etc/systemd/system/{UPSTREAM_UNIT}", _UPSTREAM_UNIT)
        self.systemctl("enable", UPSTREAM_UNIT)

    def boot_probe(self, name: str) -> dict[str, Any]:
        """Boot once; what the probe recorded in /opt/probe/result-NAME.json (no error)."""
        console = self.boot()
        result = self.path(f"/opt/probe/result-{name}.json")
        assert result.exists(), console[-3000:]
        res: dict[str, Any] = json.loads(result.read_text())
        assert "error" not in res, res["error"]
        return res

    def boot_options(self) -> list[str]:
        """Extra ``systemd-nspawn`` options of every boot: this run's site-packages at
        /opt/cfallow-site (what :meth:`install_cfallow`'s virtualenv imports)."""
        return [f"--bind-ro={site.getsitepackages()[0]}:/opt/cfallow-site"]

    def boot(self, timeout: float = 240) -> str:
        """Boot once, until the container powers itself off; its console output.

        A boot that does not end within ``timeout`` is killed (the process
        group this call started) and fails the test.
        """
        self.boots += 1
        console = self.base / f"console-{self.boots}.log"
        argv = ["systemd-nspawn", "-q", "-D", str(self.root), "--register=no", "--keep-unit"]
        argv += self.boot_options()
        cgroup = f"cfallow-nspawn-{os.getpid()}-{self.boots}"
        with open(console, "w") as out, own_cgroups(cgroup) as cgroups:
            # sh moves itself into this boot's cgroups, then becomes systemd-nspawn.
            enter = ["sh", "-c", _ENTER, "sh", str(len(cgroups))]
            enter += [str(d / "cgroup.procs") for d in cgroups]
            proc = subprocess.Popen(
                [*enter, *argv, "--private-network", "-b"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(
                    f"boot {self.boots} did not power off within {timeout:g} s: "
                    + console.read_text()[-2000:]
                ) from None
        text = console.read_text()
        assert rc == 0, f"systemd-nspawn exited {rc}: {text[-2000:]}"
        return text
