"""LLM judges with a scripted backend: UltraFeedback aspects, pairwise both orders, rubric grading."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.errors import ConfigError
from stillroom.feedback.judging import read_leniently
from stillroom.feedback.pairs import PreferencePairs
from stillroom.feedback.pairwise import PairwiseJudge, combine, read_plain_verdict
from stillroom.feedback.rubric import RubricJudge, load_rubric, read_plain_grade
from stillroom.feedback.ultrafeedback import (
    UltraFeedbackJudge,
    aspect_schema,
    read_plain_text,
)
from stillroom.feedback.ultrafeedback_rubric import ASPECTS, HONESTY, TRUTHFULNESS
from stillroom.llm.structured import StructuredOutputError
from stillroom.llm.types import Request
from stillroom.pipeline.config import parse_pipeline_text
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig


class PromptOnlyBackend(ScriptedBackend):
    """A backend that cannot constrain decoding (like transformers): the lenient path."""

    supports_json_schema = False


@pytest.fixture(autouse=True)
def fresh() -> None:
    fakes.CURRENT.clear()


def use(script: Any, cls: type[ScriptedBackend] = ScriptedBackend) -> ScriptedBackend:
    backend = cls(script)
    fakes.CURRENT["default"] = backend
    return backend


def run(stages: list[Any], rows: list[dict[str, Any]], out: Path) -> Any:
    pipeline = Pipeline(stages, input=rows, backends={"default": ScriptedConfig(max_retries=0)})
    return pipeline.run(out, progress=False, max_failure_rate=1.0)


def read(out: Path, kind: str = "data") -> list[dict[str, Any]]:
    return OutputFolder(out).read_rows(kind)


def user_text(request: Request) -> str:
    assert request.messages is not None
    return str(request.messages[1]["content"]) if len(request.messages) > 1 else ""


def shown_texts(request: Request) -> list[str]:
    """The texts an UltraFeedback request shows, in the order shown."""
    return re.findall(r"### Text \d+\n(.*?)(?=\n\n### Text|\n\n## Answer)", user_text(request), re.S)


def aspect_of(request: Request) -> str:
    title = re.search(r"# Rate the texts: (.+)", user_text(request))
    assert title
    return next(a.name for a in ASPECTS.values() if a.title == title.group(1))


# Each completion's quality, by its text: a judge that sees through any shuffling.
QUALITY = {"great answer": 5, "good answer": 4, "poor answer": 2}


def fair_uf_judge(request: Request, attempt: int) -> str:
    aspect = ASPECTS[aspect_of(request)]
    evaluations = []
    for text in shown_texts(request):
        entry: dict[str, Any] = {"rationale": f"{aspect.name} of {text}"}
        if aspect.types:
            entry["types"] = ["factual_error"] if aspect.name == "truthfulness" else ["concise"]
        entry["rating"] = "N/A" if aspect is HONESTY else QUALITY[text]
        evaluations.append(entry)
    return json.dumps({"evaluations": evaluations})


UF_ROW = {"id": "q1", "prompt": "explain", "completions": ["poor answer", "great answer", "good answer"]}


# -- UltraFeedback ---------------------------------------------------------------------------------


def test_ultrafeedback_rates_four_aspects_and_maps_shuffled_ratings_back(tmp_path: Path) -> None:
    backend = use(fair_uf_judge)
    result = run([UltraFeedbackJudge()], [UF_ROW], tmp_path / "out")
    assert result.counts == {"data": 1, "failed": 0, "dropped": 0}
    [row] = read(tmp_path / "out")
    assert len(backend.calls) == 4  # one request per aspect
    assert {aspect_of(call) for call in backend.calls} == set(ASPECTS)
    assert all(call.params.json_schema is not None for call in backend.calls)  # constrained
    # Ratings follow the completions, not the order the judge saw them in.
    for text, rating in zip(row["completions"], row["ratings"], strict=True):
        assert rating == {
            "instruction_following": str(QUALITY[text]), "honesty": "N/A",
            "truthfulness": str(QUALITY[text]), "helpfulness": str(QUALITY[text]),
        }
    assert row["scores"] == [2.0, 5.0, 4.0]  # N/A honesty left out of the mean
    assert row["rationales"][1]["helpfulness"] == "helpfulness of great answer"
    assert row["hallucination_types"] == [["factual_error"]] * 3
    assert row["informativeness_types"] == [["concise"]] * 3
    entry = row["metadata"]["ultrafeedback_judge"]
    assert set(LINEAGE_KEYS) <= set(entry) and entry["model"] == "scripted-model"
    assert set(entry["shown_order"]) == set(ASPECTS)
    # Shuffled: with 3 texts and 4 aspects, some request shows them in another order.
    shown = [shown_texts(call) for call in backend.calls]
    assert any(order != UF_ROW["completions"] for order in shown)


def test_ultrafeedback_order_is_reproducible_and_can_be_switched_off(tmp_path: Path) -> None:
    first = use(fair_uf_judge)
    run([UltraFeedbackJudge()], [UF_ROW], tmp_path / "a")
    order_a = read(tmp_path / "a")[0]["metadata"]["ultrafeedback_judge"]["shown_order"]
    texts = UF_ROW["completions"]
    for call in first.calls:  # the recorded order is the order the judge saw
        assert shown_texts(call) == [texts[i] for i in order_a[aspect_of(call)]]
    use(fair_uf_judge)
    run([UltraFeedbackJudge()], [UF_ROW], tmp_path / "b")
    assert read(tmp_path / "b")[0]["metadata"]["ultrafeedback_judge"]["shown_order"] == order_a
    third = use(fair_uf_judge)
    run([UltraFeedbackJudge(shuffle=False)], [UF_ROW], tmp_path / "c")
    assert all(shown_texts(c) == UF_ROW["completions"] for c in third.calls)


def test_ultrafeedback_then_preference_pairs(tmp_path: Path) -> None:
    use(fair_uf_judge)
    run([UltraFeedbackJudge(), PreferencePairs(strategy="best_worst")], [UF_ROW], tmp_path / "out")
    [row] = read(tmp_path / "out")
    assert (row["chosen"], row["rejected"]) == ("great answer", "poor answer")
    assert (row["score_chosen"], row["score_rejected"]) == (5.0, 2.0)


def test_ultrafeedback_lenient_path_reads_plain_text_answers(tmp_path: Path) -> None:
    def plain(request: Request, attempt: int) -> str:
        blocks = []
        for number, text in enumerate(shown_texts(request), start=1):
            blocks.append(
                f"#### Output for Text {number}\nRating: {QUALITY[text]}\n"
                f"Type: self_contradiction\nRationale: fine {text}."
            )
        return "Here is my evaluation.\n\n" + "\n\n".join(blocks)

    backend = use(plain, PromptOnlyBackend)
    run([UltraFeedbackJudge(aspects=["truthfulness", "helpfulness"])], [UF_ROW], tmp_path / "out")
    [row] = read(tmp_path / "out")
    assert all(call.params.json_schema is None for call in backend.calls)
    assert [r["truthfulness"] for r in row["ratings"]] == ["2", "5", "4"]
    assert row["hallucination_types"] == [["self_contradiction"]] * 3
    assert row["rationales"][0]["truthfulness"] == "fine poor answer."


def test_ultrafeedback_unparseable_is_reasked_then_failed_with_raw_text(tmp_path: Path) -> None:
    def stubborn(request: Request, attempt: int) -> str:
        return "I like them all!"

    backend = use(stubborn, PromptOnlyBackend)
    stage = UltraFeedbackJudge(aspects=["helpfulness", "truthfulness"], max_reasks=1)
    result = run([stage], [UF_ROW], tmp_path / "out")
    assert result.counts == {"data": 0, "failed": 1, "dropped": 0}
    [failed] = read(tmp_path / "out", "failed")
    assert "I like them all!" in failed["error"] and "no usable answer after 2 tries" in failed["error"]
    assert failed["error"].startswith("aspect ")
    assert len(backend.calls) == 4  # 2 aspects x (1 + 1 re-ask)
    reask = next(c for c in backend.calls if c.messages and len(c.messages) > 2)
    assert reask.messages is not None and reask.messages[-2]["content"] == "I like them all!"
    assert "could not be used" in reask.messages[-1]["content"]


def test_ultrafeedback_schema_path_reasks_then_fails_with_raw_text(tmp_path: Path) -> None:
    def fixes_it_the_second_time(request: Request, attempt: int) -> str:
        assert request.messages is not None
        if len(request.messages) == 2:
            return '{"evaluations": []}'  # wrong length: the schema says 3
        return fair_uf_judge(Request(messages=request.messages[:2]), attempt)

    use(fixes_it_the_second_time)
    run([UltraFeedbackJudge(aspects=["helpfulness"])], [UF_ROW], tmp_path / "ok")
    [row] = read(tmp_path / "ok")
    assert [r["helpfulness"] for r in row["ratings"]] == ["2", "5", "4"]
    assert row["metadata"]["ultrafeedback_judge"]["answers"] == {"helpfulness": 1}

    backend = use(lambda request, attempt: "not json at all")
    other = {**UF_ROW, "id": "q2", "prompt": "explain again"}  # not in the request cache
    result = run([UltraFeedbackJudge(aspects=["helpfulness"])], [other], tmp_path / "bad")
    [failed] = read(tmp_path / "bad", "failed")
    assert result.counts["data"] == 0 and len(backend.calls) == 3  # asked, re-asked twice
    assert "InvalidStructuredOutput" in failed["error"]
    assert "not json at all" in failed["error"]


def test_ultrafeedback_schema_shape() -> None:
    schema = aspect_schema(TRUTHFULNESS, 3, 50)
    evaluations = schema["properties"]["evaluations"]
    assert evaluations["minItems"] == evaluations["maxItems"] == 3
    item = evaluations["items"]
    assert list(item["properties"]) == ["rationale", "types", "rating"]  # reason first
    assert "N/A" not in item["properties"]["rating"]["enum"]
    assert "N/A" in aspect_schema(HONESTY, 2, 50)["properties"]["evaluations"]["items"][
        "properties"]["rating"]["enum"]
    ok = {"evaluations": [{"rationale": "x", "types": ["none"], "rating": 3}] * 3}
    assert read_leniently(json.dumps(ok), schema, None) == ok
    with pytest.raises(StructuredOutputError):
        read_leniently(json.dumps({"evaluations": [{"rationale": "x", "types": [], "rating": 9}] * 3}),
                       schema, None)


def test_plain_text_reader_handles_na_and_missing_blocks() -> None:
    read = read_plain_text(HONESTY, 2)
    value = read("Text 1\nRating: N/A\nRationale: a poem.\n\nText 2\nRating: 4\nRationale: ok")
    assert value == {"evaluations": [
        {"rationale": "a poem.", "rating": "N/A"}, {"rationale": "ok", "rating": 4},
    ]}
    assert read("no blocks here") is None
    assert len(read("Text 1\nRating: 3\nRationale: only one")["evaluations"]) == 1


def test_ultrafeedback_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown aspect"):
        UltraFeedbackJudge(aspects=["style"])
    with pytest.raises(ValidationError, match="honesty alone"):
        UltraFeedbackJudge(aspects=["honesty"])
    stage = UltraFeedbackJudge()
    assert stage.check_row({"prompt": "p", "completions": []})
    assert "completions[1]" in (stage.check_row({"prompt": "p", "completions": ["a", " "]}) or "")
    assert stage.check_row({"completions": ["a"]})
    assert stage.check_row({"messages": [{"role": "user", "content": "hi"}], "completions": ["a"]}) is None


def test_ultrafeedback_shows_a_conversation_as_a_transcript(tmp_path: Path) -> None:
    backend = use(fair_uf_judge)
    row = {
        "id": "c1",
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi, how can I help?"},
            {"role": "user", "content": "explain gravity"},
        ],
        "completions": ["good answer", "poor answer"],
    }
    run([UltraFeedbackJudge(aspects=["helpfulness"])], [row], tmp_path / "out")
    text = user_text(backend.calls[0])
    assert "User: hello\n\nAssistant: hi, how can I help?\n\nUser: explain gravity" in text


# -- pairwise --------------------------------------------------------------------------------------


def answers_shown(request: Request) -> tuple[str, str]:
    text = user_text(request)
    a = re.search(r"## Answer A\n(.*?)\n\n## Answer B", text, re.S)
    b = re.search(r"## Answer B\n(.*?)\n\n## Verdict", text, re.S)
    assert a and b
    return a.group(1), b.group(1)


def fair_pairwise(request: Request, attempt: int) -> str:
    a, b = answers_shown(request)
    verdict = "A" if QUALITY[a] > QUALITY[b] else "B" if QUALITY[b] > QUALITY[a] else "tie"
    return json.dumps({"rationale": "compared", "verdict": verdict})


def first_position_lover(request: Request, attempt: int) -> str:
    return json.dumps({"rationale": "the first one reads well", "verdict": "A"})


PAIR_ROW = {"id": "p1", "prompt": "explain", "completion": "poor answer", "baseline": "great answer"}


def test_pairwise_asks_both_orders_and_agrees_with_a_fair_judge(tmp_path: Path) -> None:
    backend = use(fair_pairwise)
    stage = PairwiseJudge(candidates=["completion", "baseline"])
    run([stage], [PAIR_ROW], tmp_path / "out")
    [row] = read(tmp_path / "out")
    assert sorted(answers_shown(c) for c in backend.calls) == [
        ("great answer", "poor answer"), ("poor answer", "great answer"),
    ]
    assert row["winner"] == "b" and row["pairwise"]["position_consistent"] is True
    assert [o["prefers"] for o in row["pairwise"]["orders"]] == ["b", "b"]
    assert [o["verdict"] for o in row["pairwise"]["orders"]] == ["B", "A"]
    assert set(LINEAGE_KEYS) <= set(row["metadata"]["pairwise_judge"])


def test_pairwise_position_bias_becomes_a_tie_and_is_dropped_as_a_pair(tmp_path: Path) -> None:
    use(first_position_lover)
    run([PairwiseJudge(candidates=["completion", "baseline"])], [PAIR_ROW], tmp_path / "out")
    [row] = read(tmp_path / "out")
    assert row["winner"] == "tie" and row["pairwise"]["position_consistent"] is False

    use(first_position_lover)
    result = run([PairwiseJudge(candidates=["completion", "baseline"], as_pair=True)],
                 [PAIR_ROW], tmp_path / "pairs")
    assert result.counts == {"data": 0, "failed": 0, "dropped": 1}
    [dropped] = read(tmp_path / "pairs", "dropped")
    assert "position bias" in dropped["drop_reason"]
    assert dropped["pairwise"]["orders"][0]["verdict"] == "A"  # the evidence is kept


def test_pairwise_as_pair_writes_trl_columns_from_completions(tmp_path: Path) -> None:
    use(fair_pairwise)
    row = {"id": "p2", "prompt": "explain", "completions": ["good answer", "great answer"]}
    run([PairwiseJudge(as_pair=True)], [row], tmp_path / "out")
    [out] = read(tmp_path / "out")
    assert (out["prompt"], out["chosen"], out["rejected"]) == ("explain", "great answer", "good answer")
    assert (out["score_chosen"], out["score_rejected"]) == (1.0, 0.0)


def test_pairwise_plain_verdicts_and_combination() -> None:
    assert read_plain_verdict("B is clearer. [[B]]")["verdict"] == "B"
    assert read_plain_verdict("both fine [[C]]")["verdict"] == "tie"
    assert read_plain_verdict("Verdict: A")["verdict"] == "A"
    assert read_plain_verdict("I cannot decide") is None
    assert combine("a", "a") == ("a", True)
    assert combine("tie", "tie") == ("tie", True)
    assert combine("a", "b") == ("tie", False) and combine("a", "tie") == ("tie", False)


def test_pairwise_checks_rows_and_shows_a_reference(tmp_path: Path) -> None:
    stage = PairwiseJudge()
    assert "exactly two" in (stage.check_row({"prompt": "p", "completions": ["a"]}) or "")
    stage = PairwiseJudge(candidates=["x", "y"], reference_column="ref")
    assert "`y`" in (stage.check_row({"prompt": "p", "x": "a", "y": "", "ref": "r"}) or "")
    assert "ref" in (stage.check_row({"prompt": "p", "x": "a", "y": "b"}) or "")
    backend = use(fair_pairwise)
    row = {**PAIR_ROW, "reference": "the right answer"}
    run([PairwiseJudge(candidates=["completion", "baseline"], reference_column="reference")],
        [row], tmp_path / "out")
    assert "## Reference answer\nthe right answer" in user_text(backend.calls[0])


# -- rubric ----------------------------------------------------------------------------------------


def grade_by_quality(request: Request, attempt: int) -> str:
    answer = re.search(r"## Assistant's answer\n(.*?)\n\n## Grade", user_text(request), re.S)
    assert answer
    return json.dumps({"rationale": "graded", "rating": QUALITY[answer.group(1)] * 2})


def test_rubric_default_grades_one_to_ten_with_a_reference(tmp_path: Path) -> None:
    backend = use(grade_by_quality)
    row = {"id": "g1", "prompt": "2+2?", "completion": "good answer", "reference": "4"}
    run([RubricJudge(reference_column="reference")], [row], tmp_path / "out")
    [out] = read(tmp_path / "out")
    assert (out["score"], out["rationale"]) == (8, "graded")
    text = user_text(backend.calls[0])
    assert "scale from 1 to 10" in text and "## Reference answer\n4" in text
    entry = out["metadata"]["rubric_judge"]
    assert entry["scale"] == [1, 10] and entry["with_reference"] is True
    schema = backend.calls[0].params.json_schema
    assert schema is not None and 10 in schema["properties"]["rating"]["enum"]
    assert 11 not in schema["properties"]["rating"]["enum"]


def test_rubric_grades_each_completion_then_pairs(tmp_path: Path) -> None:
    backend = use(grade_by_quality)
    run([RubricJudge(), PreferencePairs(strategy="best_worst")], [UF_ROW], tmp_path / "out")
    [row] = read(tmp_path / "out")
    assert len(backend.calls) == 3
    assert row["ratings"] == [4, 10, 8]
    assert (row["chosen"], row["rejected"]) == ("great answer", "poor answer")


def test_rubric_lenient_reading(tmp_path: Path) -> None:
    assert read_plain_grade("Solid. Rating: [[7]]")["rating"] == 7
    assert read_plain_grade("Score: 3 because")["rating"] == 3
    assert read_plain_grade("Rating: 0")["rating"] == 0
    assert read_plain_grade("no number") is None
    use(lambda request, attempt: "It is fine. [[12]]", PromptOnlyBackend)
    result = run([RubricJudge(max_reasks=0)], [{"id": "g", "prompt": "p", "completion": "x"}],
                 tmp_path / "out")
    [failed] = read(tmp_path / "out", "failed")
    assert result.counts["failed"] == 1 and "[[12]]" in failed["error"]


RUBRIC = """\
name: concise
instructions: |
  Rate how directly the answer gives what was asked.
scale: {min: 1, max: 5}
levels:
  1: mostly filler
  5: nothing to cut
"""


def test_custom_rubric_file_relative_to_the_pipeline(tmp_path: Path) -> None:
    (tmp_path / "rubrics").mkdir()
    (tmp_path / "rubrics" / "concise.yaml").write_text(RUBRIC)
    text = "stages:\n  - type: rubric_judge\n    rubric: rubrics/concise.yaml\n"
    model, _ = parse_pipeline_text(text, "p.yaml", base_dir=tmp_path)
    stage = model.stages[0]  # type: ignore[attr-defined]
    assert isinstance(stage, RubricJudge)
    assert stage.loaded_rubric.scale.max == 5 and stage.loaded_rubric.levels[5] == "nothing to cut"
    assert stage.identity()["rubric_version"].startswith("rubric.concise@")
    backend = use(lambda request, attempt: '{"rationale": "tight", "rating": 5}')
    run([stage], [{"id": "g", "prompt": "p", "completion": "x"}], tmp_path / "out")
    assert "nothing to cut" in user_text(backend.calls[0])
    assert read(tmp_path / "out")[0]["score"] == 5


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("name: x\ninstructions: y\nscale: {min: 5, max: 1}\n", 3, "max must be above min"),
        ("name: x\ninstructions: y\nscale: {min: 1, max: 5}\nlevels:\n  9: too high\n", 4, "outside"),
        ("name: x\ninstructions: y\nscale: {min: 1, max: 5}\ncolour: red\n", 4, "colour"),
        ("name: x\ninstructions: [y\n", 3, "not valid YAML"),
    ],
)
def test_bad_rubric_files_name_file_line_and_key(tmp_path: Path, body: str, line: int, needle: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as caught:
        load_rubric(str(path))
    assert needle in str(caught.value) and caught.value.path == str(path)
    assert caught.value.line == line


def test_missing_rubric_file_fails_at_config_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such rubric file"):
        parse_pipeline_text("stages:\n  - type: rubric_judge\n    rubric: nope.yaml\n", "p.yaml",
                            base_dir=tmp_path)


# -- what the judges report at the end of a run ----------------------------------------------------


def test_judges_report_their_figures_in_the_card_report_and_inspect(tmp_path: Path) -> None:
    from stillroom.report.summary import summarize

    use(fair_uf_judge)
    result = run([UltraFeedbackJudge()], [UF_ROW], tmp_path / "uf")
    figures = result.summary["stage_results"]["ultrafeedback_judge"]
    assert figures["completions rated"] == 3
    assert figures["mean helpfulness"] == pytest.approx((2 + 5 + 4) / 3)
    assert figures["honesty N/A share"] == 1.0 and "mean honesty" not in figures
    card = (tmp_path / "uf" / "README.md").read_text()
    assert "## Stage results" in card and "| ultrafeedback_judge | mean helpfulness | 3.667 |" in card
    assert "mean helpfulness" in (tmp_path / "uf" / "report.html").read_text()
    assert summarize(OutputFolder(tmp_path / "uf"))["stage_results"] == result.summary["stage_results"]

    use(first_position_lover)
    rows = [{**PAIR_ROW, "id": f"p{i}"} for i in range(3)]
    result = run([PairwiseJudge(candidates=["completion", "baseline"], as_pair=True)], rows,
                 tmp_path / "pw")
    figures = result.summary["stage_results"]["pairwise_judge"]
    # Every pair was dropped as a tie, and dropped rows still count.
    assert figures["pairs judged"] == 3 and figures["ties"] == 3
    assert figures["win rate of a (ties half)"] == 0.5 and figures["position consistency"] == 0.0

    use(grade_by_quality)
    result = run([RubricJudge()], [UF_ROW], tmp_path / "rb")
    figures = result.summary["stage_results"]["rubric_judge"]
    assert figures == {"answers graded": 3, "mean grade (1-10)": pytest.approx((4 + 10 + 8) / 3)}
