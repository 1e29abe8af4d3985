"""The user data every cloud VM runs: validation, the rendered script, and real tinyproxy."""

from __future__ import annotations

import base64
import grp
import http.client
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cloudproxy_cli.adapters.common import ProxySettings
from cloudproxy_cli.adapters.health import HttpProber
from cloudproxy_cli.adapters.user_data import (
    CONF_DELIMITER,
    CONF_PATH,
    render_tinyproxy_conf,
    render_user_data,
)
from cloudproxy_cli.app.factories import proxy_settings
from cloudproxy_cli.config import Settings, load_config
from cloudproxy_cli.core.errors import ConfigError
from cloudproxy_cli.core.model import ProbeTarget

USER = "alice"
PASSWORD = "s3cr3t.Pass-word_9"
AUTHED = ProxySettings(port=8899, username=USER, password=PASSWORD)
OPEN = ProxySettings(port=3128, username=None, password=None)

# Values a user might type that must never reach the script or the config.
HOSTILE = [
    "p@ss w'rd\"$x",
    "$(reboot)",
    "`reboot`",
    "a;b",
    "a\nAllow 0.0.0.0/0",
    "a\rb",
    "pass\n" + CONF_DELIMITER + "\nreboot",
    "ünïcödé",
    "pa\u200bss",  # zero-width space
    "a b",
    "a#b",
    "a\\b",
    "a\x00b",
    "x" * 129,  # tinyproxy silently drops a BasicAuth rule past 257 bytes of user:pass
]

START_DEADLINE_S = 10.0
STOP_DEADLINE_S = 10.0


# --- proxy_settings: what the user configured ----------------------------------------------


def settings_from(environ: dict[str, str]) -> Settings:
    """Settings as the CLI builds them from the environment, typed values and all."""
    return load_config(None, environ, user_config_dir=Path("/nonexistent-cloudproxy")).settings


def config_error(settings: Settings) -> str:
    with pytest.raises(ConfigError) as info:
        proxy_settings(settings)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


def test_proxy_settings_with_credentials_and_host_ip() -> None:
    settings = settings_from(
        {
            "PROXY_USERNAME": USER,
            "PROXY_PASSWORD": PASSWORD,
            "PROXY_PORT": "3129",
            "ONLY_HOST_IP": "True",
            "HOST_IP": "2001:DB8:0:0::7",
        }
    )
    assert proxy_settings(settings) == ProxySettings(
        port=3129, username=USER, password=PASSWORD, allowed_ip="2001:db8::7"
    )


@pytest.mark.parametrize("flag", ["False", "false", "0", "no"])
def test_only_host_ip_false_in_any_spelling_allows_everyone(flag: str) -> None:
    # The reference compared the string "False" with a bool; here it is a real boolean.
    settings = settings_from(
        {
            "PROXY_USERNAME": USER,
            "PROXY_PASSWORD": PASSWORD,
            "ONLY_HOST_IP": flag,
            "HOST_IP": "203.0.113.7",
        }
    )
    assert proxy_settings(settings).allowed_ip is None


def test_open_proxy_is_refused_unless_allowed() -> None:
    message = config_error(settings_from({}))
    assert message.startswith("PROXY_USERNAME/PROXY_PASSWORD:")
    assert "ALLOW_OPEN_PROXY" in message
    allowed = proxy_settings(settings_from({"ALLOW_OPEN_PROXY": "True"}))
    assert (allowed.username, allowed.password) == (None, None)


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"PROXY_USERNAME": USER}, "PROXY_PASSWORD"),
        ({"PROXY_PASSWORD": PASSWORD}, "PROXY_USERNAME"),
        ({"PROXY_USERNAME": USER, "PROXY_PASSWORD": PASSWORD, "ONLY_HOST_IP": "1"}, "HOST_IP"),
    ],
)
def test_incomplete_settings_name_the_setting(environ: dict[str, str], setting: str) -> None:
    assert config_error(settings_from(environ)).startswith(f"{setting}: ")


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("setting", ["PROXY_USERNAME", "PROXY_PASSWORD"])
def test_hostile_credentials_are_refused_naming_the_setting(setting: str, value: str) -> None:
    environ = {"PROXY_USERNAME": USER, "PROXY_PASSWORD": PASSWORD, setting: value}
    try:
        settings = settings_from(environ)
    except ConfigError as err:  # refused even earlier (a NUL byte): still named, still one line
        message = str(err)
    else:
        message = config_error(settings)
    assert message.startswith(f"{setting}: ")
    assert "\n" not in message
    assert value not in message  # it may be a password


def test_overlong_credentials_are_refused_and_the_longest_accepted_pass() -> None:
    longest = "u" * 128
    ok = proxy_settings(settings_from({"PROXY_USERNAME": longest, "PROXY_PASSWORD": longest}))
    assert ok.username == ok.password == longest
    message = config_error(settings_from({"PROXY_USERNAME": USER, "PROXY_PASSWORD": "p" * 129}))
    assert message == "PROXY_PASSWORD: must be at most 128 characters"


def test_a_zoned_ipv6_host_ip_is_refused() -> None:
    # Python's ipaddress accepts anything after '%' as an IPv6 zone: config refuses zones.
    with pytest.raises(ConfigError) as info:
        settings_from(
            {
                "PROXY_USERNAME": USER,
                "PROXY_PASSWORD": PASSWORD,
                "ONLY_HOST_IP": "yes",
                "HOST_IP": "fe80::1%$(reboot)",
            }
        )
    assert str(info.value).startswith("HOST_IP: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"HOST_IP": "1.2.3.4; reboot", "ONLY_HOST_IP": "true"}, "HOST_IP"),
        ({"PROXY_PORT": "8899; reboot"}, "PROXY_PORT"),
        ({"PROXY_PORT": "0"}, "PROXY_PORT"),
        ({"PROXY_PORT": "65536"}, "PROXY_PORT"),
        ({"ONLY_HOST_IP": "maybe"}, "ONLY_HOST_IP"),
    ],
)
def test_other_values_reaching_user_data_are_validated(
    environ: dict[str, str], setting: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from({"PROXY_USERNAME": USER, "PROXY_PASSWORD": PASSWORD, **environ})
    assert str(info.value).startswith(f"{setting}: ")


@pytest.mark.parametrize("port", [0, 65536, True, "8899"])
def test_proxy_settings_checks_the_port_itself(port: object) -> None:
    # model_copy(update=...) skips config's validation: proxy_settings must not rely on it.
    valid = settings_from({"PROXY_USERNAME": USER, "PROXY_PASSWORD": PASSWORD})
    assert config_error(valid.model_copy(update={"proxy_port": port})) == (
        "PROXY_PORT: must be a port number from 1 to 65535"
    )


# --- the renderer's own checks -----------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("which", ["username", "password"])
def test_renderers_refuse_hostile_credentials(which: str, value: str) -> None:
    proxy = ProxySettings(
        port=8899,
        username=value if which == "username" else USER,
        password=value if which == "password" else PASSWORD,
    )
    for render in (render_user_data, render_tinyproxy_conf):
        with pytest.raises(ValueError, match=f"proxy {which}") as info:
            render(proxy)
        assert value not in str(info.value)


PORT_ERROR = "proxy port must be an integer from 1 to 65535"
TOGETHER_ERROR = "proxy username and password must be set together"
IP_ERROR = "must be an IPv4 or IPv6 address"


@pytest.mark.parametrize(
    ("proxy", "error"),
    [
        (ProxySettings(port=0, username=USER, password=PASSWORD), PORT_ERROR),
        (ProxySettings(port=65536, username=USER, password=PASSWORD), PORT_ERROR),
        (ProxySettings(port=True, username=USER, password=PASSWORD), PORT_ERROR),
        (
            ProxySettings(port=cast(int, "8899\nreboot"), username=USER, password=PASSWORD),
            PORT_ERROR,
        ),
        (ProxySettings(port=8899, username=USER, password=None), TOGETHER_ERROR),
        (ProxySettings(port=8899, username=None, password=PASSWORD), TOGETHER_ERROR),
        (
            ProxySettings(port=8899, username=cast(str, b"alice"), password=PASSWORD),
            "proxy username",
        ),
        (
            ProxySettings(
                port=8899, username=USER, password=PASSWORD, allowed_ip="1.2.3.4; reboot"
            ),
            IP_ERROR,
        ),
        (
            ProxySettings(port=8899, username=USER, password=PASSWORD, allowed_ip="fe80::1%$(x)"),
            IP_ERROR + " without a zone",
        ),
        (
            ProxySettings(port=8899, username=USER, password=PASSWORD, allowed_ip="10.0.0.0/8"),
            IP_ERROR,
        ),
        (
            ProxySettings(port=8899, username=USER, password=PASSWORD, allowed_ip="example.com"),
            IP_ERROR,
        ),
        (
            ProxySettings(port=8899, username=USER, password=PASSWORD, allowed_ip="1.2.3.4\n"),
            IP_ERROR,
        ),
    ],
    ids=repr,
)
def test_renderers_refuse_what_proxy_settings_would_refuse(
    proxy: ProxySettings, error: str
) -> None:
    for render in (render_user_data, render_tinyproxy_conf):
        with pytest.raises(ValueError, match=re.escape(error)):
            render(proxy)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(username=st.text(max_size=20), password=st.text(max_size=20))
def test_any_credential_is_rendered_verbatim_or_refused(username: str, password: str) -> None:
    proxy = ProxySettings(port=8899, username=username, password=password)
    safe = re.compile(r"[A-Za-z0-9._-]{1,128}")
    if not (safe.fullmatch(username) and safe.fullmatch(password)):
        with pytest.raises(ValueError, match=r"\Aproxy (username|password): [^\n]*\Z"):
            render_user_data(proxy)
        return
    script = render_user_data(proxy)
    assert f"\nBasicAuth {username} {password}\n" in script
    assert written_config(script) == render_tinyproxy_conf(proxy)


# --- what is rendered --------------------------------------------------------------------


def directives(conf: str) -> list[str]:
    return [line for line in conf.splitlines() if line and not line.startswith("#")]


BASE_DIRECTIVES = [
    "User tinyproxy",
    "Group tinyproxy",
    "Timeout 600",
    "MaxClients 100",
    'DefaultErrorFile "/usr/share/tinyproxy/default.html"',
    "Syslog On",
    "LogLevel Notice",
    'PidFile "/run/tinyproxy/tinyproxy.pid"',
    "DisableViaHeader Yes",
]


@pytest.mark.parametrize(
    ("proxy", "extra"),
    [
        (AUTHED, ["Port 8899", f"BasicAuth {USER} {PASSWORD}"]),
        (OPEN, ["Port 3128"]),
        (
            ProxySettings(port=1, username="a", password="b", allowed_ip="198.51.100.4"),
            ["Port 1", "BasicAuth a b", "Allow 198.51.100.4"],
        ),
        (
            ProxySettings(port=65535, username=None, password=None, allowed_ip="2001:db8::1"),
            ["Port 65535", "Allow 2001:db8::1"],
        ),
    ],
)
def test_config_has_exactly_the_expected_directives(proxy: ProxySettings, extra: list[str]) -> None:
    conf = render_tinyproxy_conf(proxy)
    assert sorted(directives(conf)) == sorted(BASE_DIRECTIVES + extra)
    # No Via header, no ConnectPort (= CONNECT to any port), no Listen (= every address).
    assert not re.search(r"^(ViaProxyName|ConnectPort|Listen|Deny|XTinyproxy)\b", conf, re.M)


def test_allowed_ip_is_rendered_in_canonical_form() -> None:
    proxy = ProxySettings(port=8899, username=None, password=None, allowed_ip="2001:DB8:0::1")
    assert "Allow 2001:db8::1" in directives(render_tinyproxy_conf(proxy))


SCRIPT_CASES = [
    AUTHED,
    OPEN,
    ProxySettings(port=80, username="u", password="p", allowed_ip="203.0.113.9"),
    ProxySettings(port=8899, username=None, password=None, allowed_ip="::1"),
    ProxySettings(port=8899, username="-", password="." * 128),
]


@pytest.mark.parametrize("proxy", SCRIPT_CASES, ids=repr)
def test_user_data_is_valid_bash(proxy: ProxySettings, tmp_path: Path) -> None:
    script = render_user_data(proxy)
    assert script.startswith("#!/bin/bash\n")
    assert "\nset -euo pipefail\n" in script
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("proxy", SCRIPT_CASES, ids=repr)
def test_bash_writes_the_config_verbatim(proxy: ProxySettings) -> None:
    assert written_config(render_user_data(proxy)) == render_tinyproxy_conf(proxy)


def test_user_data_installs_starts_and_opens_the_port() -> None:
    script = render_user_data(AUTHED)
    assert "install -y --no-install-recommends tinyproxy\n" in script
    assert f"mv -f {CONF_PATH}.new {CONF_PATH}\n" in script
    assert "systemctl enable tinyproxy\nsystemctl restart tinyproxy\n" in script
    assert "    ufw allow 8899/tcp\n" in script
    limited = render_user_data(
        ProxySettings(port=8899, username=USER, password=PASSWORD, allowed_ip="203.0.113.9")
    )
    assert "    ufw allow proto tcp from 203.0.113.9 to any port 8899\n" in limited


# --- the whole script, run with stand-ins for the system's commands ----------------------

# Each stand-in logs its argv; apt-get fails its first $APT_FAILURES calls (a busy mirror),
# ufw reports $UFW_STATUS, and sleep returns at once so the retry loops cost nothing.
STANDIN_COMMANDS = {
    "apt-get": """
n=$(cat "$LOG_DIR/apt-calls" 2>/dev/null || echo 0); echo $((n + 1)) > "$LOG_DIR/apt-calls"
echo "apt-get $*" >> "$LOG_DIR/log"
[ "$n" -ge "${APT_FAILURES:-0}" ]
""",
    "systemctl": 'echo "systemctl $*" >> "$LOG_DIR/log"',
    "chown": 'echo "chown $*" >> "$LOG_DIR/log"',
    "ufw": """
echo "ufw $*" >> "$LOG_DIR/log"
if [ "$1" = status ]; then echo "Status: $UFW_STATUS"; fi
""",
    "sleep": ":",
}


@dataclass
class ScriptRun:
    port: int
    returncode: int
    stderr: str
    commands: list[str]
    config: str
    mode: int


def run_user_data(
    proxy: ProxySettings,
    tmp_path: Path,
    *,
    ufw: str | None = None,
    apt_failures: int = 0,
    listening: bool = True,
) -> ScriptRun:
    """Run the rendered script for real, but against stand-in apt/systemctl/ufw and with the
    config directory moved under ``tmp_path``; the port check finds our loopback listener."""
    bindir, etc = tmp_path / "bin", tmp_path / "etc"
    bindir.mkdir(parents=True)
    etc.mkdir()
    commands = dict(STANDIN_COMMANDS)
    if ufw is None:
        del commands["ufw"]
    for name, body in commands.items():
        (bindir / name).write_text("#!/bin/bash\n" + body.lstrip())
        (bindir / name).chmod(0o755)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if listening:
            listener.listen()
        port = cast(int, listener.getsockname()[1])
        script = render_user_data(replace(proxy, port=port))
        assert "/etc/tinyproxy/" in script
        script = script.replace("/etc/tinyproxy/", f"{etc}/")
        result = subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            env={
                "PATH": f"{bindir}:/usr/bin:/bin",
                "LOG_DIR": str(tmp_path),
                "UFW_STATUS": ufw or "",
                "APT_FAILURES": str(apt_failures),
            },
        )
    conf = etc / "tinyproxy.conf"
    log = tmp_path / "log"
    return ScriptRun(
        port=port,
        returncode=result.returncode,
        stderr=result.stderr,
        commands=log.read_text().splitlines() if log.exists() else [],
        config=conf.read_text() if conf.exists() else "",
        mode=conf.stat().st_mode & 0o777 if conf.exists() else 0,
    )


APT = "apt-get -q -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confold"


def test_script_installs_configures_and_starts_tinyproxy(tmp_path: Path) -> None:
    run = run_user_data(AUTHED, tmp_path, apt_failures=2)
    assert run.returncode == 0, run.stderr
    # Two failed updates retried, then the install, the config, and the service.
    assert run.commands == [
        f"{APT} update",
        f"{APT} update",
        f"{APT} update",
        f"{APT} install -y --no-install-recommends tinyproxy",
        f"chown root:tinyproxy {tmp_path}/etc/tinyproxy.conf.new",
        "systemctl enable tinyproxy",
        "systemctl restart tinyproxy",
    ]
    assert run.config == render_tinyproxy_conf(replace(AUTHED, port=run.port))
    assert run.mode == 0o640  # it holds the password
    assert not (tmp_path / "etc" / "tinyproxy.conf.new").exists()


@pytest.mark.parametrize(
    ("allowed_ip", "rule"),
    [
        (None, "ufw allow {port}/tcp"),
        ("203.0.113.9", "ufw allow proto tcp from 203.0.113.9 to any port {port}"),
    ],
)
def test_script_opens_the_port_only_in_an_active_ufw(
    tmp_path: Path, allowed_ip: str | None, rule: str
) -> None:
    proxy = replace(AUTHED, allowed_ip=allowed_ip)
    active = run_user_data(proxy, tmp_path / "active", ufw="active")
    assert active.returncode == 0, active.stderr
    assert active.commands[-2:] == ["ufw status", rule.format(port=active.port)]
    inactive = run_user_data(proxy, tmp_path / "inactive", ufw="inactive")
    assert inactive.returncode == 0, inactive.stderr
    assert inactive.commands[-1] == "ufw status"
    absent = run_user_data(proxy, tmp_path / "absent")
    assert absent.returncode == 0, absent.stderr
    assert not any(command.startswith("ufw") for command in absent.commands)


def test_script_fails_when_apt_keeps_failing(tmp_path: Path) -> None:
    run = run_user_data(AUTHED, tmp_path, apt_failures=100)
    assert run.returncode != 0
    assert run.commands == [f"{APT} update"] * 5  # bounded retries, then set -e stops it
    assert run.config == ""


def test_script_fails_visibly_when_the_proxy_never_listens(tmp_path: Path) -> None:
    run = run_user_data(AUTHED, tmp_path, listening=False)
    assert run.returncode == 1
    assert "cloudproxy: tinyproxy is not listening on port" in run.stderr


# --- real tinyproxy ----------------------------------------------------------------------


def written_config(script: str) -> str:
    """What bash writes as the tinyproxy config: the script's own heredoc, run by bash."""
    match = re.search(
        rf"^cat > {re.escape(CONF_PATH)}\.new (<<'{CONF_DELIMITER}'\n.*?\n{CONF_DELIMITER}\n)",
        script,
        re.M | re.S,
    )
    assert match is not None, "no config heredoc in the user data"
    # Run just that heredoc through bash, with a hostile environment: a quoted heredoc must
    # not expand anything, so bash's output is the text as rendered.
    result = subprocess.run(
        ["bash", "-c", "cat " + match.group(1)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "x": "EXPANDED", "HOME": "EXPANDED"},
    )
    return result.stdout


@dataclass
class Origin:
    """A tiny HTTP origin on 127.0.0.1 that remembers the headers of every request."""

    server: ThreadingHTTPServer
    thread: threading.Thread
    seen: list[dict[str, str]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]


@pytest.fixture
def origin() -> Iterator[Origin]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            body = b"hello from the origin"
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Origin(server, thread, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def tinyproxy_bin() -> str:
    path = shutil.which("tinyproxy")
    if path is None:
        pytest.fail(
            "tinyproxy is not installed: scripts/check installs it "
            "(or run: apt-get install tinyproxy-bin)"
        )
    return path


def adjusted_for_test(conf: str, port: int, workdir: Path) -> str:
    """The deployed config with only what a test must change: port, address, user, files."""
    replaced: set[str] = set()

    def swap(line: str) -> list[str]:
        key = line.split(" ", 1)[0]
        if key == "Port":
            replaced.add(key)
            return [f"Port {port}", "Listen 127.0.0.1"]  # nothing but loopback, ever
        if key in ("User", "Group"):
            replaced.add(key)
            if os.geteuid() != 0:
                return []  # tinyproxy changes user only when started as root
            nobody = pwd.getpwnam("nobody")
            name = "nobody" if key == "User" else grp.getgrgid(nobody.pw_gid).gr_name
            return [f"{key} {name}"]
        if key == "PidFile":
            replaced.add(key)
            return [f'PidFile "{workdir / "tinyproxy.pid"}"']
        if key == "Syslog":
            replaced.add(key)
            return []  # without Syslog or LogFile, tinyproxy -d logs to stderr
        return [line]

    lines = [new for line in conf.splitlines() for new in swap(line)]
    assert replaced == {"Port", "User", "Group", "PidFile", "Syslog"}
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return cast(int, sock.getsockname()[1])


@contextmanager
def running_tinyproxy(binary: str, proxy: ProxySettings, workdir: Path) -> Iterator[int]:
    """tinyproxy with the config ``render_user_data(proxy)`` deploys; yields its port."""
    deployed = written_config(render_user_data(proxy))
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "tinyproxy.log"
    for _ in range(5):  # the free port may be taken by a parallel test before tinyproxy binds
        port = free_port()
        conf = workdir / "tinyproxy.conf"
        conf.write_text(adjusted_for_test(deployed, port, workdir))
        with log.open("wb") as out:
            process = subprocess.Popen(
                [binary, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            if wait_until_listening(process, port):
                yield port
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if "Could not create listening sockets" not in log.read_text(errors="replace"):
            break
    pytest.fail(f"tinyproxy did not start:\n{log.read_text(errors='replace')}")


def wait_until_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.01)  # polling a port that is not open yet: nothing to wait on
        else:
            return True
    return False


def auth_header(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Proxy-Authorization": f"Basic {token}"}


def get_via(port: int, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", url, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def connect_via(port: int, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """CONNECT ``target`` through the proxy; on 200, a GET through the tunnel."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall((head + "\r\n").encode())
        response = http.client.HTTPResponse(sock, method="CONNECT")
        response.begin()
        if response.status != HTTPStatus.OK:
            return response.status, b""
        assert response.reason == "Connection established"
        sock.sendall(
            f"GET /tunnel HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode()
        )
        inner = http.client.HTTPResponse(sock, method="GET")
        inner.begin()
        return inner.status, inner.read()


# tinyproxy 1.11.1 (Debian bookworm, Ubuntu 24.04) answers wrong credentials with 401;
# later versions answer 407, as they do for missing ones. Either way: refused.
REFUSED_WRONG = {HTTPStatus.UNAUTHORIZED, HTTPStatus.PROXY_AUTHENTICATION_REQUIRED}


def test_tinyproxy_serves_our_credentials_only(
    tinyproxy_bin: str, origin: Origin, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{origin.port}/hello"
    with running_tinyproxy(tinyproxy_bin, AUTHED, tmp_path) as port:
        assert get_via(port, url, auth_header(USER, PASSWORD)) == (200, b"hello from the origin")
        assert get_via(port, url, auth_header(USER, "wrong"))[0] in REFUSED_WRONG
        assert get_via(port, url, auth_header("bob", PASSWORD))[0] in REFUSED_WRONG
        assert get_via(port, url, {})[0] == HTTPStatus.PROXY_AUTHENTICATION_REQUIRED

        target = f"127.0.0.1:{origin.port}"
        assert connect_via(port, target, auth_header(USER, PASSWORD)) == (
            200,
            b"hello from the origin",
        )
        assert connect_via(port, target, {})[0] == HTTPStatus.PROXY_AUTHENTICATION_REQUIRED
        assert connect_via(port, target, auth_header(USER, "wrong"))[0] in REFUSED_WRONG

    # Only the two authenticated requests reached the origin, with no trace of the proxy.
    assert len(origin.seen) == 2
    for headers in origin.seen:
        assert "via" not in headers
        assert "proxy-authorization" not in headers
        assert "x-tinyproxy" not in headers


def test_http_prober_through_tinyproxy(tinyproxy_bin: str, tmp_path: Path) -> None:
    with running_tinyproxy(tinyproxy_bin, AUTHED, tmp_path) as port:
        target = [ProbeTarget(proxy_id="vm-1", host="127.0.0.1", port=port)]
        with HttpProber(username=USER, password=PASSWORD, timeout_s=5) as prober:
            result = prober.probe(target)["vm-1"]
            assert (result.ok, result.detail) == (True, "ok")
        with HttpProber(username=USER, password="wrong", timeout_s=5) as prober:
            result = prober.probe(target)["vm-1"]
            assert not result.ok
            assert result.detail in ("401 unauthorized", "407 proxy authentication required")
        with HttpProber(username=None, password=None, timeout_s=5) as prober:
            result = prober.probe(target)["vm-1"]
            assert (result.ok, result.detail) == (False, "407 proxy authentication required")


def test_longest_credentials_work_in_tinyproxy(
    tinyproxy_bin: str, origin: Origin, tmp_path: Path
) -> None:
    # 128 + 128 characters is exactly what fits tinyproxy's BasicAuth buffer.
    username, password = "U-" + "u" * 126, "P." + "p_" * 63
    proxy = ProxySettings(port=8899, username=username, password=password)
    url = f"http://127.0.0.1:{origin.port}/long"
    with running_tinyproxy(tinyproxy_bin, proxy, tmp_path) as port:
        assert get_via(port, url, auth_header(username, password))[0] == HTTPStatus.OK
        assert get_via(port, url, auth_header(username, password[:-1]))[0] in REFUSED_WRONG


def test_open_proxy_serves_anyone(tinyproxy_bin: str, origin: Origin, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{origin.port}/open"
    with running_tinyproxy(tinyproxy_bin, OPEN, tmp_path) as port:
        assert get_via(port, url, {})[0] == HTTPStatus.OK
        assert connect_via(port, f"127.0.0.1:{origin.port}", {})[0] == HTTPStatus.OK
        with HttpProber(username=None, password=None, timeout_s=5) as prober:
            assert prober.probe([ProbeTarget("vm-1", "127.0.0.1", port)])["vm-1"].ok
    assert all("via" not in headers for headers in origin.seen)


def test_allowed_ip_admits_only_that_address(
    tinyproxy_bin: str, origin: Origin, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{origin.port}/acl"
    creds = auth_header(USER, PASSWORD)
    ours = ProxySettings(port=8899, username=USER, password=PASSWORD, allowed_ip="127.0.0.1")
    with running_tinyproxy(tinyproxy_bin, ours, tmp_path / "ours") as port:
        assert get_via(port, url, creds)[0] == HTTPStatus.OK
        assert get_via(port, url, {})[0] == HTTPStatus.PROXY_AUTHENTICATION_REQUIRED
    # Another host's address is only written into the config; all traffic stays on loopback.
    theirs = ProxySettings(port=8899, username=USER, password=PASSWORD, allowed_ip="192.0.2.1")
    with running_tinyproxy(tinyproxy_bin, theirs, tmp_path / "theirs") as port:
        assert get_via(port, url, creds)[0] == HTTPStatus.FORBIDDEN
        assert connect_via(port, f"127.0.0.1:{origin.port}", creds)[0] == HTTPStatus.FORBIDDEN
        with HttpProber(username=USER, password=PASSWORD, timeout_s=5) as prober:
            result = prober.probe([ProbeTarget("vm-1", "127.0.0.1", port)])["vm-1"]
            assert (result.ok, result.detail) == (False, "403 forbidden")
    assert len(origin.seen) == 1


def processes_running(conf: Path) -> list[int]:
    """Live processes whose command line names ``conf`` (a zombie's is empty: it has exited)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue  # exited meanwhile
        if str(conf).encode() in argv.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def test_no_tinyproxy_outlives_its_test(tinyproxy_bin: str, tmp_path: Path) -> None:
    conf = tmp_path / "tinyproxy.conf"
    with running_tinyproxy(tinyproxy_bin, AUTHED, tmp_path) as port:
        assert len(processes_running(conf)) == 1
    assert processes_running(conf) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
