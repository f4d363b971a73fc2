"""Runs INSIDE a booted fresh server (see support.fresh.root): runs the steps, records, powers off.

/opt/probe/steps.json is ``{"name": NAME, "steps": [STEP, ...]}``; each STEP has a
``name`` and one of:

* ``"sh": TEXT`` -- ``/bin/sh -ec TEXT`` (with ``cwd``, extra ``env``, ``timeout``);
  records ``rc``, ``out``, ``err``. ``"stop_on_failure": true`` skips the remaining
  steps when it exits non-zero.
* ``"unit": UNIT`` -- ``systemctl show`` of the unit (ActiveState, Result,
  ExecMainStatus, ...) as ``show``, and this boot's journal of it as ``log``.
* ``"traffic": true`` -- a listener on the container's port 443 and a client
  namespace behind a veth pair (created once per boot); whether each source
  connects: Cloudflare addresses ``104.16.0.10`` and ``2400:cb00::10``, outsiders
  ``198.51.100.7`` and ``2001:db8:ff::7`` (``{address: bool}``).

Everything goes to /opt/probe/result-NAME.json as ``{"steps": {STEP NAME: ...}}``
(plus ``system``, ``failed_units``, and ``error`` if the probe itself failed); the
container always powers off. Standard library only: it runs on the root's own
python3, and reuses boot_probe (copied next to it) for recording and traffic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, "/opt/probe")
import boot_probe as bp

STEPS = Path("/opt/probe/steps.json")


def run_sh(step: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "HOME": "/root", **step.get("env", {})}
    try:
        proc = subprocess.run(
            ["/bin/sh", "-ec", step["sh"]],
            cwd=step.get("cwd", "/"),
            env=env,
            capture_output=True,
            text=True,
            timeout=step.get("timeout", 600),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return {"rc": None, "out": str(exc.stdout or ""), "err": f"timed out: {exc}"}
    return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}


def run_unit(name: str) -> dict[str, Any]:
    log = bp.sh("journalctl", "-b", "-u", name, "-o", "cat", "--no-pager").stdout
    return {"show": bp.unit(name), "log": log}


def steps(res: dict[str, Any]) -> None:
    plan = json.loads(STEPS.read_text())
    out: dict[str, Any] = {}
    res["steps"] = out
    traffic_ready = False
    for step in plan["steps"]:
        name = step["name"]
        if "sh" in step:
            out[name] = run_sh(step)
            if step.get("stop_on_failure") and out[name]["rc"] != 0:
                break
        elif "unit" in step:
            out[name] = run_unit(step["unit"])
        elif "traffic" in step:
            if not traffic_ready:
                bp.listen()
                bp.client_namespace()
                traffic_ready = True
            out[name] = bp.traffic()
        else:
            raise ValueError(f"unknown step: {step}")


def main() -> None:
    name = json.loads(STEPS.read_text())["name"]
    bp.record(name, steps, {"name": name})


if __name__ == "__main__":
    main()
