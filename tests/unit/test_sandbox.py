"""The sandbox with real subprocesses: normal runs and hostile programs (no mocks)."""

from __future__ import annotations

import os
import socket
import textwrap
import uuid

import pytest

from stillroom.verify.sandbox import Limits, error_summary, isolation, pids_of_uid, run_python

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
    assert "PermissionError" in result.reason
