"""The conversation stage (and Magpie's turns) against real local servers: stillroom's echo server (which answers
"echo: <the last user message>") for exact turns, lineage, early ends and resume; the fault
server failing a middle turn (the whole conversation goes to failed/, none of it to data/); a run
killed mid-way and run again (each conversation exactly once, answered turns not asked again).

With the echo server the conversation is predictable: the simulator sees the assistant's
answers as its user turns, so from an opening Q the turns are Q, "echo: Q", "echo: echo: Q", ...
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.generate import conversation_prompts as prompts
from stillroom.generate.magpie import Magpie
from stillroom.llm import OpenAIConfig
from stillroom.llm.backend import BackendConfig
from stillroom.stages import Conversation
from tests.integrity_helpers import (
    Proc,
    Server,
    check_rows_once,
    commit_lines,
    env_with,
    pipeline_file,
    read_all,
    run_args,
    run_cli,
    wait_until,
    write_rows,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def echoes(text: str, times: int) -> str:
    return "echo: " * times + text


def expected_talk(opening: str, turns: int) -> list[dict[str, str]]:
    """Turn k's user message is the opening behind 2(k-1) echoes, its answer behind 2k-1."""
    talk = []
    for k in range(1, turns + 1):
        talk.append({"role": "user", "content": echoes(opening, 2 * (k - 1))})
        talk.append({"role": "assistant", "content": echoes(opening, 2 * k - 1)})
    return talk


def backends(url: str, **options: Any) -> dict[str, BackendConfig]:
    # Two model names on one server: the lineage must tell the two roles' models apart.
    return {name: OpenAIConfig(model=f"{name}-echo", base_url=url, **options)
            for name in ("teacher", "sim")}


def run(stage: Conversation | Magpie, rows: list[dict[str, Any]], url: str, out: Path,
        backend: str | None = None, **options: Any) -> dict[str, list[dict[str, Any]]]:
    configs = backends(url, **options)
    if backend is not None:  # magpie: its default backend is the echo server's "teacher" model
        configs = {"default": configs[backend]}
    Pipeline([stage], input=rows, backends=configs).run(
        out, progress=False, max_failure_rate=1.0)
    folder = OutputFolder(out)
    return {kind: sorted(folder.read_rows(kind), key=lambda r: r["id"])
            for kind in ("data", "dropped", "failed")}


def sent(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line)["body"] for line in log.read_text().splitlines()]


ROWS: list[dict[str, Any]] = [
    {"id": "q", "question": "How do tides work?", "persona": "a sailor", "level": 3},
    {"id": "t", "topic": "sourdough bread", "goal": "bake a first loaf"},
]


def test_turns_alternate_in_order_with_each_turns_lineage_and_a_rerun_asks_nothing(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    url, log = echo_server()
    stage = Conversation(backend="teacher", user_backend="sim", system="Be brief.", turns=3)
    rows = run(stage, ROWS, url, tmp_path / "out")
    assert rows["failed"] == [] and rows["dropped"] == []
    by_id = {row["id"]: row for row in rows["data"]}

    question = by_id["q"]
    assert question["messages"] == [{"role": "system", "content": "Be brief."},
                                    *expected_talk("How do tides work?", 3)]
    # Seed columns kept as they were.
    assert (question["question"], question["persona"], question["level"]) == (
        "How do tides work?", "a sailor", 3)
    opening = "echo: " + prompts.kickoff("sourdough bread")  # the simulator wrote the opening
    assert by_id["t"]["messages"][1:] == expected_talk(opening, 3)

    meta = question["metadata"][stage.type]
    assert (meta["method"], meta["turn_count"], meta["end_reason"]) == ("conversation", 3, "turns")
    assert (meta["model"], meta["user_model"]) == ("teacher-echo", "sim-echo")
    turns = meta["turns"]
    assert [(t["turn"], t["role"]) for t in turns] == [
        (1, "user"), (1, "assistant"), (2, "user"), (2, "assistant"), (3, "user"), (3, "assistant")]
    assert turns[0]["source"] == "seed" and turns[0]["model"] is None
    simulator_system = prompts.user_system("a sailor", None, None)
    for record in turns[1:]:
        user = record["role"] == "user"
        assert record["source"] == "model" and record["finish_reason"] == "stop"
        assert record["backend"] == ("sim" if user else "teacher")
        assert record["model"] == ("sim-echo" if user else "teacher-echo")
        assert record["template"] == (prompts.PROMPT_VERSION if user else None)
        assert record["system_digest"] == prompts.digest(simulator_system if user else "Be brief.")
    assert len({t["seed"] for t in turns[1:]}) == 5  # a seed per turn and role

    bodies = sent(log)
    assert len(bodies) == 5 + 6  # the opening question is not asked for
    # The simulator's view of turn 3 of "q": its system prompt, the kick-off, then the roles swapped.
    view = next(b["messages"] for b in bodies
                if b["model"] == "sim-echo" and b["messages"][-1]["content"]
                == echoes("How do tides work?", 3))
    assert view[0] == {"role": "system", "content": simulator_system}
    assert "a sailor" in view[0]["content"]
    assert [m["role"] for m in view] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert view[2]["content"] == "How do tides work?"
    goal_view = next(b["messages"] for b in bodies if b["model"] == "sim-echo"
                     and len(b["messages"]) == 2)
    assert "bake a first loaf" in goal_view[0]["content"]
    assert goal_view[1]["content"] == prompts.kickoff("sourdough bread")

    # The same rows again into a new folder: every turn is served from the request cache.
    again = run(stage, ROWS, url, tmp_path / "again")
    assert len(sent(log)) == len(bodies)
    assert [r["messages"] for r in again["data"]] == [r["messages"] for r in rows["data"]]


def test_the_stop_marker_ends_a_conversation_and_min_turns_drops_a_short_one(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    url, _ = echo_server()
    # The simulator's turn 2 echoes the answer to a question holding the marker: it "writes" it.
    rows: list[dict[str, Any]] = [{"id": "short", "question": "Just this, [END]"},
                                  {"id": "long", "question": "Tell more"}]
    kept = run(Conversation(backend="teacher", user_backend="sim", turns=3, stop_marker="[END]"),
               rows, url, tmp_path / "kept")
    by_id = {row["id"]: row for row in kept["data"]}
    assert by_id["short"]["messages"] == expected_talk("Just this, [END]", 1)
    meta = by_id["short"]["metadata"]["conversation"]
    assert (meta["end_reason"], meta["turn_count"]) == ("stop_marker", 1)
    assert meta["turns"][-1]["source"] == "stop_marker"
    assert by_id["long"]["messages"] == expected_talk("Tell more", 3)

    dropped = run(Conversation(backend="teacher", user_backend="sim", turns=3,
                               stop_marker="[END]", min_turns=2), rows, url, tmp_path / "dropped")
    assert [r["id"] for r in dropped["data"]] == ["long"]
    (short,) = dropped["dropped"]
    assert short["id"] == "short" and "after 1 turn(s), fewer than min_turns 2" in short["drop_reason"]


def test_a_middle_turn_that_keeps_failing_sends_the_whole_conversation_to_failed(
    fault_server: Callable[..., Server], tmp_path: Path
) -> None:
    # Every request whose last user message holds "echo: doomed" fails, retries included: the
    # simulator's turn 2 (it is shown the assistant's first answer). Turn 1 succeeds.
    server = fault_server(rate_500=1.0, sticky=True, match="echo: doomed")
    empty = fault_server(rate_empty=1.0, sticky=True, match="echo: echo: hollow")
    rows = [{"id": "ok", "question": "fine question"}, {"id": "bad", "question": "doomed question"}]
    stage = Conversation(backend="teacher", user_backend="sim", turns=3)
    out = run(stage, rows, server.base_url, tmp_path / "out", max_retries=1,
              retry_base_delay=0.01)
    assert [r["id"] for r in out["data"]] == ["ok"]
    assert out["data"][0]["messages"] == expected_talk("fine question", 3)
    (bad,) = out["failed"]
    assert bad["id"] == "bad" and "messages" not in bad
    assert "turn 2 (user, backend 'sim')" in bad["error"]
    assert bad["error_type"] == "InternalServerError" and bad["attempts"] == 2
    assert out["dropped"] == []
    # What was paid for is in the cache: turn 1's answer was asked once only.
    assert server.answered()["doomed question"] == 1

    # An empty answer to the assistant's turn 2 ("echo: echo: hollow" is its last user turn).
    out = run(stage, [{"id": "h", "question": "hollow"}], empty.base_url, tmp_path / "empty",
              max_retries=0)
    (hollow,) = out["failed"]
    assert hollow["error_type"] == "EmptyTurn"
    assert "turn 2 (assistant) came back empty" in hollow["error"]
    assert out["data"] == []


def test_a_killed_run_resumed_gives_each_conversation_once_without_asking_answered_turns(
    fault_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = fault_server(latency_ms=30)  # no faults: slow enough to be killed mid-way
    rows = write_rows(tmp_path / "input.jsonl",
                      [{"id": i, "question": f"question {i}"} for i in range(24)])
    stage = {"type": "conversation", "backend": "t", "turns": 3}
    pipeline = pipeline_file(tmp_path / "pipeline.yaml", tmp_path / "input.jsonl",
                             server.base_url, [stage], backend={"concurrency": 4})
    out, env = tmp_path / "out", env_with(tmp_path / "cache")
    args = run_args(pipeline, out, "--flush-rows", "2", "--flush-seconds", "0.1")
    first = Proc(args, env, tmp_path / "logs", name="first").start()
    assert wait_until(lambda: commit_lines(out) >= 2, first, what="a few commits")
    first.signal(signal.SIGKILL)
    first.result()
    before = server.count()
    committed = {row["id"] for row in read_all(out)["data"]}
    assert 0 < len(committed) < 24, "the kill came too late (or too early) to test a resume"

    result = run_cli(args, env, tmp_path / "logs", name="second")
    assert result.returncode == 0, result.output
    check_rows_once(rows, out)
    data = read_all(out)["data"]
    assert len(data) == 24
    for row in data:
        assert row["messages"] == expected_talk(f"question {row['id']}", 3)
    # The rerun asked nothing for committed conversations, and at most the requests in flight
    # at the kill (4 at a time) again for the others.
    again = server.prompts_after(before)
    for row_id in committed:
        assert not any(f"question {row_id}" == p.replace("echo: ", "") for p in again)
    answered_before = [e["prompt"] for e in server.entries()[:before] if e["status"] == 200]
    repeated = [p for p in again if p in answered_before]
    assert len(repeated) <= 4, repeated


def test_magpie_turns_through_a_server_with_a_preset(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    # The echo server answers a raw prompt "echo: <prompt>": the cleaning cuts that at the first
    # template marker, so every instruction is "echo:" and every answer "echo: echo:".
    url, log = echo_server()
    stage = Magpie(turns=2, pre_query_template="chatml", min_words=1)
    rows = [{"id": "a"}, {"id": "b"}]
    out = run(stage, rows, url, tmp_path / "out", backend="teacher")
    assert out["failed"] == [] and out["dropped"] == []
    for row in out["data"]:
        assert row["messages"] == [{"role": "user", "content": "echo:"},
                                   {"role": "assistant", "content": "echo: echo:"}] * 2
        assert "prompt" not in row and "completion" not in row
        turns = row["metadata"]["magpie"]["turns"]
        assert [(t["turn"], t["role"], t["model"]) for t in turns] == [
            (1, "user", "teacher-echo"), (1, "assistant", "teacher-echo"),
            (2, "user", "teacher-echo"), (2, "assistant", "teacher-echo")]
    bodies = sent(log)
    raw = [b["prompt"] for b in bodies if "prompt" in b]
    turn_2 = ("<|im_start|>user\necho:<|im_end|>\n<|im_start|>assistant\necho: echo:<|im_end|>\n"
              "<|im_start|>user\n")
    assert sorted(raw) == ["<|im_start|>user\n"] * 2 + [turn_2] * 2
    chats = [b["messages"] for b in bodies if "messages" in b]
    assert sorted(map(len, chats)) == [1, 1, 3, 3]  # each answer is asked the whole conversation
    # Run again: every turn of both rows comes from the request cache.
    again = run(stage, rows, url, tmp_path / "again", backend="teacher")
    assert len(sent(log)) == len(bodies) and len(again["data"]) == 2
