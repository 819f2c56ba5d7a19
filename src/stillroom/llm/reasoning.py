"""Reasoning traces written inline, between ``<think>`` and ``</think>``, split from the answer.

Reasoning models served without a reasoning parser (and every in-process engine: llama.cpp,
transformers, vLLM's ``LLM``) write their trace into the text: DeepSeek-R1 and its distills, QwQ
and Qwen3 as ``<think> trace </think> answer``. Their chat templates often end the generation prompt
with ``<think>`` already, so the text starts inside the trace and only the closing tag appears;
vLLM's ``deepseek_r1`` reasoning parser reads such text the same way (everything before the
closing tag is the trace). A trace that was opened and never closed (the model ran out of tokens
while thinking) has no answer after it: that is kept apart (``ended`` False) and never passed
off as an answer.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"
# The failure kind of a row whose trace never ended (the reason names the finish reason).
TRUNCATED_REASONING = "ReasoningTruncated"


@dataclass(frozen=True)
class SplitText:
    """A text cut into its trace and its answer."""

    answer: str
    reasoning: str | None  # None: the text holds no trace
    ended: bool = True  # False: a trace was opened and never closed (``answer`` is "")


def split_think_tags(
    text: str, start: str = THINK_START, end: str = THINK_END, *, opened: bool = False
) -> SplitText:
    """``text`` cut at its inline trace.

    * It begins (after white space) with ``start``, or ``opened`` says the prompt opened the
      trace: the trace runs to the first ``end``; the answer is what follows, without leading
      white space. No ``end``: the whole rest is an unfinished trace.
    * It does not begin with ``start`` but holds ``end``: the template opened the trace out of
      sight (R1-style); what precedes ``end`` is the trace.
    * Neither: the text is all answer.
    """
    body = text.lstrip()
    if start and body.startswith(start):
        body = body[len(start):]
        opened = True
    elif not opened:
        if not end or end not in text:
            return SplitText(answer=text, reasoning=None)
        body = text
    if not end:
        return SplitText(answer="", reasoning=body.strip(), ended=False)
    trace, found, answer = body.partition(end)
    if not found:
        return SplitText(answer="", reasoning=trace.strip(), ended=False)
    return SplitText(answer=answer.lstrip(), reasoning=trace.strip())


def final_answer(
    text: str, start: str = THINK_START, end: str = THINK_END, *, opened: bool = False
) -> tuple[str | None, str]:
    """The answer part of ``text`` for a verifier, judge or reward, and, when there is none, why.

    Stricter than :func:`split_think_tags`, because no configuration says here that the text
    holds a trace: only a text that *begins* with ``start`` (or, with ``opened``, one whose
    prompt opened the trace, as an R1-style template does) has its trace cut off. A closing tag
    alone is not taken for the end of a trace: answers may quote the tags (code that parses them,
    a sentence about them), and cutting at any ``</think>`` would let an answer hide its first
    part from a judge. A trace that never ended gives ``(None, reason)``: checking a
    half-written thought as if it were the answer would grade the trace, and could pass a guess
    the model never committed to.
    """
    if not opened and not (start and text.lstrip().startswith(start)):
        return text, ""
    split = split_think_tags(text, start, end, opened=opened)
    if not split.ended:
        return None, (f"the reasoning never ended (no {end} after {start}): the text holds no "
                      "final answer")
    return split.answer, ""


def unended_reason(finish_reason: str | None, end: str = THINK_END) -> str:
    """Why a completion whose trace never ended has no answer, with the fix that fits its
    finish reason: cut at max_tokens (``length``), more tokens help; a model that stopped on its
    own without writing ``end`` (a plain answer from a model whose template opened the trace,
    ``think_opened``) would stop the same way with more, so that is not suggested."""
    if finish_reason == "length":
        return (f"the reasoning never ended (finish_reason {finish_reason}): the text was cut "
                "off at max_tokens inside the trace, so there is no answer after it; "
                "raise max_tokens")
    return (f"the reasoning never ended (finish_reason {finish_reason}): the model ended its "
            f"text without closing its trace ({end}), so no part of it is known to be the "
            "answer; check that the model writes its trace in think tags (think_opened, "
            "think_end) or turn think_tags off for it")


def estimate_reasoning_tokens(reasoning: str | None, answer: str, completion_tokens: int) -> int:
    """The trace's share of ``completion_tokens``, by characters: for servers that return a
    trace without counting its tokens apart. An estimate (the caller marks it so)."""
    if not reasoning or completion_tokens <= 0:
        return 0
    total = len(reasoning) + len(answer)
    return round(completion_tokens * len(reasoning) / total) if total else 0


@dataclass(frozen=True)
class ThinkTags:
    """How a backend's model writes its trace inline (its config's ``think_*`` options): the
    client splits every answer with it, fresh or cached, so the cache keeps what the backend
    returned and a changed parse reuses paid-for answers."""

    start: str = THINK_START
    end: str = THINK_END
    opened: bool = False

    def split(self, text: str) -> SplitText:
        return split_think_tags(text, self.start, self.end, opened=self.opened)

    def trace_part(self, text: str) -> str:
        """The part of ``text`` the model spent on its trace, tags included (for an exact token
        count by a tokenizer): up to and including the first ``end``, or all of it when the
        trace never ended."""
        head, found, _ = text.partition(self.end) if self.end else (text, "", "")
        return head + found if found else text
