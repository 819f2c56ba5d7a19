"""Errors a user sees: each names where the problem is (file, line, key) and how to fix it."""

from __future__ import annotations


class StillroomError(Exception):
    """Base class for errors that stop a run with a clear message and a non-zero exit."""

    exit_code = 1


class InputError(StillroomError):
    """A data file cannot be used as input. Raised before any request is sent."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = message
        where = path or ""
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(StillroomError):
    """A pipeline file or option is invalid. Raised before any request is sent."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ):
        self.path = path
        self.line = line
        self.key = key
        self.reason = message
        where = path or ""
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        prefix = f"{where}: " if where else ""
        keypart = f"{key}: " if key else ""
        super().__init__(f"{prefix}{keypart}{message}")


class OutputFolderError(StillroomError):
    """The output folder holds a different run, or cannot be written."""

    exit_code = 2


class WorkerError(StillroomError):
    """A worker of a distributed run (Ray) could not start or run; the message names the cause.

    Rows finished before it are committed: fix the cause and rerun the same command to resume.
    """


class RunAbort(StillroomError):
    """A problem with the run itself, not with one row (a damaged or unwritable request cache):
    it stops the run instead of failing every row one by one. Rows committed before it stay
    committed; fix the cause and rerun to resume."""

    exit_code = 2


class CacheError(RunAbort):
    """The request cache cannot be opened, read or written; the message names the file."""
