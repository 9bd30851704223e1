"""Run untrusted Python programs (model-written code + hidden tests) in an isolated subprocess.

Each program runs as ``python -I`` in its own session, in a fresh temporary working directory
that is removed afterwards, with a wall-clock timeout after which the whole process group is
SIGKILLed. Layers, strongest first (``sandbox_info()`` says which ones this machine gives):

1. Linux namespaces through ``unshare --net --pid --fork --kill-child`` (root, or an
   unprivileged user namespace when allowed): no network interfaces but a down loopback, and
   a private PID namespace whose init is our bootstrap, so every descendant (even one that
   called ``setsid``) dies with it and no process outside the sandbox can be seen or signalled.
2. When the harness runs as root, the bootstrap drops to ``nobody`` (uid/gid 65534, no
   supplementary groups) before running the program: files outside the working directory are
   read-only or unreadable, the parent cannot be signalled, and ``RLIMIT_NPROC`` is actually
   enforced (the kernel ignores it for root). Our interpreter may live under a directory
   ``nobody`` cannot read (e.g. ``/root/.pyenv``), so the stdlib modules that benchmark code
   commonly imports are imported *before* the drop (``PRELOAD``); other imports may then fail.
3. Resource limits set by the bootstrap with ``resource.setrlimit`` before the program runs:
   CPU seconds, address space, processes, file size (a flood of stdout, which goes to a file,
   is cut by SIGXFSZ), open files, no core dumps. (They are set in the child's first trusted
   code rather than in ``preexec_fn``: preexec_fn is unsafe in a threaded parent and forces a
   full fork() of a possibly large parent, where the bootstrap costs nothing extra.)
4. A Python audit hook (``guard=True``) refuses sockets, ctypes, ``gc`` object walks, frame
   introspection (``sys._getframe``, ``tb_frame``/``gi_frame``, tracing) and opening ``/proc``.

Pass criterion and threat model. A program passes only if its last statement was reached: the
bootstrap reads a random nonce from stdin (then points fd 0 at /dev/null), runs the program
with ``exec`` and afterwards writes the nonce to a dedicated pipe whose read end only the
harness holds; passed = (pipe content == nonce) and exit status 0 and no timeout. So
``exit(0)``, ``os._exit(0)``, ``raise SystemExit``, re-exec'ing the interpreter (e.g. with
``-O`` to strip asserts), killing itself, patching ``builtins``/``AssertionError``/``os.write``
or writing junk to the marker fd all give a fail, never a pass. The nonce lives only in a
local of the bootstrap's frame; the audit hook blocks the in-process routes to it (frames,
gc, ctypes, /proc/self/mem) and, after the uid change, the process is not dumpable, so other
processes cannot read its memory either. Limits: CPython audit hooks are not a security
boundary (a determined attacker targeting this harness could find another route); code that
games the *tests* (e.g. returns an object whose ``__eq__`` is always True) passes, as it would
anywhere; files written to world-writable places outside the working directory (/tmp,
/dev/shm) are not cleaned up (each is capped by the file-size limit). Without root or user
namespaces only layers 3-4 remain: the program can then delete the user's files and signal
the harness, so do not evaluate untrusted code that way.
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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

log = logging.getLogger(__name__)

NOBODY = 65534
# Imported before dropping privileges: everything HumanEval/MBPP solutions import, plus the
# stdlib modules small generated programs are likely to use.
PRELOAD = (
    "math", "cmath", "re", "heapq", "bisect", "collections", "collections.abc", "itertools",
    "functools", "operator", "array", "copy", "datetime", "typing", "string", "random",
    "statistics", "fractions", "decimal", "hashlib", "json", "sys", "numbers", "textwrap",
    "unicodedata", "struct", "enum", "dataclasses", "contextlib", "traceback", "linecache",
)

# The child's first (trusted) code. Kept free of f-strings the host fills in: its whole
# configuration comes as one JSON argument.
_BOOTSTRAP = r'''
import json, os, resource, sys

def _guard(blocked, prefixes, attrs):
    realpath = os.path.realpath
    def hook(event, args):
        if event in blocked or event.startswith(prefixes):
            raise RuntimeError("sandbox: " + event + " is not allowed")
        if event == "object.__getattr__" and len(args) > 1 and args[1] in attrs:
            raise RuntimeError("sandbox: frame introspection is not allowed")
        if event == "open" and isinstance(args[0], (str, bytes)):
            path = realpath(os.fsdecode(args[0]))
            if path == "/proc" or path.startswith("/proc/"):
                raise RuntimeError("sandbox: /proc is not accessible")
    return hook

def _init(marker_fd):
    # PID 1 of the namespace ignores every signal it has no handler for (so a program there
    # could not even kill itself) and inherits orphans. So PID 1 stays this small root-owned
    # init: it reaps, and exits with the program's status (128 + n for signal n).
    child = os.fork()
    if child == 0:
        return
    os.close(0)
    os.close(marker_fd)
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)

def _main():
    cfg = json.loads(sys.argv[1])
    if os.getpid() == 1:
        _init(cfg["fd"])
    nonce = os.read(0, 256)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for name, value in cfg["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    for mod in cfg["preload"]:
        try:
            __import__(mod)
        except Exception:
            pass
    path = os.path.join(os.getcwd(), "main.py")
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    write, fd = os.write, cfg["fd"]
    if cfg["guard"]:
        sys.addaudithook(_guard(frozenset(cfg["blocked"]), tuple(cfg["prefixes"]), frozenset(cfg["attrs"])))
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
    write(fd, nonce)

_main()
'''

_BLOCKED_EVENTS = (
    "sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "os.symlink", "os.link",
)
_BLOCKED_PREFIXES = ("ctypes.", "socket.")
_BLOCKED_ATTRS = ("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back")


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


@lru_cache(maxsize=None)
def _isolation() -> tuple[tuple[str, ...], bool]:
    """(command prefix, drop privileges) for the strongest isolation this machine supports."""
    root = os.geteuid() == 0
    candidates = []
    if shutil.which("unshare"):
        base = ("unshare", "--net", "--pid", "--fork", "--kill-child")
        candidates = [base] if root else [(base[0], "--user", "--map-root-user") + base[1:]]
    for prefix in candidates:
        try:
            done = subprocess.run([*prefix, sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return prefix, root
        log.warning("sandbox: %s unavailable: %s", " ".join(prefix), done.stderr.decode(errors="replace")[:200])
    log.warning("sandbox: no namespaces available; programs can reach the network and other processes")
    return (), root


def sandbox_info() -> dict:
    """Which isolation layers are active here: {"namespaces": bool, "drop_privileges": bool}."""
    prefix, drop = _isolation()
    return {"namespaces": bool(prefix), "drop_privileges": drop, "prefix": " ".join(prefix)}


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
    program runs as ``nobody``). max_file_mb: largest file (stdout/stderr included) it may write.
    max_output: characters of stdout/stderr kept. guard: install the audit hook (module docstring).
    """
    start = time.monotonic()
    prefix, drop = _isolation()
    workdir = tempfile.mkdtemp(prefix="refinery-sbx-")
    outdir = tempfile.mkdtemp(prefix="refinery-sbx-out-")  # outside the program's working dir
    read_fd, write_fd = os.pipe()
    fds = {"read": read_fd, "write": write_fd}  # _spawn_and_wait pops "write" once it closed it
    try:
        with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        if drop:
            for p in (workdir, os.path.join(workdir, "main.py")):
                os.chown(p, NOBODY, NOBODY)
        cfg = dict(
            fd=write_fd, uid=NOBODY if drop else None, guard=guard, preload=list(PRELOAD) if drop else [],
            limits=_limits(timeout, memory_mb, max_procs, max_file_mb), blocked=list(_BLOCKED_EVENTS),
            prefixes=list(_BLOCKED_PREFIXES), attrs=list(_BLOCKED_ATTRS),
        )
        cmd = [*prefix, python or sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        out_path, err_path = os.path.join(outdir, "stdout"), os.path.join(outdir, "stderr")
        return _spawn_and_wait(cmd, env, workdir, (out_path, err_path), fds, timeout, max_output, start,
                               namespaced=bool(prefix))
    except Exception as exc:  # a harness failure is reported per program, never raised
        log.exception("sandbox: could not run program")
        return SandboxResult(False, "error", "", f"sandbox error: {exc!r}", None, time.monotonic() - start)
    finally:
        for fd in fds.values():
            os.close(fd)
        _remove_tree(workdir)
        shutil.rmtree(outdir, ignore_errors=True)


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
