"""The `cloudproxy` command: the root Typer app, its global options, and errors → exit codes."""

import errno
import functools
import gc
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from cloudproxy_cli.cli import render
from cloudproxy_cli.cli.context import Options, error, path_option
from cloudproxy_cli.cli.exit_codes import EXIT_CODES_HELP, ExitCode
from cloudproxy_cli.cli.results import CommandResult
from cloudproxy_cli.core.errors import (
    CloudProxyError,
    ConfigError,
    LockHeldError,
    ProxyNotFoundError,
    UsageError,
)

_APP_SETTINGS: dict[str, Any] = {
    "name": "cloudproxy",
    "help": (
        "Keep a pool of HTTP proxies on cloud VMs (or on this machine with the local provider) "
        "and recycle them by age without the pool dropping below a safe minimum.\n\n"
        "Run [bold]cloudproxy reconcile[/bold] from cron every minute; read "
        "[bold]cloudproxy rolling status[/bold]; change knobs with "
        "[bold]cloudproxy rolling set[/bold].\n\n" + EXIT_CODES_HELP
    ),
    "epilog": (
        "Example: cloudproxy --config cloudproxy.toml.example reconcile\n\n"
        "The global options (--config, --state-file, -q, -v) may also follow the command: "
        "cloudproxy rolling status --config cloudproxy.toml. "
        "Shell completion: cloudproxy completion bash|zsh|fish|powershell."
    ),
    "add_completion": True,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": "rich",
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
# The commands, in --help order: name -> (module, attribute, a group of commands?). A run that
# names its command builds (and imports) that one only: Typer resolves every command's
# signature when it builds a tree, and the command modules import their own results.
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "reconcile": ("cloudproxy_cli.cli.reconcile", "reconcile", False),
    "rolling": ("cloudproxy_cli.cli.rolling", "rolling_app", True),
    "destroy": ("cloudproxy_cli.cli.proxies", "destroy", False),
    "proxies": ("cloudproxy_cli.cli.proxies", "proxies_app", True),
    "config": ("cloudproxy_cli.cli.config_cmd", "config_app", True),
    "completion": ("cloudproxy_cli.cli.completion", "completion", False),
}


def make_app(only: str | None = None) -> typer.Typer:
    """The root app with every command, or with ``only`` that one (same options, same help)."""
    new = typer.Typer(**_APP_SETTINGS)
    new.callback(invoke_without_command=True)(root)
    for name, (module, attribute, group) in COMMANDS.items():
        if only is not None and name != only:
            continue
        target = getattr(importlib.import_module(module), attribute)
        if group:
            new.add_typer(target, name=name)
        else:
            new.command(name)(target)
    return new


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version  # not at start-up: it scans installed packages

        typer.echo(f"cloudproxy {version('cloudproxy-cli')}")
        raise typer.Exit()


def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML config file. Default: $CLOUDPROXY_CONFIG, else ./cloudproxy.toml, "
            "else cloudproxy.toml in your user config directory.",
            parser=path_option,
            metavar="PATH",
        ),
    ] = None,
    state_file: Annotated[
        Path | None,
        typer.Option(
            "--state-file",
            help="State file. Default: $CLOUDPROXY_STATE_FILE, else state.json in your user "
            "state directory.",
            parser=path_option,
            metavar="PATH",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Log only warnings and errors; a run that changed nothing "
            "prints nothing (for cron).",
        ),
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    render.setup_logging(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    # run() hands its environment in as ctx.obj; the commands find it in the Options.
    environ = ctx.obj if isinstance(ctx.obj, Mapping) else os.environ
    ctx.obj = Options(config, state_file, environ, quiet=quiet and not verbose)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


# --- entry point -----------------------------------------------------------------------------


_error = error


# Most specific first: ProxyNotFoundError is a ProviderError, which is a plain failure.
_EXIT_CODES: tuple[tuple[type[CloudProxyError], ExitCode], ...] = (
    (UsageError, ExitCode.USAGE),
    (ProxyNotFoundError, ExitCode.USAGE),
    (ConfigError, ExitCode.CONFIG),
    (LockHeldError, ExitCode.LOCKED),
    (CloudProxyError, ExitCode.FAILURE),
)


def _usage_error(exc: TyperException) -> int:
    """Typer's (vendored click's) usage errors: bad option, bad value."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        # A bare group (`cloudproxy rolling`): its help, on stdout, exit 0, as git and kubectl
        # do. Typer's rich help printed itself while building this message (then empty).
        # Matched by name, as Typer itself does: the class is not public API.
        text = exc.format_message() if hasattr(exc, "format_message") else ""
        if text.strip():
            typer.echo(text)
        return ExitCode.OK
    ctx = getattr(exc, "ctx", None)
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    _error(message + hint)
    return int(getattr(exc, "exit_code", ExitCode.USAGE))


# Global options that may also follow the command: run() moves them before it.
_GLOBAL_FLAGS = frozenset({"-q", "--quiet", "-v", "--verbose"})
_GLOBAL_VALUED = frozenset({"--config", "--state-file"})


def _global_option_words(arg: str) -> int:
    """How many words the global option starting at ``arg`` takes; 0 if ``arg`` is not one."""
    if arg in _GLOBAL_FLAGS or (arg.split("=", 1)[0] in _GLOBAL_VALUED and "=" in arg):
        return 1
    return 2 if arg in _GLOBAL_VALUED else 0


def hoist_global_options(argv: list[str]) -> list[str]:
    """``rolling status --config X -q`` -> ``--config X -q rolling status`` (Typer accepts
    the root's options only before the command). Nothing after ``--`` moves."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        words = _global_option_words(arg)
        if words == 0:
            rest.append(arg)
            i += 1
            continue
        if i + words > len(argv):
            raise UsageError(f"option {arg} requires an argument")
        front += argv[i : i + words]
        i += words
    return front + rest


def requested_command(args: list[str]) -> str | None:
    """The command ``args`` name after the global options, if it is one of ``COMMANDS``;
    ``None`` for anything else (``--help``, ``-qv``, a typo, nothing): the whole tree then."""
    i = 0
    while i < len(args) and (words := _global_option_words(args[i])):
        i += words
    return args[i] if i < len(args) and args[i] in COMMANDS else None


@functools.cache
def _command(only: str | None) -> Callable[..., Any]:
    """A click command tree, built once per process and command: Typer would rebuild it on
    every ``app()`` call, which in-process callers such as the test suite would pay per run."""
    return typer.main.get_command(make_app(only))


def _invoke(argv: list[str] | None, environ: Mapping[str, str]) -> int:
    args = hoist_global_options(sys.argv[1:] if argv is None else list(argv))
    command = _command(requested_command(args))
    result = command(args=args, prog_name="cloudproxy", standalone_mode=False, obj=environ)
    if result == ExitCode.INTERRUPTED:
        raise KeyboardInterrupt  # Typer turns Ctrl-C into a silent Exit(130): say so
    if isinstance(result, CommandResult):
        return int(render.emit(result))
    # --help and the like: click returns their exit code.
    return result if isinstance(result, int) else ExitCode.OK


def run(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the CLI and return its exit code (``main`` exits with it).

    Settings are read from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    try:
        return _invoke(argv, env)
    except typer.Abort:
        _error("aborted")
        return ExitCode.FAILURE
    except TyperException as exc:
        return _usage_error(exc)
    except CloudProxyError as exc:
        _error(str(exc))
        return next(code for kind, code in _EXIT_CODES if isinstance(exc, kind))
    except KeyboardInterrupt:
        _disarm()
        _error("interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`) has all it wanted: not an error.
        _discard_stdout()
        return ExitCode.OK
    except SystemExit as exc:
        # Rich and Typer handle a closed pipe themselves (help text into `| head`): exit 1.
        if not _closed_pipe(exc):
            raise
        _discard_stdout()
        return ExitCode.OK
    except Exception as exc:  # a bug: say so in one line; CLOUDPROXY_DEBUG=1 shows the traceback
        if env.get("CLOUDPROXY_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set CLOUDPROXY_DEBUG=1 for details)")
        return ExitCode.FAILURE


# --- the process: Ctrl-C and closed pipes ----------------------------------------------------

_INTERRUPT_GRACE_S = 1.0
_interrupted = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    """Unwind as usual (the lock is released, actions taken are recorded); if unwinding hangs,
    e.g. waiting for probe threads stuck in a long timeout, leave anyway after a second. Only
    reads happen while probing, and every save is an atomic rename: nothing is half-written."""
    if _interrupted.is_set():
        return  # a second Ctrl-C: the first is already on its way out
    _interrupted.set()
    signal.signal(signal.SIGALRM, _leave_now)
    signal.setitimer(signal.ITIMER_REAL, _INTERRUPT_GRACE_S)
    raise KeyboardInterrupt


def _leave_now(signum: int, frame: FrameType | None) -> None:
    _error("interrupted")
    os._exit(ExitCode.INTERRUPTED)


def _disarm() -> None:
    if _interrupted.is_set():
        signal.setitimer(signal.ITIMER_REAL, 0)


def _closed_pipe(exc: SystemExit) -> bool:
    """Whether ``exc`` is Rich's or Typer's exit on a closed pipe: raised while handling EPIPE.
    Typer wraps the streams in click's ``PacifyFlushWrapper`` first: the real ones go back."""
    cause = exc.__context__
    if not (isinstance(cause, OSError) and cause.errno == errno.EPIPE):
        return False
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if hasattr(stream, "wrapped"):
            setattr(sys, name, stream.wrapped)
    return True


def _discard_stdout() -> None:
    """Point a real process's stdout at /dev/null, so that the final flush cannot fail again."""
    if sys.stdout is not sys.__stdout__ or sys.__stdout__ is None:
        return  # in-process (tests): the stream is not ours to replace
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno())
    os.close(devnull)


def main() -> None:
    signal.signal(signal.SIGINT, _on_sigint)
    code = run(sys.argv[1:])
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
    if code == ExitCode.INTERRUPTED:
        sys.stderr.flush()
        os._exit(code)  # no waiting at exit for threads that are still stuck
    # The interpreter's exit runs full garbage collections over every object the imports
    # made (about 100,000: Typer, Rich, the core), a sixth of `rolling status`'s time: none
    # of them needs collecting at exit. Frozen objects are skipped; atexit handlers, the
    # flushing of stdout and stderr, and everything else at exit still happen.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    main()
