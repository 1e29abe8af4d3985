"""What the HTTP stand-ins share: a loopback server in a daemon thread, a JSON request handler,
the log of served requests and the failure-injection queue.

Each API's routes, shapes, error formats, pagination and auth stay in its own module.

Fault injection, one API for every stand-in (digitalocean, vultr, hetzner, gcp, and aws, where
moto sits behind the SigV4 gate): ``standin.failures`` is a ``FailureQueue``; each request of a
kind (``"list"``, ``"create"``, ``"delete"``, ``"firewall"``, ``"other"``) takes the next entry
queued for its kind, and a request with none is served normally::

    standin.failures.add("create", Failure.ghost(502))      # the VM is made, the answer is a 502
    standin.failures.add("list", Failure.error(503), skip=1)  # page 2 of a list fails
    standin.failures.add("create", Failure.rate_limited(retry_after=3, reset_in=120))

What a ``Failure`` does (``process``: the request takes effect first, then the answer is lost):

* ``Failure.error(status, retry_after=, headers=)`` an error answer in the API's own shape;
* ``Failure.rate_limited(retry_after=, reset_in=, remaining=0)`` a 429 with ``Retry-After``
  and/or DigitalOcean's ``ratelimit-limit``/``-remaining``/``-reset`` (epoch seconds) headers;
* ``Failure.ghost(status=502)`` the request is processed in full (the VM exists), then answered
  with that error; ``Failure.ghost(None)``: processed, then the connection is dropped;
* ``Failure.drop()`` the connection is closed without an answer, before any processing;
* ``Failure.malformed(body, status=200)`` an answer whose body is ``body`` as it is (bytes or
  str: e.g. not JSON, or XML that is not EC2's) or, for any other value, that value as JSON (a
  well-formed answer of the wrong shape); nothing is processed;
* ``Failure.hang(seconds)`` the request is processed, then its answer held ``seconds`` (at most
  ``MAX_HANG_S``) before it is sent: only for timeout tests, with the client's timeout set small.

``add(kind, failure, times=N, skip=M)``: the next ``N`` requests of ``kind`` after ``M`` served
normally (``skip`` reaches a later page of a paginated list). The old ``fail_next(kind, status,
times=, retry_after=)`` of each stand-in queues ``Failure.error``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

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

    def drop(self) -> None:
        """Close the connection without an answer (an injected ``drop``)."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may have gone away first
            self.connection.shutdown(socket.SHUT_RDWR)

    def guarded(self, answer: Callable[[], None]) -> None:
        """``answer()`` (which serves the request), with the injected ``Dropped`` and
        ``RawAnswer`` carried out at the socket, and a client that gave up (a ``hang`` it timed
        out on) ignored."""
        try:
            answer()
        except Dropped:
            self.drop()
        except RawAnswer as raw:
            self.send_body(raw.status, raw.payload, raw.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

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
    query: str = ""  # as sent, undecoded


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


Mode = Literal["error", "drop", "malformed", "hang"]
MAX_HANG_S = 5.0  # a hang longer than this would only slow the suite down


@dataclass(frozen=True)
class Failure:
    """An injected failure (see the module docstring); ``Failure(status, retry_after)`` is an
    error answer, as before."""

    status: int = 500
    retry_after: int | None = None
    mode: Mode = "error"
    process: bool = False  # the request takes effect before the failure (a "ghost")
    headers: tuple[tuple[str, str], ...] = ()  # extra headers of an error answer
    body: bytes = b""  # a malformed answer's body
    seconds: float = 0.0  # how long a hang holds the answer

    @classmethod
    def error(
        cls,
        status: int,
        *,
        retry_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Failure:
        return cls(status, retry_after, headers=tuple((headers or {}).items()))

    @classmethod
    def rate_limited(
        cls,
        *,
        retry_after: int | None = None,
        reset_in: float | None = None,
        remaining: int = 0,
        status: int = 429,
    ) -> Failure:
        """A 429; ``reset_in``: DigitalOcean's ``ratelimit-reset`` (now + that, epoch seconds)
        with ``ratelimit-remaining`` and ``ratelimit-limit``."""
        headers: dict[str, str] = {}
        if reset_in is not None:
            headers = {
                "ratelimit-limit": "5000",
                "ratelimit-remaining": str(remaining),
                "ratelimit-reset": str(int(time.time() + reset_in)),
            }
        return cls.error(status, retry_after=retry_after, headers=headers)

    @classmethod
    def ghost(cls, status: int | None = 502) -> Failure:
        """Processed in full, then answered ``status`` (``None``: the connection dropped)."""
        if status is None:
            return cls(0, mode="drop", process=True)
        return cls(status, process=True)

    @classmethod
    def drop(cls) -> Failure:
        return cls(0, mode="drop")

    @classmethod
    def malformed(cls, body: object, *, status: int = 200) -> Failure:
        if isinstance(body, str):
            payload = body.encode()
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode()
        return cls(status, mode="malformed", body=payload)

    @classmethod
    def hang(cls, seconds: float, *, process: bool = True) -> Failure:
        return cls(0, mode="hang", process=process, seconds=min(seconds, MAX_HANG_S))

    def all_headers(self) -> dict[str, str]:
        """Retry-After (if any) and the extra headers, for an error answer."""
        return {**retry_after_header(self.retry_after), **dict(self.headers)}


class Dropped(Exception):
    """The connection is to be closed without an answer."""


class RawAnswer(Exception):
    """An answer to send as it is (a malformed body)."""

    def __init__(self, status: int, payload: bytes, content_type: str) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.headers = {"Content-Type": content_type}


A = TypeVar("A")


def inject(
    failure: Failure | None,
    process: Callable[[], A],
    error: Callable[[Failure], A],
    *,
    content_type: str = "application/json",
) -> A:
    """Serve a request (``process()`` makes its normal answer) with ``failure`` applied:
    ``error(failure)`` makes the API's error answer for it. Call it outside any lock: a hang
    sleeps. Raises ``Dropped``/``RawAnswer`` for the handler (``JsonHandler.guarded``)."""
    if failure is None:
        return process()
    if failure.mode == "malformed":
        raise RawAnswer(failure.status, failure.body, content_type)
    if failure.process:
        answer = process()
        if failure.mode == "hang":
            time.sleep(failure.seconds)  # bounded; for a client whose timeout is shorter
            return answer
    elif failure.mode == "hang":
        time.sleep(failure.seconds)
        return process()
    if failure.mode == "drop":
        raise Dropped
    return error(failure)


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

    def pending(self, kind: Kind) -> int:
        """How many requests of ``kind`` still have an entry (served normally or not)."""
        with self._lock:
            return len(self._pending.get(kind, ()))

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
