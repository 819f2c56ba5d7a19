"""The sandbox with real subprocesses: normal runs and hostile programs (no mocks)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from stillroom.verify import sandbox, sandbox_leftovers
from stillroom.verify.sandbox import (
    Limits,
    clean_stale,
    error_summary,
    isolation,
    pids_of_uid,
    run_python,
)
from tests.integrity_helpers import processes_with

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux only")

FAST = Limits(cpu_seconds=1, wall_seconds=3.0, memory_mb=256, max_processes=16)
STRONG = isolation()["mode"] == "uid" and isolation()["namespaces"]
needs_strong = pytest.mark.skipif(not STRONG, reason="needs root (uid + namespace isolation)")


def run(source: str, **kwargs):
    return run_python(textwrap.dedent(source), limits=kwargs.pop("limits", FAST), **kwargs)


def test_ok_program_output_and_stdin():
    result = run("import sys\nprint(sys.stdin.read().upper())", stdin="hi")
    assert result.ok and result.reason == "ok"
    assert result.stdout == "HI\n"


def test_failing_assert_names_the_line():
    result = run("x = 1\nassert x == 2, 'x is not two'\n")
    assert not result.ok and result.exit_code == 1
    assert (
        result.reason == "exit 1: AssertionError: x is not two at `assert x == 2, 'x is not two'`"
    )


def test_output_is_capped():
    result = run("print('x' * 1_000_000)", limits=Limits(output_bytes=1000))
    assert result.ok and result.stdout_truncated and len(result.stdout) == 1000


def test_error_summary_without_traceback():
    assert error_summary("") == ""
    assert error_summary("boom\n") == "boom"


def test_infinite_loop_hits_the_cpu_limit():
    result = run("while True:\n    pass\n")
    assert not result.ok and not result.timed_out
    assert result.reason == "killed: CPU time limit (1 s)"


def test_sleeping_forever_hits_the_wall_timeout():
    result = run("import time\ntime.sleep(60)\n", limits=Limits(wall_seconds=1.0))
    assert result.timed_out and not result.ok
    assert result.reason == "killed: wall timeout (1 s)"


def test_memory_bomb_fails_with_memory_limit():
    result = run("x = bytearray(10 * 1024 ** 3)\nprint('allocated')\n")
    assert not result.ok and "allocated" not in result.stdout
    assert result.reason.startswith("memory limit (256 MB)")
    assert "MemoryError" in result.reason


def test_big_file_hits_the_file_size_limit():
    result = run("open('big', 'wb').write(b'x' * 5_000_000)\n", limits=Limits(file_size_mb=1))
    assert not result.ok
    assert "file size limit (1 MB)" in result.reason


FORK_BOMB = """\
import os, time
print("uid", os.getuid(), flush=True)
# A bounded bomb: every process forks up to 8 times, so it stops at 2**8 processes even if the
# limit failed (safe for the machine running the test).
for _ in range(8):
    try:
        pid = os.fork()
    except OSError as exc:
        print("refused", type(exc).__name__, flush=True)
        continue
    if pid == 0:
        print("child", os.getpid(), flush=True)
        try:
            os.setsid()  # try to leave the process group, to outlive a group kill
        except OSError:
            pass
time.sleep(60)
"""


def test_fork_bomb_is_bounded_and_leaves_nothing_behind():
    result = run(FORK_BOMB, limits=Limits(cpu_seconds=2, wall_seconds=3.0, max_processes=16))
    assert not result.ok
    assert result.reason == "killed: wall timeout (3 s)"
    lines = result.stdout.splitlines()
    children = [int(line.split()[1]) for line in lines if line.startswith("child")]
    assert "refused BlockingIOError" in lines  # the process limit stopped it
    assert len(children) < 16  # the main process counts too
    alive = pids_of_uid(_uid(lines))  # zombies (dead, not yet collected by init) left out
    assert not set(children) & set(alive)
    if STRONG:
        assert alive == []


def _uid(lines: list[str]) -> int:
    return int(next(line for line in lines if line.startswith("uid")).split()[1])


def test_writing_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    in_tmp = f"/tmp/stillroom-escape-{uuid.uuid4().hex}"
    result = run(
        f"""
        import os
        print(os.getcwd())
        open("mine.txt", "w").write("fine")  # its own directory: allowed
        for path in ({str(target)!r}, {in_tmp!r}, "/var/tmp/x-{uuid.uuid4().hex}"):
            try:
                open(path, "w").write("escaped")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, type(exc).__name__)
        open({str(target)!r}, "w").write("escaped")
        """
    )
    assert not result.ok and result.exit_code == 1
    assert "escaped.txt" in result.reason  # the last write failed and says where
    assert not target.exists()
    assert not os.path.exists(in_tmp)
    assert f"refused {target}" in result.stdout


@needs_strong
def test_project_and_home_are_not_writable(tmp_path):
    project = os.getcwd()
    result = run(
        f"""
        import os
        for path in ({project!r} + "/escaped.txt", "/root/escaped.txt", "/etc/escaped"):
            try:
                open(path, "w").write("escaped")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, type(exc).__name__)
        """
    )
    assert result.ok
    assert "wrote" not in result.stdout
    assert result.stdout.count("refused") == 3
    assert not os.path.exists(os.path.join(project, "escaped.txt"))
    assert not os.path.exists("/root/escaped.txt")


def test_socket_to_a_local_server_never_connects():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        result = run(
            f"""
            import socket
            s = socket.socket()
            s.settimeout(2)
            s.connect(("127.0.0.1", {port}))
            s.sendall(b"stolen")
            print("connected")
            """
        )
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()
    assert not result.ok and "connected" not in result.stdout
    assert "Network is unreachable" in result.reason or "network access" in result.reason


def test_environment_holds_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-secret-123")
    result = run(
        """
        import os
        print(sorted(os.environ))
        print(os.environ.get("OPENAI_API_KEY"))
        """
    )
    assert result.ok
    assert "sk-fake-secret-123" not in result.stdout
    assert "OPENAI_API_KEY" not in result.stdout


@needs_strong
def test_parent_environ_cannot_be_read_from_proc(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-secret-456")
    result = run(
        f"""
        import os
        for pid in ({os.getpid()}, os.getppid()):
            print(open(f"/proc/{{pid}}/environ").read())
        """
    )
    assert not result.ok
    assert "sk-fake-secret-456" not in result.stdout + result.stderr
    # Another uid's process (PermissionError), or, in a pid namespace with its own /proc, none.
    assert "PermissionError" in result.reason or "FileNotFoundError" in result.reason


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("wall_seconds", -1),
        ("wall_seconds", 0.0),
        ("wall_seconds", float("inf")),
        ("cpu_seconds", 0),
        ("memory_mb", -5),
        ("max_processes", 2.5),
        ("disk_mb", None),
        ("open_files", False),
    ],
)
def test_limits_name_the_option_that_is_not_positive(option, value):
    with pytest.raises(ValueError, match=f"^{option} must be a positive"):
        Limits(**{option: value})


def test_isolation_says_what_this_machine_allows():
    found = isolation()
    assert found["mode"] in ("uid", "user")
    assert isinstance(found["namespaces"], bool) and isinstance(found["netns"], bool)
    assert found["disk"] == ("tmpfs" if found["namespaces"] else "polled")
    assert found["cgroup"] is None or found["cgroup"]["version"] in (1, 2)


def test_exit_status_and_signal_come_through_the_launcher():
    assert run("import os\nos._exit(7)\n").exit_code == 7
    result = run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    assert result.signal == signal.SIGTERM and result.exit_code is None
    assert result.reason == "killed by signal SIGTERM"


def test_a_background_process_dies_when_the_program_ends():
    marker = f"stillroom-background-{uuid.uuid4().hex}"
    result = run(
        f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)",
                                      "{marker}"])
        print("left it running")
        """
    )
    assert result.ok and result.stdout == "left it running\n"
    assert _wait_until_gone(marker) == []


@pytest.mark.skipif(not isolation()["namespaces"], reason="needs mount namespaces (tmpfs)")
def test_its_files_live_in_a_tmpfs_of_disk_mb():
    result = run(
        """
        import os
        st = os.statvfs(".")
        print(st.f_blocks * st.f_frsize // 2**20, sorted(os.listdir(".")))
        for path in ("/tmp", "/var/tmp", "/dev/shm"):
            open(os.path.join(path, "x-" + path.strip("/").replace("/", "-")), "w").close()
        print(sorted(os.listdir(".")))
        """,
        limits=Limits(disk_mb=3),
    )
    assert result.ok, result.reason
    first, second = result.stdout.splitlines()
    assert first == "3 ['main.py']"
    # The world-writable directories are the same tmpfs: one budget for all of them.
    assert second == "['main.py', 'x-dev-shm', 'x-tmp', 'x-var-tmp']"


SHM_WRITER = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
segment = libc.shmget({key}, 1 << 20, 0o1000 | 0o666)  # IPC_CREAT, readable by any uid
address = libc.shmat(segment, None, 0)
ctypes.memmove(address, b"left for the next check", 23)
print("made", segment >= 0)
"""
SHM_READER = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print("found", libc.shmget({key}, 0, 0) >= 0)
"""


@pytest.mark.skipif(not isolation()["namespaces"], reason="needs namespaces (IPC)")
def test_sysv_shared_memory_is_neither_shared_between_runs_nor_left_behind():
    # A SysV segment (0666) used to outlive its run: 100s of MB left on the machine, and a
    # channel from one check to the next (an answer learned the expected outputs that way).
    key = 0x5A000000 + uuid.uuid4().int % 0xFFFFFF
    first = run(SHM_WRITER.format(key=key))
    assert first.ok and first.stdout == "made True\n", (first.reason, first.stderr)
    second = run(SHM_READER.format(key=key))
    assert second.ok and second.stdout == "found False\n", second.stdout
    with open("/proc/sysvipc/shm") as f:  # the machine's own segments
        keys = [int(line.split()[0]) for line in f.read().splitlines()[1:] if line.strip()]
    assert key not in keys


SETUID = """
import os, stat
status = open("/proc/self/status").read()
print([line.split()[1] for line in status.splitlines() if line.startswith("NoNewPrivs")][0])
print(bool(os.statvfs("/usr/bin").f_flag & os.ST_NOSUID))
# Run a setuid-root binary and watch its effective uid while it lives.
binary = None
for path in ("/usr/bin/chfn", "/usr/bin/newgrp", "/usr/bin/passwd", "/usr/bin/su"):
    try:
        info = os.stat(path)
    except OSError:
        continue
    if info.st_mode & stat.S_ISUID and info.st_uid == 0:
        binary = path
        break
euids = set()
if binary:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(r, 0)
        os.execv(binary, [binary])
    for _ in range(20000):
        try:
            with open(f"/proc/{pid}/status") as f:
                lines = f.read().splitlines()
        except OSError:
            break
        uid = [line.split()[2] for line in lines if line.startswith("Uid:")]
        if uid and not any(line == "Name:\tpython3" for line in lines):
            euids.add(int(uid[0]))
        if 0 in euids:
            break
    os.close(w)
    os.waitpid(pid, 0)
print(binary is not None, 0 in euids)
"""


def test_setuid_binaries_give_the_program_no_privileges():
    result = run(SETUID)
    assert result.ok, (result.reason, result.stderr)
    no_new_privs, nosuid, ran = result.stdout.splitlines()
    assert no_new_privs == "1"  # PR_SET_NO_NEW_PRIVS: exec never adds privileges
    if isolation()["namespaces"]:
        assert nosuid == "True"  # and the system's directories are mounted nosuid
    assert not ran.endswith("True"), "a setuid binary ran with euid 0"


def test_stale_folders_of_dead_verifiers_are_removed(tmp_path):
    def folder(name: str, owner: dict | None, age: float = 0.0) -> Path:
        path = tmp_path / f"stillroom-sandbox-{name}"
        (path / "work").mkdir(parents=True)
        (path / "work" / "main.py").write_text("print(1)")
        if owner is not None:
            (path / "owner.json").write_text(json.dumps(owner))
        os.utime(path, (time.time() - age, time.time() - age))
        return path

    me = {"pid": os.getpid(), "start": sandbox_leftovers._start_time(os.getpid()), "uid": None}
    alive = folder("alive", me)
    reused = folder("reused", {**me, "start": me["start"] - 1})  # same pid, another process
    dead = folder("dead", {**me, "pid": _dead_pid()})
    legacy_old = folder("legacy-old", None, age=2 * 3600)
    legacy_new = folder("legacy-new", None)
    unrelated = tmp_path / "someone-else"
    unrelated.mkdir()
    removed = clean_stale(str(tmp_path))
    assert sorted(removed) == sorted(str(p) for p in (reused, dead, legacy_old))
    assert alive.exists() and legacy_new.exists() and unrelated.exists()


# The verifier killed with SIGKILL mid-run: nothing it started may live on. A small verifier
# process (the sandbox modules loaded from their folder, without the packages' __init__: fast to
# start, and no site-packages needed) runs a program that leaves a double-forked, setsid()ed
# sleeper named by a marker, and is killed while the program sleeps.

VERIFIER = """
import json, os, sys, types
for name, path in (("stillroom", os.path.dirname(sys.argv[1])), ("stillroom.verify", sys.argv[1])):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
from stillroom.verify import sandbox
sandbox._CAPS = {**sandbox.isolation(), **json.loads(sys.argv[2])}
print(json.dumps(sandbox.isolation()), flush=True)
limits = {"cpu_seconds": 5, "wall_seconds": 60, **json.loads(sys.argv[4:5] and sys.argv[4] or "{}")}
result = sandbox.run_python(sys.argv[3], limits=sandbox.Limits(**limits))
print(json.dumps(result.as_dict()), flush=True)
"""

ESCAPER = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time\\nwhile True: time.sleep(0.05)",
                                  "{marker}"])
    os._exit(0)
if os.fork() == 0:  # and one that stays in the group
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
time.sleep(60)
"""


def _verifier_modes() -> list:
    root = os.geteuid() == 0
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    modes = [pytest.param({}, None, None, id="as-probed")]
    # Without a mount namespace the run's uid must reach the interpreter: one outside /root.
    plain = sys.executable if not root else system_python
    modes.append(
        pytest.param(
            {"namespaces": False, "netns": False, "cgroup": None, "disk": "polled"},
            plain,
            None,
            id="no-namespaces-no-cgroup",
            marks=pytest.mark.skipif(
                plain is None, reason="no interpreter the run's uid can reach"
            ),
        )
    )
    modes.append(
        pytest.param(
            {},
            system_python,
            65534,
            id="unprivileged",
            marks=pytest.mark.skipif(
                not root or system_python is None,
                reason="needs root to become an unprivileged user",
            ),
        )
    )
    modes.append(
        pytest.param(
            {"namespaces": False, "netns": False},
            system_python,
            65534,
            id="unprivileged-no-namespaces",
            marks=pytest.mark.skipif(
                not root or system_python is None,
                reason="needs root to become an unprivileged user",
            ),
        )
    )
    return modes


@pytest.mark.parametrize(("caps", "python", "user"), _verifier_modes())
def test_a_killed_verifier_takes_its_programs_with_it(caps, python, user):
    marker = f"stillroom-escaper-{uuid.uuid4().hex}"
    here = Path(tempfile.mkdtemp(prefix="stillroom-test-"))  # one an unprivileged user can read
    here.chmod(0o755)
    script = here / "verifier.py"
    script.write_text(VERIFIER)
    args = [
        python or sys.executable,
        "-I",
        str(script),
        os.path.dirname(sandbox.__file__),
        json.dumps(caps),
        ESCAPER.replace("{marker}", marker),
    ]
    ids = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
    verifier = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=here, **ids)
    try:
        found = json.loads(verifier.stdout.readline())
        assert {k: found[k] for k in caps} == caps
        assert _wait_until(lambda: len(processes_with(marker)) >= 2), "the program never started"
        verifier.kill()
        verifier.wait()
        assert _wait_until_gone(marker) == []
    finally:
        verifier.kill()
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(here)
        # What it left (folder, cgroups) goes at the next start of that user's sandbox: now.
        clean_stale()
        for folder in Path(tempfile.gettempdir()).glob(sandbox.FOLDER_PREFIX + "*"):
            with contextlib.suppress(OSError, ValueError):  # another user's: not ours to trust
                if json.loads((folder / sandbox.OWNER).read_text())["pid"] == verifier.pid:
                    shutil.rmtree(folder)


FILLER = """
import os
for name in range(100_000):  # 6 GB if nothing stopped it
    with open(f"f{name}", "wb") as f:
        f.write(b"x" * 65536)
"""


@pytest.mark.skipif(
    shutil.which("python3", path="/usr/bin:/bin") is None,
    reason="no interpreter the run's uid can reach",
)
def test_without_namespaces_the_disk_is_polled(tmp_path):
    tmp_path.chmod(0o755)
    script = tmp_path / "verifier.py"
    script.write_text(VERIFIER)
    caps = {"namespaces": False, "netns": False, "cgroup": None, "disk": "polled"}
    python = shutil.which("python3", path="/usr/bin:/bin")
    done = subprocess.run(
        [
            python,
            "-I",
            str(script),
            os.path.dirname(sandbox.__file__),
            json.dumps(caps),
            FILLER,
            json.dumps({"disk_mb": 4, "cpu_seconds": 20, "wall_seconds": 60}),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["reason"] == "killed: disk limit (4 MB for all its files)", result["reason"]



def _wait_until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _wait_until_gone(marker: str) -> list[int]:
    _wait_until(lambda: not processes_with(marker), seconds=5.0)
    return processes_with(marker)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


ESCAPE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
# A user namespace of its own (if the kernel lends one) gives it CAP_SYS_CHROOT there: the
# classic escape, chroot into a subdirectory and climb out, reaches the namespace's root.
if libc.unshare(0x10000000 | 0x00020000) == 0:  # CLONE_NEWUSER | CLONE_NEWNS
    os.mkdir("x")
    os.chroot("x")
    for _ in range(30):
        os.chdir("..")
    os.chroot(".")
print(sorted(os.listdir("/")))
print(os.path.exists({project!r}), os.path.exists("/etc/passwd"))
"""


@needs_strong
def test_only_what_python_needs_is_visible_even_after_a_chroot_escape():
    result = run(ESCAPE.format(project=os.getcwd()))
    assert result.ok, result.reason
    listing, found = result.stdout.splitlines()
    prefix = os.path.realpath(sys.base_prefix).split("/")[1]  # the interpreter's, read-only
    allowed = {
        *(d.strip("/") for d in sandbox.SYSTEM_DIRS),
        "dev",
        "proc",
        "tmp",
        "var",
        "run",
        prefix,
    }
    assert set(eval(listing)) <= allowed
    assert found == "False False"  # neither the project nor the machine's /etc
