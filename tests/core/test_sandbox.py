"""The sandbox: honest programs pass, failures fail, nothing fakes a pass (hostile programs:
test_sandbox_hostile.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import refinery.core.sandbox
from refinery.core.sandbox import run_many, sandbox_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox_helpers import INFO, REQUIRE_ISOLATION, needs_drop, needs_fs, run  # noqa: E402


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


def test_missing_layers_degrade_with_a_warning_and_are_reported(monkeypatch, caplog):
    broken = refinery.core.sandbox._Isolation(("unshare", "--no-such-flag"), private_root=True, drop=False)
    monkeypatch.setattr(refinery.core.sandbox, "_candidates", lambda root: [broken])
    refinery.core.sandbox._isolation_cached.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="refinery.core.sandbox"):
            info = sandbox_info()
            r = run("import math\nassert math.gcd(4, 6) == 2")
        assert r.passed, r
        assert not info["namespaces"] and not info["mount_namespace"] and info["backend"] == "none"
        assert "--no-such-flag" in caplog.text and "no namespaces available" in caplog.text
    finally:
        refinery.core.sandbox._isolation_cached.cache_clear()  # the next test probes this machine again


_AS_USER = '''
import json, sys
sys.path.insert(0, sys.argv[1])
from refinery.core.sandbox import run_program, sandbox_info
r = run_program("""
import os, shutil, subprocess
status = open("/proc/self/status").read()
print([line.split()[1] for line in status.splitlines() if line.startswith(("CapEff", "CapBnd", "NoNewPrivs"))])
for target in ("/x", "/usr/x", "../x"):
    try:
        open(target, "w")
        print("wrote", target)
    except OSError:
        pass
print(subprocess.run(["mount", "-o", "remount,rw", "/usr"], capture_output=True).returncode != 0)
""", guard=False)
print(json.dumps({"info": sandbox_info(), "passed": r.passed, "stdout": r.stdout, "stderr": r.stderr}))
'''


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root (to become an ordinary user) and a system python3")
def test_ordinary_user_gets_a_user_namespace_without_capabilities():
    repo = Path(__file__).resolve().parents[2]
    cmd = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "/usr/bin/python3", "-I", "-c",
           _AS_USER, str(repo)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "HOME": "/"})
    if done.returncode != 0 and "Permission denied" in done.stderr:
        pytest.skip(f"{repo} is not readable by nobody")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    if not report["info"]["user_namespace"]:
        pytest.skip("this kernel refuses unprivileged user namespaces")
    assert report["info"]["mount_namespace"] and report["info"]["capabilities_dropped"], report["info"]
    assert report["passed"], report
    assert report["stdout"].splitlines() == ["['0000000000000000', '0000000000000000', '1']", "True"], report


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
    r = run(_STEAL.format(route=_GUARDED_ROUTES[route]), timeout=30)  # room for the 20,000 opens on a busy box
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


@pytest.mark.skipif(not REQUIRE_ISOLATION, reason="REFINERY_REQUIRE_ISOLATION=1 is set by .ci/run (root)")
def test_ci_machine_gives_every_layer():
    missing = [k for k in ("mount_namespace", "network_namespace", "pid_namespace", "drop_privileges", "rlimits",
                           "audit_hook") if not INFO[k]]
    assert not missing, f"sandbox layers missing on a root CI machine: {missing} ({INFO})"
