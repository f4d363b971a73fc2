"""Regenerate tests/fixtures/verify/firewalld.nft from a real firewalld (run as root).

firewalld runs inside a fresh network namespace on a private system bus, with a
copy of /etc/firewalld in a temp dir (public zone + http, https); its
``nft list ruleset`` is the fixture. Nothing of the machine's is touched.
Usage: .venv/bin/python tests/verify/make_firewalld_fixture.py
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BUS = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
  <includedir>/etc/dbus-1/system.d</includedir>
</busconfig>
"""
OUT = Path(__file__).resolve().parent.parent / "fixtures" / "verify" / "firewalld.nft"


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="fwd-fixture-"))
    ns = f"fwdfix-{uuid.uuid4().hex[:6]}"
    procs: list[int] = []
    try:
        shutil.copytree("/etc/firewalld", tmp / "etc")
        zone = tmp / "etc" / "zones"
        zone.mkdir(exist_ok=True)
        shutil.copy("/usr/lib/firewalld/zones/public.xml", zone / "public.xml")
        text = (zone / "public.xml").read_text()
        extra = '<service name="http"/><service name="https"/></zone>'
        (zone / "public.xml").write_text(text.replace("</zone>", extra))
        sock = tmp / "bus.sock"
        (tmp / "bus.conf").write_text(BUS.format(sock=sock))
        out = subprocess.run(
            ["dbus-daemon", f"--config-file={tmp / 'bus.conf'}", "--fork", "--print-pid"],
            capture_output=True,
            text=True,
            check=True,
        )
        procs.append(int(out.stdout.split()[0]))
        subprocess.run(["ip", "netns", "add", ns], check=True)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={sock}")
        fw = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "firewalld",
                "--nofork",
                "--nopid",
                "--system-config",
                str(tmp / "etc"),
                "--log-target",
                "console",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(fw.pid)
        for _ in range(100):
            st = subprocess.run(
                ["ip", "netns", "exec", ns, "firewall-cmd", "--state"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if st.stdout.strip() == "running":
                break
            time.sleep(0.2)
        else:
            print("firewalld did not start", file=sys.stderr)
            return 1
        rules = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(rules)
        print(f"wrote {OUT} ({len(rules.splitlines())} lines)")
        return 0
    finally:
        for pid in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
