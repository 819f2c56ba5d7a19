"""The diversity of a `messages` column: its answers by default, another role's turns when the
stage names the role it wrote (``messages:user``, a query writer's queries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest

from stillroom import Pipeline
from stillroom.pipeline.stage import Row, RowStage, StageContext
from stillroom.report.diversity import column_spec, texts_of


def chat(user: str, assistant: str | None = None) -> list[dict[str, Any]]:
    turns = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": user}]
    if assistant is not None:
        turns.append({"role": "assistant", "content": assistant})
    return turns


def test_a_column_spec_names_a_role_of_a_message_column() -> None:
    assert column_spec("messages") == ("messages", None)
    assert column_spec("messages:user") == ("messages", "user")
    with pytest.raises(ValueError, match="one of system, user, assistant, tool"):
        column_spec("messages:bot")


def test_texts_of_reads_the_last_turn_of_the_role() -> None:
    values = [
        chat("first query", "first answer"),
        chat("second query"),  # a query writer's row: no assistant turn at all
        [*chat("old query", "old answer"), {"role": "user", "content": "follow-up"}],
        [{"role": "user", "content": [{"type": "text", "text": "parts query"}]}],
        None,
    ]
    assert texts_of(values) == ["first answer", "old answer"]  # the answers, as before
    assert texts_of(values, "user") == ["first query", "second query", "follow-up", "parts query"]
    assert texts_of(values, "assistant") == ["first answer", "old answer"]
    assert texts_of(["a text", ["two", "texts"]], "user") == ["a text", "two", "texts"]


class WritesQueries(RowStage):
    """A query writer: each row becomes a conversation of one user turn, the same for all."""

    type: Literal["writes_queries"] = "writes_queries"

    async def process(self, row: Row, ctx: StageContext) -> Row:
        return {**row, "messages": [{"role": "user", "content": "Convert 3 pounds to grams."}]}

    def generated_columns(self) -> list[str]:
        return ["messages:user"]


class Answers(RowStage):
    """An assistant with a different answer per row, so only the queries have collapsed."""

    type: Literal["answers"] = "answers"

    async def process(self, row: Row, ctx: StageContext) -> Row:
        answer = " ".join(f"word{row['id']}x{j}" for j in range(6))  # no word shared
        return {**row, "messages": [*row["messages"], {"role": "assistant", "content": answer}]}

    def generated_columns(self) -> list[str]:
        return ["messages"]


def test_a_run_measures_the_user_queries_a_stage_wrote(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}"} for i in range(25)]
    result = Pipeline([WritesQueries(name="queries"), Answers(name="answer")], input=rows).run(
        tmp_path / "out", progress=False, diversity_embeddings=False)
    diversity = result.summary["diversity"]
    queries = diversity["queries"]["messages:user"]
    assert queries["texts"] == 25 and queries["exact_duplicate_share"] == 1.0
    answers = diversity["answer"]["messages"]
    assert answers["texts"] == 25 and answers["exact_duplicate_share"] == 0.0
    warnings = result.summary["warnings"]
    assert [w for w in warnings if "column 'messages:user'" in w]  # the collapse is reported
    assert not [w for w in warnings if "column 'messages':" in w]
    assert "| queries | messages:user | 25 |" in (tmp_path / "out" / "README.md").read_text()
