"""The comparison principles and the prompts of the ``principle_preference`` stage
(:mod:`stillroom.feedback.principle_preference`, Constitutional AI preference labels).

* The principles file: JSONL, one ``{id, question}`` a line, read and checked by
  :func:`load_preference_principles` (a problem names the file and line); its hash is the
  version recorded in lineage.
* The prompts: :data:`QUESTION` shows the conversation (:func:`render_conversation`, as
  "Human: ..." / "Assistant: ..." paragraphs), the principle question and the two responses as
  (A) and (B); :data:`RAW` ends inside the answer so the next token is the letter, :data:`CHAT`
  asks for only the letter, and :data:`REASK` is the one follow-up turn of text mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stillroom.data.readers import text_records
from stillroom.data.rows import PromptTemplate

# -- the principles file ---------------------------------------------------------------------------

PRINCIPLE_KEYS = ("id", "question")


@dataclass(frozen=True, slots=True)
class ComparisonPrinciple:
    id: str
    question: str


@dataclass(frozen=True, slots=True)
class PreferencePrinciples:
    principles: tuple[ComparisonPrinciple, ...]
    path: str
    version: str  # "preference_principles@<hash of the file>", recorded in lineage


def load_preference_principles(spec: str, base_dir: Path | None = None) -> PreferencePrinciples:
    """Read and check a comparison principles file (JSONL, one ``{id, question}`` a line); a
    relative path is read from ``base_dir`` (the pipeline file's folder) when given.

    Raises ConfigError naming the file and line of the first problem.
    """
    path, data, records = text_records(spec, base_dir, PRINCIPLE_KEYS, key="principles",
                                       what="a comparison principle")
    principles = [ComparisonPrinciple(item["id"], item["question"].strip()) for item in records]
    version = "preference_principles@" + hashlib.sha256(data).hexdigest()[:8]
    return PreferencePrinciples(tuple(principles), str(path), version)


# -- prompts ---------------------------------------------------------------------------------------

QUESTION = PromptTemplate(
    "principle_preference.question",
    "Here is a conversation between a human and an AI assistant:\n\n"
    "{conversation}\n\n"
    "{question}\n"
    "Options:\n"
    "(A) {response_a}\n"
    "(B) {response_b}\n",
)
# A raw prompt ends inside the answer, so the very next token is the letter.
RAW = PromptTemplate("principle_preference.raw", QUESTION.text + "The answer is: (")
CHAT = PromptTemplate(
    "principle_preference.chat",
    QUESTION.text + "\nAnswer with only the letter of the better option: A or B.",
)
REASK = PromptTemplate(
    "principle_preference.reask", "Please reply with just one letter, A or B, and nothing else."
)

_ROLE_LABELS = {"system": "System", "user": "Human", "assistant": "Assistant", "tool": "Tool"}


def _content_text(content: Any) -> str:
    """A message's text; multimodal content (a list of parts) keeps its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return str(content)


def render_conversation(prompt: str | list[dict[str, Any]]) -> str:
    """The conversation as "Human: ..." / "Assistant: ..." paragraphs, as the paper shows it."""
    if isinstance(prompt, str):
        return f"Human: {prompt}"
    return "\n\n".join(
        f"{_ROLE_LABELS.get(str(m['role']), str(m['role']).title())}: {_content_text(m['content'])}"
        for m in prompt
    )

