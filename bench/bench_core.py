#!/usr/bin/env python3
"""Whole-process time of a no-change ``cfallow sync`` against a local source.

Serves the real Cloudflare API fixture from 127.0.0.1, syncs the test-only fake
backend once, then times N further (no-change) runs of the ``cfallow`` console
script and prints the median. Also checks that ``cfallow ranges`` imports
neither boto3 nor iptc.

    .venv/bin/python bench/bench_core.py [--runs 15]
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "cloudflare" / "api-ips.json"
CFALLOW = str(Path(sys.executable).parent / "cfallow")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = FIXTURE.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    opts = ap.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(
            f'[source]\napi_url = "{base}/client/v4/ips"\n'
            f'text_urls = ["{base}/ips-v4", "{base}/ips-v6"]\n\n'
            f'[backends.fake]\npath = "{tmp}/target.json"\n'
        )
        argv = [CFALLOW, "--config", str(cfg), "--state-dir", f"{tmp}/state", "-q", "sync"]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times = []
        for _ in range(opts.runs):
            start = time.perf_counter()
            out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
            times.append(time.perf_counter() - start)
            assert "fake: +0 -0 =22" in out, out
    server.shutdown()
    imp = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cfallow", "ranges", "--source", "bundled"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    heavy = sorted({m for m in ("boto3", "botocore", "iptc") if f" {m}" in imp})
    print(
        f"no-change sync (fake backend, local API), {opts.runs} runs: "
        f"median {statistics.median(times):.3f} s, "
        f"min {min(times):.3f} s, max {max(times):.3f} s"
    )
    print(f"cfallow ranges imports boto3/botocore/iptc: {', '.join(heavy) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
