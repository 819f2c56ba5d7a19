"""Who holds an output folder's writer lock: the record a writer leaves in ``.stillroom/lock``."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson


def lock_holder(fd: int, *, describe: bool = True) -> Any:
    """Who wrote the lock file open at ``fd`` (its record, or a description of it)."""
    try:
        raw = os.pread(fd, 4096, 0)
        holder = orjson.loads(raw) if raw.strip() else None
    except (OSError, orjson.JSONDecodeError):
        holder = None
    if not describe:
        return holder
    return describe_holder(holder) if holder else "holder unknown"


def describe_holder(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"
