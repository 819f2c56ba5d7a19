"""MT-Bench single-answer grading exactly as FastChat runs it (``rubric_judge`` with
``preset: mt_bench``), so scores compare with published MT-Bench scores.

What is reproduced, from FastChat's ``fastchat/llm_judge`` (Zheng et al. 2023, Apache-2.0):

* the judge prompts, kept verbatim in ``stillroom/resources/mt_bench_judge_prompts.jsonl`` (the
  ``single-*`` lines of ``data/judge_prompts.jsonl``; source and licence in that folder's
  README): ``single-v1`` for one question, ``single-v1-multi-turn`` for a two-turn conversation
  (graded on the second answer), and their ``single-math-v1`` variants when the row has a
  reference answer; each is a system message and one user message, as FastChat sends them to
  an OpenAI-compatible judge;
* the request: temperature 0 and at most 2048 tokens (``run_judge_single``);
* the reading of the score: the first ``[[x]]`` in the judgment, else the first ``[x]``, the
  number read as a Python literal (so ``[[7.5]]`` is 7.5, ``[[8]]`` is 8). FastChat records -1
  when neither is there and leaves such judgments out of its averages; here that answer fails
  its row (``failed/``, kind ``UnparseableJudgment``) with the judgment in the reason, so no -1
  can be mistaken for a grade. The judge is not re-asked: FastChat does not re-ask, and a
  second try would be a different protocol.

Scores are kept as FastChat reads them, even off the 1-10 scale (``[[15]]`` is 15).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from stillroom.data.rows import Row, content_text, prompt_messages
from stillroom.llm.types import Message

RESOURCE = "mt_bench_judge_prompts.jsonl"
TEMPERATURE = 0.0
MAX_TOKENS = 2048

# FastChat's one_score_pattern and its backup, as in fastchat/llm_judge/common.py.
_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    system_prompt: str
    prompt_template: str

    @property
    def version(self) -> str:
        text = f"{self.system_prompt}\x1f{self.prompt_template}".encode()
        return f"fastchat.{self.name}@{hashlib.sha256(text).hexdigest()[:10]}"


@lru_cache(maxsize=1)
def judge_prompts() -> dict[str, JudgePrompt]:
    """FastChat's single-answer judge prompts, by name."""
    text = resources.files("stillroom.resources").joinpath(RESOURCE).read_text(encoding="utf-8")
    prompts = {}
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            prompts[entry["name"]] = JudgePrompt(
                entry["name"], entry["system_prompt"], entry["prompt_template"]
            )
    return prompts


def fastchat_score(judgment: str) -> int | float | None:
    """The score FastChat reads from a judgment; None where it records -1 (no score found)."""
    match = _SCORE.search(judgment) or _SCORE_BACKUP.search(judgment)
    if match is None:
        return None
    try:
        value = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        # "[[07]]" is not a Python literal: FastChat's literal_eval raises there; no score.
        return None
    return value if isinstance(value, (int, float)) else None


def conversation(row: Row) -> tuple[list[str], list[str]] | str:
    """The user questions before the graded answer and the assistant answers between them, or
    what keeps the row from MT-Bench grading. System turns are not shown: FastChat's prompts
    have no place for them."""
    turns = [m for m in prompt_messages(row) or [] if m.get("role") != "system"]
    roles = [m.get("role") for m in turns]
    texts = [str(content_text(m.get("content")) or "") for m in turns]
    if roles == ["user"]:
        return texts, []
    if roles == ["user", "assistant", "user"]:
        return [texts[0], texts[2]], [texts[1]]
    return (
        "preset mt_bench grades the answer to one question or to the second turn of a two-turn "
        f"conversation (user, assistant, user); this row's turns are {roles}"
    )


def reference_problem(value: Any, column: str, turns: int) -> str | None:
    """What is wrong with a reference cell for a conversation of ``turns`` questions, if any.
    A list holds the reference answer of each turn, as FastChat's reference files do (grading
    the first turn reads the first); a text is the answer to a single question; null means no
    reference (FastChat's general prompt)."""
    if value is None:
        return None
    if turns == 1 and isinstance(value, str) and value.strip():
        return None
    if (
        isinstance(value, list)
        and len(value) >= turns
        and all(isinstance(item, str) and item.strip() for item in value[:turns])
    ):
        return None
    wanted = "a text or a list of texts" if turns == 1 else "a list of two texts (one per turn)"
    return f"`{column}` (reference_column) must be {wanted}, or null, for preset mt_bench"


def judge_request(
    questions: list[str], earlier: list[str], answer: str, reference: Any
) -> tuple[JudgePrompt, list[Message]]:
    """The judge prompt FastChat picks and the messages it sends for one answer."""
    multi_turn = len(questions) == 2
    name = "single-math-v1" if reference is not None else "single-v1"
    prompt = judge_prompts()[name + ("-multi-turn" if multi_turn else "")]
    fields: dict[str, str] = {}
    if reference is not None:
        references = [reference] if isinstance(reference, str) else list(reference)
        # Turn k's reference is the k-th, as FastChat reads ref_answer["choices"][0]["turns"].
        fields["ref_answer_1"] = references[0]
        if multi_turn:
            fields["ref_answer_2"] = references[1]
    if multi_turn:
        user = prompt.prompt_template.format(
            question_1=questions[0], question_2=questions[1],
            answer_1=earlier[0], answer_2=answer, **fields,
        )
    else:
        user = prompt.prompt_template.format(question=questions[0], answer=answer, **fields)
    messages: list[Message] = [
        {"role": "system", "content": prompt.system_prompt},
        {"role": "user", "content": user},
    ]
    return prompt, messages
