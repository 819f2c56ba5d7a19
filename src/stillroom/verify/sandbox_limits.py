"""What a sandboxed check may use: CPU and wall time, memory, processes, files, output."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 2  # CPU time of each process (RLIMIT_CPU: SIGXCPU, then SIGKILL)
    wall_seconds: float = 5.0  # the whole run, start to kill
    memory_mb: int = 512  # address space of each process; with a cgroup, also all together
    max_processes: int = 16  # processes and threads of the run together
    file_size_mb: int = 1  # the largest file it may write
    disk_mb: int = 16  # all its files together (a tmpfs of this size, or polled)
    open_files: int = 64
    output_bytes: int = 64_000  # kept of stdout and of stderr; the rest is read and dropped

    def __post_init__(self) -> None:
        for option in fields(self):
            value = getattr(self, option.name)
            number = option.name == "wall_seconds"
            kinds = (int, float) if number else (int,)
            if (
                isinstance(value, bool)
                or not isinstance(value, kinds)
                or not math.isfinite(value)
                or value <= 0
            ):
                kind = "number of seconds" if number else "integer"
                raise ValueError(f"{option.name} must be a positive {kind}, got {value!r}")

    def files(self) -> int:
        """Files and directories the run may create (the tmpfs's inode count): empty files take
        no space, so the size alone would not bound them."""
        return max(1024, self.disk_mb * 256)
