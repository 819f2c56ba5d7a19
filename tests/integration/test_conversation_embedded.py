"""Short real runs of both multi-turn stages on the embedded SmolLM2-135M-Instruct (llama.cpp):
the conversation stage (two turns, a cut turn dropped with llama.cpp's own finish reason) and
Magpie's multi-turn extension (the later pre-query prefix tokenizes as the start of the chat
prompt of the conversation so far plus the next question)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.generate.conversation import Conversation
from stillroom.generate.magpie import Magpie
from stillroom.llm.llamacpp import LlamaCppBackend, LlamaCppConfig
from stillroom.llm.types import Request

pytestmark = pytest.mark.integration

MODEL = "SmolLM2-135M-Instruct"
SEEDS = [
    {"id": "tides", "question": "Why does the sea have tides?"},
    {"id": "tea", "question": "How should I brew green tea?", "persona": "a busy student"},
    {"id": "owls", "topic": "owls", "goal": "learn what owls eat"},
]


def run(stage: Any, rows: Any, out: Path) -> dict[str, list[dict[str, Any]]]:
    Pipeline([stage], input=rows, backends={"default": LlamaCppConfig(n_ctx=2048)}).run(
        out, progress=False, max_failure_rate=1.0)
    folder = OutputFolder(out)
    return {kind: folder.read_rows(kind) for kind in ("data", "dropped", "failed")}


def test_two_turn_conversations_and_a_cut_turn_dropped(tmp_path: Path) -> None:
    stage = Conversation(turns=2, max_tokens=32, user_max_tokens=24, truncated_turn="keep",
                         system="Answer in two sentences.")
    out = run(stage, SEEDS, tmp_path / "keep")
    assert out["failed"] == [] and out["dropped"] == [] and len(out["data"]) == 3
    for row in out["data"]:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
        assert all(m["content"].strip() for m in messages)
        if row["id"] != "owls":
            assert messages[1]["content"] == row["question"]
        turns = row["metadata"]["conversation"]["turns"]
        assert all(t["model"] == MODEL for t in turns if t["source"] == "model")
        assert {t["finish_reason"] for t in turns} <= {None, "stop", "length"}

    # Answers of 4 tokens are cut: llama.cpp says "length", and the conversations are dropped.
    cut = run(Conversation(turns=2, max_tokens=4, user_max_tokens=32), SEEDS[:2], tmp_path / "cut")
    assert cut["data"] == [] and len(cut["dropped"]) == 2
    for row in cut["dropped"]:
        assert row["drop_reason"] == "turn 1 (assistant) cut off at max_tokens (4)"


def test_magpie_two_turns_on_the_embedded_template(tmp_path: Path) -> None:
    stage = Magpie(turns=2, max_tokens=32, response_max_tokens=96)
    out = run(stage, [{"id": str(i)} for i in range(2)], tmp_path / "magpie")
    assert out["failed"] == []
    assert len(out["data"]) + len(out["dropped"]) == 2
    for row in out["data"]:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert "prompt" not in row and "completion" not in row
        turns = row["metadata"]["magpie"]["turns"]
        assert [t["turn"] for t in turns] == [1, 1, 2, 2]
        assert all(t["model"] == MODEL for t in turns)
    for row in out["dropped"]:
        assert row["drop_reason"].startswith(("turn ", "empty", "leaked", "instruction"))

    # The second turn's raw prompt is, token for token, the start of the chat prompt that asks
    # the second question after the first exchange.
    backend = LlamaCppBackend(n_ctx=512)
    try:
        prequery = asyncio.run(stage.prequery(backend))
        talk = [{"role": "user", "content": "Name a bird."},
                {"role": "assistant", "content": "A robin."}]
        prefix = asyncio.run(stage._turn_prefix(backend, prequery, talk, 2))
        model = backend._model(False)
        asked = [*talk, {"role": "user", "content": "And a fish?"}]
        chat_tokens, _ = backend._prompt(model, Request(messages=asked))
        raw_tokens, _ = backend._prompt(model, Request(prompt=prefix))
        assert chat_tokens[: len(raw_tokens)] == raw_tokens
        assert prefix.endswith("A robin.<|im_end|>\n<|im_start|>user\n")
    finally:
        asyncio.run(backend.aclose())
