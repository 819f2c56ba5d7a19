"""What a run leaves on the machine, and how it goes: its folder, its uid's processes, its cgroups.

Each run's folder (``stillroom-sandbox-*`` in the temp dir) holds ``owner.json``: the verifier's
pid and start time, the run's uid and cgroups. A verifier killed with SIGKILL cannot clean up, so
every run first calls :func:`clean_stale`, which removes the folders whose owner is dead after
killing what is left of their runs: the processes of the run's uid, the members of its cgroups,
and any process working inside the folder. The verifier uses the same pieces at the end of each
of its own runs (:func:`_reap_uid`, :func:`_remove`).

Separate from :mod:`stillroom.verify.sandbox` because it acts on runs other than the current
one, possibly of another (killed) verifier, and decides what in ``owner.json`` to trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from stillroom.verify import sandbox_launcher
from stillroom.verify.sandbox_cgroup import _Cgroup

UID_RANGE = (1_500_000, 2_500_000)  # far above any uid a distribution hands out
FOLDER_PREFIX = "stillroom-sandbox-"
OWNER = "owner.json"
LEGACY_SECONDS = 3600  # a folder without owner.json (older versions) is stale after an hour


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with the pid, a unique name)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _write_owner(folder: str, uid: int | None, cgroup: _Cgroup | None) -> None:
    owner = {
        "pid": os.getpid(),
        "start": _start_time(os.getpid()),
        "uid": uid,
        "cgroups": cgroup.dirs if cgroup is not None else [],
    }
    _write(os.path.join(folder, OWNER + ".part"), json.dumps(owner))
    os.replace(os.path.join(folder, OWNER + ".part"), os.path.join(folder, OWNER))


def _read_owner(folder: str) -> dict[str, Any] | None:
    """The folder's owner record, if it is ours to trust: written by our uid in a folder of
    our uid (in "user" mode the program could rewrite it; what we do with it is checked)."""
    path = os.path.join(folder, OWNER)
    try:
        if os.lstat(folder).st_uid != os.geteuid() or os.lstat(path).st_uid != os.geteuid():
            return None
        with open(path) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def clean_stale(directory: str | None = None) -> list[str]:
    """Remove the run folders in ``directory`` (the temp dir) whose verifier is dead, after
    killing what is left of their runs; return their paths. Runs at every sandbox start."""
    directory = directory or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(FOLDER_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        with contextlib.suppress(OSError):
            if not entry.is_dir(follow_symlinks=False):
                continue
            owner = _read_owner(entry.path)
            if owner is None:
                if time.time() - entry.stat(follow_symlinks=False).st_mtime < LEGACY_SECONDS:
                    continue  # being created now, or a run of an older version
            elif owner.get("start") is not None and _start_time(owner["pid"]) == owner["start"]:
                continue  # its verifier is alive
            _kill_leftovers(entry.path, owner or {})
            _remove(entry.path)
            removed.append(entry.path)
    return removed


def _kill_leftovers(folder: str, owner: dict[str, Any]) -> None:
    name = os.path.basename(folder)
    for directory in owner.get("cgroups") or []:
        # Only a cgroup this run would have made: named as its folder, in a cgroup file system.
        if (
            isinstance(directory, str)
            and os.path.basename(directory) == name
            and (directory.startswith("/sys/fs/cgroup/"))
        ):
            _Cgroup.from_dir(directory).destroy()
    uid = owner.get("uid")
    if isinstance(uid, int) and UID_RANGE[0] <= uid < UID_RANGE[1] and os.geteuid() == 0:
        _reap_uid(uid, _interpreter())
    # Without a pid namespace or a uid of its own, what is left is found by where it runs.
    inside = os.path.realpath(folder) + os.sep
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if (os.readlink(f"/proc/{entry}/cwd") + os.sep).startswith(inside):
                    os.kill(int(entry), signal.SIGKILL)


def pids_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid``. Zombies are left out: they are dead and hold
    nothing; their (dead) parents' reaper, init, collects them."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if status.get("State", "").strip().startswith(("Z", "X")):
            continue
        if int(status.get("Uid", "-1 0").split()[0]) == uid:
            found.append(int(entry))
    return found


def _reap_uid(uid: int, python: str) -> None:
    """Kill every process of ``uid``: the launcher, started as a reaper, becomes that uid and
    signals them all (``kill(-1)``); again until none is left."""
    for _ in range(20):
        if not pids_of_uid(uid):
            return
        # kill(-1) from a process of that uid reaches all of them and nothing else.
        subprocess.run(
            [python, "-I", "-S", sandbox_launcher.__file__, json.dumps({"reap": uid})],
            env={},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _remove(folder: str) -> None:
    def make_writable(func: Any, path: str, _exc: Any) -> None:
        # The program may have removed write permission from its own directories.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)

    shutil.rmtree(folder, onerror=make_writable)
