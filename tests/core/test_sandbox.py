"""The sandbox: honest programs pass, failures fail, hostile programs are contained and never pass."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

import core.sandbox
from core.sandbox import run_many, run_program, sandbox_info

INFO = sandbox_info()
needs_drop = pytest.mark.skipif(not INFO["drop_privileges"], reason="needs root to drop to nobody")
needs_ns = pytest.mark.skipif(not INFO["namespaces"], reason="needs unshare (net/pid namespaces)")
needs_fs = pytest.mark.skipif(not INFO["mount_namespace"], reason="needs a mount namespace (private root)")


def run(code: str, **kw):
    return run_program(textwrap.dedent(code), **kw)


def _processes_with(token: str) -> list[int]:
    """Host PIDs whose command line contains ``token`` (hostile programs exec ``sleep <token>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.fixture
def made_dirs(monkeypatch) -> list[str]:
    """The temporary directories the harness creates during the test (to check they are gone)."""
    made, mkdtemp = [], tempfile.mkdtemp

    def recording(*args, **kwargs):
        path = mkdtemp(*args, **kwargs)
        if os.path.basename(path).startswith("refinery-sbx-"):
            made.append(path)
        return path

    monkeypatch.setattr(core.sandbox.tempfile, "mkdtemp", recording)
    return made


# ---------------------------------------------------------------- honest programs

def test_pass_and_output_capture():
    r = run("print('hello'); import sys; print('err', file=sys.stderr)")
    assert r.passed and r.status == "passed" and r.returncode == 0
    assert r.stdout == "hello\n" and r.stderr.strip() == "err"


def test_failing_assert_and_syntax_error_fail():
    r = run("def f(x):\n    return x + 1\nassert f(1) == 3\n")
    assert not r.passed and r.status == "failed" and "AssertionError" in r.stderr
    r = run("def f(x) return x\n")
    assert not r.passed and "SyntaxError" in r.stderr


def test_preloaded_stdlib_usable_and_workdir_writable():
    r = run("""
        import math, re, heapq, collections, itertools, hashlib
        assert math.gcd(12, 18) == 6 and re.findall(r"\\d+", "a1b22") == ["1", "22"]
        open("scratch.txt", "w").write("ok")
        assert open("scratch.txt").read() == "ok"
    """)
    assert r.passed, r.stderr


@pytest.mark.parametrize("guard", [True, False])
def test_whole_stdlib_imports_and_works(guard):
    r = run("""
        import shutil, tempfile, threading, signal, subprocess, difflib, pathlib, urllib.parse, sys
        import collections, logging, traceback
        Point = collections.namedtuple("Point", "x y")    # sys._getframe at call time
        assert Point(1, 2).y == 2 and Point.__module__ == "__main__"
        with tempfile.TemporaryDirectory() as d:
            p = pathlib.Path(d) / "a.txt"
            p.write_text("abc")
            shutil.copy(p, pathlib.Path(d) / "b.txt")
            assert (pathlib.Path(d) / "b.txt").read_text() == "abc"
        out = []
        t = threading.Thread(target=out.append, args=(1,))
        t.start(); t.join()
        assert out == [1]
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        done = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, timeout=20)
        assert done.stdout.strip() == "42", done
        assert difflib.SequenceMatcher(None, "abcd", "abce").ratio() == 0.75
        assert urllib.parse.urlparse("http://x.org/a?b=1").query == "b=1"
        try:
            1 / 0
        except ZeroDivisionError:
            assert "ZeroDivisionError" in traceback.format_exc()
        logging.getLogger("program").warning("logged")
    """, guard=guard, timeout=20)
    assert r.passed, r
    assert "logged" in r.stderr


@needs_fs
def test_venv_under_an_unreadable_directory_gets_its_stdlib(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)  # like /root: nobody may not even traverse it
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    r = run("""
        import sys, os, shutil, tempfile, subprocess
        print(sys.prefix)
        print(os.listdir(os.path.dirname(sys.prefix)))
        assert subprocess.run([sys.executable, "-c", "import difflib"]).returncode == 0
    """, python=str(venv / "bin" / "python"), timeout=20)
    assert r.passed, r
    assert r.stdout.splitlines() == [str(venv), "['venv']"]  # the venv, and nothing else of the home


def test_run_many_preserves_order():
    progs = [f"assert {i} % 2 == 0" for i in range(6)]
    results = run_many(progs, workers=2)
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(6)]
    with pytest.raises(ValueError, match="workers"):
        run_many(progs, workers=0)


# ---------------------------------------------------------------- no fake passes

@pytest.mark.parametrize("early", [
    "exit(0)", "import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit",
    "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    "import os, sys; os.execv(sys.executable, [sys.executable, '-O', '-c', 'pass'])",
])
def test_early_exit_before_tests_is_not_a_pass(early):
    r = run(f"{early}\nassert False, 'the tests'\n")
    assert not r.passed and r.status != "passed"


def test_patched_builtins_do_not_fake_a_pass():
    r = run("""
        import builtins, os, sys
        class Swallowed(Exception):
            pass
        builtins.AssertionError = Swallowed
        os.write = lambda *a: None
        os._exit = lambda code=0: None
        sys.excepthook = lambda *a: None
        for fd in range(3, 20):
            try:
                os.close(fd)   # close whatever might be the marker pipe
            except OSError:
                pass
        assert 1 == 2
    """)
    assert not r.passed and r.returncode != 0


def test_writing_junk_to_every_fd_is_not_a_pass():
    r = run("""
        import os
        for fd in range(3, 30):
            try:
                os.write(fd, b"0123456789abcdef0123456789abcdef")
            except OSError:
                pass
    """)
    assert not r.passed and r.status == "early_exit"  # ran to the end, but the marker is spoiled


# Every attack reads the marker fd from the bootstrap's argv, gathers candidate nonces by one route,
# writes each one to the marker and exits 0 at once: passing would mean the route found the nonce.
_STEAL = """
import json, os, sys
fd = json.loads(sys.argv[1])["fd"]
found = set()
def keep(value):
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes) and len(value) == 32:
        found.add(value)
{route}
print("candidates:", len(found))
for value in found:
    os.write(fd, value)
os._exit(0)
"""
_ROUTES = {
    "frame locals and globals": """
f = sys._getframe()
while f is not None:
    for space in (f.f_locals, f.f_globals):
        for value in list(space.values()):
            keep(value)
            if isinstance(value, dict):
                for inner in list(value.values()):
                    keep(inner)
    f = f.f_back
""",
    "raising the done event": "import sys; sys.audit('refinery.sandbox.done')",
}
_GUARDED_ROUTES = {
    "gc walk": "import gc; [keep(o) for o in gc.get_objects()]",
    "ctypes memory": "import ctypes; keep(ctypes.string_at(id(sys), 4096))",
    "/proc/self/mem": "open('/proc/self/mem', 'rb')",
    "tracing": "sys.settrace(lambda frame, event, arg: None)",
    "code of the hook's frame": """
import signal
def grab(signum, frame):
    while frame is not None:
        if frame.f_code.co_name == "hook":
            for const in frame.f_code.co_consts:
                keep(const)
        frame = frame.f_back
signal.signal(signal.SIGALRM, grab)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
try:
    for _ in range(20000):
        open(os.devnull).close()   # every open runs the audit hooks
finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
""",
}


@pytest.mark.parametrize("route", sorted(_ROUTES))
@pytest.mark.parametrize("guard", [True, False])
def test_stealing_the_nonce_finds_nothing(route, guard):
    r = run(_STEAL.format(route=_ROUTES[route]), guard=guard)
    assert not r.passed and r.status == "early_exit", r
    assert "Error" not in r.stderr  # the route ran to its end: it simply found no nonce


@pytest.mark.parametrize("route", sorted(_GUARDED_ROUTES))
def test_routes_to_the_marker_hook_are_refused(route):
    r = run(_STEAL.format(route=_GUARDED_ROUTES[route]))
    assert not r.passed and r.status == "failed", r
    assert "sandbox:" in r.stderr and "RuntimeError" in r.stderr
    assert "ImportError" not in r.stderr and "ModuleNotFoundError" not in r.stderr


@needs_fs
@needs_drop
@pytest.mark.parametrize("guard", [True, False])
def test_own_memory_is_unreadable_past_the_guard(guard):
    # The guard checks open() paths, but a relative path on a dir fd of "/" slips past it: the OS
    # layer (non-dumpable process, so /proc/self/mem belongs to root) must still refuse.
    r = run(_STEAL.format(route="root = os.open('/', os.O_RDONLY)\nos.open('proc/self/mem', os.O_RDONLY, dir_fd=root)"),
            guard=guard)
    assert not r.passed and r.status == "failed", r
    assert "PermissionError" in r.stderr


# ---------------------------------------------------------------- containment
# Every hostile program imports what it needs first and is checked by `contained`: stopped by a
# limit or by isolation, never by an ImportError (a program that cannot import is no test at all).

def contained(r, *statuses):
    assert not r.passed, r
    assert "ImportError" not in r.stderr and "ModuleNotFoundError" not in r.stderr, r.stderr
    if statuses:
        assert r.status in statuses, r


def test_infinite_loop_times_out():
    contained(run("import itertools\nfor _ in itertools.count():\n    pass\n", timeout=1.5), "timeout")


def test_huge_allocation_fails():
    r = run("x = bytearray(10 * 1024 ** 3)\n", memory_mb=512)
    contained(r, "failed")
    assert "MemoryError" in r.stderr


def test_huge_file_is_cut_by_file_size_limit():
    r = run("""
        with open("big.bin", "wb") as f:
            for _ in range(1024):
                f.write(b"x" * (1 << 20))
    """, max_file_mb=8, timeout=10)
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of the process being killed
    contained(r, "failed", "killed")
    assert r.status == "killed" or "File too large" in r.stderr


def test_stdout_flood_is_capped():
    r = run("import sys\nwhile True:\n    sys.stdout.write('y' * 1000 + '\\n')\n", max_output=4096, max_file_mb=4,
            timeout=5)
    contained(r, "failed", "killed", "timeout")
    assert len(r.stdout) < 4096 + 100 and r.stdout.startswith("y" * 100)


@needs_drop
@pytest.mark.parametrize("guard", [True, False])
def test_fork_bomb_is_contained(guard):
    token = f"{time.time_ns() % 10**6}.{os.getpid()}"
    r = run(f"""
        import os, time
        while True:
            try:
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", "{token}"])
            except OSError:
                pass
    """, timeout=2, guard=guard)
    contained(r, "timeout")
    assert not _processes_with(token)  # every forked process died with the sandbox


@needs_drop
@pytest.mark.parametrize("guard", [True, False])
def test_canary_outside_sandbox_survives(guard, tmp_path):
    canary = Path(tempfile.mkdtemp(prefix="refinery-canary-"))  # world-readable, owned by root
    try:
        canary.chmod(0o755)
        (canary / "keep.txt").write_text("alive")
        r = run(f"""
            import shutil, os
            for target in ({str(canary)!r}, {str(tmp_path)!r}):
                try:
                    shutil.rmtree(target)
                except OSError as exc:
                    print("refused", exc)
            os.remove({str(canary / 'keep.txt')!r})
        """, guard=guard)
        contained(r, "failed")
        assert "refused" in r.stdout
        assert (canary / "keep.txt").read_text() == "alive" and tmp_path.exists()
    finally:
        (canary / "keep.txt").unlink(missing_ok=True)
        canary.rmdir()


@needs_drop
@pytest.mark.parametrize("guard", [True, False])
def test_killing_the_parent_fails(guard):
    r = run(f"""
        import os, signal
        for pid in (os.getppid(), {os.getpid()}, -1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as exc:
                print("refused", pid, exc)
        assert False, "still here"
    """, guard=guard)
    contained(r, "failed")  # and we are still alive to assert it
    assert "still here" in r.stderr


@needs_ns
@pytest.mark.parametrize("guard", [True, False])
def test_no_network(guard):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    got = []

    def accept():
        try:
            got.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    try:
        r = run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=1)
            s.sendall(b"exfiltrate")
        """, guard=guard)
        thread.start()
        thread.join()
        contained(r, "failed")
        assert not got
        assert ("sandbox: socket" if guard else "OSError") in r.stderr
    finally:
        server.close()


@needs_ns
@pytest.mark.parametrize("double", [False, True], ids=["setsid", "double-fork"])
def test_daemon_dies_with_the_sandbox(double):
    token = f"{time.time_ns() % 10**6}.{os.getpid()}"
    late = Path(f"/tmp/refinery-late-{token}")
    r = run(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if {double} and os.fork() != 0:
                os._exit(0)
            time.sleep(1.0)
            for path in ("late.txt", {str(late)!r}):
                try:
                    open(path, "w").write("escaped")
                except OSError:
                    pass
            os.execv("/bin/sleep", ["sleep", "{token}"])
        time.sleep(0.2)
    """, guard=False)
    assert r.passed, r  # the program itself ran to the end
    time.sleep(1.5)
    assert not late.exists() and not _processes_with(token)


@needs_drop
@pytest.mark.parametrize("guard", [True, False])
def test_ignoring_sigterm_still_times_out(guard):
    r = run("""
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)
        while True:
            time.sleep(0.05)
    """, timeout=1.5, guard=guard)
    contained(r, "timeout")


@pytest.mark.parametrize("guard", [True, False])
def test_ctypes_segfault_is_contained(guard):
    r = run("import ctypes\nctypes.string_at(0)\nprint('survived')\n", guard=guard)
    contained(r)
    assert "survived" not in r.stdout
    if guard:
        assert r.status == "failed" and "sandbox: ctypes.string_at" in r.stderr
    else:
        assert r.status == "killed" and r.returncode == -signal.SIGSEGV


@needs_drop
@pytest.mark.parametrize("guard", [True, False])
def test_thread_bomb_is_contained(guard):
    r = run("""
        import threading, time
        threads = []
        for _ in range(100_000):
            t = threading.Thread(target=time.sleep, args=(30,), daemon=True)
            t.start()
            threads.append(t)
        print("started", len(threads))
    """, timeout=5, guard=guard)
    contained(r)
    assert "started" not in r.stdout
    assert r.status == "timeout" or "can't start new thread" in r.stderr


@needs_ns
@pytest.mark.parametrize("guard", [True, False])
def test_environment_holds_no_secrets(guard, monkeypatch):
    secret = f"hunter2-{os.getpid()}"
    monkeypatch.setenv("REFINERY_FAKE_SECRET", secret)
    r = run("""
        import os
        print(dict(os.environ))
        for pid in ["self", "1"] + [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                print(pid, open(f"/proc/{pid}/environ", "rb").read())
            except (OSError, RuntimeError) as exc:
                print(pid, "refused", type(exc).__name__)
    """, guard=guard)
    assert r.passed, r  # reading its own environment is allowed: what matters is what it sees
    assert secret not in r.stdout and "REFINERY_FAKE_SECRET" not in r.stdout
    assert "'PATH'" in r.stdout  # it did print its environment


@needs_fs
@pytest.mark.parametrize("guard", [True, False])
def test_writes_and_reads_outside_the_workdir_reach_nothing(guard, made_dirs):
    token = f"{time.time_ns()}-{os.getpid()}"
    visible = Path(tempfile.mkdtemp(prefix="refinery-visible-"))  # world-readable, world-writable
    visible.chmod(0o777)
    (visible / "secret.txt").write_text(f"secret-{token}")
    repo = Path(__file__).resolve().parents[2]
    targets = [f"../escape-{token}", f"~/../escape-{token}", f"/tmp/escape-{token}", f"/dev/shm/escape-{token}",
               f"{visible}/escape-{token}", f"{repo}/escape-{token}", f"/root/escape-{token}", f"/escape-{token}"]
    try:
        r = run(f"""
            import os
            for target in {targets!r}:
                try:
                    with open(os.path.expanduser(target), "w") as f:
                        f.write("escaped")
                    print("wrote", target)
                except OSError as exc:
                    print("refused", target, type(exc).__name__)
            for source in ({str(visible / 'secret.txt')!r}, {str(repo / 'README.md')!r}, "/etc/shadow"):
                try:
                    print("read", open(source).read()[:200])
                except OSError as exc:
                    print("refused", source, type(exc).__name__)
            open(os.path.expanduser("~/home-{token}"), "w").write("in $HOME")
        """, guard=guard)
        assert r.passed, r
        readme = (repo / "README.md").read_text()[:40]
        assert f"secret-{token}" not in r.stdout and readme not in r.stdout and "root:" not in r.stdout
        wrote = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("wrote")}
        assert wrote == {targets[2], targets[3]}, r.stdout  # only the private /tmp (and /dev/shm -> /tmp)
        for target in targets:
            name = f"escape-{token}"
            assert not any(p.exists() for p in (Path("/tmp") / name, Path("/dev/shm") / name, visible / name,
                                                repo / name, Path("/") / name)), target
        assert all(not Path(d).exists() for d in made_dirs)  # the workdir ($HOME) went with the run
    finally:
        for f in visible.iterdir():
            f.unlink()
        visible.rmdir()


@needs_fs
def test_private_tmp_is_fresh_each_run():
    first = run("open('/tmp/leftover', 'w').write('1')\nimport os\nprint(os.listdir('/tmp'))")
    second = run("import os\nprint(os.listdir('/tmp'))")
    assert first.passed and second.passed, (first, second)
    assert "leftover" in first.stdout and second.stdout.strip() == "[]"
    assert not Path("/tmp/leftover").exists() or Path("/tmp/leftover").read_text() != "1"


def test_chmod_tricks_do_not_break_cleanup(made_dirs):
    r = run("""
        import os
        os.makedirs("a/b")
        open("a/b/f", "w").write("x")
        os.chmod("a/b", 0)
        os.chmod("a", 0)
    """)
    assert r.passed, r.stderr
    assert made_dirs and all(not Path(d).exists() for d in made_dirs)


def test_harness_keeps_going_after_hostile_programs():
    hostile = ["import os; os.kill(os.getpid(), 9)", "while True: pass", "x = bytearray(10**10)", "exit(0)"]
    results = run_many(hostile + ["assert sum(range(4)) == 6"], workers=2, timeout=1.5)
    assert [r.passed for r in results] == [False] * 4 + [True]
    assert all(r.status != "error" for r in results)


def test_workdir_is_private_and_fresh():
    first = run("import os; open('leftover', 'w').write('1'); print(sorted(os.listdir('.')))")
    second = run("import os; print(sorted(os.listdir('.')))")
    assert first.passed and second.passed
    assert "leftover" not in second.stdout and "main.py" in second.stdout
