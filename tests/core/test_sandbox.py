"""The sandbox: honest programs pass, failures fail, hostile programs are contained and never pass."""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from core.sandbox import run_many, run_program, sandbox_info

INFO = sandbox_info()
needs_drop = pytest.mark.skipif(not INFO["drop_privileges"], reason="needs root to drop to nobody")
needs_ns = pytest.mark.skipif(not INFO["namespaces"], reason="needs unshare (net/pid namespaces)")
SLACK = 3.0  # seconds of start-up / kill latency allowed beyond a timeout on a loaded 2-core box


def run(code: str, **kw):
    return run_program(textwrap.dedent(code), **kw)


def _nobody_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == 65534:
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


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


def test_stealing_the_nonce_from_the_bootstrap_frame_is_blocked():
    steal = """
        import os, sys
        try:
            {route}
        except RuntimeError as exc:
            print("blocked:", exc)
            raise
        loc = frame.f_locals
        os.write(loc["fd"], loc["nonce"])
        os._exit(0)
    """
    for route in ("frame = sys._getframe(1)",
                  "try:\n                1/0\n            except ZeroDivisionError as e:\n"
                  "                frame = e.__traceback__.tb_frame.f_back",
                  "import gc; frame = [o for o in gc.get_objects() if type(o).__name__ == 'frame'][0]"):
        r = run(steal.format(route=route))
        assert not r.passed and "blocked" in r.stdout, (route, r)


# ---------------------------------------------------------------- containment

def test_infinite_loop_times_out():
    t0 = time.monotonic()
    r = run("while True:\n    pass\n", timeout=1.5)
    assert r.status == "timeout" and not r.passed and time.monotonic() - t0 < 1.5 + SLACK


def test_huge_allocation_fails_fast():
    r = run("x = bytearray(10 * 1024 ** 3)\n", memory_mb=512)
    assert not r.passed and "MemoryError" in r.stderr and r.duration < 3


def test_huge_file_is_cut_by_file_size_limit():
    r = run("""
        with open("big.bin", "wb") as f:
            for _ in range(1024):
                f.write(b"x" * (1 << 20))
    """, max_file_mb=8, timeout=10)
    # Python ignores SIGXFSZ, so the write fails with EFBIG instead of the process being killed
    assert not r.passed and r.status in ("failed", "killed") and r.duration < 10
    assert r.status == "killed" or "File too large" in r.stderr


def test_stdout_flood_is_capped():
    r = run("while True:\n    print('y' * 1000)\n", max_output=4096, max_file_mb=4, timeout=5)
    assert not r.passed and r.status in ("failed", "killed", "timeout") and r.duration < 5 + SLACK
    assert len(r.stdout) < 4096 + 100 and r.stdout.startswith("y" * 100)


@needs_drop
@pytest.mark.parametrize("guard", [True, False])
def test_fork_bomb_is_contained(guard):
    before = _nobody_pids()
    t0 = time.monotonic()
    r = run("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout=2, guard=guard)
    assert not r.passed and time.monotonic() - t0 < 2 + SLACK
    time.sleep(0.2)
    assert _nobody_pids() <= before  # every forked process died with the sandbox


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
        assert not r.passed and "refused" in r.stdout
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
    assert not r.passed  # and we are still alive to assert it


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
        assert not r.passed and not got
    finally:
        server.close()


@needs_ns
def test_setsid_daemon_dies_with_the_sandbox():
    drop = Path(tempfile.mkdtemp(prefix="refinery-drop-"))
    drop.chmod(0o777)
    try:
        r = run(f"""
            import os, time
            if os.fork() == 0:
                os.setsid()
                time.sleep(1.0)
                open({str(drop / 'late.txt')!r}, "w").write("escaped")
                os._exit(0)
        """, guard=False)
        assert r.passed  # the program itself ran to the end
        time.sleep(1.5)
        assert not (drop / "late.txt").exists()
    finally:
        for f in drop.iterdir():
            f.unlink()
        drop.rmdir()


def test_chmod_tricks_do_not_break_cleanup():
    r = run("""
        import os
        os.makedirs("a/b")
        open("a/b/f", "w").write("x")
        os.chmod("a/b", 0)
        os.chmod("a", 0)
        print(os.getcwd())
    """)
    assert r.passed, r.stderr
    assert not Path(r.stdout.strip()).exists()


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
