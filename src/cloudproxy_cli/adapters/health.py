"""Health probes: an HTTP request through each proxy, run concurrently, each within a timeout."""

from __future__ import annotations

import base64
import http.client
import io
import logging
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from cloudproxy_cli.core.model import ProbeKind, ProbeResult, ProbeTarget

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# Under the CLI's "cloudproxy" logger, so that -v shows why each proxy failed.
logger = logging.getLogger("cloudproxy.health")

# Enough to find the origin's token; a proxy answering with a huge page is not our origin anyway.
_MAX_BODY = 64 * 1024
_USER_AGENT = "cloudproxy-health"


@dataclass(frozen=True, slots=True)
class _Request:
    """What every probe of one ``probe()`` call asks for, parsed once."""

    url: str
    https: bool
    authority: str  # host:port, as CONNECT and the Host header want it
    host: str  # for TLS server name indication and certificate checks
    path: str
    token: bytes | None  # set when the origin is ours: the body must contain it


class HttpProber:
    """Probes proxies by fetching ``url`` through each of them; implements ``Prober``.

    With ``url=None`` the prober serves its own origin on 127.0.0.1 (started on the first
    probe), so proxies on this machine can be checked without internet access. A 2xx from the
    origin is healthy; for our own origin the body must also carry the origin's random token,
    so a proxy that answers with some other page is not. Anything else is a failure whose
    ``detail`` says why in a few words. An https ``url`` goes through a CONNECT tunnel and its
    certificate is checked against ``ssl_context`` (default: the system's CAs).
    """

    def __init__(
        self,
        *,
        username: str | None,
        password: str | None,
        timeout_s: float,
        url: str | None = None,
        max_workers: int = 64,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        # Only the header value is kept, so the password is never in a message or a repr.
        self._proxy_auth = (
            None
            if username is None
            else "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        )
        self._timeout_s = float(timeout_s)
        self._max_workers = max_workers
        self._fixed = None if url is None else _parse_url(url, token=None)
        if ssl_context is None and self._fixed is not None and self._fixed.https:
            ssl_context = ssl.create_default_context()
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._origin: _Origin | None = None

    def probe(self, targets: Sequence[ProbeTarget]) -> dict[str, ProbeResult]:
        if not targets:
            return {}
        request = self._request()
        workers = min(self._max_workers, len(targets))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
            futures = [(t.proxy_id, pool.submit(self._probe_one, t, request)) for t in targets]
        return {proxy_id: future.result() for proxy_id, future in futures}

    def close(self) -> None:
        """Stop the prober's own origin, if it runs. A later probe starts a new one."""
        with self._lock:
            origin, self._origin = self._origin, None
        if origin is not None:
            origin.close()

    def __enter__(self) -> HttpProber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(self) -> _Request:
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            if self._origin is None:
                self._origin = _Origin()
            return self._origin.request

    def _probe_one(self, target: ProbeTarget, request: _Request) -> ProbeResult:
        start = time.monotonic()
        try:
            kind, detail = self._exchange(target, request, start + self._timeout_s)
        except Exception as err:  # noqa: BLE001 - one odd failure must not lose the others
            kind, detail = self._failure(target, err)
        elapsed = time.monotonic() - start
        if kind != ProbeKind.OK:
            logger.debug(
                "proxy %s at %s:%d unhealthy (%s): %s",
                target.proxy_id, target.host, target.port, kind, detail,
            )  # fmt: skip
        return ProbeResult(ok=kind == ProbeKind.OK, detail=detail, elapsed_s=elapsed, kind=kind)

    def _failure(self, target: ProbeTarget, err: Exception) -> tuple[ProbeKind, str]:
        """The kind and words of a probe that raised ``err``."""
        if isinstance(err, TimeoutError):
            return ProbeKind.TIMEOUT, f"timed out after {self._timeout_s}s"
        if isinstance(err, ConnectionRefusedError):
            return ProbeKind.REFUSED, "connection refused"
        for kind, detail in _ERROR_DETAILS:
            if isinstance(err, kind):
                return ProbeKind.ERROR, detail
        if isinstance(err, http.client.HTTPException):
            return ProbeKind.ERROR, f"not an HTTP response ({type(err).__name__})"
        if isinstance(err, ssl.SSLCertVerificationError):
            return ProbeKind.ERROR, f"TLS certificate rejected: {err.verify_message}"
        if isinstance(err, ssl.SSLError):
            return ProbeKind.ERROR, f"TLS error: {err.reason or type(err).__name__}"
        if isinstance(err, OSError):
            return ProbeKind.ERROR, (err.strerror or str(err) or type(err).__name__).lower()
        logger.error("probe of %s failed unexpectedly", target.proxy_id, exc_info=err)
        return ProbeKind.ERROR, f"probe error: {type(err).__name__}"

    def _exchange(
        self, target: ProbeTarget, request: _Request, deadline: float
    ) -> tuple[ProbeKind, str]:
        sock: socket.socket = socket.create_connection(
            (target.host, target.port), timeout=_remaining(deadline)
        )
        try:
            if request.https:
                # CONNECT by hand rather than http.client's set_tunnel: this way the proxy's
                # status is known as a number, and the deadline spans every step, where
                # set_tunnel would give connect, tunnel and handshake one full timeout each.
                head = f"CONNECT {request.authority} HTTP/1.1\r\nHost: {request.authority}\r\n"
                _send(sock, self._head(head).encode("latin-1"), deadline)
                response = _DeadlineResponse(sock, deadline, method="CONNECT")
                response.begin()
                if not 200 <= response.status < 300:
                    return _status_failure(response.status, response.reason)
                sock.settimeout(_remaining(deadline))
                assert self._ssl_context is not None  # set in __init__ for https URLs
                sock = self._ssl_context.wrap_socket(sock, server_hostname=request.host)
                # Inside the tunnel we talk to the origin: no Proxy-Authorization there.
                head = f"GET {request.path} HTTP/1.1\r\nHost: {request.authority}\r\n"
                head += f"User-Agent: {_USER_AGENT}\r\nConnection: close\r\n\r\n"
            else:
                head = f"GET {request.url} HTTP/1.1\r\nHost: {request.authority}\r\n"
                head = self._head(head + f"User-Agent: {_USER_AGENT}\r\nConnection: close\r\n")
            _send(sock, head.encode("latin-1"), deadline)
            response = _DeadlineResponse(sock, deadline, method="GET")
            response.begin()
            if not 200 <= response.status < 300:
                return _status_failure(response.status, response.reason)
            if request.token is not None and request.token not in response.read(_MAX_BODY):
                detail = f"{response.status} but not from the probe origin (wrong body)"
                return ProbeKind.BAD_STATUS, detail
            return ProbeKind.OK, "ok"
        finally:
            sock.close()

    def _head(self, lines: str) -> str:
        """``lines`` plus our Proxy-Authorization, ending the header block."""
        if self._proxy_auth is not None:
            lines += f"Proxy-Authorization: {self._proxy_auth}\r\n"
        return lines + "\r\n"


class _DeadlineReader(io.RawIOBase):
    """Socket reads that each wait only for what is left of the probe's overall deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        self._sock.settimeout(_remaining(self._deadline))
        return self._sock.recv_into(buffer)


class _DeadlineResponse(http.client.HTTPResponse):
    """http.client's response parser over a ``_DeadlineReader``.

    A plain socket timeout applies to each read, so a server trickling bytes could hold a probe
    for many timeouts; with this reader the whole response shares one deadline.
    """

    def __init__(self, sock: socket.socket, deadline: float, *, method: str) -> None:
        super().__init__(sock, method=method)
        self.fp.close()
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _OriginServer(ThreadingHTTPServer):
    token: bytes
    # socketserver's default backlog of 5 overflows when many proxies fetch at once; the
    # dropped SYNs are retried only after a second, which made healthy proxies look slow.
    request_queue_size = 1024

    def handle_error(self, request: object, client_address: object) -> None:
        # A proxy hanging up early (its probe timed out) is no news; stderr is not the place.
        logger.debug("probe origin: error serving %s", client_address, exc_info=True)


class _OriginHandler(BaseHTTPRequestHandler):
    # A proxy that connects and then stalls must not pin a server thread for long.
    timeout = 30

    def do_GET(self) -> None:
        body = cast(_OriginServer, self.server).token
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a probe every minute would flood stderr."""


class _Origin:
    """The prober's own origin: a tiny threaded HTTP server on 127.0.0.1 returning a token."""

    def __init__(self) -> None:
        token = secrets.token_hex(16)
        self._server = _OriginServer(("127.0.0.1", 0), _OriginHandler)
        self._server.token = token.encode("ascii")
        port = self._server.server_address[1]
        self.request = _parse_url(
            f"http://127.0.0.1:{port}/cloudproxy-health", token=token.encode("ascii")
        )
        # shutdown() waits for the loop to look up; the default 0.5 s would make close() slow.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="probe-origin", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _parse_url(url: str, *, token: bytes | None) -> _Request:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"health check URL must be http:// or https:// with a host: {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("health check URL must not carry credentials")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    host = parts.hostname
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    absolute = f"{parts.scheme}://{authority}{path}"
    return _Request(absolute, https, authority, host, path, token)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("probe deadline passed")
    return remaining


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    sock.settimeout(_remaining(deadline))
    sock.sendall(data)


# Connection failures that need no more words than these; most specific first.
_ERROR_DETAILS: tuple[tuple[type[Exception], str], ...] = (
    (http.client.RemoteDisconnected, "connection closed without a response"),
    (ConnectionResetError, "connection reset"),
    (ConnectionAbortedError, "connection closed"),
    (BrokenPipeError, "connection closed"),
)


def _status_failure(status: int, reason: str) -> tuple[ProbeKind, str]:
    auth = status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.PROXY_AUTHENTICATION_REQUIRED)
    return (ProbeKind.AUTH if auth else ProbeKind.BAD_STATUS), _status_detail(status, reason)


def _status_detail(status: int, reason: str) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = reason.strip() or "unknown status"
    return f"{status} {phrase.lower()}"
