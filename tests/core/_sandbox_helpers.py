"""Shared helpers of the sandbox tests (test_sandbox.py, test_sandbox_hostile.py): what this machine
isolates, a runner for dedented programs, and checks that a run was contained and left nothing behind."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from refinery.core.sandbox import SandboxResult, run_program, sandbox_info

INFO = sandbox_info()
# CI (.ci/run) runs as root and sets this: there every layer must be there, so a test that would skip
# for a missing layer runs and fails instead of hiding a regression behind a skip.
REQUIRE_ISOLATION = os.environ.get("REFINERY_REQUIRE_ISOLATION") == "1"


def _needs(layer: str, reason: str):
    return pytest.mark.skipif(not (INFO[layer] or REQUIRE_ISOLATION), reason=reason)


needs_drop = _needs("drop_privileges", "needs root to drop to nobody")
needs_ns = _needs("namespaces", "needs unshare (net/pid namespaces)")
needs_fs = _needs("mount_namespace", "needs a mount namespace (private root)")


def run(code: str, **kw) -> SandboxResult:
    return run_program(textwrap.dedent(code), **kw)


def processes_with(token: str) -> list[int]:
    """Host PIDs whose command line contains ``token`` (hostile programs exec ``sleep <token>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


def contained(r: SandboxResult, *statuses: str) -> None:
    """Not passed, stopped by a limit or isolation (never by an ImportError), with one of ``statuses``."""
    assert not r.passed, r
    assert "ImportError" not in r.stderr and "ModuleNotFoundError" not in r.stderr, r.stderr
    if statuses:
        assert r.status in statuses, r
