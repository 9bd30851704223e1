"""The sandboxed child's first (trusted) code, run as ``python -I -c BOOTSTRAP CONFIG_JSON``.

Kept apart from ``core.sandbox`` (the harness) because it is program text, not importable code: the
child must not import anything of this project (the repository is invisible to it). Its whole
configuration comes as one JSON argument, so the host never formats values into the source.

What it does, in order (see ``core.sandbox`` for the threat model):

1. As PID 1 of a new PID namespace, and when the harness asked for a private root (``cfg["fs"]``):
   builds a minimal root on a tmpfs in the new mount namespace (read-only binds of ``/usr``,
   ``/lib*``, a few ``/etc`` files and the interpreter's own prefixes, at the same paths, with the
   directories above them created 0755 so ``nobody`` can traverse them; a fresh ``/tmp`` tmpfs; the
   working directory ``/sandbox``, a tmpfs owned by the program holding a copy of ``main.py``; a
   fresh ``/proc``; ``/dev/{null,zero,random,urandom}``), pivots into it and detaches the old root.
   Then it forks: PID 1 stays a tiny root-owned init that reaps and reports the program's exit status.
2. In the program's process: reads the pass nonce from stdin, sets the resource limits, drops to
   ``nobody`` (or, in a user namespace, drops every capability), sets no_new_privs, arms the audit
   hooks, runs the program, and only if it returns normally raises the ``refinery.sandbox.done``
   audit event, on which the marker hook writes the nonce.

The nonce is never in a Python frame or a reachable object: it is a constant of the marker hook's
code object, and that hook is referenced only by the interpreter's (unexposed) hook table. The
marker hook writes only when the event comes from the bootstrap's own bottom frame (so a program
calling ``sys.audit("refinery.sandbox.done")`` gets nothing), never raises, and reads no mutable
global. The guard hook refuses the routes to the hook's code (``f_code`` of its frame, ``gc`` object
walks, ctypes memory access, ``/proc/self/mem``, tracing); frames as such (``sys._getframe``,
``tb_frame``, ``f_back``) stay allowed, so ``namedtuple``, ``traceback`` and ``logging`` work.
"""

BOOTSTRAP = r'''
import json, os, resource, sys

DONE = "refinery.sandbox.done"
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MNT_DETACH = 1 << 14, 1 << 18, 1 << 21, 2
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("passwd", "group", "nsswitch.conf", "localtime", "hosts", "ld.so.cache", "ld.so.conf")
DEVICES = ("null", "zero", "random", "urandom")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "shm": "/tmp"}

def _libc():
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def check(result, what):
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, "sandbox: " + what + ": " + os.strerror(err))
    def mount(src, dst, fstype, flags, data=None):
        enc = lambda s: None if s is None else s.encode()
        check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + dst)
    return libc, mount, check

def _python_dirs():
    # The interpreter's own prefixes (stdlib, site-packages, a venv and its base), bound at the same
    # paths inside. Not sys.path as such: a .pth file (an editable install) may point into the user's
    # source tree, which must stay invisible.
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)}
    dirs |= {os.path.realpath(d) for d in dirs}
    covered = [d for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    keep = []
    for d in sorted(d for d in dirs if d and d != "/"):
        if not any(d == k or d.startswith(k + "/") for k in covered + keep):
            keep.append(d)
    return keep

def _locked_flags(path):
    # In a user namespace a bind must keep the source mount's ro/nosuid/nodev/noexec/atime flags.
    f = os.statvfs(path).f_flag
    return (f & 15) | (f & (1024 | 2048)) | (MS_RELATIME if f & 4096 else 0)

def _bind(mount, src, dst, rw=False):
    if os.path.islink(src):
        os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
        os.symlink(os.readlink(src), dst)
        return
    if os.path.isdir(src):
        os.makedirs(dst, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
        os.close(os.open(dst, os.O_CREAT | os.O_WRONLY, 0o644))
    mount(src, dst, None, MS_BIND)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | _locked_flags(src) | (0 if rw else MS_RDONLY)
    mount(None, dst, None, flags)

def _private_workdir(mount, fs, dst):
    # The working directory is a size-capped tmpfs too, so no program can fill the host's disk
    # (the file-size limit caps each file, not how many); only main.py comes from the host.
    os.mkdir(dst, 0o755)
    uid = fs["uid"]
    owner = "" if uid is None else "uid=%d,gid=%d," % (uid, uid)
    mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, owner + "size=%dm,mode=0700" % fs["tmp_mb"])
    with open(fs["work"] + "/main.py", "rb") as src, open(dst + "/main.py", "wb") as out:
        out.write(src.read())
    if uid is not None:
        os.chown(dst + "/main.py", uid, uid)

def _private_root(fs):
    libc, mount, check = _libc()
    os.umask(0o022)
    root = fs["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for d in ("/tmp", "/proc", "/dev"):
        os.mkdir(root + d, 0o755)
    # /tmp first: an interpreter living under the host's /tmp is then bound on top of it, not hidden
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=1777" % fs["tmp_mb"])
    for name in DEVICES:
        _bind(mount, "/dev/" + name, root + "/dev/" + name, rw=True)
    for name, target in DEV_LINKS.items():
        os.symlink(target, root + "/dev/" + name)
    for d in SYSTEM_DIRS:
        if os.path.lexists(d):
            _bind(mount, d, root + d)
    for d in _python_dirs():
        _bind(mount, d, root + d)
    for name in ETC_FILES:
        if os.path.lexists("/etc/" + name):
            _bind(mount, "/etc/" + name, root + "/etc/" + name)
    _private_workdir(mount, fs, root + "/sandbox")
    try:
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass  # e.g. a container masking parts of /proc: the program then has no /proc at all
    os.chdir(root)
    number = PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        os.chroot(".")
    else:
        check(libc.syscall(number, b".", b"."), "pivot_root")
        check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return libc

def _drop(cfg, libc):
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if libc is None:
        return
    if cfg["uid"] is None:  # root of a user namespace: empty the bounding set, then every capability set
        import ctypes
        for cap in range(64):
            libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (EINVAL past the last capability)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
            raise OSError(ctypes.get_errno(), "sandbox: capset")
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: setuid binaries stay powerless
        raise OSError("sandbox: no_new_privs")
    # PR_SET_DUMPABLE 0 (the uid change already did it): /proc/self/* then belongs to root, so even a
    # route past the guard's /proc check (a dir fd of "/") cannot open /proc/self/mem as nobody.
    libc.prctl(4, 0, 0, 0, 0)

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

def _marker_hook(nonce, fd):
    # The nonce becomes a constant of this hook's code; defaults bind everything it uses, so a
    # program that reaches the hook's frame (a signal handler's frame argument) can change nothing.
    main = sys._getframe()
    while main.f_back is not None:
        main = main.f_back
    ns = {"__builtins__": {}, "_get": sys._getframe, "_write": os.write, "_main": main, "_fd": fd}
    exec("def hook(event, args, _get=_get, _write=_write, _main=_main, _fd=_fd):\n"
         "    if event == %r and _get(1) is _main:\n"
         "        _write(_fd, %r)\n" % (DONE, nonce), ns)
    hook = ns.pop("hook")
    ns.clear()
    return hook, ns

def _guard(cfg, secret_globals):
    blocked, prefixes = frozenset(cfg["blocked"]), tuple(cfg["prefixes"])
    allowed, realpath, frame_type = frozenset(cfg["allowed"]), os.path.realpath, type(sys._getframe())
    def hook(event, args):
        if (event in blocked or event.startswith(prefixes)) and event not in allowed:
            raise RuntimeError("sandbox: " + event + " is not allowed")
        if (event == "object.__getattr__" and args[1] == "f_code" and type(args[0]) is frame_type
                and args[0].f_globals is secret_globals):
            raise RuntimeError("sandbox: the marker hook's code is not accessible")
        if event == "open" and type(args[0]) in (str, bytes):  # exact types: run no program code here
            path = realpath(os.fsdecode(args[0]))
            if path == "/proc" or path.startswith("/proc/"):
                raise RuntimeError("sandbox: /proc is not accessible")
    return hook

def _main():
    cfg = json.loads(sys.argv[1])
    libc = None
    if os.getpid() == 1:
        if cfg["fs"]:
            libc = _private_root(cfg["fs"])
        _init(cfg["fd"])
    nonce = os.read(0, 256).decode("ascii", "replace")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if cfg["fs"]:
        os.chdir("/sandbox")
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
    _drop(cfg, libc)
    marker, secret_globals = _marker_hook(nonce.encode(), cfg["fd"])
    del nonce
    sys.addaudithook(marker)
    if cfg["guard"]:
        sys.addaudithook(_guard(cfg, secret_globals))
    return code, path

_code, _path = _main()
exec(_code, {"__name__": "__main__", "__file__": _path, "__builtins__": __builtins__})
sys.audit(DONE)
'''
