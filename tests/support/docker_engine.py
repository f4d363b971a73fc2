"""The real Docker engine (Debian's ``docker.io``) as a private process of one test.

dockerd runs inside the test's server namespace and a private mount namespace
(``ip netns exec NS unshare -m``), with everything of its own in the test's
temp dir: ``--data-root``, ``--exec-root``, ``--pidfile``, its API socket, its
config file, its key file, and the containerd it spawns (state under the exec
root). In that mount namespace ``/run`` and ``/opt`` are fresh tmpfs mounts
(containerd's shim sockets go to ``/run/containerd``, its plugin dir is
``/opt/containerd``), and the cgroup hierarchies are mounted again (``ip netns
exec`` mounts a fresh ``/sys``, which hides them). Nothing is written on the
host's own ``/etc``, ``/run``, ``/var/lib``, or network namespace; containers'
cgroups go under a parent named for the test, removed at the end.

The bridge uses 198.18.0.0/24 and 2001:db8:d0c::/64 (benchmarking and
documentation ranges): every address lives inside the test's namespaces.
The image is built locally with ``docker import`` of a tarball holding
busybox-static's ``/bin/busybox`` (no registry).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support import need, need_tool, ns_exec

DOCKERD = "/usr/sbin/dockerd"
IMAGE = "cfallow-test/httpd:1"
BODY = "served by the container\n"
BRIDGE = ("198.18.0.1/24", "2001:db8:d0c::/64")
_TOOLS = ("containerd", "runc", "docker-init", "busybox", "unshare")

#: Run in the new mount namespace before dockerd: private /run, /opt and cgroups.
_PREPARE = """set -e
mount --make-rprivate /
mount -n -t tmpfs -o mode=755 cfallow-run /run
mount -n -t tmpfs -o mode=755 cfallow-opt /opt
while [ "$1" != -- ]; do
    mkdir -p "$3"; mount -n -t "$1" -o "$2" cgroup "$3"; shift 3
done
shift
exec "$@"
"""
_SKIP_OPTS = {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "seclabel"}


def docker_cli() -> str | None:
    """The package's CLI (``/usr/bin/docker``), not another ``docker`` earlier on PATH."""
    return shutil.which("docker", path="/usr/bin:/bin")


def need_docker() -> None:
    """dockerd, its CLI, containerd, runc, docker-init and a static busybox."""
    need_tool(*_TOOLS)
    need(os.access(DOCKERD, os.X_OK), f"{DOCKERD} (Debian package docker.io)")
    need(docker_cli() is not None, "/usr/bin/docker (Debian package docker.io)")


def _cgroup_mounts() -> list[str]:
    """(type, options, path) triples re-creating the host's /sys/fs/cgroup mounts."""
    out: list[str] = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, path, fstype, opts, *_ = line.split()
        if not path.startswith("/sys/fs/cgroup"):
            continue
        keep = [o for o in opts.split(",") if o not in _SKIP_OPTS]
        if fstype == "cgroup" and all(o.startswith("name=") for o in keep):
            keep.insert(0, "none")
        if fstype == "tmpfs":
            keep = ["mode=755"]
        out += [fstype, ",".join(keep) or "defaults", path]
    return out


def rootfs_tar() -> bytes:
    """A two-file root filesystem: busybox-static and the page its httpd serves."""
    busybox = shutil.which("busybox")
    assert busybox is not None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, "bin/busybox")
        page = tarfile.TarInfo("www/index.html")
        page.size = len(BODY)
        tar.addfile(page, io.BytesIO(BODY.encode()))
    return buf.getvalue()


@dataclass
class Dockerd:
    """One private dockerd in namespace ``ns``; ``start``/``stop`` by its pid."""

    ns: str
    tmp: Path
    iptables_path: str = ""
    proc: subprocess.Popen[bytes] | None = None
    cgroup_parent: str = field(default_factory=lambda: f"cfallow-test-{uuid.uuid4().hex[:8]}")
    starts: int = 0

    @property
    def sock(self) -> str:
        return str(self.tmp / "docker.sock")

    def _config(self) -> Path:
        conf = self.tmp / "daemon.json"
        settings = {
            "bip": BRIDGE[0],
            "ipv6": True,
            "fixed-cidr-v6": BRIDGE[1],
            "experimental": True,  # ip6tables needs it in 20.10
            "ip6tables": True,
            "iptables": True,
            "cgroup-parent": self.cgroup_parent,
            "shutdown-timeout": 5,
            "log-level": "warn",
            "deprecated-key-path": str(self.tmp / "key.json"),  # not /etc/docker/key.json
        }
        if os.environ.get("CFALLOW_DOCKER_STORAGE"):
            settings["storage-driver"] = os.environ["CFALLOW_DOCKER_STORAGE"]
        conf.write_text(json.dumps(settings))
        return conf

    def argv(self) -> list[str]:
        t = self.tmp
        daemon = [DOCKERD, "--config-file", str(self._config()), "-H", f"unix://{self.sock}"]
        daemon += ["--data-root", str(t / "data"), "--exec-root", str(t / "exec")]
        daemon += ["--pidfile", str(t / "docker.pid")]
        shell = ["sh", "-c", _PREPARE, "prepare", *_cgroup_mounts(), "--"]
        env = ["env", f"PATH={self.iptables_path}{os.environ.get('PATH', '')}"]
        return ns_exec(self.ns, "unshare", "-m", *shell, *env, *daemon)

    def start(self, timeout: float = 60) -> float:
        """Start dockerd; return the seconds until its API answered."""
        assert self.proc is None, "dockerd is already running"
        self.starts += 1
        log = open(self.tmp / f"dockerd.{self.starts}.log", "wb")  # noqa: SIM115
        t0 = time.monotonic()
        with log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited {self.proc.returncode}: {self.log()}")
            if self.cli("version", check=False).returncode == 0:
                return time.monotonic() - t0
            time.sleep(0.1)
        raise AssertionError(f"dockerd did not answer in {timeout} s: {self.log()}")

    def log(self) -> str:
        return (self.tmp / f"dockerd.{self.starts}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM by pid (dockerd stops its containers and containerd), SIGKILL after 30 s."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``docker -H unix://SOCK ARGS``; with ``check``, a failure is an AssertionError."""
        cli = docker_cli()
        assert cli is not None
        argv = [cli, "-H", f"unix://{self.sock}", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} -> {proc.returncode}: {proc.stderr}")
        return proc

    def build_image(self) -> None:
        """``docker import`` of :func:`rootfs_tar` as :data:`IMAGE`."""
        tar = self.tmp / "rootfs.tar"
        tar.write_bytes(rootfs_tar())
        self.cli("import", str(tar), IMAGE)

    def remove_cgroups(self) -> None:
        """The containers' cgroup parent, in every hierarchy (empty once they are gone)."""
        for base in Path("/sys/fs/cgroup").glob(f"*/{self.cgroup_parent}"):
            for sub in sorted(base.rglob("*"), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                base.rmdir()


@contextlib.contextmanager
def private_dockerd(ns: str, tmp: Path, iptables_path: str = "") -> Iterator[Dockerd]:
    """A :class:`Dockerd` for ``ns``; on exit its containers are removed and it is stopped."""
    need_docker()
    engine = Dockerd(ns, tmp, iptables_path)
    try:
        yield engine
    finally:
        if engine.proc is not None:
            ids = engine.cli("ps", "-aq", check=False).stdout.split()
            if ids:
                engine.cli("rm", "-f", *ids, check=False)
        engine.stop()
        engine.remove_cgroups()


def http_get(client_ns: str, src: str, dst: str, port: int, timeout: float = 1.0) -> str | None:
    """One HTTP GET from ``src`` in ``client_ns``; the body, or None when not reached."""
    code = (
        "import http.client,sys;c=http.client.HTTPConnection(sys.argv[2],int(sys.argv[3]),"
        "timeout=float(sys.argv[4]),source_address=(sys.argv[1],0));c.request('GET','/');"
        "sys.stdout.write(c.getresponse().read().decode())"
    )
    argv = ns_exec(client_ns, sys.executable, "-c", code, src, dst, str(port), str(timeout))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
    return proc.stdout if proc.returncode == 0 else None
