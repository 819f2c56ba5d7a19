"""UltraFeedback's world-knowledge column, the exact MT-Bench mode of the rubric judge, and the
bounds on the JSON every judge asks for (issue 16, items 7 and 8)."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom.errors import StillroomError
from stillroom.feedback import mt_bench
from stillroom.feedback.pairwise import PairwiseJudge, verdict_schema
from stillroom.feedback.rubric import MT_BENCH_STYLE, RubricJudge, grade_schema
from stillroom.feedback.ultrafeedback import NO_WORLD_KNOWLEDGE, UltraFeedbackJudge, aspect_schema
from stillroom.feedback.ultrafeedback_rubric import ASPECTS, HONESTY, TRUTHFULNESS
from stillroom.llm.structured import UnboundedSchema, json_length_bound
from stillroom.llm.types import Completion, Request
from stillroom.pipeline.stage import FunctionStage
from tests import fakes
from tests.fakes import ScriptedBackend

# The scripted backend, the runner and the readers of the judges' own tests.
from tests.unit.test_judges import fresh, read, run, use, user_text  # noqa: E402,F401


def aspect_of(request: Request) -> str:
    title = re.search(r"# Rate the texts: (.+)", user_text(request))
    assert title
    return next(a.name for a in ASPECTS.values() if a.title == title.group(1))


def rate_all_three(request: Request, attempt: int) -> str:
    aspect = ASPECTS[aspect_of(request)]
    entry: dict[str, Any] = {"rationale": "ok"}
    if aspect.types:
        entry["types"] = []
    entry["rating"] = 3
    return json.dumps({"evaluations": [entry] * 2})


ROW = {"id": "q1", "prompt": "Is the earth flat?", "completions": ["No.", "Yes."],
       "knowledge": "The earth is an oblate spheroid."}


# -- UltraFeedback: world knowledge ----------------------------------------------------------------


def test_world_knowledge_goes_after_the_texts_of_the_truthfulness_prompt_only(tmp_path: Path) -> None:
    backend = use(rate_all_three)
    run([UltraFeedbackJudge(reference_column="knowledge")], [ROW], tmp_path / "out")
    prompts = {aspect_of(call): user_text(call) for call in backend.calls}
    truth = prompts["truthfulness"]
    # As in the released template: instruction, texts, then the world knowledge, then the format.
    at = [truth.index(marker) for marker in (
        "## Instruction\nIs the earth flat?", "### Text 2\n", "## World knowledge\n",
        "The earth is an oblate spheroid.", "## Answer\n")]
    assert at == sorted(at)
    assert truth.split("## World knowledge\n")[1].split("\n\n## Answer")[0].endswith(
        "\nThe earth is an oblate spheroid.")
    for name in ("instruction_following", "honesty", "helpfulness"):
        assert "World knowledge" not in prompts[name] and "oblate" not in prompts[name]
    [row] = read(tmp_path / "out")
    assert row["metadata"]["ultrafeedback_judge"]["with_reference"] is True


def test_without_a_reference_column_the_prompts_do_not_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = use(rate_all_three)
    run([UltraFeedbackJudge()], [ROW], tmp_path / "a")
    monkeypatch.setenv("STILLROOM_CACHE_DIR", str(tmp_path / "other-cache"))
    other = use(rate_all_three)
    row = {key: value for key, value in ROW.items() if key != "knowledge"}
    run([UltraFeedbackJudge(reference_aspects=["truthfulness", "helpfulness"])], [row],
        tmp_path / "b")
    assert sorted(map(user_text, plain.calls)) == sorted(map(user_text, other.calls))
    assert not any("World knowledge" in user_text(call) for call in plain.calls)


def test_world_knowledge_null_list_and_helpfulness(tmp_path: Path) -> None:
    backend = use(rate_all_three)
    rows = [{**ROW, "id": "a", "knowledge": None},
            {**ROW, "id": "b", "prompt": "Capital of France?",
             "knowledge": ["correct: Paris", "incorrect: Lyon"]}]
    stage = UltraFeedbackJudge(reference_column="knowledge",
                               reference_aspects=["truthfulness", "helpfulness"])
    result = run([stage], rows, tmp_path / "out")
    assert result.counts["data"] == 2
    by_prompt: dict[tuple[str, str], str] = {}
    for call in backend.calls:
        instruction = re.search(r"## Instruction\n(.*)", user_text(call))
        assert instruction
        by_prompt[(instruction.group(1), aspect_of(call))] = user_text(call)
    # A row without knowledge gets the released code's placeholder, not an empty section.
    assert f"reference; it is not part of the instruction.\n{NO_WORLD_KNOWLEDGE}" in (
        by_prompt[("Is the earth flat?", "truthfulness")])
    for aspect in ("truthfulness", "helpfulness"):
        assert "instruction.\ncorrect: Paris\nincorrect: Lyon\n\n## Answer" in (
            by_prompt[("Capital of France?", aspect)])
    assert "World knowledge" not in by_prompt[("Capital of France?", "honesty")]


def test_a_missing_reference_column_stops_the_run_before_any_request(tmp_path: Path) -> None:
    backend = use(rate_all_three)
    with pytest.raises(StillroomError, match=r"`knowledg` \(reference_column\) is not a column"):
        run([UltraFeedbackJudge(reference_column="knowledg")], [ROW], tmp_path / "out")
    assert backend.calls == []


def test_a_row_without_the_column_later_in_a_pipeline_fails_with_the_reason(tmp_path: Path) -> None:
    backend = use(rate_all_three)

    def drop_knowledge_of_b(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if not (row["id"] == "b" and k == "knowledge")}

    rows = [ROW, {**ROW, "id": "b", "prompt": "Other?"}]
    result = run([FunctionStage.wrap(drop_knowledge_of_b, "strip"),
                  UltraFeedbackJudge(reference_column="knowledge", aspects=["truthfulness"])],
                 rows, tmp_path / "out")
    assert result.counts == {"data": 1, "failed": 1, "dropped": 0}
    [failed] = read(tmp_path / "out", "failed")
    assert "`knowledge` (reference_column) is not a column of this row" in failed["error"]
    assert len(backend.calls) == 1  # only the good row was judged


def test_reference_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown aspect"):
        UltraFeedbackJudge(reference_column="k", reference_aspects=["truthfullness"])
    assert UltraFeedbackJudge().check_row({**ROW, "knowledge": 3}) is None  # not asked for
    problem = UltraFeedbackJudge(reference_column="knowledge").check_row({**ROW, "knowledge": 3})
    assert problem and "must be text, a list of texts or null" in problem


# -- bounded JSON ----------------------------------------------------------------------------------


def longest_instance(schema: dict[str, Any]) -> Any:
    """The longest value a schema allows: every string full, every array at its most items."""
    if "enum" in schema:
        return max(schema["enum"], key=lambda value: len(json.dumps(value)))
    if schema.get("type") == "string":
        return "1." * (schema["maxLength"] // 2) + "1" * (schema["maxLength"] % 2)
    if schema.get("type") == "array":
        return [longest_instance(schema["items"])] * schema["maxItems"]
    assert schema.get("type") == "object"
    return {name: longest_instance(part) for name, part in schema["properties"].items()}


def grammar_text(value: Any) -> str:
    """JSON as llama.cpp's grammar may write it at its longest: a space after every token of
    structure (its ``space`` rule is one optional space)."""
    return json.dumps(value, separators=(" , ", " : ")).replace("{", "{ ").replace("[", "[ ")


@pytest.mark.parametrize("aspect", list(ASPECTS.values()), ids=list(ASPECTS))
def test_ultrafeedback_default_max_tokens_fits_a_degenerate_answer(aspect: Any) -> None:
    """The example's judge (4 texts, 80-character rationales) had 416 tokens and a truthfulness
    answer of "1.1.1..." rationales needed more: cut off, unparseable, a failed row and exit 1."""
    judge = UltraFeedbackJudge(rationale_chars=80)
    schema = aspect_schema(aspect, 4, 80)
    text = grammar_text(longest_instance(schema))
    assert json_length_bound(schema) >= len(text)
    # One token is at least one character, so the longest answer fits the default budget.
    assert judge.answer_tokens(aspect, 4) >= len(text)
    assert UltraFeedbackJudge(max_tokens=64).answer_tokens(aspect, 4) == 64


def test_every_judge_schema_is_bounded_and_sent_with_room_for_its_longest_answer(
    tmp_path: Path,
) -> None:
    for schema in (aspect_schema(TRUTHFULNESS, 4, 400), aspect_schema(HONESTY, 8, 400),
                   grade_schema(MT_BENCH_STYLE, 600), verdict_schema(400)):
        assert json_length_bound(schema) >= len(grammar_text(longest_instance(schema)))
    backend = use(lambda request, attempt: json.dumps({"rationale": "fine", "rating": 7}))
    run([RubricJudge()], [{"id": "r", "prompt": "p", "completion": "c"}], tmp_path / "out")
    [call] = backend.calls
    schema = call.params.json_schema
    assert schema is not None and schema["properties"]["rationale"]["maxLength"] == 600
    assert call.params.max_tokens is not None
    assert call.params.max_tokens >= len(grammar_text(longest_instance(schema)))
    # The pairwise judge's own default (512 tokens for 600 characters) is raised to fit too.
    pairwise = use(lambda request, attempt: json.dumps({"rationale": "r", "verdict": "A"}))
    run([PairwiseJudge(candidates=["completion", "other"])],
        [{"id": "p", "prompt": "p", "completion": "c", "other": "o"}], tmp_path / "pair")
    for call in pairwise.calls:
        assert call.params.json_schema is not None and call.params.max_tokens is not None
        assert call.params.max_tokens >= len(grammar_text(longest_instance(call.params.json_schema)))


class CutOffBackend(ScriptedBackend):
    """A judge whose answer degenerates and stops at max_tokens (finish_reason "length")."""

    async def generate(self, request: Request) -> Completion:
        self.calls.append(request)
        text = '{"evaluations": [{"rationale": "' + "1." * 200
        return Completion(text=text, finish_reason="length", prompt_tokens=3,
                          completion_tokens=400, model=self.model)


def test_an_answer_cut_off_at_max_tokens_fails_its_row_with_the_reason(tmp_path: Path) -> None:
    backend = CutOffBackend()
    fakes.CURRENT["default"] = backend
    result = run([UltraFeedbackJudge(aspects=["truthfulness"], max_tokens=400)], [ROW],
                 tmp_path / "out")
    assert result.counts == {"data": 0, "failed": 1, "dropped": 0}
    [failed] = read(tmp_path / "out", "failed")
    # Under a grammar a limit below the longest answer only cuts answers off: it is raised.
    longest = json_length_bound(aspect_schema(TRUTHFULNESS, 2, 400))
    assert [call.params.max_tokens for call in backend.calls] == [longest] * 3
    assert f"cut off at max_tokens {longest}" in failed["error"] and "1.1.1." in failed["error"]
    assert len(backend.calls) == 3  # asked, re-asked twice, then the row failed


@pytest.mark.parametrize("schema, where", [
    ({"type": "string"}, "(root): a string without maxLength"),
    ({"type": "array", "items": {"enum": [1]}}, "(root): an array without maxItems"),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}},
      "additionalProperties": False}, "(root)/n: a integer without minimum and maximum"),
    ({"type": "object", "properties": {}}, "additionalProperties: false"),
])
def test_unbounded_schemas_are_named(schema: dict[str, Any], where: str) -> None:
    with pytest.raises(UnboundedSchema, match=re.escape(where)):
        json_length_bound(schema)


def test_bounded_numbers_count() -> None:
    assert json_length_bound({"type": "integer", "minimum": -5, "maximum": 100}) == 4
    assert json_length_bound({"type": "boolean"}) == 6


# -- MT-Bench --------------------------------------------------------------------------------------


def test_the_prompts_are_fastchats_byte_for_byte() -> None:
    """The four single-answer lines of FastChat's fastchat/llm_judge/data/judge_prompts.jsonl
    (blob 4ec7524c), unchanged: an edit would make scores incomparable."""
    text = resources.files("stillroom.resources").joinpath(mt_bench.RESOURCE).read_bytes()
    assert hashlib.sha256(text).hexdigest() == (
        "c0ed25a9c5a9cb1092346543d8e16b1b40b37b57f1c30d53ad57a97dfd94d9fc")
    prompts = mt_bench.judge_prompts()
    assert sorted(prompts) == ["single-math-v1", "single-math-v1-multi-turn", "single-v1",
                               "single-v1-multi-turn"]
    assert prompts["single-v1"].system_prompt == "You are a helpful assistant."


@pytest.mark.parametrize("judgment, score", [
    ("Good. Rating: [[8]] ... on reflection [[3]]", 8),  # the first one counts
    ("Rating: [[7.5]]", 7.5),
    ("Rating: [6]", 6),  # the backup pattern
    ("See [2] above. Rating: [[9]]", 9),  # [[x]] wins over an earlier [x]
    ("[[8.]]", 8.0),
    ("[[10]]", 10),
    ("[[15]]", 15),  # kept as FastChat keeps it
    ("Rating: 5", None),  # FastChat: -1
    ("Rating: [[ 8 ]]", None),  # no spaces in FastChat's patterns
    ("[[8/10]]", None),
    ("[[-3]]", None),
    ("[[07]]", None),  # not a Python literal
])
def test_scores_are_read_as_fastchat_reads_them(judgment: str, score: float | None) -> None:
    value = mt_bench.fastchat_score(judgment)
    assert value == score and type(value) is type(score)


def mt_bench_script(request: Request, attempt: int) -> str:
    return "A fine answer, correct and clear. Rating: [[7.5]] (and not [[2]])"


def test_mt_bench_single_turn_is_fastchats_request(tmp_path: Path) -> None:
    backend = use(mt_bench_script)
    rows = [{"id": "m1", "prompt": "What is {x}?", "completion": "It is {y}."}]
    result = run([RubricJudge(preset="mt_bench")], rows, tmp_path / "out")
    assert result.counts["data"] == 1
    [call] = backend.calls
    assert call.messages == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": (
            "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the "
            "response provided by an AI assistant to the user question displayed below. Your "
            "evaluation should consider factors such as the helpfulness, relevance, accuracy, "
            "depth, creativity, and level of detail of the response. Begin your evaluation by "
            "providing a short explanation. Be as objective as possible. After providing your "
            "explanation, you must rate the response on a scale of 1 to 10 by strictly following "
            "this format: \"[[rating]]\", for example: \"Rating: [[5]]\".\n\n[Question]\n"
            "What is {x}?\n\n[The Start of Assistant's Answer]\nIt is {y}.\n"
            "[The End of Assistant's Answer]")},
    ]
    assert (call.params.temperature, call.params.max_tokens) == (0.0, 2048)
    assert call.params.json_schema is None
    [row] = read(tmp_path / "out")
    assert row["score"] == 7.5 and row["rationale"] == mt_bench_script(call, 1)
    entry = row["metadata"]["rubric_judge"]
    assert entry["step"] == "mt_bench" and entry["template"].startswith("fastchat.single-v1@")


def test_mt_bench_two_turns_and_references(tmp_path: Path) -> None:
    backend = use(mt_bench_script)
    conversation = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    rows = [
        {"id": "t2", "messages": conversation, "ref": ["R1", "R2"]},
        {"id": "t2-noref", "messages": conversation[:3], "completion": "A2b", "ref": None},
        {"id": "t1", "prompt": "2+2?", "completion": "5", "ref": ["4", "unused second turn"]},
    ]
    result = run([RubricJudge(preset="mt_bench", reference_column="ref")], rows, tmp_path / "out")
    assert result.counts["data"] == 3
    sent = {str(call.messages): call.messages for call in backend.calls}
    prompts = mt_bench.judge_prompts()
    by_system = {messages[0]["content"]: messages[1]["content"] for messages in sent.values()
                 if messages}
    math_2 = by_system[prompts["single-math-v1-multi-turn"].system_prompt]
    assert math_2.startswith("<|The Start of Reference Answer|>\n\n### User:\nQ1\n\n### Reference "
                             "answer:\nR1\n\n### User:\nQ2\n\n### Reference answer:\nR2\n\n")
    assert math_2.endswith("### User:\nQ2\n\n### Assistant A:\nA2\n\n"
                           "<|The End of Assistant A's Conversation with User|>")
    general_2 = by_system[prompts["single-v1-multi-turn"].system_prompt]
    assert "### Assistant A:\nA1\n\n### User:\nQ2\n\n### Assistant A:\nA2b\n\n" in general_2
    math_1 = [m[1]["content"] for m in sent.values()
              if m and m[1]["content"].startswith("[Instruction]")]
    assert len(math_1) == 1 and "[The Start of Reference Answer]\n4\n[The End of Reference Answer]" \
        in math_1[0]
    templates = {row["id"]: row["metadata"]["rubric_judge"]["template"]
                 for row in read(tmp_path / "out")}
    assert templates["t2"].startswith("fastchat.single-math-v1-multi-turn@")
    assert templates["t2-noref"].startswith("fastchat.single-v1-multi-turn@")
    assert templates["t1"].startswith("fastchat.single-math-v1@")


def test_mt_bench_without_a_score_fails_the_row_without_reasking(tmp_path: Path) -> None:
    backend = use(lambda request, attempt: "I would rate it highly, 8 out of 10.")
    rows = [{"id": "m", "prompt": "p", "completions": ["a", "b"]}]
    result = run([RubricJudge(preset="mt_bench")], rows, tmp_path / "out")
    assert result.counts == {"data": 0, "failed": 1, "dropped": 0}
    [failed] = read(tmp_path / "out", "failed")
    assert "no [[rating]] or [rating] in the judgment" in failed["error"]
    assert "8 out of 10" in failed["error"] and failed["error_type"] == "UnparseableJudgment"
    assert len(backend.calls) == 2  # one per completion, no re-ask


def test_mt_bench_checks_its_options_and_rows(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="preset mt_bench fixes temperature"):
        RubricJudge(preset="mt_bench", temperature=0.7)
    with pytest.raises(ValidationError, match="preset mt_bench fixes max_tokens"):
        RubricJudge(preset="mt_bench", max_tokens=512)
    with pytest.raises(ValidationError, match="leave `rubric` out"):
        RubricJudge(preset="mt_bench", rubric="mine.yaml")
    RubricJudge(preset="mt_bench", max_tokens=2048, temperature=0)  # FastChat's own values
    judge = RubricJudge(preset="mt_bench", reference_column="ref")
    three = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
             {"role": "user", "content": "e"}]
    problem = judge.check_row({"messages": three, "completion": "f", "ref": None})
    assert problem and "one question or to the second turn" in problem
    problem = judge.check_row({"prompt": "q", "completion": "a"})
    assert problem and "`ref` (reference_column) is not a column" in problem
    problem = judge.check_row({"messages": three[:3], "completion": "a", "ref": "only one"})
    assert problem and "a list of two texts" in problem
    assert judge.check_row({"prompt": "q", "completion": "a", "ref": None}) is None
