"""Judges, dedup and decontamination on tool-calling conversations, through `stillroom run`:
a judge served by the project's echo server is shown the turns before the last one as the
request (or the whole transcript), dedup tells conversations apart by a late turn and drops
one without text, decontamination finds a benchmark question in a middle user turn."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stillroom.data.output import OutputFolder
from stillroom.data.rows import WHOLE_CONVERSATION_REQUEST, transcript_text
from stillroom.llm.tool_calls import assistant_turn, make_call, tool_turn

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def conversation(city: str, answer: str) -> list[dict[str, Any]]:
    call = make_call("get_weather", {"city": city}, "call_0")
    return [
        {"role": "system", "content": "You answer questions about the weather."},
        {"role": "user", "content": f"What should I wear in {city} today?"},
        assistant_turn("", [call]),
        tool_turn(call, '{"temp_c": 18, "sky": "clear"}'),
        {"role": "assistant", "content": answer},
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(folder: Path, pipeline: str, out: str) -> OutputFolder:
    (folder / f"{out}.yaml").write_text(pipeline)
    done = subprocess.run([STILLROOM, "run", f"{out}.yaml", "-o", out, "--no-progress"],
                          cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return OutputFolder(folder / out)


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n") + len(title) + 4
    return text[start:text.index("\n\n## ", start)]


# The echo server answers with the judge's prompt; a grade in MT-Bench's [[x]] form inside the
# answer makes that echo a readable judgment (read leniently: `structured: prompt`).
ANSWER = "A light jacket: it is 18 C and clear. [[7]]"
JUDGE = """\
input: chats.jsonl
backends:
  judge: {{kind: openai, model: judge, base_url: "{base_url}", max_retries: 0}}
stages:
  - type: rubric_judge
    backend: judge
    structured: prompt
    rationale_chars: 4000
    conversation: {mode}
"""


@pytest.mark.timeout(300)
def test_a_judge_on_the_echo_server_reads_the_last_turn_or_the_whole_conversation(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    base_url, log = echo_server()
    chat = conversation("Paris", ANSWER)
    write_jsonl(tmp_path / "chats.jsonl", [{"id": "paris", "messages": chat}])
    asked = {}
    for mode in ("last_turn", "whole"):
        folder = run(tmp_path, JUDGE.format(base_url=base_url, mode=mode), mode)
        [row] = folder.read_rows("data")
        assert row["score"] == 7 and row["rationale"].startswith("echo: ")
        asked[mode] = json.loads(log.read_text().splitlines()[-1])["body"]["messages"][-1]["content"]

    last = asked["last_turn"]
    context = section(last, "Request")
    assert context == transcript_text(chat[:4])
    # The call and the tool's result are in what the judge reads, the tool named.
    assert '"name": "get_weather", "arguments": {"city": "Paris"}' in context
    assert 'Tool (get_weather): {"temp_c": 18, "sky": "clear"}' in context
    assert section(last, "Assistant's answer") == ANSWER

    whole = asked["whole"]
    assert section(whole, "Request") == WHOLE_CONVERSATION_REQUEST
    assert section(whole, "Assistant's answer") == transcript_text(chat)


DEDUP = """\
input: chats.jsonl
stages:
  - type: dedup
    method: {method}
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_dedup_tells_conversations_apart_by_a_late_turn(tmp_path: Path, method: str) -> None:
    answer = "A light jacket will do: it is 18 C with a clear sky all afternoon."
    silent = [{"role": "user", "content": ""}, {"role": "assistant", "content": None}]
    write_jsonl(tmp_path / "chats.jsonl", [
        {"id": "a", "messages": conversation("Paris", answer)},
        {"id": "copy", "messages": conversation("Paris", answer)},
        # Only the last turn differs.
        {"id": "late", "messages": conversation(
            "Paris", "Take an umbrella and a warm coat: heavy rain and wind are expected tonight.")},
        # Only the call's argument (and the question) name another city.
        {"id": "lyon", "messages": conversation("Lyon", answer)},
        {"id": "silent", "messages": silent},
    ])
    folder = run(tmp_path, DEDUP.format(method=method), "out")
    assert sorted(row["id"] for row in folder.read_rows("data")) == ["a", "late", "lyon"]
    dropped = {row["id"]: row["drop_reason"] for row in folder.read_rows("dropped")}
    assert set(dropped) == {"copy", "silent"}
    assert "duplicate of a" in dropped["copy"]
    assert dropped["silent"].startswith("empty text:")  # reported, not kept as a unique


DIARY = " ".join(f"Day {day}: we walked along the river, visited a museum and ate at a small "
                 "cafe." for day in range(20))


def diary_chat(answer: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"My travel diary: {DIARY} What should I pack?"},
            {"role": "assistant", "content": answer}]


@pytest.mark.timeout(300)
def test_semantic_dedup_reads_a_long_conversation_to_its_last_turn(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    from stillroom.curate import semantic
    from stillroom.curate.dedup import Dedup

    light = "A light jacket will do: it is 18 C with a clear sky all afternoon."
    rain = ("Take an umbrella, boots and a warm coat: heavy rain, hail and strong wind are "
            "expected tonight and all of tomorrow, and the river path will be flooded.")
    texts = [Dedup().text_of({"messages": diary_chat(answer)}) for answer in (light, rain)]
    # The answers lie past the 256 word pieces the model reads at once: read as one window,
    # as before, the two conversations were the same text to it.
    encoder = semantic._encoder(None)
    assert len(semantic.windows(encoder, texts[0])) > 1
    first = encoder.encode(texts, normalize_embeddings=True)
    assert float(first[0] @ first[1]) > 0.9999
    write_jsonl(tmp_path / "chats.jsonl", [
        {"id": "light", "messages": diary_chat(light)},
        {"id": "copy", "messages": diary_chat(light)},
        {"id": "rain", "messages": diary_chat(rain)},
    ])
    # A short late difference in a long text is a small change of its meaning (as for a long
    # prompt with another short completion): a tight threshold tells them apart.
    folder = run(tmp_path, DEDUP.format(method="semantic") + "    threshold: 0.99\n", "out")
    assert sorted(row["id"] for row in folder.read_rows("data")) == ["light", "rain"]
    [copy] = folder.read_rows("dropped")
    assert copy["id"] == "copy" and copy["drop_reason"].startswith("semantic duplicate of light")


DECONTAMINATE = """\
input: chats.jsonl
stages:
  - type: decontaminate
    against: [bench.jsonl]
{roles}"""

QUESTION = ("A train leaves the station at nine and travels sixty miles an hour; how far has it "
            "gone by noon?")


@pytest.mark.timeout(300)
def test_decontaminate_finds_a_benchmark_question_in_a_middle_turn(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "bench.jsonl", [{"id": "q7", "question": QUESTION}])
    middle = [
        {"role": "user", "content": "Can you help me with homework?"},
        {"role": "assistant", "content": "Of course. What is the question?"},
        {"role": "user", "content": f"Here it is: {QUESTION}"},
        {"role": "assistant", "content": "One hundred and eighty miles."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."},
    ]
    search = make_call("search", {"query": QUESTION}, "call_0")
    in_a_call = [{"role": "user", "content": "Look up the train puzzle for me."},
                 assistant_turn("", [search]), tool_turn(search, "no results"),
                 {"role": "assistant", "content": "I found nothing."}]
    clean = conversation("Paris", "A light jacket.")
    write_jsonl(tmp_path / "chats.jsonl", [{"id": "middle", "messages": middle},
                                           {"id": "call", "messages": in_a_call},
                                           {"id": "clean", "messages": clean}])

    folder = run(tmp_path, DECONTAMINATE.format(roles=""), "every_turn")
    assert [row["id"] for row in folder.read_rows("data")] == ["clean"]
    dropped = {row["id"]: row["drop_reason"] for row in folder.read_rows("dropped")}
    assert set(dropped) == {"middle", "call"}  # a question copied into a call's arguments too
    assert "bench.jsonl:id=q7" in dropped["middle"]

    # Tulu 3's reading: user turns only. The middle turn is still found; the call is not read.
    folder = run(tmp_path, DECONTAMINATE.format(roles="    roles: [user]\n"), "user_turns")
    assert sorted(row["id"] for row in folder.read_rows("data")) == ["call", "clean"]
    assert [row["id"] for row in folder.read_rows("dropped")] == ["middle"]
