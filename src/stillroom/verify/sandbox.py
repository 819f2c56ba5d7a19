"""Run an untrusted Python program under limits and say what happened; never outlive the caller.

Linux only. Which protection holds where (root, non-root with user namespaces, neither), and which
is a kernel barrier rather than best effort, is in ``docs/sandbox.md``; :func:`isolation` says
what this machine allows. The processes of one run::

    verifier (run_python)
      └─ launcher: ``python -I -S sandbox_launcher.py CONFIG``; dies with the verifier
         (PR_SET_PDEATHSIG), and checks that the verifier was still there when it asked
           └─ init: pid 1 of a new pid namespace; dies with the launcher (PR_SET_PDEATHSIG).
              When it dies, or the program ends, the kernel kills every process in the
              namespace, including those that left with setsid() or a double fork.
                └─ the program: in the run's cgroup (memory and process count of all its
                   processes together), under rlimits, as a fresh uid when we are root, in a
                   root of its own: the system's /usr and /lib* and the interpreter read-only
                   (nosuid, nodev), a size-limited tmpfs as its directory and /tmp, nothing
                   else; SysV IPC of its own; PR_SET_NO_NEW_PRIVS, so setuid binaries give
                   it nothing.

Without namespaces the launcher is a child subreaper instead: every orphaned descendant of the
program is reparented to it and killed when the program ends; the directory's size is polled.

This module is the verifier's side: the limits, the run (its folder, its CONFIG), waiting for it
and killing what is left, probing what the machine allows, and the reason told to the caller. The
rest lives beside it:

- ``sandbox_launcher.py``: the launcher, init and the program's set-up (namespaces, mounts,
  rlimits, uid, PDEATHSIG, reaping). It runs as a script with ``-I -S``, so it imports the
  standard library only; the names both sides share (``PROGRAM``, ``SETUP_FAILED``, ``MB``) are
  defined there.
- ``sandbox_cgroup.py``: the run's cgroup, and where one can be made.
- ``sandbox_leftovers.py``: each run's folder and ``owner.json``, the processes of a run's uid,
  and :func:`clean_stale`, which every run calls first to remove what killed verifiers left.

Every public name of the sandbox is importable from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from stillroom.verify import sandbox_launcher
from stillroom.verify.sandbox_cgroup import _Cgroup, _probe_cgroup
from stillroom.verify.sandbox_launcher import (
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    DEVICES,
    KEPT_MOUNT_FLAGS,
    MB,
    MS_BIND,
    MS_MOVE,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    PROGRAM,
    SETUP_FAILED,
    SOCKET_PRELUDE,
    SYSTEM_DIRS,
    WRITABLE_DIRS,
)
from stillroom.verify.sandbox_leftovers import (
    FOLDER_PREFIX,
    LEGACY_SECONDS,
    OWNER,
    UID_RANGE,
    _interpreter,
    _reap_uid,
    _remove,
    _write,
    _write_owner,
    clean_stale,
    pids_of_uid,
)
from stillroom.verify.sandbox_limits import Limits

DISK_POLL_SECONDS = 0.1


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


def run_python(
    source: str,
    *,
    stdin: str = "",
    limits: Limits | None = None,
    files: dict[str, str] | None = None,
) -> SandboxResult:
    """Run ``source`` as ``main.py`` in a fresh directory (with ``files`` beside it) under the
    limits; never raises for anything the program does."""
    for name in files or {}:
        if os.path.basename(name) != name or name in ("", ".", "..", PROGRAM, OWNER):
            raise ValueError(f"sandbox file names must be plain names, got {name!r}")
    return _run(source, stdin, limits or Limits(), files or {}, isolation())


def _run(
    source: str, stdin: str, limits: Limits, files: dict[str, str], caps: dict[str, Any]
) -> SandboxResult:
    clean_stale()
    python = _interpreter()
    root = os.geteuid() == 0
    uid = _free_uid() if root else None
    folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX)
    cgroup = _Cgroup.plan(caps["cgroup"], os.path.basename(folder))
    try:
        os.chmod(folder, 0o711)  # the run's uid passes through to work/, and reads nothing here
        # First, so that a verifier killed from here on leaves a folder the next run can clean.
        _write_owner(folder, uid, cgroup)
        work = os.path.join(folder, "work")
        os.mkdir(work, 0o700)
        _write(os.path.join(work, PROGRAM), source)
        for name, text in files.items():
            _write(os.path.join(work, name), text)
        if uid is not None:
            for name in os.listdir(work):
                os.chown(os.path.join(work, name), uid, uid)
            os.chown(work, uid, uid)
        if cgroup is not None:
            cgroup.create(limits)
        config = {
            "parent": os.getpid(),
            "work": work,
            "files": [PROGRAM, *files],
            "python": python,
            "uid": uid,
            "namespaces": caps["namespaces"],
            "folder": folder,
            "prefix": _prefix(python),
            "cgroup_procs": cgroup.procs_files() if cgroup is not None else [],
            "limits": asdict(limits),
            "inodes": limits.files(),
            "nproc": limits.max_processes if root else _nproc_for_user(limits.max_processes),
        }
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin.encode())
            stdin_file.seek(0)
            return _supervise(config, env, stdin_file, limits, cgroup, caps)
    finally:
        if cgroup is not None:
            cgroup.destroy()
        _remove(folder)


def isolation() -> dict[str, Any]:
    """What this machine lets us do (probed once): ``mode`` ("uid" as root, else "user"),
    ``namespaces`` (mount + pid + network + IPC), ``netns`` (the same), ``cgroup`` (None or
    where), ``disk`` ("tmpfs" or "polled") and ``problems`` (what the kernel refused, so not
    used)."""
    global _CAPS
    with _PROBING:  # once, whichever thread asks first
        if _CAPS is None:
            _CAPS = _probe()
    return dict(_CAPS)


_CAPS: dict[str, Any] | None = None
_PROBING = threading.Lock()


def _probe() -> dict[str, Any]:
    """Run a trivial program the way runs will; while its setup fails, do without the cgroup,
    then without the namespaces."""
    cgroup = _probe_cgroup(FOLDER_PREFIX)
    tries = [(True, cgroup), (True, None), (False, cgroup), (False, None)]
    problems: list[str] = []
    for namespaces, group in dict.fromkeys((n, json.dumps(g)) for n, g in tries):
        caps = {
            "mode": "uid" if os.geteuid() == 0 else "user",
            "namespaces": namespaces,
            "netns": namespaces,
            "cgroup": json.loads(group),
            "disk": "tmpfs" if namespaces else "polled",
        }
        reason = _run("pass", "", Limits(wall_seconds=30), {}, caps).reason
        if not reason.startswith("sandbox setup failed"):
            break
        problems.append(reason)
    return {**caps, "problems": problems}


def _supervise(
    config: dict[str, Any],
    env: dict[str, str],
    stdin_file: IO[bytes],
    limits: Limits,
    cgroup: _Cgroup | None,
    caps: dict[str, Any],
) -> SandboxResult:
    python = config["python"]
    proc = subprocess.Popen(
        [python, "-I", "-S", sandbox_launcher.__file__, json.dumps(config)],
        stdin=stdin_file,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=config["work"],
        start_new_session=True,  # its own process group and session, to kill them all at once
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = _Capped(proc.stdout, limits.output_bytes)
    err = _Capped(proc.stderr, limits.output_bytes)
    timed_out = disk_full = False
    polled = not config["namespaces"]  # with namespaces the tmpfs's size is the cap
    deadline = time.monotonic() + limits.wall_seconds
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            try:
                proc.wait(timeout=min(left, DISK_POLL_SECONDS) if polled else left)
                break
            except subprocess.TimeoutExpired:
                pass
            if polled and _over_disk(config["work"], limits):
                disk_full = True
                break
    finally:
        if not config["namespaces"] and proc.poll() is None:
            # Its launcher kills the program's tree on SIGTERM (setsid'ed processes included).
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=2)
        _kill_all(proc.pid, config["uid"], python, cgroup)
        proc.wait()
    out.join()
    err.join()
    code = proc.returncode
    sig = -code if code < 0 else None
    exit_code = None if code < 0 else code
    stdout, stderr = out.text(), err.text()
    out_of_memory = cgroup is not None and cgroup.oom_killed()
    return SandboxResult(
        exit_code=exit_code,
        signal=sig,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        reason=_reason(exit_code, sig, timed_out, disk_full, out_of_memory, stderr, limits),
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


def _over_disk(work: str, limits: Limits) -> bool:
    """Whether the run's directory holds more than its disk cap (files or bytes). A directory
    we cannot read counts as over: the program hid it."""
    used, entries = 0, 0
    stack = [work]
    try:
        while stack:
            with os.scandir(stack.pop()) as listing:
                for entry in listing:
                    entries += 1
                    info = entry.stat(follow_symlinks=False)
                    used += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
    except FileNotFoundError:
        return False  # removed while we looked: measured again at the next poll
    except OSError:
        return True
    return used > limits.disk_mb * MB or entries > limits.files()


def _kill_all(pid: int, uid: int | None, python: str, cgroup: _Cgroup | None) -> None:
    """Kill the cgroup, the process group, then (uid mode) every process of the run's uid,
    until none is left. With a pid namespace, killing its init (in the group) kills the rest."""
    if cgroup is not None:
        cgroup.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if uid is not None:
        _reap_uid(uid, python)


def _free_uid() -> int:
    rng = random.SystemRandom()
    while True:
        uid = rng.randrange(*UID_RANGE)
        if not pids_of_uid(uid):
            return uid


def _nproc_for_user(allowance: int) -> int:
    # RLIMIT_NPROC counts every process of the uid, not only the program's.
    return len(pids_of_uid(os.getuid())) + allowance


def _prefix(python: str) -> str:
    """The interpreter's installation (executable, libpython, standard library)."""
    prefix = os.path.realpath(sys.base_prefix)
    return prefix if python.startswith(prefix + os.sep) else os.path.dirname(python)


# ---------------------------------------------------------------- what to tell the caller


def _reason(
    exit_code: int | None,
    sig: int | None,
    timed_out: bool,
    disk_full: bool,
    out_of_memory: bool,
    stderr: str,
    limits: Limits,
) -> str:
    if timed_out:
        return f"killed: wall timeout ({limits.wall_seconds:g} s)"
    if disk_full:
        return f"killed: disk limit ({limits.disk_mb} MB for all its files)"
    if sig is not None:
        if out_of_memory:
            return f"killed: out of memory (all its processes together, {limits.memory_mb} MB)"
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
    hint = limit_reached(summary, limits) or (
        f"memory limit ({limits.memory_mb} MB)" if out_of_memory else ""
    )
    if hint:
        return f"{hint}: exit {exit_code}: {summary}"
    return f"exit {exit_code}: {summary}" if summary else f"exit {exit_code}"


def limit_reached(error: str, limits: Limits | None = None) -> str:
    """Which limit an error message says the program reached ("memory limit (512 MB)"), or ''."""
    limits = limits or Limits()
    if "MemoryError" in error:
        return f"memory limit ({limits.memory_mb} MB)"
    if "BlockingIOError" in error and "Resource temporarily unavailable" in error:
        return f"process limit ({limits.max_processes})"
    if "File too large" in error:
        return f"file size limit ({limits.file_size_mb} MB)"
    if "No space left on device" in error:
        return f"disk limit ({limits.disk_mb} MB)"
    return ""


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


__all__ = [
    # the sandbox
    "Limits",
    "SandboxResult",
    "clean_stale",
    "error_summary",
    "isolation",
    "limit_reached",
    "pids_of_uid",
    "run_python",
    # what a run is made of (defined where they are used; importable from here as before)
    "DEVICES",
    "DISK_POLL_SECONDS",
    "FOLDER_PREFIX",
    "LEGACY_SECONDS",
    "MB",
    "OWNER",
    "PROGRAM",
    "SETUP_FAILED",
    "SOCKET_PRELUDE",
    "SYSTEM_DIRS",
    "UID_RANGE",
    "WRITABLE_DIRS",
    # Linux constants the launcher uses
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "KEPT_MOUNT_FLAGS",
    "MS_BIND",
    "MS_MOVE",
    "MS_NOATIME",
    "MS_NODEV",
    "MS_NODIRATIME",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_RELATIME",
    "MS_REMOUNT",
    "PR_SET_CHILD_SUBREAPER",
    "PR_SET_NO_NEW_PRIVS",
    "PR_SET_PDEATHSIG",
]
