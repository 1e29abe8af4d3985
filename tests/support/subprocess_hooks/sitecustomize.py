"""Startup hooks for every Python subprocess the tests start (this directory is on PYTHONPATH)."""

import importlib.util
import os
import sys
from pathlib import Path

_GUARD_FILE = Path(__file__).resolve().parent.parent / "loopback_guard.py"

if os.environ.get("CLOUDPROXY_TEST_LOOPBACK_GUARD_DIR"):
    # Loaded by path: the subprocess need not have the repository on sys.path.
    _spec = importlib.util.spec_from_file_location("_cloudproxy_loopback_guard", _GUARD_FILE)
    if _spec is not None and _spec.loader is not None:
        _guard = importlib.util.module_from_spec(_spec)
        sys.modules[_spec.name] = _guard
        _spec.loader.exec_module(_guard)
        _guard.install()

# scripts/check sets COVERAGE_PROCESS_START, so coverage's own .pth file has already started
# measuring this process. The local proxy processes end by os._exit and never save data:
# tracing proxy.py's event loop there would only cost CPU, so it stops. Every other process
# gets a context naming its program ("cloudproxy", "-c" for xdist workers), so that
# `coverage report --contexts=...` can tell what only the subprocesses covered.
if os.environ.get("COVERAGE_PROCESS_START"):
    import coverage

    _cov = coverage.Coverage.current()
    if _cov is not None and any(arg.endswith("adapters.local_proxy") for arg in sys.orig_argv):
        _cov.stop()
    elif _cov is not None and len(sys.orig_argv) > 1:
        _cov.switch_context(f"process:{Path(sys.orig_argv[1]).name}")
