"""The local provider: each proxy is a detached proxy.py process on 127.0.0.1 with its own port."""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloudproxy_cli.adapters.local_proxy import MODULE, PASSWORD_ENV, USERNAME_ENV
from cloudproxy_cli.core.errors import ProviderError
from cloudproxy_cli.core.model import Proxy

HOST = "127.0.0.1"
_ID_RE = re.compile(r"local-[0-9a-f]{8}")
# How long a stopping proxy gets to exit after SIGTERM, then after SIGKILL.
_TERM_WAIT_S = 3.0
_KILL_WAIT_S = 2.0

# Popen handles of the proxies this process started, by pid: whichever LocalProvider deletes
# a proxy can then reap it (no zombie left behind), and Popen never warns that it still runs.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One inventory file: a proxy process and what identifies it beyond its pid."""

    id: str
    port: int
    pid: int
    created_at: datetime
    start_time: int  # field 22 of /proc/<pid>/stat: tells our process from a reuse of its pid


class LocalProvider:
    """Runs each proxy as a proxy.py process with basic auth; implements ``Provider``.

    The processes are detached so they outlive the command that created them; the inventory is
    one JSON file per proxy in ``directory``, which belongs to this provider instance alone.
    A proxy whose process died is still listed: it is a broken proxy, its health check fails
    and the engine replaces it.
    """

    def __init__(
        self,
        *,
        instance: str,
        directory: Path,
        username: str | None,
        password: str | None,
        boot_delay_s: float = 0.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together")
        if boot_delay_s < 0:
            raise ValueError("boot_delay_s must not be negative")
        self._instance = instance
        # Absolute: the child runs in this directory and is told its path.
        self._dir = directory.absolute()
        self._username = username
        self._password = password
        self._boot_delay_s = boot_delay_s
        self._clock = clock
        # The directory is made by the first create_proxy: listing (`proxies`, a dry run) must
        # leave the disk as it found it, and a missing directory simply holds no proxies.

    def list_proxies(self) -> list[Proxy]:
        entries = []
        for path in self._inventory_files():
            try:
                entries.append(self._read(path))
            except FileNotFoundError:
                continue  # deleted since the directory was listed
        entries.sort(key=lambda e: (e.created_at, e.id))
        return [Proxy(e.id, e.created_at, ip=HOST, port=e.port) for e in entries]

    def create_proxy(self) -> Proxy:
        created_at = self._clock()
        if created_at.tzinfo is None:
            raise ValueError("clock must return an aware datetime")
        created_at = created_at.astimezone(UTC)
        self._make_dir()
        proxy_id = self._new_id()
        # The port is bound here and handed to the child, which holds it (bound, not listening,
        # so connections are refused) through the boot delay: nobody else can take it meanwhile.
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            reserved.bind((HOST, 0))
            port: int = reserved.getsockname()[1]
            proc = self._spawn(proxy_id, port, reserved.fileno())
        except OSError as err:
            raise ProviderError(f"local/{self._instance}: cannot start a proxy: {err}") from err
        finally:
            reserved.close()
        try:
            with _children_lock:
                _children[proc.pid] = proc
            # Read before anything can reap the child, so the pid is still this process's.
            start_time = _start_time(proc.pid)
            if start_time is None:
                raise OSError(f"/proc/{proc.pid}/stat is unreadable")
            self._write(_Entry(proxy_id, port, proc.pid, created_at, start_time))
        except BaseException as err:
            # Not in the inventory, so nothing would ever stop it (it would stop by itself after
            # a grace period: see local_proxy). Interrupted or failed, stop it now.
            proc.kill()
            proc.wait()
            _reap(proc.pid)
            (self._dir / f"{proxy_id}.log").unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise ProviderError(
                    f"local/{self._instance}: cannot record {proxy_id}: {err}"
                ) from err
            raise
        return Proxy(proxy_id, created_at, ip=HOST, port=port)

    def delete_proxy(self, proxy_id: str) -> None:
        if not _ID_RE.fullmatch(proxy_id):
            return  # not a local id, so never one of ours: already gone
        path = self._dir / f"{proxy_id}.json"
        try:
            entry = self._read(path)
        except FileNotFoundError:
            return
        self._stop(entry)
        path.unlink(missing_ok=True)
        (self._dir / f"{proxy_id}.log").unlink(missing_ok=True)

    def ensure_firewall(self, known_id: str | None) -> str | None:
        """Nothing to do: the proxies listen on 127.0.0.1 only."""
        return None

    def _spawn(self, proxy_id: str, port: int, reserved_fd: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.pop(USERNAME_ENV, None)
        env.pop(PASSWORD_ENV, None)
        if self._username is not None and self._password is not None:
            env[USERNAME_ENV] = self._username
            env[PASSWORD_ENV] = self._password
        argv = [
            sys.executable,
            "-m",
            MODULE,
            "--id",
            proxy_id,
            "--state-dir",
            str(self._dir),
            "--port",
            str(port),
            "--boot-delay",
            repr(self._boot_delay_s),
            "--reserved-fd",
            str(reserved_fd),
        ]
        log_fd = os.open(
            self._dir / f"{proxy_id}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_fd,
                close_fds=True,
                pass_fds=(reserved_fd,),
                start_new_session=True,  # no terminal signal or cron session end reaches it
                cwd=self._dir,
                env=env,
            )
        finally:
            os.close(log_fd)

    def _stop(self, entry: _Entry) -> None:
        """Stop the entry's process if, and only if, it is still the one we started."""
        try:
            # The pidfd pins one process: what we check below is what we signal.
            pidfd = os.pidfd_open(entry.pid)
        except ProcessLookupError:
            _reap(entry.pid)
            return
        except OSError as err:
            raise ProviderError(f"local/{self._instance}: cannot stop {entry.id}: {err}") from err
        try:
            if not _is_ours(entry):
                return
            for signum, wait_s in ((signal.SIGTERM, _TERM_WAIT_S), (signal.SIGKILL, _KILL_WAIT_S)):
                try:
                    signal.pidfd_send_signal(pidfd, signum)
                except ProcessLookupError:
                    break  # exited between the check and the signal
                if _exited(pidfd, wait_s):
                    break
            else:
                raise ProviderError(
                    f"local/{self._instance}: {entry.id} (pid {entry.pid}) survived SIGKILL"
                )
        finally:
            os.close(pidfd)
            _reap(entry.pid)

    def _make_dir(self) -> None:
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir.chmod(0o700)  # mkdir leaves an existing directory's mode alone
        except OSError as err:
            raise ProviderError(
                f"local/{self._instance}: cannot create {self._dir}: {err}"
            ) from err

    def _new_id(self) -> str:
        while True:
            proxy_id = f"local-{secrets.token_hex(4)}"
            if not (self._dir / f"{proxy_id}.json").exists():
                return proxy_id

    def _inventory_files(self) -> list[Path]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []  # no proxy created yet
        except OSError as err:
            raise ProviderError(f"local/{self._instance}: cannot list {self._dir}: {err}") from err
        return [self._dir / n for n in sorted(names) if n.endswith(".json") and n[0] != "."]

    def _read(self, path: Path) -> _Entry:
        """The entry in ``path``; ``FileNotFoundError`` if gone, ``ProviderError`` if corrupt."""
        try:
            data = json.loads(_read_regular_file(path))
            entry = _parse_entry(data)
        except FileNotFoundError:
            raise
        # OverflowError: a created_at near year 1 or 9999 that does not exist in UTC.
        except (OSError, ValueError, KeyError, TypeError, OverflowError) as err:
            raise ProviderError(
                f"local/{self._instance}: corrupt inventory file {path}: {err}"
            ) from err
        if f"{entry.id}.json" != path.name:
            raise ProviderError(
                f"local/{self._instance}: inventory file {path} holds proxy {entry.id}"
            )
        return entry

    def _write(self, entry: _Entry) -> None:
        """Write the entry atomically: a reader sees the old file or the new one, never half."""
        data = {
            "id": entry.id,
            "port": entry.port,
            "pid": entry.pid,
            "created_at": entry.created_at.isoformat(),
            "start_time": entry.start_time,
        }
        path = self._dir / f"{entry.id}.json"
        tmp = self._dir / f".{entry.id}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, refusing anything but a regular file.

    A FIFO would block a plain read forever (reconcile would hang every cron run), so the file
    is opened non-blocking and checked before it is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _parse_entry(data: Any) -> _Entry:
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    proxy_id, port, pid, start_time = data["id"], data["port"], data["pid"], data["start_time"]
    if not isinstance(proxy_id, str) or not _ID_RE.fullmatch(proxy_id):
        raise ValueError(f"bad id {proxy_id!r}")
    for name, value, low, high in (
        ("port", port, 1, 65535),
        ("pid", pid, 1, 2**31 - 1),  # pid_t: a larger one overflows os.pidfd_open
        ("start_time", start_time, 0, 2**63),
    ):
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"bad {name} {value!r}")
    created_at = datetime.fromisoformat(data["created_at"])
    if created_at.tzinfo is None:
        raise ValueError("created_at has no time zone")
    return _Entry(proxy_id, port, pid, created_at.astimezone(UTC), start_time)


def _start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _is_ours(entry: _Entry) -> bool:
    """Whether ``entry.pid`` is still the local proxy process we started for this entry.

    A zombie fails the check (its cmdline is empty): it has exited, there is nothing to stop.
    """
    if _start_time(entry.pid) != entry.start_time:
        return False
    try:
        argv = Path(f"/proc/{entry.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return (
        MODULE in argv
        and _arg(argv, "--id") == entry.id
        and _arg(argv, "--port") == str(entry.port)
    )


def _arg(argv: list[str], flag: str) -> str | None:
    try:
        return argv[argv.index(flag) + 1]
    except (ValueError, IndexError):
        return None


def _exited(pidfd: int, timeout_s: float) -> bool:
    """Wait until the process exits (its pidfd turns readable), at most ``timeout_s``."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))


def _reap(pid: int) -> None:
    """Collect the exit status of a proxy this process started, once it has exited."""
    with _children_lock:
        proc = _children.get(pid)
        if proc is not None and proc.poll() is not None:
            del _children[pid]
