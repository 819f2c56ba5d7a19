"""The run's cgroup: memory and process count of all the run's processes together.

:class:`_Cgroup` makes, limits, kills and removes one run's cgroup (v2, or v1's memory and pids
hierarchies); :func:`_probe_cgroup` finds where this process may make one. Separate from
:mod:`stillroom.verify.sandbox` because it is plain file-system work on ``/sys/fs/cgroup`` with a
life of its own: the verifier uses it for each run, and :mod:`stillroom.verify.sandbox_leftovers`
to remove the cgroups of runs whose verifier was killed. The caller names them (a run's cgroup
is named as its folder). The launcher gets only the paths of the ``cgroup.procs`` files, in its
CONFIG, and writes the program's process into them.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from typing import TYPE_CHECKING, Any

from stillroom.verify.sandbox_launcher import MB

if TYPE_CHECKING:
    from stillroom.verify.sandbox_limits import Limits


class _Cgroup:
    """One run's cgroup: one directory (v2), or one in the memory and one in the pids hierarchy
    (v1). The limits count every process of the run together."""

    def __init__(self, version: int, memory: str | None, pids: str | None):
        self.version, self.memory, self.pids = version, memory, pids

    @property
    def dirs(self) -> list[str]:
        return list(dict.fromkeys(d for d in (self.memory, self.pids) if d))

    @classmethod
    def plan(cls, found: dict[str, Any] | None, name: str) -> _Cgroup | None:
        if not found:
            return None
        if found["version"] == 2:
            path = os.path.join(found["base"], name)
            return cls(2, path, path)
        return cls(
            1,
            found["memory"] and os.path.join(found["memory"], name),
            found["pids"] and os.path.join(found["pids"], name),
        )

    @classmethod
    def from_dir(cls, directory: str) -> _Cgroup:
        version = 2 if os.path.exists(os.path.join(directory, "cgroup.kill")) else 1
        return cls(version, directory, None)

    def create(self, limits: Limits) -> None:
        for directory in self.dirs:
            os.mkdir(directory)
        memory = (limits.memory_mb + limits.disk_mb) * MB  # its files on tmpfs are memory too
        if self.version == 2:
            _put(self.memory, "memory.max", memory)
            _put(self.memory, "memory.swap.max", 0, optional=True)
            _put(self.pids, "pids.max", limits.max_processes)
            return
        if self.memory:
            _put(self.memory, "memory.limit_in_bytes", memory)
            _put(self.memory, "memory.memsw.limit_in_bytes", memory, optional=True)
        if self.pids:
            _put(self.pids, "pids.max", limits.max_processes)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def members(self) -> list[int]:
        pids: set[int] = set()
        for path in self.procs_files():
            with contextlib.suppress(OSError), open(path) as f:
                pids.update(int(line) for line in f if line.strip())
        return sorted(pids)

    def kill(self) -> None:
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                _put(directory, "cgroup.kill", 1)  # v2 (Linux 5.14+): all at once
        # v1, or an older v2: one by one until none is left; pids.max bounds the new ones.
        for _ in range(200):
            members = self.members()
            if not members:
                return
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)

    def oom_killed(self) -> bool:
        if not self.memory:
            return False
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(self.memory, name)) as f:
                counts = dict(line.split() for line in f if len(line.split()) == 2)
        except OSError:
            return False
        return int(counts.get("oom_kill", 0)) > 0

    def destroy(self) -> None:
        self.kill()
        for directory in self.dirs:
            for _ in range(100):  # busy while its last processes finish exiting
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _put(directory: str | None, name: str, value: int | str, *, optional: bool = False) -> None:
    assert directory is not None
    try:
        with open(os.path.join(directory, name), "w") as f:
            f.write(str(value))
    except OSError:
        if not optional:
            raise


def _probe_cgroup(prefix: str) -> dict[str, Any] | None:
    """Where this process may make cgroups that limit memory and processes: v2 (one tree with
    both controllers) if it can, else v1 (a memory and/or a pids hierarchy); None if neither.
    The trial cgroups it makes (and removes) are named ``prefix`` + ``probe-<pid>-<random>``."""
    mounts: list[tuple[str, str, set[str]]] = []  # (mount point, type, options)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, after = left.split(), right.split()
            if len(parts) > 4 and len(after) > 2 and after[0] in ("cgroup", "cgroup2"):
                mounts.append((parts[4], after[0], set(after[2].split(","))))
    own: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    for point, kind, _options in mounts:
        if kind != "cgroup2" or "" not in own:
            continue
        try:
            with open(os.path.join(point, "cgroup.controllers")) as f:
                available = set(f.read().split())
        except OSError:
            continue
        if {"memory", "pids"} <= available:
            for base in dict.fromkeys([point + own[""].rstrip("/"), point]):
                if _try_cgroup(base, ("memory.max", "pids.max"), prefix, enable=True):
                    return {"version": 2, "base": base}
    found: dict[str, Any] = {"version": 1, "memory": None, "pids": None}
    for controller, control in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
        for point, kind, options in mounts:
            if kind == "cgroup" and controller in options and controller in own:
                base = point + own[controller].rstrip("/")
                if _try_cgroup(base, (control,), prefix, enable=False):
                    found[controller] = base
                    break
    return found if found["memory"] or found["pids"] else None


def _try_cgroup(base: str, controls: tuple[str, ...], prefix: str, *, enable: bool) -> bool:
    probe = os.path.join(base, f"{prefix}probe-{os.getpid()}-{random.getrandbits(32):x}")
    for attempt in range(2):
        try:
            os.mkdir(probe)
        except OSError:
            return False
        try:
            if all(os.access(os.path.join(probe, c), os.W_OK) for c in controls):
                return True
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(probe)
        if not enable or attempt:
            return False
        # v2: the controllers must be enabled for the children of base (refused when base
        # itself holds processes, unless it is the root).
        try:
            _put(base, "cgroup.subtree_control", "+memory +pids")
        except OSError:
            return False
    return False
