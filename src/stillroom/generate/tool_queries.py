"""``tool_queries``: user queries that need the given tools (APIGen's first step).

    - type: tool_queries
      backend: teacher
      tools: {python: tools/calculator.py}  # or a `tools` column in each input row
      n: 3                     # queries per input row
      tools_per_row: 2         # offer a random 2 of the tools to each row (default: all)
      topic_column: topic      # optional: a row column the queries should be about
      examples: ["What is 12% of 250?"]   # optional example queries shown to the model

APIGen (Liu et al. 2024) samples functions and example queries, shows them to a model and asks
for new queries that those functions answer. Here each input row gets ``n`` queries written in
one request that shows the tools' JSON definitions, optional example queries and an optional
topic; the answer is constrained to ``{"queries": [n texts]}`` where the backend can follow a
JSON schema (and read leniently, re-asking on a bad answer, where it cannot). Each query becomes
one row:

* ``messages``: ``[{"role": "user", "content": query}]``;
* ``tools``: the tools offered with it, as JSON text (TRL's ``tools`` column; ``tool_use``
  offers exactly these);
* ``id``: derived from the input row's id, the query's position and its text; lineage under
  ``metadata[<stage>]`` (method ``tool_queries``, the input row as parent).

Other input columns are carried over, except ``prompt``/``completion`` (the new row's prompt is
its ``messages``). A query that repeats an earlier one of the same row (ignoring case and
spacing), or is empty, is dropped with its reason. With ``tools_per_row`` each row is offered
its own random subset (seeded by the row's id), so queries cover the tools and their
combinations rather than all sounding alike. A query that only copies the answer format's
placeholder (``<request 1>``) or one of ``examples`` is dropped too.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from stillroom.data.rows import Row, derived_id, row_key, seed_id_of, with_lineage
from stillroom.feedback.judging import StructuredMode, ask_judge
from stillroom.generate.tool_queries_prompts import (
    SYSTEM,
    WRITE_QUERIES,
    queries_schema,
    read_listed_queries,
    write_prompt,
)
from stillroom.generate.tool_use import TOOLS_COLUMN, ToolsStage
from stillroom.llm.structured import json_length_bound
from stillroom.llm.tool_calls import tool_names, tools_text
from stillroom.llm.types import GenerationParams
from stillroom.pipeline.stage import Dropped, RowFailure, StageContext, register_stage

# What a small model writes when it copies the answer format's "<request 1>" literally.
PLACEHOLDER = re.compile(r"<[^<>]*>|\.\.\.|…")


def query_key(text: str) -> str:
    """What makes two queries the same: their words, ignoring case and spacing."""
    return " ".join(text.casefold().split())


@register_stage
class ToolQueries(ToolsStage):
    type: Literal["tool_queries"] = "tool_queries"
    backend: str = Field(default="default", description="Backend that writes the queries.")
    n: int = Field(default=3, ge=1, le=32, description="Queries per input row.")
    tools_per_row: int | None = Field(
        default=None, ge=1,
        description="Offer this many tools, chosen at random per row; default: all of them.",
    )
    topic_column: str | None = Field(
        default=None, description="A column whose text the row's queries should be about."
    )
    examples: list[str] = Field(
        default_factory=list, description="Example queries shown to the model (not copied)."
    )
    query_chars: int = Field(default=400, ge=20, le=4000, description="Longest query, in characters.")
    temperature: float = Field(default=0.8, ge=0, le=2)
    max_tokens: int | None = Field(
        default=None, ge=16, description="Default: the longest answer the JSON schema allows."
    )
    seed: int | None = Field(default=None, description="Request seed; default: the pipeline seed.")
    structured: StructuredMode = "auto"
    max_reasks: int = Field(default=2, ge=0, le=10)

    @model_validator(mode="after")
    def _examples_text(self) -> ToolQueries:
        if any(not isinstance(e, str) or not e.strip() for e in self.examples):
            raise PydanticCustomError("tool_queries_examples", "examples must be non-empty texts",
                                      {})
        return self

    def backend_names(self) -> set[str]:
        return {self.backend}

    def generated_columns(self) -> list[str]:
        """The queries it wrote: each row's one user turn (the diversity guard reads a plain
        `messages` column's last assistant turn, which these rows do not have)."""
        return ["messages:user"]

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "template": WRITE_QUERIES.version}

    def check_row(self, row: Row) -> str | None:
        problem = self.tools_problem(row)
        if problem:
            return problem
        if self.topic_column is not None:
            topic = row.get(self.topic_column)
            if not isinstance(topic, str) or not topic.strip():
                return (f"`{self.topic_column}` (topic_column) is missing, empty or not text; "
                        f"the row has {sorted(row)}")
        return None

    def _chosen(self, tools: list[dict[str, Any]], key: str, ctx: StageContext) -> list[dict[str, Any]]:
        if self.tools_per_row is None or self.tools_per_row >= len(tools):
            return tools
        picked = ctx.rng("tools", key).sample(range(len(tools)), self.tools_per_row)
        return [tools[index] for index in sorted(picked)]

    async def process(self, row: Row, ctx: StageContext) -> list[Row | Dropped]:
        problem = self.check_row(row)
        if problem:
            raise RowFailure(problem, kind="BadInput")
        key = row_key(row)
        tools = self._chosen(await self.offered_tools(row), key, ctx)
        topic = row.get(self.topic_column) if self.topic_column is not None else None
        schema = queries_schema(self.n, self.query_chars)
        client = ctx.client(self.backend)
        judgment = await ask_judge(
            client,
            [{"role": "system", "content": SYSTEM},
             {"role": "user", "content": write_prompt(tools, self.n, topic, self.examples)}],
            schema=schema,
            params=GenerationParams(
                temperature=self.temperature,
                max_tokens=self.max_tokens or json_length_bound(schema),
                # A seed per row: rows that show the same tools still get different queries
                # (the seed is part of the request's cache key).
                seed=ctx.rng("queries", self.seed, key).getrandbits(31),
            ),
            read_text=read_listed_queries,
            structured=self.structured,
            max_reasks=self.max_reasks,
            what="queries",
        )
        offered = tools_text(tools)
        base = {name: value for name, value in row.items()
                if name not in ("prompt", "completion", "messages", TOOLS_COLUMN)}
        seen: dict[str, int] = {}
        examples = {query_key(example) for example in self.examples}
        out: list[Row | Dropped] = []
        for index, query in enumerate(judgment.value["queries"]):
            text = str(query).strip()
            new = dict(base)
            new["id"] = derived_id("toolq", key, index, text)
            new["messages"] = [{"role": "user", "content": text}]
            new[TOOLS_COLUMN] = offered
            new = with_lineage(
                new, ctx.stage_name, method="tool_queries", step="query", parent_id=key,
                seed_id=seed_id_of(row) or key,
                model=judgment.completion.model or client.backend.model,
                template=WRITE_QUERIES, sample=index, tool_names=tool_names(tools),
                answers=judgment.answers,
            )
            same = seen.get(query_key(text))
            if not text:
                out.append(Dropped(new, "empty query"))
            elif PLACEHOLDER.fullmatch(text):
                out.append(Dropped(new, "a placeholder, not a query"))
            elif query_key(text) in examples:
                out.append(Dropped(new, "copies an example query"))
            elif same is not None:
                out.append(Dropped(new, f"duplicate query (the same as query {same} of this row)"))
            else:
                seen[query_key(text)] = index
                out.append(new)
        return out
