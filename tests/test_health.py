"""Tests for the HTTP health prober, through a real proxy.py and through misbehaving fakes."""

from __future__ import annotations

import logging
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudproxy_cli.adapters.health import HttpProber
from cloudproxy_cli.core.model import ProbeKind, ProbeTarget
from tests.support.local_proxies import proxy_py_server

USER = "probe-user"
PASSWORD = "pr0be-s3cret-pw"
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def proxy_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One real proxy.py with basic auth for the whole module (it takes ~0.2 s to start)."""
    with proxy_py_server(tmp_path_factory.mktemp("proxy"), username=USER, password=PASSWORD) as p:
        yield p


@pytest.fixture
def prober() -> Iterator[HttpProber]:
    with HttpProber(username=USER, password=PASSWORD, timeout_s=2.0) as p:
        yield p


def probe_one(prober: HttpProber, port: int, proxy_id: str = "p1") -> tuple[bool, str, float]:
    result = prober.probe([ProbeTarget(proxy_id, HOST, port)])[proxy_id]
    return result.ok, result.detail, result.elapsed_s


def closed_port() -> int:
    """A loopback port that was free a moment ago and that nothing listens on."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


@contextmanager
def black_holes(count: int) -> Iterator[list[int]]:
    """Listening sockets that never accept: the kernel completes the TCP handshake, then silence."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            s = stack.enter_context(socket.socket())
            s.bind((HOST, 0))
            s.listen(16)
            ports.append(s.getsockname()[1])
        yield ports


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 64  # many probes at once: a full backlog would cost SYN retries


class FakeProxy:
    """A loopback TCP server that reads one request head and answers with ``reply(sock)``."""

    def __init__(self, reply: bytes | Callable[[socket.socket], None]) -> None:
        self.heads: list[bytes] = []
        fake = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                fake.heads.append(head)
                if callable(reply):
                    reply(sock)
                else:
                    sock.sendall(reply)

        self._server = _Server((HOST, 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    def __enter__(self) -> FakeProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def test_good_credentials_through_proxy_py_are_healthy(prober: HttpProber, proxy_port: int) -> None:
    ok, detail, elapsed = probe_one(prober, proxy_port)
    assert (ok, detail) == (True, "ok")
    assert elapsed > 0  # measured; the deadline itself is proven by the black-hole tests


def test_wrong_credentials_fail_with_407(proxy_port: int) -> None:
    with HttpProber(username=USER, password="wrong", timeout_s=2.0) as prober:
        ok, detail, _ = probe_one(prober, proxy_port)
    assert (ok, detail) == (False, "407 proxy authentication required")


def test_no_credentials_fail_with_407(proxy_port: int) -> None:
    with HttpProber(username=None, password=None, timeout_s=2.0) as prober:
        ok, detail, _ = probe_one(prober, proxy_port)
    assert (ok, detail) == (False, "407 proxy authentication required")


def test_nothing_listening_is_connection_refused(prober: HttpProber) -> None:
    ok, detail, _ = probe_one(prober, closed_port())
    assert (ok, detail) == (False, "connection refused")  # reported as such, not as a timeout


def accepted_connections(listener: socket.socket) -> int:
    """Drains a listener's accept queue: how many connections the kernel completed for it."""
    listener.setblocking(False)
    count = 0
    with suppress(BlockingIOError):
        while True:
            conn, _ = listener.accept()
            conn.close()
            count += 1
    return count


def test_black_holed_proxy_costs_one_timeout() -> None:
    with (
        HttpProber(username=USER, password=PASSWORD, timeout_s=0.5) as prober,
        socket.create_server((HOST, 0)) as hole,  # listens, never accepts
    ):
        ok, detail, elapsed = probe_one(prober, hole.getsockname()[1])
        attempts = accepted_connections(hole)
    assert (ok, detail) == (False, "timed out after 0.5s")
    assert elapsed >= 0.45  # a lower bound: it waited out the timeout
    assert attempts == 1  # one connection, no retry


def test_proxy_answering_200_with_another_page_is_not_healthy(prober: HttpProber) -> None:
    page = b"<html>captive portal</html>"
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page)
    with FakeProxy(reply) as fake:
        ok, detail, _ = probe_one(prober, fake.port)
    assert not ok
    assert detail == "200 but not from the probe origin (wrong body)"


def test_proxy_answering_401_is_a_failure(prober: HttpProber) -> None:
    with FakeProxy(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n") as fake:
        ok, detail, _ = probe_one(prober, fake.port)
    assert (ok, detail) == (False, "401 unauthorized")


def test_proxy_answering_garbage_is_a_failure(prober: HttpProber) -> None:
    with FakeProxy(b"SSH-2.0-OpenSSH_9.6\r\n") as fake:
        ok, detail, _ = probe_one(prober, fake.port)
    assert not ok
    assert detail.startswith("not an HTTP response")


def test_proxy_closing_without_answer_is_a_failure(prober: HttpProber) -> None:
    with FakeProxy(b"") as fake:
        ok, detail, _ = probe_one(prober, fake.port)
    assert (ok, detail) == (False, "connection closed without a response")


def test_request_is_absolute_form_with_our_proxy_authorization(prober: HttpProber) -> None:
    with FakeProxy(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n") as fake:
        ok, detail, _ = probe_one(prober, fake.port)
    assert (ok, detail) == (False, "502 bad gateway")
    [head] = fake.heads
    request_line = head.split(b"\r\n")[0]
    assert request_line.startswith(b"GET http://127.0.0.1:")
    assert b"Proxy-Authorization: Basic cHJvYmUtdXNlcjpwcjBiZS1zM2NyZXQtcHc=\r\n" in head


def test_a_trickling_proxy_still_costs_only_one_timeout() -> None:
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        # A byte every 0.1 s for as long as the client listens: every read succeeds, so only an
        # overall deadline can end the probe (a per-read timeout would hang the test).
        sock.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        with suppress(OSError):
            while not stop.wait(0.1):
                sock.sendall(b"x")

    try:
        with (
            HttpProber(username=None, password=None, timeout_s=0.5) as prober,
            FakeProxy(trickle) as fake,
        ):
            ok, detail, _ = probe_one(prober, fake.port)
            stop.set()
    finally:
        stop.set()
    assert (ok, detail) == (False, "timed out after 0.5s")


def answer_when_all_arrive(barrier: threading.Barrier) -> Callable[[socket.socket], None]:
    """A FakeProxy reply that answers 503 only once ``barrier.parties`` probes are in at once."""

    def reply(sock: socket.socket) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return  # not all arrived together: close without an answer
        sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    return reply


def test_probes_run_in_parallel() -> None:
    # Each answer waits until all 20 probes are connected: only a parallel prober gets any.
    barrier = threading.Barrier(20, timeout=5)
    with (
        HttpProber(username=USER, password=PASSWORD, timeout_s=10) as prober,
        FakeProxy(answer_when_all_arrive(barrier)) as fake,
    ):
        results = prober.probe([ProbeTarget(f"p{i}", HOST, fake.port) for i in range(20)])
    assert {r.detail for r in results.values()} == {"503 service unavailable"}


def test_many_black_holes_and_good_proxies_in_one_probe(proxy_port: int) -> None:
    timeout = 1.0
    with (
        HttpProber(username=USER, password=PASSWORD, timeout_s=timeout) as prober,
        black_holes(20) as holes,
    ):
        targets = [ProbeTarget(f"hole-{i}", HOST, port) for i, port in enumerate(holes)]
        targets += [ProbeTarget(f"good-{i}", HOST, proxy_port) for i in range(5)]
        results = prober.probe(targets)
    assert set(results) == {t.proxy_id for t in targets}
    assert all(results[f"good-{i}"].ok for i in range(5))
    assert not any(results[f"hole-{i}"].ok for i in range(20))
    assert {results[f"hole-{i}"].detail for i in range(20)} == {"timed out after 1.0s"}


def test_workers_are_bounded_by_max_workers() -> None:
    # Two workers, three targets whose answer needs all three connected at once: never happens.
    barrier = threading.Barrier(3, timeout=0.5)
    with (
        HttpProber(username=USER, password=PASSWORD, timeout_s=5, max_workers=2) as prober,
        FakeProxy(answer_when_all_arrive(barrier)) as fake,
    ):
        results = prober.probe([ProbeTarget(f"p{i}", HOST, fake.port) for i in range(3)])
    assert {r.detail for r in results.values()} == {"connection closed without a response"}


def test_no_targets_no_results(prober: HttpProber) -> None:
    assert prober.probe([]) == {}


def test_password_never_in_results_or_repr(proxy_port: int) -> None:
    with (
        HttpProber(username=USER, password=PASSWORD, timeout_s=0.5) as prober,
        black_holes(1) as [hole],
        FakeProxy(b"HTTP/1.1 401 Unauthorized\r\n\r\n") as fake,
    ):
        results = prober.probe(
            [
                ProbeTarget("good", HOST, proxy_port),
                ProbeTarget("hole", HOST, hole),
                ProbeTarget("fake", HOST, fake.port),
                ProbeTarget("closed", HOST, closed_port()),
            ]
        )
        text = repr(results) + repr(prober) + repr(vars(prober))
    assert results["good"].ok
    assert PASSWORD not in text


def test_close_stops_the_own_origin_and_a_later_probe_restarts_it(proxy_port: int) -> None:
    prober = HttpProber(username=USER, password=PASSWORD, timeout_s=2.0)
    with FakeProxy(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") as fake:
        probe_one(prober, fake.port)
    origin = fake.heads[0].split(b" ")[1].decode()  # the absolute URL the prober asked for
    origin_port = int(origin.split(":")[2].split("/")[0])
    with socket.create_connection((HOST, origin_port), timeout=2):
        pass  # the origin runs
    prober.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, origin_port), timeout=2)
    assert probe_one(prober, proxy_port)[:2] == (True, "ok")
    prober.close()


def test_a_given_http_url_needs_only_a_2xx(proxy_port: int) -> None:
    with (
        local_origin(None) as (url, seen),
        HttpProber(username=USER, password=PASSWORD, timeout_s=2.0, url=url) as prober,
    ):
        assert probe_one(prober, proxy_port)[:2] == (True, "ok")
    assert len(seen) == 1


# --- https through CONNECT, with a local TLS origin and a certificate made at test time ---


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the venv has no `cryptography`: openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "ec"),
            *("-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


class _OriginServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__((HOST, 0), _HelloHandler)
        self.seen_headers: list[str] = []


class _HelloHandler(BaseHTTPRequestHandler):
    server: _OriginServer

    def do_GET(self) -> None:
        self.server.seen_headers.append(str(self.headers))
        body = b"hello from the local origin"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def local_origin(tls: tuple[Path, Path] | None) -> Iterator[tuple[str, list[str]]]:
    """An origin on 127.0.0.1 answering 200 to any GET (https given a cert and key).

    Yields its URL and the request headers it receives.
    """
    server = _OriginServer()
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"{scheme}://{HOST}:{server.server_address[1]}/health", server.seen_headers
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_https_through_connect_is_healthy(proxy_port: int, tls_cert: tuple[Path, Path]) -> None:
    trust = ssl.create_default_context(cafile=str(tls_cert[0]))
    with (
        local_origin(tls_cert) as (url, seen),
        HttpProber(
            username=USER, password=PASSWORD, timeout_s=2.0, url=url, ssl_context=trust
        ) as prober,
    ):
        assert probe_one(prober, proxy_port)[:2] == (True, "ok")
    # The tunnel is opaque to the proxy: our credentials must not travel on to the origin.
    [headers] = seen
    assert "Host: 127.0.0.1:" in headers
    assert "proxy-authorization" not in headers.lower()


def test_https_with_wrong_credentials_fails_at_connect(
    proxy_port: int, tls_cert: tuple[Path, Path]
) -> None:
    trust = ssl.create_default_context(cafile=str(tls_cert[0]))
    with (
        local_origin(tls_cert) as (url, seen),
        HttpProber(
            username=USER, password="wrong", timeout_s=2.0, url=url, ssl_context=trust
        ) as prober,
    ):
        assert probe_one(prober, proxy_port)[:2] == (False, "407 proxy authentication required")
        assert kind_of(prober, proxy_port)[0] == ProbeKind.AUTH
    assert seen == []


def test_https_origin_with_untrusted_certificate_fails(
    proxy_port: int, tls_cert: tuple[Path, Path]
) -> None:
    with (
        local_origin(tls_cert) as (url, _),
        HttpProber(username=USER, password=PASSWORD, timeout_s=2.0, url=url) as prober,
    ):
        ok, detail, _ = probe_one(prober, proxy_port)
    assert not ok
    assert detail.startswith("TLS certificate rejected")


def test_connect_carries_our_proxy_authorization(
    tls_cert: tuple[Path, Path],
) -> None:
    with (
        FakeProxy(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n") as fake,
        HttpProber(
            username=USER, password=PASSWORD, timeout_s=2.0, url="https://127.0.0.1:9/x"
        ) as prober,
    ):
        assert probe_one(prober, fake.port)[:2] == (False, "407 proxy authentication required")
    [head] = fake.heads
    assert head.startswith(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic " in head


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/", "http:///nohost", "http://user:pw@127.0.0.1/", "127.0.0.1"]
)
def test_bad_urls_are_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        HttpProber(username=None, password=None, timeout_s=1.0, url=url)


def test_half_credentials_are_rejected() -> None:
    with pytest.raises(ValueError, match="together"):
        HttpProber(username="u", password=None, timeout_s=1.0)


# -- failure kinds and logging -------------------------------------------------------------------


def kind_of(prober: HttpProber, port: int) -> tuple[ProbeKind, str]:
    result = prober.probe([ProbeTarget("p1", HOST, port)])["p1"]
    return result.reason_kind, result.detail


def test_each_failure_has_its_kind(prober: HttpProber, proxy_port: int) -> None:
    assert kind_of(prober, proxy_port) == (ProbeKind.OK, "ok")
    with HttpProber(username=USER, password="wrong", timeout_s=2.0) as wrong:
        assert kind_of(wrong, proxy_port) == (ProbeKind.AUTH, "407 proxy authentication required")
    assert kind_of(prober, closed_port()) == (ProbeKind.REFUSED, "connection refused")
    replies = {
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n": (
            ProbeKind.AUTH, "401 unauthorized"),
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n": (
            ProbeKind.BAD_STATUS, "502 bad gateway"),
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno": (
            ProbeKind.BAD_STATUS, "200 but not from the probe origin (wrong body)"),
        b"": (ProbeKind.ERROR, "connection closed without a response"),
    }  # fmt: skip
    for reply, expected in replies.items():
        with FakeProxy(reply) as fake:
            assert kind_of(prober, fake.port) == expected


def test_a_timeout_is_its_own_kind() -> None:
    with (
        HttpProber(username=USER, password=PASSWORD, timeout_s=0.3) as prober,
        black_holes(1) as [port],
    ):
        assert kind_of(prober, port) == (ProbeKind.TIMEOUT, "timed out after 0.3s")


def test_failures_are_logged_under_the_cloudproxy_logger(
    proxy_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="cloudproxy"),
        HttpProber(username=USER, password="wrong-pw", timeout_s=2.0) as prober,
    ):
        prober.probe([ProbeTarget("p7", HOST, proxy_port)])
    (record,) = [r for r in caplog.records if "p7" in r.getMessage()]
    assert record.name == "cloudproxy.health"
    assert record.getMessage() == (
        f"proxy p7 at {HOST}:{proxy_port} unhealthy (auth): 407 proxy authentication required"
    )
    assert "wrong-pw" not in caplog.text
