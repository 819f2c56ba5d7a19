"""The child side of the sandbox: the launcher, init and the program's set-up, run as a script.

``run_python`` (in :mod:`stillroom.verify.sandbox`) starts this file as
``python -I -S sandbox_launcher.py CONFIG``; CONFIG is one JSON object. The launcher dies with the
verifier (PR_SET_PDEATHSIG) and makes the namespaces; init, pid 1 of the new pid namespace, builds
the run's root (a tmpfs over its directory, the system's /usr and /lib* and the interpreter
read-only and nosuid, a fresh /proc) and reaps; the program's process joins the cgroup, takes its
rlimits and uid, sets PR_SET_NO_NEW_PRIVS, and becomes Python. Without namespaces the launcher is a child subreaper and runs the program
itself. ``CONFIG = {"reap": uid}`` instead kills every process of that uid (``kill(-1)`` as it).

Why a separate file: it runs in a fresh interpreter, not in a ``preexec_fn`` (unsafe in a process
with threads), started with ``-I -S``: no site-packages, so ``stillroom`` cannot be imported here.
It must stay self-contained: standard library imports only. It is importable as a module too (only
the standard library, nothing started): the parent takes from it the names both sides share
(``PROGRAM``, ``SETUP_FAILED``, ``MB``) and its ``__file__``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import sys
from typing import Any, NoReturn

# Linux constants (sched.h, mount.h, prctl.h); the stdlib has os.unshare only from 3.12.
CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_RELATIME = 1 << 21
MS_PRIVATE = 1 << 18
# statvfs's flag of a mount → the mount flag a remount of it must keep (locked in a user namespace)
KEPT_MOUNT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

SETUP_FAILED = 125  # the launcher's exit status when a protection could not be put in place
WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # all the run's one tmpfs
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # read-only
DEVICES = ("null", "zero", "full", "random", "urandom")
PROGRAM = "main.py"
MB = 1024 * 1024

# Used only where no network namespace could be made: bypassable, see docs/sandbox.md.
SOCKET_PRELUDE = """\
import socket as _s, runpy as _r
_real = _s.socket
class _NoNet(_real):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if family in (-1, _s.AF_INET, _s.AF_INET6) and fileno is None:
            raise PermissionError("network access is disabled in this sandbox")
        super().__init__(family, type, proto, fileno)
_s.socket = _NoNet
def _refuse(*a, **k):
    raise PermissionError("network access is disabled in this sandbox")
_s.create_connection = _refuse
del _s, _real, _NoNet, _refuse
_r.run_path("main.py", run_name="__main__")
"""


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _unshare(libc: Any, flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


def _prctl(libc: Any, option: int, value: int) -> None:
    args = (ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    _check(libc.prctl(ctypes.c_int(option), *args), f"prctl {option}")


def _enc(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _mount(
    libc: Any,
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int,
    data: str | None = None,
) -> None:
    result = libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data))
    _check(result, f"mount {source} on {target}")


def _map_own_ids(uid: int, gid: int) -> None:
    """In a new user namespace: be the same uid and gid as outside (one-line maps)."""
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _die_with_parent(libc: Any, parent_gone: Any, sig: int = signal.SIGKILL) -> None:
    """Get ``sig`` when our parent dies; if it died before we asked, go now."""
    _prctl(libc, PR_SET_PDEATHSIG, sig)
    if parent_gone():
        os._exit(SETUP_FAILED)


def _in_child(body: Any) -> NoReturn:
    """Run ``body`` in a forked child: it never returns into the parent's code."""
    try:
        body()
    except BaseException as exc:  # noqa: BLE001  (any failure here must not run the program)
        _setup_failed(exc)
    os._exit(SETUP_FAILED)


def _setup_failed(exc: BaseException) -> NoReturn:
    with contextlib.suppress(OSError):
        os.write(2, f"stillroom-sandbox: {type(exc).__name__}: {exc}\n".encode())
    os._exit(SETUP_FAILED)


def _launch(config: dict[str, Any]) -> NoReturn:
    """The launcher: dies with the verifier; makes the namespaces, then waits for init (or, with
    no pid namespace, for the program as its subreaper) and ends the way the program ended.
    Fails closed: if a step the probe said works fails now, exit SETUP_FAILED rather than run
    the program with less."""
    libc = _libc()
    if config["namespaces"]:
        _die_with_parent(libc, lambda: os.getppid() != config["parent"])
    else:
        # No pid namespace: when the verifier dies, or times the program out, SIGTERM asks us
        # to kill the program's whole tree (we are its subreaper) before we go.
        signal.signal(signal.SIGTERM, _kill_tree_and_exit)
        _die_with_parent(libc, lambda: os.getppid() != config["parent"], signal.SIGTERM)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    root = config["uid"] is not None
    uid, gid = os.getuid(), os.getgid()
    user = 0 if root else CLONE_NEWUSER
    if config["namespaces"]:
        # CLONE_NEWIPC: SysV shared memory, semaphores and message queues (and POSIX message
        # queues) of its own, gone with the namespace; nothing is shared with other checks.
        _unshare(libc, user | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC)
        if not root:
            _map_own_ids(uid, gid)
        status_r, status_w = os.pipe()  # init tells the launcher how the program ended
        alive_r, alive_w = os.pipe()  # only the launcher holds alive_w: EOF means it is gone
        init = os.fork()
        if init == 0:
            os.close(status_r)
            os.close(alive_w)
            _in_child(lambda: _init(libc, config, status_w, alive_r))
        os.close(status_w)
        os.close(alive_r)
        report = b""
        while chunk := os.read(status_r, 64):
            report += chunk
        _, status = os.waitpid(init, 0)
        _end_like(int(report) if report.strip().isdigit() else status)
    # No pid namespace: orphaned descendants of the program come to us, and we kill them.
    _prctl(libc, PR_SET_CHILD_SUBREAPER, 1)
    launcher = os.getpid()
    program = os.fork()
    if program == 0:
        _in_child(lambda: _program(libc, config, config["work"], _cgroup_files(config), launcher))
    _, status = os.waitpid(program, 0)
    _kill_descendants(launcher)
    _end_like(status)


def _init(libc: Any, config: dict[str, Any], status_w: int, alive_r: int) -> NoReturn:
    """Pid 1 of the run's namespace: sets up its file system, starts the program, reaps, and
    reports how the program ended. Its exit is the end of every process in the namespace."""
    _die_with_parent(libc, lambda: bool(select.select([alive_r], [], [], 0)[0]))
    # With no handler, pid 1 ignores every signal sent from inside its namespace.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    cgroup = _cgroup_files(config)  # opened before /sys is out of sight
    home = _private_files(libc, config)
    program = os.fork()
    if program == 0:
        os.close(status_w)
        os.close(alive_r)
        _in_child(lambda: _program(libc, config, home, cgroup, None))
    for fd in cgroup:
        os.close(fd)
    while True:
        pid, status = os.waitpid(-1, 0)  # orphans of the namespace come here too
        if pid == program:
            break
    os.write(status_w, str(status).encode())
    os._exit(0)


def _private_files(libc: Any, config: dict[str, Any]) -> str:
    """Inside the new mount namespace: the run's directory becomes a tmpfs of disk_mb (its files
    copied in), and the root a tmpfs holding, read-only, only the system's /usr and /lib*, the
    interpreter's prefix and a few devices, with the run's tmpfs as /tmp, /var/tmp, /dev/shm and
    /run/lock (one budget for all) and a fresh /proc that shows the namespace's processes only.
    Nothing else of the machine (the data being verified, home directories, the project) is
    there to read. Returns the program's home directory."""
    work, uid = config["work"], config["uid"]
    host = os.open(work, os.O_RDONLY | os.O_DIRECTORY)  # the files, once the tmpfs hides them
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    size = f"size={config['limits']['disk_mb']}m,nr_inodes={config['inodes']},mode=0700{owner}"
    _mount(libc, "tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, size)
    for name in config["files"]:
        source = os.open(name, os.O_RDONLY, dir_fd=host)
        target = os.open(os.path.join(work, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        while chunk := os.read(source, 1 << 16):
            os.write(target, chunk)
        if uid is not None:
            os.fchown(target, uid, uid)
        os.close(source)
        os.close(target)
    os.close(host)
    # A bind source must belong to this namespace: opened here, used through /proc/self/fd.
    here = os.open(work, os.O_PATH | os.O_DIRECTORY)
    root = config["folder"]  # built over the run's folder, which it hides
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755")
    for path in (*SYSTEM_DIRS, config["prefix"]):
        _bind_read_only(libc, path, root)
    os.makedirs(root + "/dev")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "w").close()
        _mount(libc, f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, link in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(link, f"{root}/dev/{name}")
    for directory in WRITABLE_DIRS:
        os.makedirs(root + directory, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{here}", root + directory, None, MS_BIND)
    os.close(here)
    os.makedirs(root + "/proc")
    # The new root on top of the old one: even a chroot escape (from a user namespace of its
    # own) finds this root at "/", not the machine's.
    os.chdir(root)
    _mount(libc, root, "/", None, MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    _mount(libc, None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    try:
        _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        if uid is not None:
            raise  # as root it always works; in a user namespace the kernel may refuse
    return WRITABLE_DIRS[0]  # it sees its directory as /tmp


def _bind_read_only(libc: Any, path: str, root: str) -> None:
    """``path`` of the machine at the same place under ``root``, read-only (symlinks copied)."""
    target = root + path
    if not os.path.lexists(path) or os.path.lexists(target):
        return  # absent, or inside something bound already (a prefix under /usr)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
        return
    os.mkdir(target)
    _mount(libc, path, target, None, MS_BIND | MS_REC)
    # A remount must keep the flags the mount has (in a user namespace they are locked); it
    # adds nosuid (a setuid binary does not change the uid) and nodev (no device node counts).
    has = os.statvfs(target).f_flag
    kept = sum(flag for bit, flag in KEPT_MOUNT_FLAGS if has & bit)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | kept
    _mount(libc, None, target, None, flags)


def _cgroup_files(config: dict[str, Any]) -> list[int]:
    return [os.open(path, os.O_WRONLY) for path in config["cgroup_procs"]]


def _program(
    libc: Any, config: dict[str, Any], home: str, cgroup: list[int], launcher: int | None
) -> NoReturn:
    """The program's process: joins the cgroup, takes its limits and uid, becomes Python."""
    for fd in cgroup:
        os.write(fd, b"0")  # this process; its children inherit the cgroup
        os.close(fd)
    limits = config["limits"]
    for which, value in (
        # soft < hard: SIGXCPU at the limit (a clear reason), SIGKILL a second later if caught.
        (resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1)),
        (resource.RLIMIT_AS, (limits["memory_mb"] * MB,) * 2),
        (resource.RLIMIT_FSIZE, (limits["file_size_mb"] * MB,) * 2),
        (resource.RLIMIT_NOFILE, (limits["open_files"],) * 2),
        (resource.RLIMIT_NPROC, (config["nproc"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(which, value)
    uid = config["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if launcher is not None:
        # No pid namespace: die with the launcher (asked after the uid change, which clears it).
        _die_with_parent(libc, lambda: os.getppid() != launcher)
    # By path, so that getcwd() names a path that exists in the namespace ("/tmp").
    os.chdir(home)
    # Last, just before exec: no setuid/setgid binary and no file capability can give it or
    # its children more privileges than it has now (inherited across fork and exec, for good).
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    args = [PROGRAM] if config["namespaces"] else ["-c", SOCKET_PRELUDE]
    python = config["python"]
    os.execve(python, [python, "-I", "-S", *args], env)


def _end_like(status: int) -> NoReturn:
    """Exit the way a wait status says a process ended: same code, or killed by same signal."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    sig = -code
    with contextlib.suppress(OSError, ValueError):
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{entry}/stat") as f,
            ):
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry))
    return found


def _kill_tree_and_exit(*_: Any) -> NoReturn:
    _kill_descendants(os.getpid())
    os._exit(SETUP_FAILED)


def _kill_descendants(launcher: int) -> None:
    """As a child subreaper: kill our children until we have none. Orphans of the program's
    tree (setsid or not) are reparented to us as their parents die, so this reaches them all."""
    while True:
        for child in _children(launcher):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _reap(uid: int) -> NoReturn:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # kill(-1) as root would signal every process on the machine: only ever as the run's uid.
    if uid == 0 or os.getresuid() != (uid, uid, uid):
        os._exit(1)
    with contextlib.suppress(ProcessLookupError):  # none left
        os.kill(-1, signal.SIGKILL)
    os._exit(0)


def _main(argv: list[str]) -> NoReturn:
    config = json.loads(argv[1])
    if "reap" in config:
        _reap(int(config["reap"]))
    try:
        _launch(config)
    except BaseException as exc:  # noqa: BLE001  (any failure here must not run the program)
        _setup_failed(exc)


if __name__ == "__main__":
    _main(sys.argv)
