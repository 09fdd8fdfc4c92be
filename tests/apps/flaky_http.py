"""An HTTP service whose health the test steers: python flaky_http.py PORT [--tls CERT KEY [--client-ca CA]].

GET /health answers 200 "status: ok" (with the request's X-Probe header echoed in the body);
GET /mode/503 makes it answer 503, /mode/hang makes it hang (never answer), /mode/ok heals it.
Every request to /health is appended (a timestamp) to $HITS_FILE when set, so a test can count
probes.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode = "ok"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stdout.write("%s\n" % (fmt % args))
        sys.stdout.flush()

    def do_GET(self) -> None:
        global mode
        if self.path.startswith("/mode/"):
            mode = self.path.split("/")[2]
            self._answer(200, f"mode {mode}")
            return
        if self.path == "/health":
            hits = os.environ.get("HITS_FILE")
            if hits:
                with open(hits, "a") as fh:
                    fh.write(f"{time.monotonic()}\n")
            if mode == "hang":
                time.sleep(3600)
            if mode == "503":
                self._answer(503, "status: down")
                return
            self._answer(200, f"status: ok probe={self.headers.get('X-Probe', '-')}")
            return
        self._answer(404, "not found")

    def _answer(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
if "--tls" in sys.argv:
    at = sys.argv.index("--tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[at + 1], sys.argv[at + 2])
    if "--client-ca" in sys.argv:
        context.load_verify_locations(sys.argv[sys.argv.index("--client-ca") + 1])
        context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
print("serving", flush=True)
server.serve_forever()
