#!/usr/bin/env python3
"""Whole-process time of the runs the timer and the restore unit make (iptables nft).

Run as root (it creates and deletes its own network namespace; the host's
firewall is never touched)::

    sudo .venv/bin/python bench/bench_reconcile.py [--runs 21]

In a fresh namespace with a Cloudflare stand-in on its own 127.0.0.1, timed
from process start to exit (``ip netns exec NS cfallow -q sync ...``):

* offline no-change: ``sync --offline``, the chain already in step (what
  cfallow-restore.service and most timer runs do): target 0.06 s median;
* online no-change: ``sync``, fetch + validate + plan, nothing to write;
* first sync: a fresh state directory and an empty ruleset each run.

cfallow runs as it does on an origin server: this checkout built as a wheel,
installed (not editable: an editable install's import hook alone costs ~16
ms a run) into a fresh virtualenv in a temp dir, byte-compiled, the console
script ``cfallow`` as pip writes it; its dependencies come from the running
interpreter's site-packages (a plain path entry). ``PYTHONDONTWRITEBYTECODE``
is dropped, as a timer run has it.

The floor beside it: the same interpreter doing nothing, importing only
what this design cannot do without (argparse, tomllib, json, subprocess,
logging, dataclasses, pathlib and netaddr), and a script doing only the two
reads an offline no-change run cannot avoid (``iptables-nft-save -t filter``
and ``ip6tables-nft-save -t filter``) in the same namespace: the offline run's
ratio to it (target <= 2x).

Also prints which of requests, urllib3, boto3 and iptc an offline run imports
(none should be).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import benchkit

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.06
HEAVY = ("requests", "urllib3", "boto3", "iptc")

_IMPORTS = (
    "import sys; from cfallow.cli.commands import main; rc = main(sys.argv[1:]); "
    f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or '-'); sys.exit(rc)"
)


FLOOR = "import argparse, dataclasses, json, logging, pathlib, subprocess, tomllib, netaddr"
TWO_SAVES = (
    "import subprocess\n"
    "for tool in ('iptables-nft-save', 'ip6tables-nft-save'):\n"
    "    subprocess.run([tool, '-t', 'filter'], capture_output=True, check=True)\n"
)
RATIO = 2.0
SCRIPT = (
    "#!{python}\nimport sys\nfrom cfallow.__main__ import main\n"
    "if __name__ == '__main__':\n    sys.exit(main())\n"
)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def install(tmp: Path) -> tuple[str, str]:
    """This checkout as a wheel in a fresh virtualenv under ``tmp``: (python, cfallow script)."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").iterdir()) / "site-packages"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(ROOT),
            "-w",
            str(tmp / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp / "dist").glob("cfallow-*.whl")
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    (site / "zz-cfallow-deps.pth").write_text(deps + "\n")
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "compileall", "-q", str(site)], check=True, env=ENV)
    script = venv / "bin" / "cfallow"
    script.write_text(SCRIPT.format(python=python))
    script.chmod(0o755)
    return python, str(script)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=ENV, cwd="/")
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-4:])} exited {proc.returncode}: {proc.stderr.strip()}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=21)
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    with benchkit.scene("reconcile") as here:
        nsx = here.nsx()
        python, cfallow = install(here.tmp)
        conf = here.tmp / "config.toml"
        conf.write_text(here.source() + '[backends.iptables]\nvariant = "nft"\n')
        tmp = str(here.tmp)

        def argv(state: str, *args: str) -> list[str]:
            base = [*nsx, cfallow, "--config", str(conf), "--state-dir", state, "-q"]
            return [*base, "sync", *args]

        first = []
        for i in range(opts.runs):
            for tool in ("iptables-nft", "ip6tables-nft"):
                subprocess.run([*nsx, tool, "-F"], check=True)
                subprocess.run([*nsx, tool, "-X"], check=True)
            first.append(timed(argv(f"{tmp}/first-{i}")))
        state = f"{tmp}/state"
        online = [timed(argv(state)) for _ in range(opts.runs)]
        offline = [timed(argv(state, "--offline")) for _ in range(opts.runs)]
        bare = [timed([python, "-c", "pass"]) for _ in range(opts.runs)]
        floor = [timed([python, "-c", FLOOR]) for _ in range(opts.runs)]
        alone = [timed([python, "-c", "import netaddr"]) for _ in range(opts.runs)]
        saves = [timed([*nsx, python, "-c", TWO_SAVES]) for _ in range(opts.runs)]
        probe = [*nsx, python, "-c", _IMPORTS, "--config", str(conf)]
        probe += ["--state-dir", state, "-q", "sync", "--offline"]
        out = subprocess.run(
            probe, capture_output=True, text=True, check=True, env=ENV, cwd="/"
        ).stdout
        heavy = out.strip().splitlines()[-1]
    print(f"{'run':22} {'median':>8} {'max':>8}   ({opts.runs} runs, whole process, s)")
    for name, times in (
        ("offline no-change", offline),
        ("online no-change", online),
        ("first sync", first),
        ("floor: python -c pass", bare),
        ("floor: import netaddr", alone),
        ("floor: + the imports", floor),
        ("floor: the two saves", saves),
    ):
        print(f"{name:22} {statistics.median(times):8.3f} {max(times):8.3f}")
    print(f"offline run imports of {', '.join(HEAVY)}: {heavy.strip()}")
    ratio = statistics.median(offline) / statistics.median(saves)
    met = statistics.median(offline) <= TARGET
    print(f"target: offline no-change <= {TARGET} s median: {'met' if met else 'NOT met'}")
    print(
        f"offline no-change / the two saves: {ratio:.2f}x (target <= {RATIO}x: "
        f"{'met' if ratio <= RATIO else 'NOT met'})"
    )
    return 0 if met and ratio <= RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
