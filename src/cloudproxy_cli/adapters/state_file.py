"""The state file on disk: atomic JSON writes, under a non-blocking lock on a separate lock file."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import platformdirs

from cloudproxy_cli.core.errors import LockHeldError, StateError
from cloudproxy_cli.core.state import State, StateFormatError, decode_state, encode_state

APP_NAME = "cloudproxy"
STATE_FILE_ENV = "CLOUDPROXY_STATE_FILE"
STATE_FILE_NAME = "state.json"

# Reasons quoted in warnings come from parser messages that may repr() large values.
_MAX_REASON = 200


def default_state_path() -> Path:
    """``<user state dir>/state.json``, e.g. ``~/.local/state/cloudproxy/state.json`` on Linux."""
    return Path(platformdirs.user_state_dir(APP_NAME)) / STATE_FILE_NAME


def resolve_state_path(cli_value: Path | None, environ: Mapping[str, str]) -> Path:
    """``--state-file``, else ``$CLOUDPROXY_STATE_FILE`` (an empty value counts as unset), else
    the platform default. ``~`` is expanded in the first two."""
    return _resolve(cli_value, environ)[0]


def _resolve(cli_value: Path | None, environ: Mapping[str, str]) -> tuple[Path, str]:
    if cli_value is not None:
        return cli_value.expanduser(), "--state-file"
    from_env = environ.get(STATE_FILE_ENV, "").strip()
    if from_env:
        return Path(from_env).expanduser(), f"env {STATE_FILE_ENV}"
    return default_state_path(), "default"


class LoadResult(NamedTuple):
    """What ``StateFile.load`` found. ``corrupt`` is true when the file could not be decoded:
    ``state`` is then a fresh ``State()``, the file is left in place and ``warning`` says so
    (``recover()``, under the lock, moves it aside)."""

    state: State
    warning: str | None = None
    corrupt: bool = False


class _Read(NamedTuple):
    state: State
    corrupt_reason: str | None = None


class StateFile:
    """The state file at ``path`` and its lock file ``<path>.lock`` beside it.

    Writers (``rolling set``, ``reconcile``) hold ``lock()`` around ``recover()``, load and save,
    or use ``update``. Readers may ``load()`` without the lock: every save is an atomic rename, so
    a reader sees either the old or the new file, never a torn one; ``load()`` never writes.

    ``lock()`` is re-entrant within one ``StateFile`` object, but two objects (or two processes)
    exclude each other. Not thread-safe: one object per thread.
    """

    def __init__(self, path: Path, *, source: str = "given") -> None:
        self._path = path
        self._source = source
        self._lock_fd: int | None = None

    @classmethod
    def resolve(cls, cli_value: Path | None, environ: Mapping[str, str]) -> StateFile:
        """The state file that ``resolve_state_path`` names, remembering where the name came
        from (``--state-file``, ``env CLOUDPROXY_STATE_FILE`` or ``default``)."""
        path, source = _resolve(cli_value, environ)
        return cls(path, source=source)

    @property
    def source(self) -> str:
        return self._source

    @property
    def path(self) -> Path:
        return self._path

    @property
    def lock_path(self) -> Path:
        return self._path.with_name(self._path.name + ".lock")

    def __repr__(self) -> str:
        return f"StateFile({str(self._path)!r})"

    # --- locking ------------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the exclusive lock. Raises ``LockHeldError`` at once if another run holds it."""
        if self._lock_fd is not None:
            yield
            return
        fd = self._acquire()
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            self._release(fd)

    def _acquire(self) -> int:
        self._ensure_dir()
        lock_path = self.lock_path
        # The lock lives on a separate file because save() replaces the state file's inode:
        # a lock on the state file itself would be lost by the first save. The lock file is
        # never deleted, since unlinking a flock file lets two processes lock different inodes.
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open the lock file {lock_path}: {_why(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder is not None else ""
            raise LockHeldError(
                f"another cloudproxy run holds the lock on {self._path}{who}; try again later"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StateError(f"cannot lock {lock_path}: {_why(exc)}") from exc
        _write_pid(fd)
        self._remove_orphan_temps()
        return fd

    @staticmethod
    def _release(fd: int) -> None:
        try:
            with suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- reading ------------------------------------------------------------------------------

    def load(self) -> LoadResult:
        """Read the state; never writes. Missing file: fresh ``State()``. Corrupt file: fresh
        ``State()``, ``corrupt`` and a warning; the file stays. Unreadable file: ``StateError``."""
        read = self._read()
        if read.corrupt_reason is None:
            return LoadResult(read.state)
        return LoadResult(
            State(),
            f"the state file {self._path} is corrupt ({read.corrupt_reason}); left in place"
            " until a reconcile moves it aside; using an empty state",
            corrupt=True,
        )

    def recover(self) -> str | None:
        """Move a corrupt state file aside, under the lock; return the warning saying so, or
        ``None`` when the file is missing or sound. Raises ``LockHeldError`` like ``lock()``."""
        # Moving aside is a write, so it needs the lock: otherwise a lock-less reader could
        # rename away a good file that a writer put in place after its read. Re-read under it.
        with self.lock():
            read = self._read()
            return None if read.corrupt_reason is None else self._set_aside(read.corrupt_reason)

    def _read(self) -> _Read:
        try:
            raw = _read_regular_file(self._path)
        except FileNotFoundError:
            return _Read(State())
        except OSError as exc:
            raise StateError(f"cannot read the state file {self._path}: {_why(exc)}") from exc
        try:
            return _Read(decode_state(json.loads(raw)))
        # ValueError covers bad JSON, bad UTF-8 and StateFormatError; absurdly deep nesting
        # makes the JSON parser raise RecursionError.
        except (ValueError, RecursionError) as exc:
            return _Read(State(), _reason(exc))

    def _set_aside(self, reason: str) -> str:
        """Rename the corrupt file out of the way (lock held) and return the warning."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        base = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        dest = base
        n = 0
        # Never overwrite an earlier corrupt copy (two recoveries in one second). Under the
        # lock, so no other cooperating process is racing for the name.
        while dest.exists():
            n += 1
            dest = base.with_name(f"{base.name}-{n}")
        try:
            os.rename(self._path, dest)
            _fsync_dir(self._path.parent)
        except OSError as exc:
            raise StateError(
                f"the state file {self._path} is corrupt ({reason}) and cannot be moved aside:"
                f" {_why(exc)}"
            ) from exc
        return (
            f"the state file {self._path} was corrupt ({reason}); moved it to {dest}"
            " and started with an empty state"
        )

    # --- writing ------------------------------------------------------------------------------

    def save(self, state: State) -> None:
        """Write ``state`` atomically (temp file, fsync, rename, fsync dir); mode 0600."""
        document = encode_state(state)
        # Through a symlink, replace its target, not the link (which would silently stop
        # pointing where the user put it).
        target = Path(os.path.realpath(self._path))
        directory = target.parent
        tmp: str | None = None
        try:
            self._ensure_dir()
            # mkstemp creates the file 0600 itself, so it is never readable by others, not even
            # briefly. The pid in the name lets a later run tell an orphan (writer killed
            # mid-write) from a file that a live process is still writing.
            fd, tmp = tempfile.mkstemp(
                prefix=f"{self._temp_prefix()}{os.getpid()}.", suffix=".tmp", dir=directory
            )
            # One compact string: only json.dumps without indent uses the C encoder (json.dump
            # and any indent run the pure-Python one, ~6x slower on a large state); the text is
            # smaller than the document it is made from. `jq .` shows it indented.
            text = json.dumps(document, separators=(",", ":"))
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(directory)
        except OSError as exc:
            raise StateError(f"cannot write the state file {self._path}: {_why(exc)}") from exc
        finally:
            if tmp is not None:
                with suppress(OSError):
                    os.unlink(tmp)

    def update(
        self, fn: Callable[[State], State], *, on_warning: Callable[[str], None] | None = None
    ) -> State:
        """Lock, load, apply ``fn``, save, and return the new state.

        If ``fn`` raises, nothing on disk changes (not even a corrupt file is moved aside) and
        the exception propagates. ``on_warning`` receives the recovery warning, if any.
        """
        with self.lock():
            read = self._read()
            new = fn(read.state)
            if read.corrupt_reason is not None:
                warning = self._set_aside(read.corrupt_reason)
                if on_warning is not None:
                    on_warning(warning)
            self.save(new)
            return new

    # --- helpers ------------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot create the directory {self._path.parent}: {_why(exc)}"
            ) from exc

    def _temp_prefix(self) -> str:
        return f".{self._path.name}."

    def _remove_orphan_temps(self) -> None:
        """Delete temp files left by writers that were killed mid-save (best effort)."""
        prefix = self._temp_prefix()
        pattern = os.path.join(glob.escape(str(self._path.parent)), glob.escape(prefix) + "*.tmp")
        for name in glob.glob(pattern):
            pid_text = os.path.basename(name)[len(prefix) :].split(".", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                with suppress(OSError):
                    os.unlink(name)


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, which must be a regular file (following symlinks).

    Opened non-blocking and checked before reading: a FIFO (or a device) in the state file's
    place would otherwise block every cron run forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems cannot fsync a directory; the rename itself has still happened.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _write_pid(fd: int) -> None:
    # Write then truncate (not the reverse) so a contender rarely reads an empty file.
    data = f"{os.getpid()}\n".encode("ascii")
    with suppress(OSError):
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, but belongs to someone else
    except (OverflowError, ValueError):
        return True  # not a pid we wrote: leave the file alone
    return True


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StateFormatError):
        text = str(exc)
    elif isinstance(exc, RecursionError):
        text = "nested too deeply"
    elif isinstance(exc, UnicodeDecodeError):
        text = "not UTF-8"
    else:
        text = f"invalid JSON: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"
