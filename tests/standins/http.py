"""What the HTTP stand-ins share: a loopback server in a daemon thread, a JSON request handler,
the log of served requests and the failure-injection queue.

Each API's routes, shapes, error formats, pagination and auth stay in its own module.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Protocol, TypeVar, cast

from tests.standins.base import Kind

# shutdown() waits up to one poll for the serving loop to notice, and every test closes a
# stand-in: a short poll keeps that from costing a test up to the default 0.5 s.
POLL_INTERVAL = 0.01


class LoopbackServer:
    """A ``socketserver`` server (already bound to 127.0.0.1) served from a daemon thread
    until ``close()``."""

    def __init__(
        self, server: socketserver.BaseServer, *, poll_interval: float = POLL_INTERVAL
    ) -> None:
        self.server = server
        address = server.server_address
        assert isinstance(address, tuple), address
        self.port: int = address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop serving and free the port. A second call (a test may close a stand-in early
        to make its API unreachable, and its fixture closes it again) changes nothing."""
        self.server.shutdown()  # returns at once if the loop has already stopped
        self.server.server_close()
        self._thread.join()


OwnerT = TypeVar("OwnerT")


class _OwnedServer(ThreadingHTTPServer):
    """A threading HTTP server that knows the stand-in its handlers serve."""

    daemon_threads = True  # a handler blocked on a keep-alive connection never holds up exit

    def __init__(self, handler: type[BaseHTTPRequestHandler], owner: object) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.owner = owner


def serve(
    handler: type[JsonHandler[OwnerT]], owner: OwnerT, *, poll_interval: float = POLL_INTERVAL
) -> LoopbackServer:
    """``handler`` serving ``owner`` (its ``self.owner``) on 127.0.0.1, on a free port."""
    return LoopbackServer(_OwnedServer(handler, owner), poll_interval=poll_interval)


class JsonHandler(BaseHTTPRequestHandler, Generic[OwnerT]):
    """A request handler for a stand-in: keep-alive, no Nagle delay, no access log, and
    helpers to read a request body and send an answer. Subclasses map the methods they serve
    (``do_GET = do_POST = ... = _answer``) and set ``json_content_type`` as their API sends it.
    """

    protocol_version = "HTTP/1.1"  # keep-alive, as requests' session expects
    # Headers and body go out in two writes: with Nagle's algorithm on, each answer could
    # wait ~40 ms for the client's delayed ACK.
    disable_nagle_algorithm = True
    json_content_type = "application/json"

    @property
    def owner(self) -> OwnerT:
        """The stand-in this server serves (see ``serve``)."""
        return cast(OwnerT, cast(_OwnedServer, self.server).owner)

    def read_body(self) -> bytes:
        """The request's body as sent (empty without a Content-Length)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """``body`` as JSON (``None``: no body and no Content-Type), with ``headers``, which
        may replace the Content-Type."""
        payload = b"" if body is None else json.dumps(body).encode()
        content_type = {"Content-Type": self.json_content_type} if payload else {}
        self.send_body(status, payload, {**content_type, **(headers or {})})

    def send_body(
        self, status: int, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """``payload`` as it is, with ``headers`` and its Content-Length."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: pytest shows failures, not access logs


def parse_json_object(raw: bytes) -> dict[str, Any] | None:
    """A request body that must be a JSON object (an empty body is ``{}``); ``None`` if it
    is not one, for the caller to answer in its API's error shape."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def retry_after_header(seconds: int | None) -> dict[str, str]:
    return {} if seconds is None else {"Retry-After": str(seconds)}


# --- what a stand-in served -----------------------------------------------------------------


class Logged(Protocol):
    @property
    def kind(self) -> Kind: ...


R = TypeVar("R", bound=Logged)


@dataclass(frozen=True)
class Served:
    """One request as a stand-in saw it (never its credentials)."""

    kind: Kind
    method: str
    path: str


class RequestLog(Generic[R]):
    """The requests a stand-in served, in order, since the last ``clear()`` (thread-safe)."""

    def __init__(self) -> None:
        self._entries: list[R] = []
        self._lock = threading.Lock()

    def add(self, entry: R) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self, kind: Kind | None = None) -> list[R]:
        """A copy of the log, or of its requests of ``kind``."""
        with self._lock:
            return [e for e in self._entries if kind is None or e.kind == kind]

    def kinds(self) -> list[Kind]:
        with self._lock:
            return [e.kind for e in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# --- injected failures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """An injected error answer: its status and, if any, its Retry-After (seconds)."""

    status: int
    retry_after: int | None = None


F = TypeVar("F", bound=Failure)


class FailureQueue(Generic[F]):
    """Injected failures by request kind, first in first out (thread-safe): each request of a
    kind takes the next entry, a failure to answer or ``None`` (served normally)."""

    def __init__(self) -> None:
        self._pending: dict[Kind, deque[F | None]] = {}
        self._lock = threading.Lock()

    def add(self, kind: Kind, failure: F, *, times: int = 1, skip: int = 0) -> None:
        """The next ``times`` requests of ``kind``, after ``skip`` served normally, fail."""
        with self._lock:
            queue = self._pending.setdefault(kind, deque())
            queue.extend([None] * skip + [failure] * times)

    def take(self, kind: Kind) -> F | None:
        """What this request of ``kind`` answers: an injected failure, or ``None``."""
        with self._lock:
            queue = self._pending.get(kind)
            return queue.popleft() if queue else None
