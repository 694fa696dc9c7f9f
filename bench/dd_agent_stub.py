"""A stub Datadog agent for the ddtrace variants of ``make bench``: accepts traces, counts bytes.

It answers ``PUT``/``POST`` on ``/v0.4/traces`` and ``/v0.5/traces`` with 200, reads and
counts the payload (ddtrace's own msgpack encoding), and says nothing about sampling rates.
``GET /bench/bytes`` returns ``{"bytes": N}``. Anything else gets 404 (so ``/info`` tells the
tracer this agent offers no extra endpoints). It runs in its own process, as an agent does.

    python bench/dd_agent_stub.py 8126
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_bytes = [0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _receive(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") in ("/v0.4/traces", "/v0.5/traces"):
            with _lock:
                _bytes[0] += len(data)
            self._reply(200, b'{"rate_by_service":{}}')
        else:
            self._reply(404, b"{}")

    do_PUT = _receive
    do_POST = _receive

    def do_GET(self) -> None:
        if self.path == "/bench/bytes":
            with _lock:
                self._reply(200, json.dumps({"bytes": _bytes[0]}).encode())
        else:
            self._reply(404, b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8126
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on {port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
