"""Shared pieces of the adversarial integrity tests (tests/integration/test_integrity_*.py).

stillroom's first promise: a run never loses, duplicates or hides a row, and never writes a key.
These helpers start the fault server and the CLI as real processes, interrupt them, and check that
promise from the outside, reading the files themselves (pyarrow, sqlite3, json) rather than
through stillroom's own readers, so a bug in a reader cannot hide a bug in a writer.

The invariants (each ``check_*`` raises AssertionError naming what broke):

(a) :func:`check_rows_once`: every input ``id`` appears exactly once across ``data/``,
    ``failed/`` and ``dropped/``. This holds for every pipeline these tests build, including
    ``complete -> dedup`` (a duplicate is in ``dropped/`` with its reason, its twin in ``data/``)
    and ``complete -> dedup -> complete``: none of them fans a row out. For a fan-out stage the
    invariant would be "at least once, and each (id, child) exactly once"; ``fanout=True`` checks
    the weaker "every id at least once". Failed rows carry ``error``/``error_type``, dropped rows
    ``drop_reason``: no row is hidden without a reason.
(b) :func:`check_answers`: every row in ``data/`` holds its own answer
    (``completion == "echo: " + prompt``, and so on for each generated column).
(c) :func:`check_not_resent`: a rerun sends no request whose answer was already in the request
    cache when it started (only requests in flight at the kill may be sent again).
(d) :func:`check_no_secret`: no file under the output or cache folder contains the secret.
(e) :func:`check_no_processes`: nothing of a killed (or finished) run is left running. Each run
    is started in its own session, so its children share its process group; the group must be
    empty once the run is gone.
(f) :func:`check_complete_folder`: a folder marked complete (``.stillroom/complete.json``,
    ``README.md``) has every committed shard present and readable, no shard the commit log does
    not name, and as many rows of each kind as the commit log and the completion record say.

Runs are bounded (``CLI_TIMEOUT``; a stalled run fails its test), no test asserts a wall time,
and every random choice (kill moments, faults, latencies) comes from a seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import stillroom.testing.fault_server
from tests.servers import free_port, running

KINDS = ("data", "failed", "dropped")
STILLROOM = str(Path(sys.executable).with_name("stillroom"))
CLI_TIMEOUT = 90.0  # no CLI run of these tests comes near this; a stall must not hang the suite
QUICK = ["--no-progress", "--no-embeddings"]
# Started as a file, not with -m: it then does not import the stillroom package (see its doc).
FAULT_SERVER = stillroom.testing.fault_server.__file__


# -- the fault server ------------------------------------------------------------------------


@dataclass
class Server:
    base_url: str
    log: Path

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written right now
                out.append(json.loads(line))
        return out

    def count(self) -> int:
        return len(self.entries())

    def prompts_after(self, index: int) -> list[str]:
        """The prompts of the requests that came after the first ``index`` (see count)."""
        return [entry["prompt"] for entry in self.entries()[index:]]

    def answered(self) -> Counter[str]:
        """How many proper answers (200, no fault) each prompt got: what was paid for."""
        return Counter(e["prompt"] for e in self.entries() if e["status"] == 200 and not e["fault"])


def fault_command(port: int, log: Path, *, latency_ms: float | tuple[float, float] = 0.0,
                  **options: Any) -> list[str]:
    """The fault server's command line; ``options`` are its flags (``rate_429=0.05``,
    ``retry_after="86400"``, ``sticky=True``, ``first_k=40``, ``match="x"``, ``seed=3``)."""
    latency = latency_ms if isinstance(latency_ms, tuple) else (latency_ms,)
    command = [sys.executable, FAULT_SERVER, "--port", str(port),
               "--log", str(log), "--latency-ms", *map(str, latency)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value is not None and value is not False:
            command += [flag, str(value)]
    return command


def fault_servers(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """The body of each test module's ``fault_server`` fixture: ``start(latency_ms, **faults)``
    starts a fault server (a real process on 127.0.0.1) and returns its :class:`Server`; all
    are stopped at the end."""
    with contextlib.ExitStack() as stack:

        def start(latency_ms: float | tuple[float, float] = 0.0, **options: Any) -> Server:
            port = free_port()
            log = tmp_path / f"requests-{port}.jsonl"
            log.touch()
            command = fault_command(port, log, latency_ms=latency_ms, **options)
            stack.enter_context(running(command, port, tmp_path / f"fault-{port}.log"))
            return Server(f"http://127.0.0.1:{port}/v1", log)

        yield start


# -- inputs and commands ---------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def prompt_rows(n: int, *, distinct: int | None = None, word: str = "prompt") -> list[dict[str, Any]]:
    """``n`` rows with unique ids; with ``distinct`` < n, row i asks prompt ``i % distinct``
    (so ``n - distinct`` rows are exact duplicates of earlier ones)."""
    distinct = distinct or n
    return [{"id": i, "prompt": f"{word} {i % distinct}"} for i in range(n)]


def env_with(cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "STILLROOM_CACHE_DIR": str(cache_dir), **extra}
    env.pop("COLUMNS", None)
    return env


def complete_args(source: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [STILLROOM, "complete", str(source), "-o", str(out), "--base-url", base_url,
            "--model", "echo", *QUICK, *extra]


def run_args(pipeline: Path, out: Path, *extra: str) -> list[str]:
    return [STILLROOM, "run", str(pipeline), "-o", str(out), *QUICK, *extra]


def pipeline_file(path: Path, source: Path, base_url: str, stages: list[dict[str, Any]], *,
                  backend: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """A pipeline file with one openai backend ``t`` (JSON is YAML)."""
    config = {"kind": "openai", "model": "echo", "base_url": base_url, **(backend or {})}
    path.write_text(json.dumps({"seed": seed, "input": str(source), "backends": {"t": config},
                                "stages": stages}, indent=1))
    return path


# -- running the CLI -------------------------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    started: float  # time.time() just before the process started
    pgid: int = 0

    @property
    def output(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


@dataclass
class Proc:
    """A CLI run in its own session (so its children share its process group)."""

    args: list[str]
    env: dict[str, str]
    workdir: Path
    started: float = 0.0
    popen: subprocess.Popen[bytes] | None = None
    name: str = "run"
    _files: list[Any] = field(default_factory=list)

    def start(self) -> Proc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        stamp = f"{self.name}-{time.monotonic_ns()}"
        out = open(self.workdir / f"{stamp}.out", "w+b")  # noqa: SIM115 - closed in result()
        err = open(self.workdir / f"{stamp}.err", "w+b")  # noqa: SIM115
        self._files = [out, err]
        self.started = time.time()
        self.popen = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=err,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> bool:
        """Send ``sig`` (SIGINT to the whole group, as a terminal's Ctrl-C does; others to the
        process only, as a supervisor's kill does). False when it had already exited."""
        if not self.running():
            return False
        with contextlib.suppress(ProcessLookupError):
            if sig == signal.SIGINT:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
            return True
        return False

    def result(self, timeout: float = CLI_TIMEOUT) -> Result:
        """Wait for the end (killing the group past ``timeout``, then failing the test)."""
        assert self.popen is not None
        timed_out = False
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(self.pid)
            self.popen.wait()
        out, err = self._files
        out.seek(0)
        err.seek(0)
        result = Result(self.popen.returncode, out.read().decode(errors="replace"),
                        err.read().decode(errors="replace"), self.started, self.pid)
        out.close()
        err.close()
        if timed_out:
            pytest.fail(f"{self.name} did not finish within {timeout:g} s (stalled?)\n{result.output}")
        return result


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_cli(args: list[str], env: dict[str, str], workdir: Path, *, timeout: float = CLI_TIMEOUT,
            name: str = "run") -> Result:
    """Run a CLI command to its end; checks (e) that it left no process behind."""
    result = Proc(args, env, workdir, name=name).start().result(timeout)
    check_no_processes(result.pgid)
    return result


def wait_until(condition: Callable[[], bool], proc: Proc | None = None, *,
               timeout: float = 60.0, what: str = "condition", interval: float = 0.01) -> bool:
    """Poll ``condition`` every ``interval`` seconds; False when ``proc`` ended first (nothing left to
    interrupt), AssertionError past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and not proc.running():
            return False
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
    return True


# -- reading what a run wrote ----------------------------------------------------------------


def commit_records(out: Path) -> list[dict[str, Any]]:
    """The commit log's records (lines that do not parse are skipped)."""
    log = out / ".stillroom" / "commits.jsonl"
    if not log.exists():
        return []
    records = []
    for line in log.read_bytes().split(b"\n"):
        with contextlib.suppress(ValueError):
            if line.strip():
                records.append(json.loads(line))
    return records


def commit_lines(out: Path, *, segment_at_least: int = 0) -> int:
    return sum(1 for r in commit_records(out) if r.get("segment", 0) >= segment_at_least)


def shard_files(out: Path, kind: str) -> list[Path]:
    folder = out / kind
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def read_kind(out: Path, kind: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for path in shard_files(out, kind):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def read_all(out: Path) -> dict[str, list[dict[str, Any]]]:
    return {kind: read_kind(out, kind) for kind in KINDS}


def is_marked_complete(out: Path) -> bool:
    return (out / ".stillroom" / "complete.json").exists()


def data_snapshot(out: Path) -> dict[str, list[str]]:
    """Every row of every kind, as sorted JSON texts: to compare two states of a folder."""
    return {kind: sorted(json.dumps(row, sort_keys=True, default=str) for row in rows)
            for kind, rows in read_all(out).items()}


def cache_answers(cache_dir: Path) -> dict[str, str]:
    """Request cache key -> answer text (every record with a ``text``)."""
    path = cache_dir / "requests.sqlite"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        values = db.execute("SELECT key, value FROM responses").fetchall()
    out = {}
    for key, value in values:
        record = json.loads(value)
        if isinstance(record, dict) and "text" in record:
            out[key] = record["text"]
    return out


def answered_prompts(cache_dir: Path) -> set[str]:
    """The prompts whose answer the cache holds (an echo answer names its prompt)."""
    return {text.removeprefix("echo: ") for text in cache_answers(cache_dir).values()
            if text.startswith("echo: ")}


# -- the invariants --------------------------------------------------------------------------


def check_rows_once(inputs: Iterable[dict[str, Any]], out: Path, *, fanout: bool = False) -> None:
    """(a) Every input id exactly once across data/failed/dropped; reasons present."""
    expected = Counter(row["id"] for row in inputs)
    assert all(count == 1 for count in expected.values()), "input ids must be unique"
    rows = read_all(out)
    seen: Counter[Any] = Counter()
    where: dict[Any, list[str]] = {}
    for kind, kind_rows in rows.items():
        for row in kind_rows:
            seen[row.get("id")] += 1
            where.setdefault(row.get("id"), []).append(kind)
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected), key=str)
    twice = sorted(i for i, c in seen.items() if c > 1 and i in expected)
    counts = {kind: len(kind_rows) for kind, kind_rows in rows.items()}
    assert not missing, f"{len(missing)} input rows lost (ids {missing[:8]}); folder holds {counts}"
    assert not extra, f"rows with ids not in the input: {extra[:8]}"
    if not fanout:
        assert not twice, (f"{len(twice)} rows written more than once (ids {twice[:8]}, e.g. in "
                           f"{where[twice[0]]}); folder holds {counts} for {len(expected)} inputs")
    for row in rows["failed"]:
        assert row.get("error") and row.get("error_type"), f"failed row without a reason: {row}"
    for row in rows["dropped"]:
        assert row.get("drop_reason"), f"dropped row without a reason: {row}"


def check_answers(out: Path, answers: dict[str, str] | None = None) -> None:
    """(b) Each data row holds its own answer: ``row[col] == "echo: " + row[source]`` for each
    ``col: source`` of ``answers`` (default ``{"completion": "prompt"}``)."""
    answers = answers or {"completion": "prompt"}
    for row in read_kind(out, "data"):
        for column, source in answers.items():
            assert row.get(column) == f"echo: {row.get(source)}", (
                f"row {row.get('id')} holds another row's (or no) answer in {column!r}: "
                f"{row.get(column)!r} for {source} {row.get(source)!r}")


def check_not_resent(sent: Iterable[str], cached_before: set[str]) -> None:
    """(c) Nothing answered in the cache before a rerun is sent again by it."""
    resent = sorted(set(sent) & cached_before)
    assert not resent, f"{len(resent)} requests already answered in the cache were sent again: {resent[:5]}"


def check_no_secret(secret: str, *roots: Path, texts: Iterable[str] = ()) -> None:
    """(d) No file under ``roots`` (and none of ``texts``) contains ``secret``."""
    needle = secret.encode()
    for root in roots:
        if not root.exists():
            continue
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file():
                assert needle not in path.read_bytes(), f"the secret was written to {path}"
    for text in texts:
        assert secret not in text, f"the secret was printed: ...{text[max(0, text.find(secret) - 80):][:200]}"


def check_no_processes(pgid: int, timeout: float = 5.0) -> None:
    """(e) The run's process group is empty (a killed run's children died with it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if time.monotonic() > deadline:
            left = _group_members(pgid)
            kill_group(pgid)
            raise AssertionError(f"processes of run {pgid} left running: {left}")
        time.sleep(0.05)


def _group_members(pgid: int) -> list[str]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
                members.append(f"{entry.name}: {cmd}")
    return members


def check_complete_folder(out: Path, *, card_required: bool = True) -> None:
    """(f) A folder marked complete is whole: the card is there (``card_required``; a run killed
    between its completion record and its card may lack it), every committed shard is present
    and readable, every shard is committed, and the row counts match the commit log. A card
    without the completion record is never right (an interrupted run has no card)."""
    import pyarrow.parquet as pq

    marked, card = is_marked_complete(out), (out / "README.md").exists()
    assert marked or not card, "README.md is there but .stillroom/complete.json is not"
    assert card or not marked or not card_required, "marked complete, but README.md is missing"
    if not marked:
        return
    raw = (out / ".stillroom" / "commits.jsonl").read_bytes()
    records = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"a complete folder's commit log has a bad line {number}") from None
    committed: dict[str, int] = {}  # file -> its rows, as the last record naming it says
    for record in records:
        for kind, relative in record.get("files", {}).items():
            committed[relative] = int(record.get("rows", {}).get(kind, committed.get(relative, 0)))
    for relative in sorted(committed):
        path = out / relative
        assert path.exists(), f"marked complete, but committed shard {relative} is missing"
        try:
            pq.read_table(path)
        except Exception as error:  # noqa: BLE001
            raise AssertionError(f"marked complete, but shard {relative} is unreadable: {error}") from None
    actual: dict[str, int] = {}
    for kind in KINDS:
        for path in shard_files(out, kind):
            relative = path.relative_to(out).as_posix()
            assert relative in committed, f"shard {relative} is in a complete folder but no commit names it"
        actual[kind] = sum(pq.ParquetFile(path).metadata.num_rows for path in shard_files(out, kind))
        expected = sum(rows for relative, rows in committed.items() if relative.startswith(f"{kind}/"))
        assert actual[kind] == expected, f"{kind}/ holds {actual[kind]} rows, the commit log says {expected}"
    card = json.loads((out / ".stillroom" / "complete.json").read_bytes())
    counts = card.get("counts") if isinstance(card, dict) else None
    if counts is not None:
        assert {kind: counts.get(kind, 0) for kind in KINDS} == actual, (
            f"the completion record counts {counts}, the folder holds {actual}")


def check_dedup(inputs: list[dict[str, Any]], out: Path, column: str = "prompt") -> None:
    """After an exact dedup: data/ has no two rows with one ``column``, and every value of a row
    that did not fail or get dropped by another stage is in data/ once."""
    rows = read_all(out)
    values = Counter(row[column] for row in rows["data"])
    doubled = [value for value, count in values.items() if count > 1]
    assert not doubled, f"dedup left duplicates in data/: {doubled[:5]}"
    dropped_by_dedup = [r for r in rows["dropped"] if r.get("stage") == "dedup"]
    for row in dropped_by_dedup:
        assert row[column] in values, (f"row {row['id']} dropped as a duplicate, but no row with "
                                       f"its {column} {row[column]!r} is in data/")


def check_all(inputs: list[dict[str, Any]], out: Path, *, answers: dict[str, str] | None = None,
              fanout: bool = False, card_required: bool = True) -> None:
    """(a), (b) and (f) for a finished run."""
    assert is_marked_complete(out), "the folder is not marked complete (no .stillroom/complete.json)"
    check_rows_once(inputs, out, fanout=fanout)
    check_answers(out, answers)
    check_complete_folder(out, card_required=card_required)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(nothing)"


def check_one_line_error(result: Result, *names: str) -> None:
    """Exit 2 with one line on stderr naming one of ``names``, and no traceback."""
    assert result.returncode == 2, (
        f"expected exit 2 and a one-line error naming {names}, got exit {result.returncode}; "
        f"stderr ends: {last_line(result.stderr)}\n{result.output}")
    assert "Traceback" not in result.stderr + result.stdout, (
        f"a traceback instead of an error; stderr ends: {last_line(result.stderr)}\n{result.output}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line of error, got {len(lines)}\n{result.output}"
    assert any(name in lines[0] for name in names), f"the error does not name {names}: {lines[0]}"


def processes_with(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line holds ``marker``, this one left out."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry))
    return found


class Problems(list[str]):
    """Assertion failures collected rather than raised at the first, so a test reports every
    broken invariant of one attack at once."""

    def attempt(self, check: Callable[[], None]) -> None:
        try:
            check()
        except AssertionError as error:
            self.append(str(error).split("\n")[0])
