"""Run untrusted Python programs (model-written code + hidden tests) in an isolated subprocess.

Each program runs as ``python -I`` in its own session, in a fresh working directory that is
removed afterwards, with a wall-clock timeout after which the whole namespace (or process group)
is SIGKILLed. Layers, strongest first (``sandbox_info()`` says which ones this machine gives):

1. Linux namespaces through ``unshare --mount --net --pid --fork --kill-child`` (as root; else in
   an unprivileged user namespace, ``--user --map-root-user``, when the kernel allows it):
   - mount: the program sees a private root built on a tmpfs (``core.sandbox_bootstrap``): the
     system directories, a few ``/etc`` files and the interpreter's own prefixes bound read-only
     at their usual paths (so the whole stdlib imports wherever Python lives, even under a 0700
     home), its working directory ``/sandbox`` and a private ``/tmp``, both size-capped tmpfs
     that vanish with the namespace (so no program fills the host's disk), a fresh ``/proc`` and
     a minimal ``/dev``. Nothing else of the host (home directories, the repository, the shared
     ``/tmp``) exists for it.
   - net: no interfaces but a down loopback.
   - pid: our bootstrap is PID 1, so every descendant (even one that called ``setsid`` or
     double-forked) dies with it, and no process outside can be seen or signalled.
2. As root, the program runs as ``nobody`` (uid/gid 65534, no groups, no_new_privs); in a user
   namespace it keeps uid 0 there but loses every capability. Then ``RLIMIT_NPROC`` is enforced
   and the read-only binds cannot be remounted.
3. Resource limits set by the bootstrap with ``resource.setrlimit`` before the program runs:
   CPU seconds, address space, processes/threads, file size (a flood of stdout, which goes to a
   file, is cut), open files, no core dumps. (They are set in the child's first trusted code
   rather than in ``preexec_fn``, which is unsafe in a threaded parent.)
4. A Python audit hook (``guard=True``) refuses sockets, ctypes calls and memory access, ``gc``
   object walks, tracing, ``os.symlink``/``os.link`` and opening ``/proc``.

Without the mount namespace (no ``unshare``, no privileges) the harness falls back to the old
layout: the working directory under the host's temp dir and, as root, ``PRELOAD`` imported before
the drop to ``nobody`` (whose other imports may then fail when the interpreter is unreadable).

Pass criterion and threat model. A program passes only if its last statement was reached: the
bootstrap reads a random nonce from stdin (then points fd 0 at /dev/null), runs the program with
``exec`` and, only if that returns, raises an audit event on which a marker hook writes the nonce
to a pipe whose read end only the harness holds; passed = (pipe content == nonce) and exit status
0 and no timeout. So ``exit(0)``, ``os._exit(0)``, ``raise SystemExit``, re-exec'ing the
interpreter, killing itself, patching ``builtins``/``AssertionError``/``os.write``/``sys.audit``,
raising the event itself or writing junk to the marker fd all give a fail, never a pass. The nonce
is in no frame and no reachable object, only in the constants of the marker hook's code, which the
guard keeps out of reach (``core.sandbox_bootstrap`` explains why frame introspection can then
stay allowed, as ``namedtuple`` needs). Limits: CPython audit hooks are not a security boundary,
and with ``guard=False`` the marker is protected by nothing but obscurity; code that games the
*tests* (an ``__eq__`` that is always True) passes, as it would anywhere. Without namespaces only
layers 3-4 remain: the program can then delete the user's files and signal the harness, so do not
evaluate untrusted code that way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

from refinery.core.sandbox_bootstrap import BOOTSTRAP

log = logging.getLogger(__name__)

NOBODY = 65534
# Fallback only (no mount namespace, running as root): imported before dropping privileges, since
# the interpreter may then be unreadable for ``nobody``. Everything HumanEval/MBPP solutions import,
# plus the stdlib modules small generated programs are likely to use.
PRELOAD = (
    "math", "cmath", "re", "heapq", "bisect", "collections", "collections.abc", "itertools",
    "functools", "operator", "array", "copy", "datetime", "typing", "string", "random",
    "statistics", "fractions", "decimal", "hashlib", "json", "sys", "numbers", "textwrap",
    "unicodedata", "struct", "enum", "dataclasses", "contextlib", "traceback", "linecache",
)
# The working directory's path inside the private root (see core.sandbox_bootstrap).
INSIDE_WORKDIR = "/sandbox"
_NS_FLAGS = ("--net", "--pid", "--fork", "--kill-child")

_BLOCKED_EVENTS = (
    "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.symlink", "os.link",
)
_BLOCKED_PREFIXES = ("ctypes.", "socket.")
_ALLOWED_EVENTS = ("ctypes.dlopen",)  # `import ctypes` loads libraries; calls and memory access stay refused


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program.

    status: "passed" | "failed" (raised / non-zero exit) | "early_exit" (exit 0 before the end)
    | "timeout" (wall clock or CPU limit) | "killed" (other signal, e.g. SIGXFSZ) | "error"
    (the harness could not run it).
    """

    passed: bool
    status: str
    stdout: str
    stderr: str
    returncode: Optional[int]
    duration: float


@dataclass(frozen=True)
class _Isolation:
    """How programs are wrapped on this machine: the ``unshare`` prefix and what the bootstrap does."""

    prefix: tuple[str, ...] = ()
    private_root: bool = False  # mount namespace with the tmpfs root of core.sandbox_bootstrap
    drop: bool = False  # run as nobody (harness is root)
    user_ns: bool = False  # unprivileged user namespace: capabilities dropped instead of the uid


_PROBE_PLAIN = "pass\n"
_PROBE = "import shutil, tempfile, os\nassert os.getcwd() == %r\n" % INSIDE_WORKDIR
_isolation_lock = threading.Lock()


def _candidates(root: bool) -> list[_Isolation]:
    if not shutil.which("unshare"):
        return []
    if root:
        return [_Isolation(("unshare", "--mount", *_NS_FLAGS), True, True),
                _Isolation(("unshare", *_NS_FLAGS), False, True)]
    userns = ("unshare", "--user", "--map-root-user")
    return [_Isolation((*userns, "--mount", *_NS_FLAGS), True, False, True),
            _Isolation((*userns, *_NS_FLAGS), False, False, True)]


@lru_cache(maxsize=None)
def _isolation_cached() -> _Isolation:
    root = os.geteuid() == 0
    for iso in _candidates(root):
        probe = _PROBE_PLAIN if not iso.private_root else _PROBE
        r = _run(probe, iso, timeout=30, memory_mb=None, max_procs=64, max_file_mb=16, max_output=4096,
                 guard=True, python=None)
        if r.passed:
            return iso
        why = (r.stderr.strip().splitlines() or [r.status])[-1]
        log.warning("sandbox: %s unavailable (%s); trying a weaker isolation", " ".join(iso.prefix), why[:200])
    log.warning("sandbox: no namespaces available; programs can reach the network, other processes and "
                "every file the user can")
    return _Isolation(drop=root)


def _isolation() -> _Isolation:
    """The strongest isolation this machine supports (probed once by running a program through it)."""
    with _isolation_lock:
        return _isolation_cached()


def sandbox_info() -> dict:
    """Which isolation layers are active on this machine.

    Keys: backend ("unshare" | "none"), prefix (the command prefix), namespaces (net + pid),
    mount_namespace (private root, private /tmp), user_namespace, drop_privileges (runs as nobody),
    capabilities_dropped, rlimits, audit_hook (available; used unless ``guard=False``).
    """
    iso = _isolation()
    return {
        "backend": "unshare" if iso.prefix else "none", "prefix": " ".join(iso.prefix),
        "namespaces": bool(iso.prefix), "mount_namespace": iso.private_root, "network_namespace": bool(iso.prefix),
        "pid_namespace": bool(iso.prefix), "user_namespace": iso.user_ns, "drop_privileges": iso.drop,
        "capabilities_dropped": iso.drop or (iso.user_ns and iso.private_root), "rlimits": True, "audit_hook": True,
    }


def _limits(timeout: float, memory_mb: Optional[int], max_procs: int, max_file_mb: int) -> dict:
    limits = {
        "RLIMIT_CPU": int(math.ceil(timeout)) + 1,
        "RLIMIT_NPROC": max_procs,
        "RLIMIT_FSIZE": max_file_mb << 20,
        "RLIMIT_NOFILE": 256,
        "RLIMIT_CORE": 0,
    }
    if memory_mb is not None:
        limits["RLIMIT_AS"] = memory_mb << 20
    return limits


def _read_capped(path: str, cap: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return ""
    text = data[:cap].decode("utf-8", errors="replace")
    return text + "\n[... output truncated]" if len(data) > cap else text


def _program_status(returncode: Optional[int], namespaced: bool) -> Optional[int]:
    """The program's own exit status: the namespace init reports signal n as exit code 128 + n."""
    if namespaced and returncode is not None and 128 < returncode < 128 + signal.NSIG:
        return 128 - returncode
    return returncode


def _classify(returncode: Optional[int], timed_out: bool, marker_ok: bool) -> str:
    if timed_out or returncode in (-signal.SIGKILL, -signal.SIGXCPU):
        return "timeout"
    if returncode == 0:
        return "passed" if marker_ok else "early_exit"
    if returncode is not None and returncode < 0:
        return "killed"
    return "failed"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_namespace(proc: subprocess.Popen) -> None:
    """Kill the namespace init (which takes the whole namespace with it) and let ``unshare`` reap it.

    Killing ``unshare`` first would orphan the init: its zombie would then wait for the
    machine's PID 1 to reap it (forever, in a container whose PID 1 does not reap)."""
    try:
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            children = [int(pid) for pid in f.read().split()]
    except (OSError, ValueError):
        return
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _without_harness_lines(stderr: str) -> str:
    """Drop the complaint ``unshare`` prints when its child was SIGKILLed by us."""
    lines = stderr.splitlines(keepends=True)
    while lines and lines[-1].startswith("unshare: "):
        lines.pop()
    return "".join(lines)


def _remove_tree(path: str) -> None:
    def retry(func, p, _exc):  # a hostile program may have chmod-ed its own files to 000
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def run_program(
    code: str,
    *,
    timeout: float = 5.0,
    memory_mb: Optional[int] = 512,
    max_procs: int = 64,
    max_file_mb: int = 16,
    max_output: int = 64 * 1024,
    guard: bool = True,
    python: Optional[str] = None,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; never raises for anything the program does.

    timeout: wall-clock seconds (interpreter start-up included); the CPU limit is ceil(timeout)+1.
    memory_mb: address-space limit (None: none). max_procs: process/thread limit (enforced when the
    program runs as ``nobody`` or without capabilities in a user namespace, where it counts every
    process of the calling user). max_file_mb: largest file (stdout/stderr included) it may write;
    the private ``/tmp`` holds 4x that. max_output: characters of stdout/stderr kept. guard: install
    the audit hook (module docstring). python: the interpreter to run (default: this one); its own
    prefixes are what the private root binds.
    """
    return _run(code, _isolation(), timeout=timeout, memory_mb=memory_mb, max_procs=max_procs,
                max_file_mb=max_file_mb, max_output=max_output, guard=guard, python=python)


def _config(iso: _Isolation, base: str, write_fd: int, guard: bool, limits: dict, max_file_mb: int) -> dict:
    """The bootstrap's JSON configuration (core.sandbox_bootstrap reads every key)."""
    workdir = os.path.join(base, "work")
    fs = None
    if iso.private_root:
        fs = {"root": os.path.join(base, "root"), "work": workdir, "tmp_mb": 4 * max_file_mb,
              "uid": NOBODY if iso.drop else None}
        os.mkdir(fs["root"], 0o755)
    return dict(
        fd=write_fd, uid=NOBODY if iso.drop else None, guard=guard, fs=fs, limits=limits,
        preload=list(PRELOAD) if iso.drop and not iso.private_root else [],
        blocked=list(_BLOCKED_EVENTS), prefixes=list(_BLOCKED_PREFIXES), allowed=list(_ALLOWED_EVENTS),
    )


def _run(code: str, iso: _Isolation, *, timeout, memory_mb, max_procs, max_file_mb, max_output, guard,
         python) -> SandboxResult:
    start = time.monotonic()
    # base/work: the program's working dir; base/root: mount point of its private root; base/out:
    # its captured output (0700 root, out of reach even in the fallback without a private root).
    base = tempfile.mkdtemp(prefix="refinery-sbx-")
    os.chmod(base, 0o711)
    workdir, outdir = os.path.join(base, "work"), os.path.join(base, "out")
    read_fd, write_fd = os.pipe()
    fds = {"read": read_fd, "write": write_fd}  # _spawn_and_wait pops "write" once it closed it
    try:
        os.mkdir(workdir, 0o700)
        os.mkdir(outdir, 0o700)
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        if iso.drop:
            for p in (workdir, os.path.join(workdir, "main.py")):
                os.chown(p, NOBODY, NOBODY)
        limits = _limits(timeout, memory_mb, max_procs, max_file_mb)
        cfg = _config(iso, base, write_fd, guard, limits, max_file_mb)
        cmd = [*iso.prefix, python or sys.executable, "-I", "-c", BOOTSTRAP, json.dumps(cfg)]
        inside = INSIDE_WORKDIR if iso.private_root else workdir
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": inside,
               "TMPDIR": "/tmp" if iso.private_root else workdir}
        out_path, err_path = os.path.join(outdir, "stdout"), os.path.join(outdir, "stderr")
        return _spawn_and_wait(cmd, env, workdir, (out_path, err_path), fds, timeout, max_output, start,
                               namespaced=bool(iso.prefix))
    except Exception as exc:  # a harness failure is reported per program, never raised
        log.exception("sandbox: could not run program")
        return SandboxResult(False, "error", "", f"sandbox error: {exc!r}", None, time.monotonic() - start)
    finally:
        for fd in fds.values():
            os.close(fd)
        _remove_tree(base)


def _spawn_and_wait(cmd, env, workdir, out_paths, fds, timeout, max_output, start, namespaced) -> SandboxResult:
    read_fd, write_fd = fds["read"], fds["write"]
    nonce = secrets.token_hex(16).encode()
    with open(out_paths[0], "wb") as out, open(out_paths[1], "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
                                pass_fds=(write_fd,), start_new_session=True, close_fds=True)
    timed_out = False
    try:
        try:
            proc.stdin.write(nonce)
            proc.stdin.close()
        except OSError:
            pass  # the program died before reading stdin: it cannot pass anyway
        os.close(fds.pop("write"))  # from now on only the child can write the marker
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        stopped = proc.poll() is None
        if stopped and namespaced:
            _stop_namespace(proc)
        _kill_group(proc)  # also reaps background children left behind in the group
        proc.wait()
    os.set_blocking(read_fd, False)
    try:
        marker = os.read(read_fd, 4096)
    except (BlockingIOError, OSError):
        marker = b""
    returncode = -signal.SIGKILL if stopped else _program_status(proc.returncode, namespaced)
    status = _classify(returncode, timed_out, marker == nonce)
    stderr = _read_capped(out_paths[1], max_output)
    return SandboxResult(
        passed=status == "passed", status=status, stdout=_read_capped(out_paths[0], max_output),
        stderr=_without_harness_lines(stderr) if stopped and namespaced else stderr, returncode=returncode,
        duration=time.monotonic() - start,
    )


def run_many(programs: Sequence[str], workers: int = 2, **kwargs) -> list[SandboxResult]:
    """Run ``programs`` on a bounded pool of ``workers`` threads (each waits on one subprocess).

    Results come back in input order; ``kwargs`` go to ``run_program``.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(programs) <= 1:
        return [run_program(p, **kwargs) for p in programs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, **kwargs), programs))
