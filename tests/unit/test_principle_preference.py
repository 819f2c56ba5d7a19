"""The `principle_preference` stage (Constitutional AI preference labels) with scripted judges."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.errors import ConfigError, InputError
from stillroom.feedback.principle_preference import PrinciplePreference
from stillroom.feedback.principle_preference_labels import (
    choice_letter,
    letter_probabilities,
    parse_choice,
)
from stillroom.feedback.principle_preference_prompts import (
    CHAT,
    RAW,
    REASK,
    load_preference_principles,
)
from stillroom.llm.backend import Backend
from stillroom.llm.types import Completion, Request
from stillroom.pipeline.config import parse_pipeline_text
from stillroom.pipeline.stage import StageContext
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

Tops = list[tuple[str, float]]

GOOD, BAD = "Boil it for nine minutes.", "Figure it out yourself."


# -- scripted judges ------------------------------------------------------------------------------


def question_text(request: Request) -> str:
    if request.prompt is not None:
        return request.prompt
    assert request.messages is not None
    return str(request.messages[0]["content"])


def shown(request: Request) -> tuple[str, str]:
    """The texts shown as (A) and (B)."""
    match = re.search(r"\n\(A\) (.*?)\n\(B\) (.*?)\n", question_text(request), re.S)
    assert match is not None, question_text(request)
    return match.group(1), match.group(2)


class LogprobBackend(ScriptedBackend):
    """Answers one token whose ``top_logprobs`` are whatever ``tops(request)`` says."""

    def __init__(self, tops: Callable[[Request], Tops], lead: str | None = None):
        super().__init__()
        self.tops = tops
        self.lead = lead  # a token generated before the letter (chat mode: "(")

    async def generate(self, request: Request) -> Completion:
        self.calls.append(request)
        top: list[dict[str, Any]] = [
            {"token": token, "logprob": logprob} for token, logprob in self.tops(request)
        ]
        entries: list[dict[str, Any]] = []
        if self.lead is not None:
            entries.append({"token": self.lead, "logprob": -0.01,
                            "top_logprobs": [{"token": self.lead, "logprob": -0.01}]})
        best = max(top, key=lambda alternative: alternative["logprob"]) if top else None
        entries.append({"token": best["token"] if best else "", "logprob": best["logprob"] if best
                        else 0.0, "top_logprobs": top})
        return Completion(text="".join(e["token"] for e in entries), finish_reason="length",
                          model=self.model, logprobs=entries)


class ChatLogprobBackend(LogprobBackend):
    supports_raw_prompt = False


class TextOnlyBackend(ScriptedBackend):
    supports_logprobs = False
    supports_raw_prompt = False


class ChatLogprobConfig(ScriptedConfig):
    def backend_class(self) -> type[Backend]:
        return ChatLogprobBackend


class TextOnlyConfig(ScriptedConfig):
    def backend_class(self) -> type[Backend]:
        return TextOnlyBackend


def use(backend: ScriptedBackend) -> ScriptedBackend:
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = backend
    return backend


def quality_judge(quality: dict[str, float]) -> Callable[[Request], Tops]:
    """Logprob of each letter = the quality of the response shown under it."""

    def tops(request: Request) -> Tops:
        a, b = shown(request)
        return [("A", quality[a]), ("B", quality[b])]

    return tops


def pair_rows(n: int = 1, first: str = GOOD, second: str = BAD) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"How do I boil egg {i}?", "completions": [first, second]}
            for i in range(n)]


def run(stage: PrinciplePreference, data: list[dict[str, Any]], out: Path,
        config: ScriptedConfig | None = None) -> OutputFolder:
    Pipeline([stage], input=data, backends={"default": config or ScriptedConfig(max_retries=0)}
             ).run(out, progress=False, max_failure_rate=1.0)
    return OutputFolder(out)


def soft(la: float, lb: float) -> float:
    return math.exp(la) / (math.exp(la) + math.exp(lb))


# -- both orders and the soft label ---------------------------------------------------------------


def test_both_orders_are_asked_with_swapped_candidates_as_raw_prompts(tmp_path: Path) -> None:
    backend = use(LogprobBackend(quality_judge({GOOD: -0.2, BAD: -1.9})))
    stage = PrinciplePreference()
    row = run(stage, pair_rows(1), tmp_path / "out").read_rows("data")[0]
    assert len(backend.calls) == 2
    principle = {p.id: p for p in stage.principle_set().principles}[
        row["preference"]["principle_id"]]
    assert sorted(shown(call) for call in backend.calls) == sorted([(GOOD, BAD), (BAD, GOOD)])
    assert sorted(call.sample for call in backend.calls) == [0, 1]  # distinct samples
    for call in backend.calls:
        assert call.messages is None and call.prompt is not None
        assert call.prompt.endswith("\nThe answer is: (")
        assert call.prompt.startswith(RAW.text.split("{")[0])
        assert "Human: How do I boil egg 0?" in call.prompt and principle.question in call.prompt
        assert call.params.max_tokens == 1 and call.params.temperature == 0.0
        assert call.params.top_logprobs == 20
    by_sample = {call.sample: shown(call) for call in backend.calls}
    assert by_sample == {0: (GOOD, BAD), 1: (BAD, GOOD)}  # order 1 shows the first as (A)
    orders = row["preference"]["orders"]
    assert [o["shown"] for o in orders] == [["first", "second"], ["second", "first"]]


def test_the_soft_label_averages_both_orders_mapped_to_the_same_response(tmp_path: Path) -> None:
    # A judge that leans to (A) but still prefers GOOD: the orders give different numbers.
    def tops(request: Request) -> Tops:
        return [("A", -0.3), ("B", -1.5)] if shown(request)[0] == GOOD else [("A", -0.9),
                                                                             ("B", -0.7)]

    use(LogprobBackend(tops))
    folder = run(PrinciplePreference(), pair_rows(1), tmp_path / "out")
    row = folder.read_rows("data")[0]
    q_order1 = soft(-0.3, -1.5)  # GOOD shown as A
    q_order2 = soft(-0.7, -0.9)  # GOOD shown as B: p(B) = e^-0.7 / (e^-0.7 + e^-0.9)
    expected = (q_order1 + q_order2) / 2
    assert row["chosen"] == GOOD and row["rejected"] == BAD and row["prompt"] == "How do I boil egg 0?"
    assert row["p_chosen"] == pytest.approx(expected) and expected > 0.5
    assert "score_chosen" not in row and "score_rejected" not in row  # ratings, not probabilities
    preference = row["preference"]
    assert preference["p_first"] == pytest.approx(expected) and preference["mode"] == "logprobs"
    first, second = preference["orders"]
    assert first["p_a"] == pytest.approx(q_order1) and first["p_b"] == pytest.approx(1 - q_order1)
    assert second["p_b"] == pytest.approx(q_order2)
    assert all(o["label_source"] == "raw_prompt_logprobs" and o["bounded"] is False
               for o in preference["orders"])
    lineage = row["metadata"]["principle_preference"]
    assert set(LINEAGE_KEYS) <= set(lineage)
    assert lineage["method"] == "principle_preference" and lineage["step"] == "logprobs"
    assert lineage["model"] == "scripted-model" and lineage["template"] == RAW.version
    assert lineage["principle_id"] == preference["principle_id"]
    assert lineage["candidates"] == ["completions[0]", "completions[1]"]
    assert lineage["parent_id"] == "r0" and row["id"] == "r0"


def test_the_second_candidate_can_win(tmp_path: Path) -> None:
    use(LogprobBackend(quality_judge({GOOD: -0.1, BAD: -2.0})))
    row = run(PrinciplePreference(), pair_rows(1, first=BAD, second=GOOD),
              tmp_path / "out").read_rows("data")[0]
    expected_first = soft(-2.0, -0.1)  # same in both orders: an unbiased judge
    assert row["preference"]["p_first"] == pytest.approx(expected_first)
    assert (row["chosen"], row["rejected"]) == (GOOD, BAD)
    assert row["p_chosen"] == pytest.approx(1 - expected_first) and row["p_chosen"] > 0.5


def test_letter_variants_are_summed() -> None:
    top = [{"token": "A", "logprob": -1.0}, {"token": " A", "logprob": -2.0},
           {"token": "(B", "logprob": -1.5}, {"token": "C", "logprob": -3.0}]
    probabilities = letter_probabilities(top)
    assert probabilities is not None and probabilities.bounded is False
    mass_a, mass_b = math.exp(-1.0) + math.exp(-2.0), math.exp(-1.5)
    assert probabilities.p_a == pytest.approx(mass_a / (mass_a + mass_b))
    assert [choice_letter(t) for t in ("A", " B", "(A", "B)", "**A", "a", "AB", "C", "")] == [
        "A", "B", "A", "B", "A", None, None, None, None]


def test_a_position_biased_judge_cancels_out_and_is_dropped(tmp_path: Path) -> None:
    use(LogprobBackend(lambda request: [("A", -0.1), ("B", -2.3)]))
    folder = run(PrinciplePreference(), pair_rows(2), tmp_path / "out")
    assert folder.read_rows("data") == []
    dropped = folder.read_rows("dropped")
    assert len(dropped) == 2
    for row in dropped:
        assert row["preference"]["p_first"] == pytest.approx(0.5)
        assert row["drop_reason"].startswith("tie: p_first = 0.5")
        assert row["metadata"]["principle_preference"]["method"] == "principle_preference"


def test_min_confidence_drops_a_weak_preference(tmp_path: Path) -> None:
    use(LogprobBackend(quality_judge({GOOD: -0.6, BAD: -0.8})))
    p = soft(-0.6, -0.8)  # about 0.55
    folder = run(PrinciplePreference(min_confidence=0.1), pair_rows(1), tmp_path / "weak")
    assert folder.read_rows("data") == []
    assert "below min_confidence 0.1" in folder.read_rows("dropped")[0]["drop_reason"]
    kept = run(PrinciplePreference(min_confidence=0.04), pair_rows(1), tmp_path / "kept")
    assert kept.read_rows("data")[0]["p_chosen"] == pytest.approx(p)


def test_a_letter_missing_from_the_top_k_is_bounded(tmp_path: Path) -> None:
    def tops(request: Request) -> Tops:
        if shown(request)[0] == GOOD:  # B (BAD) is not among the listed tokens
            return [("A", -0.05), ("The", -3.0), ("C", -4.0)]
        return [("B", -0.2), ("A", -1.7)]

    use(LogprobBackend(tops))
    row = run(PrinciplePreference(), pair_rows(1), tmp_path / "out").read_rows("data")[0]
    first, second = row["preference"]["orders"]
    assert first["bounded"] is True and second["bounded"] is False
    assert first["p_a"] == pytest.approx(soft(-0.05, -4.0))  # B stands at the smallest listed
    expected = (soft(-0.05, -4.0) + soft(-0.2, -1.7)) / 2
    assert row["p_chosen"] == pytest.approx(expected) and row["chosen"] == GOOD


def test_neither_letter_among_the_top_tokens_fails_the_row(tmp_path: Path) -> None:
    use(LogprobBackend(lambda request: [("The", -0.5), ("I", -1.0)]))
    folder = run(PrinciplePreference(), pair_rows(1), tmp_path / "out")
    assert folder.read_rows("data") == [] and folder.read_rows("dropped") == []
    failed = folder.read_rows("failed")[0]
    assert failed["error_type"] == "NoChoiceLogprobs"
    assert "neither A nor B" in failed["error"] and "'The'" in failed["error"]


def test_chat_logprobs_skip_a_leading_parenthesis(tmp_path: Path) -> None:
    backend = use(ChatLogprobBackend(quality_judge({GOOD: -0.3, BAD: -1.2}), lead="("))
    row = run(PrinciplePreference(), pair_rows(1), tmp_path / "out",
              ChatLogprobConfig(max_retries=0)).read_rows("data")[0]
    assert all(call.prompt is None and call.messages is not None for call in backend.calls)
    assert all(question_text(call).endswith(CHAT.text.rsplit("\n", 1)[1]) for call in backend.calls)
    assert {o["label_source"] for o in row["preference"]["orders"]} == {"chat_logprobs"}
    assert row["p_chosen"] == pytest.approx(soft(-0.3, -1.2)) and row["chosen"] == GOOD
    assert row["metadata"]["principle_preference"]["template"] == CHAT.version


# -- text mode ------------------------------------------------------------------------------------


def answering(answer: Callable[[tuple[str, str]], str]) -> Callable[[Request, int], str]:
    def script(request: Request, attempt: int) -> str:
        return answer(shown(request))

    return script


def test_text_mode_hard_labels_when_the_orders_agree(tmp_path: Path) -> None:
    backend = use(TextOnlyBackend(answering(lambda ab: "(A)" if ab[0] == GOOD else "B.")))
    row = run(PrinciplePreference(), pair_rows(1, first=BAD, second=GOOD), tmp_path / "out",
              TextOnlyConfig(max_retries=0)).read_rows("data")[0]
    assert (row["chosen"], row["rejected"]) == (GOOD, BAD)
    assert row["p_chosen"] == 1.0
    assert row["preference"]["mode"] == "text" and row["preference"]["p_first"] == 0.0
    assert [(o["p_a"], o["label_source"]) for o in row["preference"]["orders"]] == [
        (0.0, "text"), (1.0, "text")]
    assert sorted(call.sample for call in backend.calls) == [0, 1]
    assert all(call.params.top_logprobs is None for call in backend.calls)


def test_text_mode_disagreeing_orders_are_a_position_bias_tie(tmp_path: Path) -> None:
    use(TextOnlyBackend(answering(lambda ab: "A")))
    folder = run(PrinciplePreference(mode="text"), pair_rows(1), tmp_path / "out")
    assert folder.read_rows("data") == []
    dropped = folder.read_rows("dropped")[0]
    assert "position bias" in dropped["drop_reason"] and "(A) in both orders" in dropped["drop_reason"]


def test_text_mode_re_asks_once_then_fails_with_the_answer(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        assert request.messages is not None
        if len(request.messages) == 3:  # the re-ask
            return "A" if "p1" not in question_text(request) else "Both are fine."
        return "Hmm, hard to say."

    backend = use(TextOnlyBackend(script))
    data = [{"id": "p0", "prompt": "q", "completions": [GOOD, BAD]},
            {"id": "p1", "prompt": "p1 q", "completions": [GOOD, BAD]}]
    folder = run(PrinciplePreference(mode="text"), data, tmp_path / "out",
                 TextOnlyConfig(max_retries=0))
    reasks = [call for call in backend.calls if len(call.messages or []) == 3]
    assert sorted(call.sample for call in reasks) == [2, 2, 3, 3]  # new sample indexes
    assert all(call.messages[2]["content"] == REASK.text for call in reasks)  # type: ignore[index]
    assert all(call.messages[1]["content"] == "Hmm, hard to say." for call in reasks)  # type: ignore[index]
    failed = folder.read_rows("failed")
    assert [row["id"] for row in failed] == ["p1"]
    assert failed[0]["error_type"] == "UnparseableChoice" and failed[0]["attempts"] == 2
    assert "'Hmm, hard to say.'" in failed[0]["error"] and "'Both are fine.'" in failed[0]["error"]
    # p0: "A" in both orders after the re-ask: a tie
    assert folder.read_rows("dropped")[0]["id"] == "p0"


@pytest.mark.parametrize(
    ("text", "letter"),
    [("A", "A"), ("(B)", "B"), ("**A**", "A"), ("B.", "B"), ("The answer is (B).", "B"),
     ("Option A is better.", "A"), ("(A) is better than (B)", "A"), ("Answer: B", "B"),
     ("A response should be kind.", None), ("I cannot decide.", None), ("a", None),
     ("Both (A) and (B) are fine", None)],
)
def test_parse_choice(text: str, letter: str | None) -> None:
    assert parse_choice(text) == letter


# -- configuration and input ----------------------------------------------------------------------


def test_an_explicit_mode_the_backend_cannot_do_is_a_config_error() -> None:
    backend = use(TextOnlyBackend())
    with pytest.raises(ConfigError, match="does not return logprobs") as error:
        Pipeline([PrinciplePreference(mode="logprobs")], input=pair_rows(1),
                 backends={"default": TextOnlyConfig()})
    assert error.value.key == "mode" and backend.calls == []
    # auto falls back to text on the same backend
    Pipeline([PrinciplePreference()], input=pair_rows(1), backends={"default": TextOnlyConfig()})


GOOD_LINE = '{"id": "a", "question": "Which of these assistant responses is kinder?"}\n'


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD_LINE + "{not json\n", 2, "not valid JSON"),
        (GOOD_LINE + "\n[1]\n", 3, "JSON object"),
        (GOOD_LINE + '{"id": "b"}\n', 2, "missing key(s) ['question']"),
        (GOOD_LINE + GOOD_LINE, 2, "used twice (first on line 1)"),
        (GOOD_LINE + '{"id": "b", "question": "  "}\n', 2, "`question` must be non-empty"),
        (GOOD_LINE + '{"id": "b", "question": "q", "critique_request": "c"}\n', 2,
         "unknown key(s) ['critique_request']"),
    ],
)
def test_a_bad_principles_file_names_the_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "principles.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        PrinciplePreference(principles=str(path))
    assert error.value.path == str(path) and error.value.line == line
    assert message in str(error.value) and f"{path}:{line}" in str(error.value)


def test_a_relative_principles_file_is_read_from_the_pipeline_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.jsonl").write_text(GOOD_LINE)
    pipeline_file = tmp_path / "pipeline.yaml"
    pipeline_file.write_text("input: in.jsonl\nstages:\n  - type: principle_preference\n    principles: mine.jsonl\n")
    stage = Pipeline.from_file(pipeline_file).stages[0]
    assert isinstance(stage, PrinciplePreference)
    assert [p.id for p in stage.principle_set().principles] == ["a"]
    (tmp_path / "mine.jsonl").write_text(GOOD_LINE + "oops\n")
    path = re.escape(str(tmp_path / "mine.jsonl"))
    with pytest.raises(ConfigError, match=rf"{path}:2: principles: not valid JSON"):
        Pipeline.from_file(pipeline_file)


def test_other_config_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no principles"):
        parse_pipeline_text(
            f"input: in.jsonl\nstages:\n  - type: principle_preference\n    principles: {tmp_path}/empty.jsonl\n")
    with pytest.raises(ConfigError, match="no such principles file"):
        PrinciplePreference(principles=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="unknown built-in"):
        PrinciplePreference(principles="builtin:nope")
    with pytest.raises(ValidationError, match="exactly 2 different columns"):
        PrinciplePreference(candidates=["a", "b", "c"])
    with pytest.raises(ValidationError, match="exactly 2 different columns"):
        PrinciplePreference(candidates=["a", "a"])
    with pytest.raises(ValidationError):
        PrinciplePreference(min_confidence=0.6)
    with pytest.raises(ValidationError):
        PrinciplePreference(mode="soft")  # type: ignore[arg-type]


def test_the_builtin_principles_load() -> None:
    principles = load_preference_principles("builtin:preference_principles")
    ids = [p.id for p in principles.principles]
    assert len(ids) >= 12 and len(set(ids)) == len(ids)
    assert all(p.question.startswith("Which of these assistant responses") and "?" in p.question
               for p in principles.principles)
    assert principles.version.startswith("preference_principles@")


def test_check_row_reports_bad_input() -> None:
    stage = PrinciplePreference()
    assert stage.check_row(pair_rows(1)[0]) is None
    assert "needs a `prompt`" in (stage.check_row({"completions": [GOOD, BAD]}) or "")
    assert "`completions` column" in (stage.check_row({"prompt": "p"}) or "")
    assert "exactly 2" in (stage.check_row({"prompt": "p", "completions": [GOOD]}) or "")
    assert "3 items" in (stage.check_row({"prompt": "p", "completions": [GOOD, BAD, BAD]}) or "")
    assert "`completions[1]` is empty" in (stage.check_row({"prompt": "p",
                                                            "completions": [GOOD, " "]}) or "")
    named = PrinciplePreference(candidates=["chosen", "rejected"])
    assert "lacks the candidate column(s) ['rejected']" in (
        named.check_row({"prompt": "p", "chosen": GOOD}) or "")
    assert "candidate `rejected` is empty" in (
        named.check_row({"prompt": "p", "chosen": GOOD, "rejected": ""}) or "")
    assert "must be text" in (named.check_row({"prompt": "p", "chosen": GOOD, "rejected": 3}) or "")


def test_bad_input_is_reported_before_any_request(tmp_path: Path) -> None:
    backend = use(LogprobBackend(quality_judge({GOOD: -0.1, BAD: -1.0})))
    data = pair_rows(1) + [{"id": "x", "prompt": "p", "completions": [GOOD, ""]}]
    with pytest.raises(InputError, match="empty"):
        run(PrinciplePreference(), data, tmp_path / "out")
    assert backend.calls == []


def test_named_columns_and_a_conversation(tmp_path: Path) -> None:
    backend = use(LogprobBackend(quality_judge({GOOD: -0.2, BAD: -2.0})))
    data = [{"id": "c", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Eggs?"},
                                     {"role": "assistant", "content": "old answer"}],
             "original": BAD, "completion": GOOD}]
    stage = PrinciplePreference(candidates=["original", "completion"])
    row = run(stage, data, tmp_path / "out").read_rows("data")[0]
    assert row["prompt"] == data[0]["messages"][:2]  # the trailing answer is not the prompt
    assert row["chosen"] == [{"role": "assistant", "content": GOOD}]
    assert row["rejected"] == [{"role": "assistant", "content": BAD}]
    assert row["preference"]["p_first"] < 0.5
    assert "System: Be brief.\n\nHuman: Eggs?\n\n" in question_text(backend.calls[0])
    assert "old answer" not in question_text(backend.calls[0])
    assert row["metadata"]["principle_preference"]["candidates"] == ["original", "completion"]


def test_identical_candidates_are_dropped_without_a_request(tmp_path: Path) -> None:
    backend = use(LogprobBackend(quality_judge({GOOD: -0.2})))
    folder = run(PrinciplePreference(), pair_rows(1, first=GOOD, second=f" {GOOD}\n"),
                 tmp_path / "out")
    assert folder.read_rows("dropped")[0]["drop_reason"] == "the two candidates are the same text"
    assert backend.calls == []


def test_the_principle_choice_is_reproducible(tmp_path: Path) -> None:
    use(LogprobBackend(quality_judge({GOOD: -0.2, BAD: -2.0})))
    stage = PrinciplePreference()
    first = run(stage, pair_rows(12), tmp_path / "one").read_rows("data")
    principles = stage.principle_set().principles
    ctx = StageContext("principle_preference", seed=0)
    chosen = {row["id"]: row["preference"]["principle_id"] for row in first}
    assert chosen == {row["id"]: ctx.rng(row["id"]).choice(principles).id for row in first}
    assert len(set(chosen.values())) > 1  # principles vary across rows
    fakes.CURRENT.clear()  # a fresh backend: the second run must choose the same again
    use(LogprobBackend(quality_judge({GOOD: -0.2, BAD: -2.0})))
    second = run(PrinciplePreference(), pair_rows(12), tmp_path / "two").read_rows("data")
    assert chosen == {row["id"]: row["preference"]["principle_id"] for row in second}
