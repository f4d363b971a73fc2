"""systemd/docker.service.d/cfallow.conf under a real systemd (nspawn).

docker.service here is a stand-in (a oneshot that logs), since what is checked
is systemd's part: with the shipped drop-in and the shipped cfallow.service
(only its ``ExecStart=`` replaced by one that logs), every start of
docker.service, at boot, by ``restart`` and by ``stop`` + ``start``, is
followed by a run of cfallow.service. What dockerd itself does to the rules is
tests/iptables/test_docker.py, with the real engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.nspawn import Machine, need_nspawn

pytestmark = [pytest.mark.root, pytest.mark.slow]

UNITS = Path(__file__).resolve().parents[2] / "systemd"
LOG = "/var/lib/cfallow/order"  # cfallow.service may write only its StateDirectory
FAKE_DOCKER = f"""[Unit]
Description=stand-in for docker.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mkdir -p /var/lib/cfallow; echo docker >> {LOG}'
[Install]
WantedBy=multi-user.target
"""
CFALLOW_LOGS = (
    f"[Service]\nExecStartPre=\nExecStart=\nExecStart=/bin/sh -c 'echo cfallow >> {LOG}'\n"
)
#: systemctl returns once docker.service's job is done; the cfallow.service job it pulled
#: in (same transaction, ordered after) runs next: wait for it before going on.
WAIT = "while systemctl list-jobs --no-legend | grep -q cfallow.service; do sleep 0.1; done"
PROBE = f"""[Unit]
After=multi-user.target docker.service cfallow.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo restart >> {LOG}; systemctl restart docker.service; {WAIT}; \\
echo stop-start >> {LOG}; systemctl stop docker.service; systemctl start docker.service; \\
{WAIT}; systemctl poweroff'
[Install]
WantedBy=multi-user.target
"""


def test_every_docker_start_is_followed_by_a_cfallow_run(tmp_path: Path) -> None:
    need_nspawn()
    m = Machine(tmp_path)
    with m.mounted():
        etc = "/etc/systemd/system"
        m.write(f"{etc}/docker.service", FAKE_DOCKER)  # shadows a real one, if installed
        m.write(f"{etc}/docker.socket", "[Unit]\nDescription=no socket activation here\n")
        m.write(f"{etc}/cfallow.service", (UNITS / "cfallow.service").read_text())
        m.write(f"{etc}/cfallow.service.d/log.conf", CFALLOW_LOGS)
        m.write(
            f"{etc}/docker.service.d/cfallow.conf",
            (UNITS / "docker.service.d/cfallow.conf").read_text(),
        )
        m.write(f"{etc}/probe.service", PROBE)
        m.systemctl("enable", "docker.service", "probe.service")
        m.boot(180)
        order = m.path(LOG).read_text().split()
    assert order == [
        "docker",
        "cfallow",
        "restart",
        "docker",
        "cfallow",
        "stop-start",
        "docker",
        "cfallow",
    ], order
