"""Run an untrusted Python program and say what happened.

Linux only. What each protection relies on (measured on our dev container, where we run as root
with CAP_SYS_ADMIN and unprivileged user namespaces are enabled):

When we are root ("uid" isolation; the strong mode):
- The program runs under a fresh, random, otherwise unused uid/gid (no passwd entry needed), with
  no supplementary groups. File permissions then do the work: it can write only where "others"
  may write, and it cannot read root's files (``/root``, ``/proc/<our pid>/environ``).
- A new mount namespace (private propagation) bind-mounts the run's directory over the usual
  world-writable directories (/tmp, /var/tmp, /dev/shm, /run/lock), so a write there lands in
  the run's directory and is deleted with it. Other world-writable directories, if a machine has
  any (``find / -xdev -perm -0002 -type d``), are NOT covered.
- A new network namespace: only a loopback interface, down. This is a real barrier: no address,
  not even 127.0.0.1 of the host, is reachable.
- RLIMIT_NPROC is per real uid, and the uid is ours alone, so it bounds the whole run's process
  count (a fork bomb gets EAGAIN). Root ignores RLIMIT_NPROC; that is why we change uid.
- Cleanup: after the run we kill every process of that uid (``kill(-1, SIGKILL)`` sent by a
  process running as the uid, which the kernel applies atomically to all of them), so even a
  process that left the process group with ``setsid`` dies.
- If the interpreter lives under a directory "others" cannot enter (pyenv under /root), that
  directory is replaced in the namespace by an empty tmpfs holding only the interpreter's prefix,
  bound read-only; the rest of it is invisible.

When we are not root ("user" isolation; best effort):
- RLIMITs apply, but RLIMIT_NPROC counts all of our uid's processes (we set it to what we run now
  plus the allowance); the program can write wherever our uid can, and it can read
  ``/proc/<our pid>/environ`` (same uid). Cleanup kills the process group only.
- Network: an unprivileged user + network namespace when the kernel allows one (a real barrier);
  otherwise a prelude replaces ``socket.socket`` for internet families, which a determined
  program can bypass (``_socket``, ctypes): only the namespace is a barrier.

In both modes: CPU seconds, address space, file size, open files and core dumps are capped with
RLIMITs (kernel-enforced); a wall-clock timeout kills the process group; the environment holds
only PATH, HOME, TMPDIR, LANG (nothing inherited, so no API key reaches the program); stdout and
stderr are kept up to a cap (the rest is read and thrown away); Python runs with ``-I -S``
(isolated: no PYTHON* variables, no user site, no site-packages).

Not covered in either mode: a cap on the total memory of all processes together (each one has
RLIMIT_AS; a cgroup would bound the sum), world-readable files (the program can read them), and
kernel exploits. This is a sandbox for model-written code, not for adversaries with 0-days.

The setup steps run in a fresh interpreter started as this file (``python -I -S sandbox.py
CONFIG``), not in a ``preexec_fn``, which is unsafe in a process with threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from typing import IO, Any, NoReturn

# Linux constants (sched.h, mount.h); the stdlib has os.unshare only from 3.12.
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

SETUP_FAILED = 125  # the launcher's exit status when a protection could not be put in place
WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
UID_RANGE = (1_500_000, 2_500_000)  # far above any uid a distribution hands out
PROGRAM = "main.py"

# Used only where no network namespace could be made: bypassable, see the module docstring.
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


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 2
    wall_seconds: float = 5.0
    memory_mb: int = 512
    max_processes: int = 16
    file_size_mb: int = 1
    open_files: int = 64
    output_bytes: int = 64_000


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    stdout: str
    stderr: str
    timed_out: bool
    reason: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    isolation: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- the parent side


def run_python(
    source: str,
    *,
    stdin: str = "",
    limits: Limits | None = None,
    files: dict[str, str] | None = None,
) -> SandboxResult:
    """Run ``source`` as ``main.py`` in a fresh directory under the limits; never raises for
    anything the program does."""
    limits = limits or Limits()
    caps = isolation()
    python = _interpreter()
    root = os.geteuid() == 0
    uid = _free_uid() if root else None
    workdir = tempfile.mkdtemp(prefix="stillroom-sandbox-")
    try:
        _write(os.path.join(workdir, PROGRAM), source)
        for name, text in (files or {}).items():
            if os.path.basename(name) != name or name in ("", ".", ".."):
                raise ValueError(f"sandbox file names must be plain names, got {name!r}")
            _write(os.path.join(workdir, name), text)
        if uid is not None:
            for dirpath, _dirs, names in os.walk(workdir):
                for name in [dirpath, *(os.path.join(dirpath, n) for n in names)]:
                    os.chown(name, uid, uid)
        config = {
            "workdir": workdir,
            "python": python,
            "uid": uid,
            "namespaces": caps["namespaces"],
            "netns": caps["netns"],
            "redirect": [d for d in WRITABLE_DIRS if os.path.isdir(d)] if uid is not None else [],
            "hide": _hidden_prefix(python) if uid is not None else None,
            "limits": asdict(limits),
            "nproc": limits.max_processes if root else _nproc_for_user(limits.max_processes),
        }
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
            return _supervise(python, config, env, stdin_file, limits, uid, caps)
    finally:
        _remove(workdir)


def isolation() -> dict[str, Any]:
    """What this machine lets us do (probed once): the mode, namespaces, network namespace."""
    global _CAPS
    if _CAPS is None:
        _CAPS = _probe()
    return dict(_CAPS)


_CAPS: dict[str, Any] | None = None


def _probe() -> dict[str, Any]:
    root = os.geteuid() == 0
    config = {"probe": True, "root": root}
    proc = subprocess.run(
        [_interpreter(), "-I", "-S", __file__, json.dumps(config)],
        capture_output=True,
        text=True,
        env={},
        timeout=30,
        start_new_session=True,
    )
    try:
        found = json.loads(proc.stdout)
    except json.JSONDecodeError:
        found = {"namespaces": False, "netns": False}
    return {"mode": "uid" if root else "user", **found}


def _supervise(
    python: str,
    config: dict[str, Any],
    env: dict[str, str],
    stdin_file: IO[bytes],
    limits: Limits,
    uid: int | None,
    caps: dict[str, Any],
) -> SandboxResult:
    proc = subprocess.Popen(
        [python, "-I", "-S", __file__, json.dumps(config)],
        stdin=stdin_file,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=config["workdir"],
        start_new_session=True,  # its own process group and session, to kill them all at once
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = _Capped(proc.stdout, limits.output_bytes)
    err = _Capped(proc.stderr, limits.output_bytes)
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        _kill_all(proc.pid, uid, python)
        proc.wait()
    out.join()
    err.join()
    code = proc.returncode
    sig = -code if code < 0 else None
    exit_code = None if code < 0 else code
    stdout, stderr = out.text(), err.text()
    return SandboxResult(
        exit_code=exit_code,
        signal=sig,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        reason=_reason(exit_code, sig, timed_out, stderr, limits),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        isolation=caps,
    )


class _Capped:
    """Reads a pipe to its end in a thread, keeping at most ``cap`` bytes."""

    def __init__(self, pipe: IO[bytes], cap: int):
        self.pipe, self.cap = pipe, cap
        self.data = bytearray()
        self.truncated = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while chunk := self.pipe.read1(65536):  # type: ignore[attr-defined]
            room = self.cap - len(self.data)
            if len(chunk) > room:
                self.truncated = True
            self.data += chunk[: max(room, 0)]

    def join(self) -> None:
        # Every writer is dead by now (_kill_all), so the pipe reaches its end quickly.
        self.thread.join(timeout=5)
        self.pipe.close()

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def _kill_all(pid: int, uid: int | None, python: str) -> None:
    """Kill the process group, then (uid mode) every process of the run's uid, until none is
    left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if uid is None:
        return
    for _ in range(20):
        if not pids_of_uid(uid):
            return
        # kill(-1) from a process of that uid reaches all of them and nothing else.
        subprocess.run(
            [python, "-I", "-S", __file__, json.dumps({"reap": uid})],
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )


def pids_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid``. Zombies are left out: they are dead and hold
    nothing; their (dead) parents' reaper, init, collects them."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if fields.get("State", "").strip().startswith(("Z", "X")):
            continue
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            found.append(int(entry))
    return found


def _free_uid() -> int:
    rng = random.SystemRandom()
    while True:
        uid = rng.randrange(*UID_RANGE)
        if not pids_of_uid(uid):
            return uid


def _nproc_for_user(allowance: int) -> int:
    # RLIMIT_NPROC counts every process of the uid, not only the program's.
    return len(pids_of_uid(os.getuid())) + allowance


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def _hidden_prefix(python: str) -> list[str] | None:
    """[dir others cannot enter, interpreter prefix inside it], when there is one."""
    prefix = os.path.realpath(sys.base_prefix)
    if not python.startswith(prefix + os.sep):
        prefix = os.path.dirname(python)
    path = "/"
    for part in prefix.strip("/").split("/"):
        path = os.path.join(path, part)
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return [path, prefix]
    return None


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _remove(workdir: str) -> None:
    import shutil

    def make_writable(func: Any, path: str, _exc: Any) -> None:
        # The program may have removed write permission from its own directories.
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        func(path)

    shutil.rmtree(workdir, onerror=make_writable)


def _reason(
    exit_code: int | None, sig: int | None, timed_out: bool, stderr: str, limits: Limits
) -> str:
    if timed_out:
        return f"killed: wall timeout ({limits.wall_seconds:g} s)"
    if sig is not None:
        if sig == signal.SIGXCPU:
            return f"killed: CPU time limit ({limits.cpu_seconds} s)"
        if sig == signal.SIGXFSZ:
            return f"killed: file size limit ({limits.file_size_mb} MB)"
        if sig == signal.SIGKILL:
            return f"killed: SIGKILL (CPU time limit ({limits.cpu_seconds} s) or out of memory)"
        return f"killed by signal {signal.Signals(sig).name}"
    if exit_code == 0:
        return "ok"
    if exit_code == SETUP_FAILED and "stillroom-sandbox:" in stderr:
        return "sandbox setup failed: " + stderr.split("stillroom-sandbox:", 1)[1].strip()[:300]
    summary = error_summary(stderr)
    if "MemoryError" in summary:
        return f"memory limit ({limits.memory_mb} MB): exit {exit_code}: {summary}"
    if "BlockingIOError" in summary and "Resource temporarily unavailable" in summary:
        return f"process limit ({limits.max_processes}): exit {exit_code}: {summary}"
    if "File too large" in summary:
        return f"file size limit ({limits.file_size_mb} MB): exit {exit_code}: {summary}"
    return f"exit {exit_code}: {summary}" if summary else f"exit {exit_code}"


def error_summary(stderr: str, width: int = 300) -> str:
    """The exception line of a traceback, with the source line of the program's innermost
    frame (``assert f(2) == 4``) when there is one."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1].strip()
    source = ""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith('File "') and PROGRAM in lines[i]:
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if not nxt.lstrip().startswith(("File ", "^", "~")) and nxt.strip() != last:
                source = nxt.strip()
            break
    text = f"{last} at `{source}`" if source else last
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------- the launcher side


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _unshare(libc: Any, flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


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


def _probe_main(config: dict[str, Any]) -> NoReturn:
    libc = _libc()
    found = {"namespaces": False, "netns": False}
    try:
        if config["root"]:
            _unshare(libc, CLONE_NEWNS | CLONE_NEWNET)
            _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
            found["namespaces"] = True
        else:
            _unshare(libc, CLONE_NEWUSER | CLONE_NEWNET)
        found["netns"] = True
    except OSError:
        pass
    sys.stdout.write(json.dumps(found))
    sys.stdout.flush()  # os._exit does not flush
    os._exit(0)


def _launch(config: dict[str, Any]) -> NoReturn:
    """Put the protections in place, then become the program. Fails closed: if a step the probe
    said works fails now, exit SETUP_FAILED rather than run the program with less."""
    libc = _libc()
    workdir, python, uid = config["workdir"], config["python"], config["uid"]
    netns = config["netns"]
    home = workdir
    if uid is not None and config["namespaces"]:
        _unshare(libc, CLONE_NEWNS | CLONE_NEWNET)
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    # Opened inside the new mount namespace (a bind source must belong to it); the path itself
    # is hidden once /tmp is bound over.
    here = os.open(workdir, os.O_PATH | os.O_DIRECTORY)
    if uid is not None and config["namespaces"]:
        for directory in config["redirect"]:
            _mount(libc, f"/proc/self/fd/{here}", directory, None, MS_BIND)
        if config["redirect"]:
            home = config["redirect"][0]  # the program sees its directory as /tmp
        if config["hide"]:
            hidden, prefix = config["hide"]
            keep = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
            _mount(libc, "tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=64k")
            os.makedirs(prefix, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{keep}", prefix, None, MS_BIND | MS_REC)
            _mount(libc, None, prefix, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            os.close(keep)
    elif netns:
        _unshare(libc, CLONE_NEWUSER | CLONE_NEWNET)
    limits = config["limits"]
    mb = 1024 * 1024
    for which, value in (
        # soft < hard: SIGXCPU at the limit (a clear reason), SIGKILL a second later if caught.
        (resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1)),
        (resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2),
        (resource.RLIMIT_FSIZE, (limits["file_size_mb"] * mb,) * 2),
        (resource.RLIMIT_NOFILE, (limits["open_files"],) * 2),
        (resource.RLIMIT_NPROC, (config["nproc"],) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(which, value)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # By path, so that getcwd() names a path that exists in the namespace ("/tmp").
    os.chdir(home)
    os.close(here)
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    args = [PROGRAM] if netns else ["-c", SOCKET_PRELUDE]
    os.execve(python, [python, "-I", "-S", *args], env)


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
    if config.get("probe"):
        _probe_main(config)
    if "reap" in config:
        _reap(int(config["reap"]))
    try:
        _launch(config)
    except BaseException as exc:  # noqa: BLE001  (any failure here must not run the program)
        sys.stderr.write(f"stillroom-sandbox: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED)


if __name__ == "__main__":
    _main(sys.argv)
