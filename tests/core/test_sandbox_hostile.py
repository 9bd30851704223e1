"""The hostile suite: every program imports what it needs first and must be stopped by a limit or by
isolation, never by an ImportError; none escapes and none passes."""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sandbox_helpers import contained, needs_drop, needs_fs, needs_ns, processes_with, run  # noqa: E402


# ---------------------------------------------------------------- containment
# Every hostile program imports what it needs first and is checked by `contained`: stopped by a
# limit or by isolation, never by an ImportError (a program that cannot import is no test at all).


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
    assert not processes_with(token)  # every forked process died with the sandbox


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
    assert not late.exists() and not processes_with(token)


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
@pytest.mark.parametrize("where", [".", "/tmp"])
def test_many_files_cannot_fill_the_disk(where):
    r = run(f"""
        import os
        for i in range(1000):   # each file is under the file-size limit; together 8 GB
            with open(os.path.join({where!r}, f"f{{i}}"), "wb") as f:
                f.write(b"x" * (8 << 20))
    """, max_file_mb=8, timeout=20)
    contained(r, "failed")
    assert "No space left on device" in r.stderr
