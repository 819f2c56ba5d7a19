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

import orjson

from stillroom.data.readers import option_file
from stillroom.data.rows import PromptTemplate
from stillroom.errors import ConfigError

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
    path = option_file(spec, base_dir, key="principles", what="principles")
    data = path.read_bytes()
    principles: list[ComparisonPrinciple] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        principle = _principle_from_line(line, path, number, seen)
        seen[principle.id] = number
        principles.append(principle)
    if not principles:
        raise ConfigError(
            "the principles file holds no principles", path=str(path), key="principles"
        )
    version = "preference_principles@" + hashlib.sha256(data).hexdigest()[:8]
    return PreferencePrinciples(tuple(principles), str(path), version)


def _principle_from_line(
    line: bytes, path: Path, number: int, seen: dict[str, int]
) -> ComparisonPrinciple:
    def bad(message: str) -> ConfigError:
        return ConfigError(message, path=str(path), line=number, key="principles")

    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise bad(f"not valid JSON ({error})") from None
    if not isinstance(item, dict):
        raise bad(f"each line must be a JSON object, got {type(item).__name__}")
    missing = [key for key in PRINCIPLE_KEYS if key not in item]
    if missing:
        raise bad(f"missing key(s) {missing}; a comparison principle needs {list(PRINCIPLE_KEYS)}")
    unknown = sorted(set(item) - set(PRINCIPLE_KEYS))
    if unknown:
        raise bad(f"unknown key(s) {unknown}; a comparison principle has only "
                  f"{list(PRINCIPLE_KEYS)}")
    for key in PRINCIPLE_KEYS:
        if not isinstance(item[key], str) or not item[key].strip():
            raise bad(f"`{key}` must be non-empty text")
    if item["id"] in seen:
        raise bad(f"id {item['id']!r} is used twice (first on line {seen[item['id']]})")
    return ComparisonPrinciple(item["id"], item["question"].strip())


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

