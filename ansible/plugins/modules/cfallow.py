#!/usr/bin/python
"""Ansible module: run ``cfallow sync`` or ``cfallow remove`` on the target."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cfallow
short_description: Keep firewall allowlists in step with Cloudflare's IP ranges
version_added: "0.1.0"
description:
  - Runs C(cfallow sync --json) (O(state=synced)) or C(cfallow remove --json)
    (O(state=absent)) on the target and reports what changed per backend.
  - O(state=fetched) runs C(cfallow ranges --json) - fetch and validate the list,
    change nothing - and returns it as RV(ranges); run it once for a whole play on
    the controller (C(run_once), C(delegate_to)) and give that to every host's
    O(state=synced) as O(ranges) - one request to Cloudflare for any number of hosts.
  - In check mode it runs the same command with C(--dry-run), which reports
    whether anything would change and writes nothing, state included. Check mode
    reads no live source - O(ranges) if given, else the host's last-known-good
    list (C(--source last-known-good)); O(state=fetched) fetches nothing in check mode.
  - A backend that fails makes the task fail, naming the backend; the other
    backends still run (and may have changed), as with the CLI.
  - Ranges that cannot be fetched or that a guard refuses (exit 4) make the
    task fail. With a last-known-good list on the target the backends were
    still brought to that list (a lost chain restored, drift repaired;
    C(changed) says whether anything did); without one nothing changed.
options:
  state:
    description:
      - V(synced) makes every backend match the list.
      - V(absent) removes everything cfallow owns.
      - V(fetched) fetches and validates the list and returns it (RV(ranges)); it
        changes nothing, and in check mode it fetches nothing.
    type: str
    choices: [synced, absent, fetched]
    default: synced
  backends:
    description: Only these backends (C(--backend)); default every backend enabled in the config.
    type: list
    elements: str
  config:
    description:
      - Config file (C(--config)).
      - Default C(/etc/cfallow/config.toml), or built-in defaults if that is absent.
    type: path
  state_dir:
    description: State directory (C(--state-dir)); default C(/var/lib/cfallow).
    type: path
  force:
    description:
      - Accept a list that fails the shrink or growth guard (C(--force)); it becomes the
        accepted list, the growth guard's anchor. The ceiling still holds.
        Only with O(state=synced).
    type: bool
    default: false
  source:
    description:
      - V(live) fetches from Cloudflare; V(bundled) uses the snapshot shipped with cfallow.
      - Only with O(state=synced).
    type: str
    choices: [live, bundled]
    default: live
  ranges:
    description:
      - A list fetched and validated elsewhere - RV(ranges) of O(state=fetched), run
        once on the controller. The host applies it with C(sync --source-file) -
        the same validation and guards as a list it fetched, its etag and date kept,
        no request to Cloudflare - and keeps it as its last-known-good list.
      - Only with O(state=synced). Overrides O(source).
    type: dict
  source_options:
    description:
      - With O(state=fetched) and no O(config), the C([source]) table to fetch with
        (URLs, C(china_network), C(timeout)...), as the role's C(cfallow_source).
    type: dict
  lock_timeout:
    description: Seconds to wait for another cfallow run's lock (C(--lock-timeout)).
    type: float
  verify:
    description:
      - Run C(cfallow sync --verify) - apply the plan to a scratch copy of the host's
        firewall first and change the host only if Cloudflare gets in there (and, in
        lockdown, nobody else does).
      - When the proof fails (exit 5) the task fails with one line per failed probe
        in C(msg) and C(verify_failures); nothing was changed.
      - Only with O(state=synced).
    type: bool
    default: false
  executable:
    description:
      - Path of the C(cfallow) program.
      - Default C(cfallow) on the PATH or in C(/usr/local/bin).
    type: path
attributes:
  check_mode:
    description:
      - Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description:
      - Will return details on what has changed (or possibly needs changing in check_mode),
        when in diff mode.
    support: full
    details: One before/after pair per backend, the entries cfallow owns, one CIDR a line.
author:
  - cfallow developers (@cfallow)
"""

EXAMPLES = r"""
- name: Allow only Cloudflare to reach the web ports
  cfallow.cfallow.cfallow:
    state: synced

- name: Sync only the iptables backend from the bundled snapshot (no network)
  cfallow.cfallow.cfallow:
    backends: [iptables]
    source: bundled

- name: Remove every rule cfallow added
  cfallow.cfallow.cfallow:
    state: absent

- name: Fetch and validate the list once, on the controller
  cfallow.cfallow.cfallow:
    state: fetched
  delegate_to: localhost
  run_once: true
  become: false
  register: cloudflare

- name: Bring every host to that list (no host asks Cloudflare)
  cfallow.cfallow.cfallow:
    ranges: "{{ cloudflare.ranges }}"
"""

RETURN = r"""
backends:
  description: The plan per backend, as C(cfallow --json) reports it.
  returned: when cfallow produced a report
  type: list
  elements: dict
  contains:
    name:
      description: The backend.
      type: str
    changed:
      description: Changed (or, in check mode, would change).
      type: bool
    current:
      description: The entries cfallow owned before the run.
      type: list
      elements: str
    add:
      description: Entries added (or to add).
      type: list
      elements: str
    remove:
      description: Entries removed (or to remove).
      type: list
      elements: str
    drift:
      description: Settings that differed from the config (ports, mode, a hand edit).
      type: list
      elements: str
    notes:
      description: What the backend wants the operator to know.
      type: list
      elements: str
    error:
      description: The backend's error, or null.
      type: str
  sample:
    - name: iptables
      changed: true
      current: ["103.21.244.0/22"]
      add: ["104.16.0.0/13"]
      remove: []
      error: null
source:
  description:
    - Where the list came from (kind, url, etag, ipv4, ipv6, fetched_at).
    - Null for O(state=absent).
  returned: when cfallow produced a report
  type: dict
  contains:
    kind:
      description: C(live) or C(bundled).
      type: str
    url:
      description: The URL the list came from (null for the snapshot).
      type: str
    etag:
      description: Cloudflare's etag of the list.
      type: str
    ipv4:
      description: The IPv4 ranges.
      type: list
      elements: str
    ipv6:
      description: The IPv6 ranges.
      type: list
      elements: str
    fetched_at:
      description: When the list was fetched (seconds since the epoch).
      type: float
ranges:
  description:
    - With O(state=fetched), the validated list (kind, url, etag, ipv4, ipv6,
      fetched_at, date) to give to O(ranges); null in check mode.
  returned: with O(state=fetched)
  type: dict
failed_backends:
  description: Names of the backends that failed.
  returned: always
  type: list
  elements: str
cmd:
  description: The command that ran.
  returned: always
  type: list
  elements: str
rc:
  description: Its exit status (0 ok, 1 a backend failed, 2 usage or config, 4 ranges
    unavailable or refused (backends held at the last-known-good list, if any),
    5 the verify did not hold).
  returned: always
  type: int
stdout:
  description: What cfallow printed on stdout (the JSON report).
  returned: always
  type: str
verify_failures:
  description: With O(verify=true), the failed probes (one line each, naming the deciding rule).
  returned: when the verify did not hold
  type: list
  elements: str
stderr:
  description: Its log (one summary line per backend, warnings, errors).
  returned: always
  type: str
"""

import ipaddress  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

EXIT_MEANING = {
    2: "usage or configuration error",
    4: "ranges unavailable or refused, nothing changed",
    5: "verify did not hold, nothing changed",
}


def _order(cidr: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(cidr, strict=False)
    return (net.version, int(net.network_address), net.prefixlen)


def backend_diff(backend: dict[str, Any]) -> dict[str, str]:
    """Before/after text (one CIDR a line) of what cfallow owns in one backend."""
    current = set(backend.get("current") or [])
    after = (current - set(backend.get("remove") or [])) | set(backend.get("add") or [])
    name = str(backend.get("name"))
    return {
        "before_header": f"{name} (before)",
        "after_header": f"{name} (after)",
        "before": "".join(f"{c}\n" for c in sorted(current, key=_order)),
        "after": "".join(f"{c}\n" for c in sorted(after, key=_order)),
    }


def toml_value(value: Any) -> str:
    """A TOML value from plain data (scalars and arrays as JSON, a subset of TOML)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, (str, bool, int, float)):
        return json.dumps(value)
    raise ValueError(f"not a TOML value: {value!r}")


def source_config(options: dict[str, Any]) -> str:
    """A config file with only a ``[source]`` table."""
    lines = ["[source]"] + [f"{k} = {toml_value(v)}" for k, v in sorted(options.items())]
    return "\n".join(lines) + "\n"


def command(
    params: dict[str, Any], executable: str, check_mode: bool, pushed: str | None = None
) -> list[str]:
    """The cfallow argv for these module parameters (``pushed``: the file O(ranges)
    was written to)."""
    argv = [executable]
    if params["config"]:
        argv += ["--config", params["config"]]
    if params["state_dir"]:
        argv += ["--state-dir", params["state_dir"]]
    if params["state"] == "fetched":
        return [*argv, "ranges", "--json", "--source", "live"]
    if params["state"] == "synced":
        argv += ["sync", "--json"]
        if pushed is not None:
            argv += ["--source-file", pushed]
        elif check_mode and params["source"] == "live":
            argv += ["--source", "last-known-good"]  # check mode reads no live source
        else:
            argv += ["--source", params["source"]]
        if params["force"]:
            argv.append("--force")
        if params["verify"]:
            argv.append("--verify")
    else:
        argv += ["remove", "--json"]
    for name in params["backends"] or ():
        argv += ["--backend", name]
    if params["lock_timeout"] is not None:
        argv += ["--lock-timeout", str(params["lock_timeout"])]
    if check_mode:
        argv.append("--dry-run")
    return argv


def error_line(stderr: str) -> str:
    """The line cfallow's error is on (its last ``cfallow: error:`` line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("cfallow: error:")]
    return (errors or lines or ["no message"])[-1]


def write_inputs(
    module: AnsibleModule, params: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """O(ranges) as a file for C(--source-file); O(source_options) as a config file."""
    pushed = None
    if params["ranges"] is not None and params["state"] == "synced":
        pushed = os.path.join(module.tmpdir, "ranges.json")
        with open(pushed, "w", encoding="utf-8") as fh:
            json.dump({"source": params["ranges"]}, fh)
    if (
        params["state"] == "fetched"
        and not params["config"]
        and params["source_options"] is not None
    ):
        params = dict(params, config=os.path.join(module.tmpdir, "source.toml"))
        try:
            text = source_config(params["source_options"])
        except ValueError as exc:
            module.fail_json(msg=f"source_options: {exc}")
        with open(params["config"], "w", encoding="utf-8") as fh:
            fh.write(text)
    return params, pushed


def main() -> None:
    """Entry point."""
    module = AnsibleModule(
        argument_spec={
            "state": {
                "type": "str",
                "choices": ["synced", "absent", "fetched"],
                "default": "synced",
            },
            "backends": {"type": "list", "elements": "str"},
            "config": {"type": "path"},
            "state_dir": {"type": "path"},
            "force": {"type": "bool", "default": False},
            "source": {"type": "str", "choices": ["live", "bundled"], "default": "live"},
            "lock_timeout": {"type": "float"},
            "executable": {"type": "path"},
            "verify": {"type": "bool", "default": False},
            "ranges": {"type": "dict"},
            "source_options": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["state"] == "fetched" and module.check_mode:
        module.exit_json(changed=False, ranges=None, cmd=[], rc=0, stdout="", stderr="")
    executable = params["executable"] or module.get_bin_path(
        "cfallow", required=True, opt_dirs=["/usr/local/bin"]
    )
    params, pushed = write_inputs(module, params)
    argv = command(params, executable, module.check_mode, pushed)
    rc, out, err = module.run_command(argv)

    result: dict[str, Any] = {
        "changed": False,
        "cmd": argv,
        "rc": rc,
        "stdout": out,
        "stderr": err,
    }
    doc: dict[str, Any] | None = None
    if out.strip():
        try:
            doc = json.loads(out)
        except ValueError:
            msg = f"cfallow printed no JSON report (exit {rc})"
            module.fail_json(msg=msg, **result)
    if params["state"] == "fetched":
        if rc != 0 or doc is None or not isinstance(doc.get("source"), dict):
            module.fail_json(msg=f"cfallow ranges: {error_line(err)}", **result)
        module.exit_json(ranges=doc["source"], **result)
    failed: list[str] = []
    if doc is not None and "verify" in doc and rc == 5:
        lines = [str(x) for x in doc["verify"].get("failures") or []]
        result["verify_failures"] = lines
        msg = "cfallow sync --verify: verify did not hold, nothing changed: " + "; ".join(
            lines or [error_line(err)]
        )
        module.fail_json(msg=msg, **result)
    if doc is not None:
        backends = list(doc.get("backends") or [])
        failed = [str(b.get("name")) for b in backends if b.get("error") is not None]
        result.update(changed=bool(doc.get("changed")), backends=backends)
        result["source"] = doc.get("source")
        if module._diff:
            result["diff"] = [backend_diff(b) for b in backends]
    result["failed_backends"] = failed

    verb = "sync" if params["state"] == "synced" else "remove"
    if failed:
        detail = "; ".join(
            f"{b['name']}: {b['error']}" for b in result["backends"] if b.get("error") is not None
        )
        module.fail_json(msg=f"cfallow {verb}: backend failed: {detail}", **result)
    held = (doc or {}).get("fetch") or {}
    if rc == 4 and held.get("error"):  # the backends were still brought to the known list
        msg = "ranges unavailable or refused, backends held at the last-known-good list"
        module.fail_json(msg=f"cfallow {verb}: {msg}: {held['error']}", **result)
    if rc != 0:
        meaning = EXIT_MEANING.get(rc, f"exit {rc}")
        module.fail_json(msg=f"cfallow {verb}: {meaning}: {error_line(err)}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
