"""The application behind Caddy in the tests: logs the client it is told about, answers ok.

``python xff_upstream.py PORT LOGFILE``: one line per request, ``CLIENT PATH``,
where CLIENT is the first ``X-Forwarded-For`` entry Caddy passed on.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        xff = self.headers.get("X-Forwarded-For", "")
        client = xff.split(",")[0].strip() or self.client_address[0]
        with open(sys.argv[2], "a") as log:
            log.write(f"{client} {self.path}\n")
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
