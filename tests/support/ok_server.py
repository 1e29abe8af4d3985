"""A loopback HTTP handler that answers every GET with 200 "ok": a health-check origin or a
proxy stub for tests that need something healthy on 127.0.0.x."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any


class OkHandler(BaseHTTPRequestHandler):
    """Every GET succeeds with ``ok``."""

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: pytest shows failures, not access logs
