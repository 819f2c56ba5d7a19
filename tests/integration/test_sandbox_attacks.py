"""`stillroom verify --kind code` on hostile answers, the way a user runs it: a verifier killed
with SIGKILL mid-check leaves no process and (after the next start) no folder or cgroup behind;
memory and disk are bounded for the check as a whole, not per process or per file."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from stillroom.data.output import OutputFolder
from stillroom.verify.sandbox import FOLDER_PREFIX, OWNER, isolation, run_python
from tests.integrity_helpers import processes_with

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only"),
]

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def _answers(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _verify(data: Path, out: Path, options: dict, **popen) -> subprocess.Popen:
    command = [
        STILLROOM,
        "verify",
        str(data),
        "-o",
        str(out),
        "--kind",
        "code",
        "--no-progress",
        "--options",
        json.dumps(options),
    ]
    return subprocess.Popen(command, text=True, **popen)


def test_a_killed_verifier_leaves_no_process_and_no_folder(tmp_path: Path) -> None:
    marker = f"stillroom-attack-{uuid.uuid4().hex}"
    hostile = f"""
import os, sys, time
def add(a, b):
    return a + b
sleeper = [sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)", "{marker}"]
if os.fork() == 0:  # leaves the process group and is reparented away: double fork + setsid
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, sleeper)
    os._exit(0)
if os.fork() == 0:  # stays a child
    os.execv(sys.executable, sleeper)
time.sleep(60)  # holds the check until the verifier is killed
"""
    rows = [{"id": "escaper", "completion": hostile, "tests": "assert add(1, 2) == 3"}]
    cli = _verify(
        _answers(tmp_path, rows),
        tmp_path / "out",
        {"wall_seconds": 60, "cpu_seconds": 30},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _wait_until(lambda: len(processes_with(marker)) >= 2, 60), "it never ran"
        folders = _folders_of(cli.pid)
        assert len(folders) == 1
        cgroups = json.loads((folders[0] / OWNER).read_text())["cgroups"]
        assert all(Path(c).is_dir() for c in cgroups)
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        _wait_until(lambda: not processes_with(marker), 5)
        assert processes_with(marker) == []
        # The next sandbox start (here, in this process) removes what the killed one left.
        assert run_python("print('next')").stdout == "next\n"
        assert _folders_of(cli.pid) == []
        assert not any(Path(c).exists() for c in cgroups)
    finally:
        cli.kill()
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


MEMORY_BOMB = """
import os, time
def add(a, b):
    return a + b
held = []
for i in range(4):  # 4 x 100 MB, each under the per-process limit (RLIMIT_AS 160 MB)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        block = b"x" * (100 * 1024 * 1024)
        os.write(w, b"1")
        time.sleep(60)
        os._exit(0)
    os.close(w)
    os.read(r, 1)  # b"1" once it holds its memory, b"" if it died first
    held.append(pid)
time.sleep(0.3)  # let the out-of-memory killer finish
alive = sum(os.waitpid(pid, os.WNOHANG)[0] == 0 for pid in held)
print("holding", alive, "x 100 MB", flush=True)
"""

DISK_BOMB = """
import os
def add(a, b):
    return a + b
written = 0
chunk = b"x" * 65536  # 3000 files of 64 KiB (about 190 MB), each under the file size limit
for name in range(3000):
    try:
        directory = ("/tmp", "/var/tmp", "/dev/shm", ".")[name % 4]
        with open(os.path.join(directory, f"f{name}"), "wb") as f:
            f.write(chunk)
        written += 1
    except OSError as exc:
        print("stopped:", exc.strerror)
        break
print("wrote", written, "files of 64 KiB", flush=True)
"""


def test_memory_and_disk_bombs_are_bounded_for_the_check_as_a_whole(tmp_path: Path) -> None:
    found = isolation()
    rows = [
        {"id": "memory", "completion": MEMORY_BOMB, "tests": "assert add(1, 2) == 3"},
        {"id": "disk", "completion": DISK_BOMB, "tests": "assert add(1, 2) == 3"},
    ]
    options = {
        "memory_mb": 160,
        "disk_mb": 16,
        "file_size_mb": 1,
        "wall_seconds": 30,
        "cpu_seconds": 10,
    }
    cli = _verify(
        _answers(tmp_path, rows),
        tmp_path / "out",
        options,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = cli.communicate(timeout=300)
    assert cli.returncode == 0, stderr
    verdicts = {row["id"]: row for row in OutputFolder(tmp_path / "out").read_rows("data")}
    memory = verdicts["memory"]["verify_details"]["sandbox"]["stderr"]
    disk = verdicts["disk"]["verify_details"]["sandbox"]["stderr"]
    cgroup = found["cgroup"] or {}
    if cgroup.get("version") == 2 or cgroup.get("memory"):
        # 176 MB (memory_mb + disk_mb) for all its processes together: at most one child holds.
        holding = int(re.search(r"holding (\d+) x 100 MB", memory).group(1))
        assert holding <= 1, memory
    if found["disk"] == "tmpfs":
        # One 16 MB tmpfs for the folder and the world-writable directories together.
        written = int(re.search(r"wrote (\d+) files", disk).group(1))
        assert "No space left on device" in disk
        assert written * 64 <= 16 * 1024, disk
    else:
        assert "disk limit (16 MB" in verdicts["disk"]["reason"], verdicts["disk"]["reason"]
    # The bombs did not stop correct code from being judged: both answers are right.
    assert verdicts["memory"]["passed"] is True and verdicts["disk"]["passed"] is True


SEARCHER = """
import re
def add(a, b):
    # Not a solution: the expected value, read from the data being verified.
    for path in [DATA]:
        for line in open(path):
            found = re.search(rf"add\\({a}, {b}\\) == (\\d+)", line)
            if found:
                return int(found.group(1))
    return 0
"""


@pytest.mark.skipif(not isolation()["namespaces"], reason="needs mount namespaces")
def test_an_answer_cannot_read_the_expected_values_from_the_data_on_disk(tmp_path: Path) -> None:
    # The data in a world-readable place outside the temp dirs (which the sandbox replaces
    # anyway), as a shared dataset would be; the answer knows where.
    base = "/run" if os.access("/run", os.W_OK) else str(Path.home())
    readable = Path(tempfile.mkdtemp(prefix="stillroom-test-", dir=base))
    try:
        readable.chmod(0o755)
        searcher = SEARCHER.replace("DATA", repr(str(readable / "answers.jsonl")))
        rows = [
            {
                "id": "searcher",
                "completion": searcher,
                "tests": "assert add(1, 2) == 3\nassert add(20, 22) == 42",
            }
        ]
        data = _answers(readable, rows)
        data.chmod(0o644)
        namespace: dict = {}
        exec(searcher, namespace)
        assert namespace["add"](20, 22) == 42  # outside the sandbox the trick works
        cli = _verify(data, tmp_path / "out", {}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, stderr = cli.communicate(timeout=300)
        assert cli.returncode == 0, stderr
        [row] = OutputFolder(tmp_path / "out").read_rows("data")
        assert row["passed"] is False
        assert "FileNotFoundError" in row["reason"], row["reason"]  # no such file in there
    finally:
        shutil.rmtree(readable)


ORACLE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
segment = libc.shmget(KEY, 4096, 0o1000 | 0o666)  # the same segment in every check, if it can
memory = libc.shmat(segment, None, 0) if segment >= 0 else None
learned = ctypes.string_at(memory, 64).split(b"\\0")[0].decode() if memory else ""
if sys.stdin.read().strip() == "learn" and memory:
    ctypes.memmove(memory, b"YES\\0", 4)  # what an earlier check showed the answer to be
print(learned or "NO")
"""


@pytest.mark.skipif(not isolation()["namespaces"], reason="needs namespaces (IPC)")
def test_an_answer_cannot_carry_what_it_learned_from_one_check_to_the_next() -> None:
    # B7: SysV shared memory used to outlive a check; an answer for stdin/stdout pairs learned
    # the expected outputs across checks (a wrong guess, then the right one).
    from stillroom.verify.code import CodeVerifier

    answer = ORACLE.replace("KEY", str(0x5B000000 + uuid.uuid4().int % 0xFFFFFF))
    verifier = CodeVerifier(cpu_seconds=2, wall_seconds=5.0)
    first = verifier.verify({"completion": answer, "tests": [{"input": "learn", "output": "NO"}]})
    assert first.passed, first.reason  # the segment was there to write to
    second = verifier.verify({"completion": answer, "tests": [{"input": "7", "output": "YES"}]})
    assert not second.passed
    assert second.reason == "test 1/1: wrong output: expected 'YES', got 'NO'"



def _folders_of(pid: int) -> list[Path]:
    """The sandbox folders in the temp dir that the process ``pid`` owns."""
    found = []
    for path in Path(tempfile.gettempdir()).glob(FOLDER_PREFIX + "*"):
        try:
            if json.loads((path / OWNER).read_text())["pid"] == pid:
                found.append(path)
        except (OSError, ValueError, KeyError):
            continue
    return found


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
