"""heuristic_filter: each check with rows that fail and rows that pass, the order of reasons,
row formats, options, and the stage in a pipeline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.api import build_stage, heuristic_filter
from stillroom.curate.heuristic_checks import (
    detect_language,
    duplicate_line_share,
    duplicate_ngram_share,
    top_ngram_share,
)
from stillroom.curate.heuristics import HeuristicFilter
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError, InputError
from stillroom.pipeline.stage import Dropped, RowFailure, StageContext, stages

VARIED = (
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light "
    "into chemical energy. Inside the chloroplasts, chlorophyll absorbs mostly red and blue "
    "light. Water molecules are split, releasing oxygen as a by-product, while carbon dioxide "
    "from the air is fixed into sugars through the Calvin cycle. Those sugars feed the plant "
    "and, through food chains, nearly every other living thing on Earth."
)
LOOP = "I will now explain the answer to your question. " + (
    "The answer is that the value keeps growing without any limit at all. " * 8
)


def reasons(stage: HeuristicFilter, row: dict[str, Any]) -> list[str]:
    found, _ = stage.findings(row)
    return [finding.reason for finding in found]


def only(check: str, **options: Any) -> HeuristicFilter:
    """A stage with one check switched on."""
    flags: dict[str, Any] = {
        name: False for name in ("empty", "unfinished", "length", "refusal", "repetition")
    }
    flags[check] = options or True
    return HeuristicFilter.model_validate(flags)


def row(completion: Any, prompt: str = "Explain photosynthesis.", **extra: Any) -> dict[str, Any]:
    return {"id": "r", "prompt": prompt, "completion": completion, **extra}


# -- empty and placeholder answers -----------------------------------------------------------------


@pytest.mark.parametrize("text, says", [
    ("", "is empty"), ("  \n\t", "is empty"), ("N/A", "is a placeholder ('N/A')"),
    ("**TODO**", "is a placeholder"), ("n/a.", "is a placeholder"), ("...", "is a placeholder"),
    ("Dear [Insert Name],\nThank you for the gift.", "holds a placeholder ('[Insert Name]')"),
    ("Lorem ipsum dolor sit amet.", "holds a placeholder ('Lorem ipsum')"),
])
def test_empty_and_placeholder_answers_fail(text: str, says: str) -> None:
    (reason,) = reasons(only("empty"), row(text))
    assert reason.startswith("empty: the completion ") and says in reason


@pytest.mark.parametrize("text", [
    "None of the above.", "4", "[1, 2, 3]", "Use [brackets] for optional parts.", "NA-12 is a road.",
])
def test_real_answers_are_not_placeholders(text: str) -> None:
    assert reasons(only("empty"), row(text)) == []


def test_placeholders_of_your_own_and_without_the_built_in_list() -> None:
    stage = only("empty", placeholders=["<answer>"], builtin=False)
    assert reasons(stage, row(" <ANSWER> ")) == ["empty: the completion is a placeholder ('<ANSWER>')"]
    assert reasons(stage, row("N/A")) == []  # the built-in list is off
    assert reasons(stage, row("")) == ["empty: the completion is empty"]


# -- unfinished answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("extra, where", [
    ({"finish_reason": "length"}, "finish_reason"),
    ({"metadata": {"complete": {"finish_reasons": ["length"]}}},
     "metadata.complete.finish_reasons[0]"),
    ({"metadata": {"magpie": {"instruction_finish_reason": "stop",
                              "response_finish_reason": "length"}}},
     "metadata.magpie.response_finish_reason"),
    ({"completion_sources": [{"finish_reason": "stop"}, {"finish_reason": "length"}]},
     "completion_sources[1].finish_reason"),
])
def test_a_completion_cut_at_the_token_limit_fails(extra: dict[str, Any], where: str) -> None:
    assert reasons(only("unfinished"), row("It is", **extra)) == [
        f"unfinished: finish_reason is 'length' ({where})"
    ]


def test_finished_or_unrecorded_completions_pass() -> None:
    stage = only("unfinished")
    assert reasons(stage, row("Done.", metadata={"complete": {"finish_reasons": ["stop"]}})) == []
    assert reasons(stage, row("Done.")) == []
    anthropic = only("unfinished", finish_reasons=["length", "max_tokens"])
    assert len(reasons(anthropic, row("It", finish_reason="max_tokens"))) == 1


# -- length ----------------------------------------------------------------------------------------


def test_length_bounds_per_side_in_words_or_chars() -> None:
    words = only("length", min_completion=3, max_prompt=4)
    assert reasons(words, row("Too short")) == [
        "length: the completion has 2 words, fewer than 3"
    ]
    assert reasons(words, row("Long enough now", prompt="one two three four")) == []  # inclusive
    assert reasons(words, row("Long enough now", prompt="one two three four five")) == [
        "length: the prompt has 5 words, more than 4"
    ]
    chars = only("length", unit="chars", max_completion=10)
    assert reasons(chars, row("0123456789")) == []
    assert reasons(chars, row("0123456789!")) == [
        "length: the completion has 11 chars, more than 10"
    ]


# -- refusal and boilerplate -----------------------------------------------------------------------


def test_refusals_and_boilerplate_fail() -> None:
    stage = only("refusal")
    assert reasons(stage, row("Sorry, I can\u2019t   help with that request.")) == [
        "refusal: the completion contains \"i can't help with\" (refusal)"
    ]
    assert reasons(stage, row("As an AI language model, I think Paris is nice.")) == [
        "refusal: the completion contains 'as an ai language model' (boilerplate)"
    ]
    assert reasons(stage, row(VARIED)) == []
    assert reasons(stage, row("Mention it as an AI language models survey.")) == []  # a longer word
    # The prompt is not checked unless asked: a prompt may quote such phrases on purpose.
    assert reasons(stage, row("Fine.", prompt="Why do bots say 'as an AI language model'?")) == []
    both = only("refusal", columns=["prompt", "completion"])
    assert len(reasons(both, row("Fine.", prompt="as an AI language model, answer"))) == 1


def test_phrases_of_your_own() -> None:
    stage = only("refusal", phrases=["I'd rather not"], builtin=False)
    assert reasons(stage, row("Well, I\u2019d RATHER not say.")) == [
        "refusal: the completion contains \"i'd rather not\" (your phrase)"
    ]
    assert reasons(stage, row("As an AI language model, yes.")) == []


# -- repetition ------------------------------------------------------------------------------------


def test_the_repetition_measures() -> None:
    words = ["a", "b", "c", "d", "e", "a", "b", "c", "d", "e"]
    assert duplicate_ngram_share(words, 5) == 0.5  # the second "a b c d e"
    assert top_ngram_share(words, 2) == (0.4, "a b")  # "a b" twice: 4 of 10 words
    assert top_ngram_share(["a", "b", "c", "d"], 2) == (0.0, "")  # nothing repeats
    assert top_ngram_share(["x", "x", "x", "x"], 2)[0] == 1.0  # overlaps count once
    assert duplicate_line_share("one\ntwo\n\none\n}\n}\n") == (1, 3)  # blank and "}" lines skipped


def test_a_looping_answer_fails_and_a_varied_one_passes() -> None:
    stage = only("repetition")
    (reason,) = reasons(stage, row(LOOP))
    assert reason.startswith("repetition: ") and "of the completion's characters" in reason
    assert reasons(stage, row(VARIED)) == []
    assert reasons(stage, row("yes " * 30)) == []  # under min_words (50): not measured
    assert reasons(only("repetition", min_words=10), row("yes " * 30)) != []


def test_repeated_lines_fail_but_code_brackets_do_not() -> None:
    lines = "\n".join(["Step: mix the flour and the water well."] * 3 + [VARIED])
    (reason,) = reasons(only("repetition", min_words=10), row(lines))
    assert reason == (
        "repetition: 2 of 4 lines of the completion repeat an earlier line (50%, max 30%)"
    )
    # Half of these lines are lone closing braces: as lines they would repeat 11 times of 24.
    code = "\n".join(f"if (x > {i}) {{\n  run_step_{i}(x, {i * 3});\n}}\n}}" for i in range(6))
    code += "\n" + VARIED
    assert reasons(only("repetition", min_words=10, top_ngrams={}, duplicate_ngrams={}),
                   row(code)) == []


# -- language --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, language", [
    ("The weather is lovely today and we are going for a walk in the park.", "en"),
    ("Das Wetter ist heute sehr schön und wir gehen im Park spazieren.", "de"),
    ("Il fait très beau aujourd'hui et nous allons nous promener dans le parc.", "fr"),
    ("Hoy hace muy buen tiempo y vamos a dar un paseo por el parque con los niños.", "es"),
])
def test_language_detection_on_sentences(text: str, language: str) -> None:
    guess = detect_language(text)
    assert guess is not None and guess[0] == language and guess[1] > 0.5


def test_too_little_text_or_only_code_is_not_judged() -> None:
    assert detect_language("42") is None
    assert detect_language("```python\nprint('Hallo Welt, wie geht es dir heute?')\n```\nok") is None


def test_a_completion_in_another_language_fails() -> None:
    stage = only("language", languages=["en"])
    german = "Photosynthese ist der Prozess, bei dem Pflanzen Licht in chemische Energie umwandeln."
    found, detected = stage.findings(row(german))
    (finding,) = found
    assert finding.reason.startswith("language: the completion reads as de (0.")
    assert finding.reason.endswith("), not en") and finding.column == "completion"
    assert [d["language"] for d in detected] == ["en", "de"]  # the prompt, then the completion
    assert reasons(stage, row(VARIED)) == []
    assert reasons(only("language", languages=["en", "de"]), row(german)) == []
    unsure = only("language", languages=["en"], min_confidence=1.0)
    assert reasons(unsure, row(german)) == []


def test_no_linguistic_content_is_never_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import stillroom.curate.heuristic_checks as heuristic_checks

    stage = only("language", languages=["en"], columns=["completion"])
    text = "Table 4: 12.5 kg, 13.1 kg, 17.0 kg, 21.9 kg (mass, weight, scale)"

    class Sure:
        labels = ["en", "zxx"]

        def __init__(self, label: str) -> None:
            self.label = label

        def classify(self, text: str) -> tuple[str, float]:
            return self.label, 0.99

    monkeypatch.setattr(heuristic_checks, "_identifier", Sure("zxx"))
    assert reasons(stage, row(text)) == []
    monkeypatch.setattr(heuristic_checks, "_identifier", Sure("fr"))
    assert reasons(stage, row(text)) == ["language: the completion reads as fr (0.99), not en"]


def test_language_options_are_checked() -> None:
    assert HeuristicFilter(language="en").language is not None  # one code is a list of one
    assert HeuristicFilter(language=["EN"]).language.languages == ["en"]  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="unknown language code"):
        HeuristicFilter(language=["english"])
    with pytest.raises(ValidationError, match="say which languages"):
        HeuristicFilter(language=True)


# -- order, formats, options -----------------------------------------------------------------------


def test_the_first_failure_in_check_order_is_the_reason_and_all_are_kept() -> None:
    stage = HeuristicFilter(language=["en"])
    bad = row("TODO", prompt="Wie funktioniert die Photosynthese bei grünen Pflanzen genau?",
              finish_reason="length")
    (dropped,) = asyncio.run(stage.process(bad, StageContext("heuristic_filter", 0)))
    assert isinstance(dropped, Dropped)
    assert dropped.reason == "empty: the completion is a placeholder ('TODO')"
    checks = [f["check"] for f in dropped.row["heuristic_failures"]]
    assert checks == ["empty", "unfinished", "language"]
    lineage = dropped.row["metadata"]["heuristic_filter"]
    assert lineage["method"] == "heuristic_filter" and lineage["step"] == "empty"
    assert lineage["failed"] == dropped.row["heuristic_failures"]
    assert lineage["checks"] == ["empty", "unfinished", "length", "refusal", "repetition",
                                 "language"]


def test_row_formats_messages_lists_and_conversational_chosen() -> None:
    stage = HeuristicFilter()
    messages = {"messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Name a colour."},
                             {"role": "assistant", "content": "N/A"}]}
    assert reasons(stage, messages) == ["empty: the completion (messages[2]) is a placeholder ('N/A')"]
    listed = HeuristicFilter(completion_column="completions")
    assert reasons(listed, {"prompt": "Hi", "completions": ["Hello!", ""]}) == [
        "empty: the completion (completions[1]) is empty",
        "length: the completion (completions[1]) has 0 words, fewer than 1",
    ]
    pair = {"prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "As an AI language model, hello."}]}
    assert reasons(stage, pair) == [
        "refusal: the completion (chosen[0]) contains 'as an ai language model' (boilerplate)"
    ]
    assert reasons(stage, {"prompt": "A prompt-only data set row."}) == []


def test_rows_without_text_fail_and_named_columns_must_exist() -> None:
    stage = HeuristicFilter()
    assert "no prompt or completion" in (stage.check_row({"id": "x", "score": 3}) or "")
    with pytest.raises(RowFailure, match="no prompt or completion"):
        asyncio.run(stage.process({"id": "x"}, StageContext("h", 0)))
    named = HeuristicFilter(completion_column="answer")
    assert "no `answer` (completion_column)" in (named.check_row({"prompt": "p"}) or "")


def test_options_are_validated() -> None:
    assert stages.get("heuristic_filter") is HeuristicFilter
    off = HeuristicFilter(empty=False, refusal=None)
    assert off.checks() == ["unfinished", "length", "repetition"]
    with pytest.raises(ValidationError, match="every check is switched off"):
        HeuristicFilter(empty=False, unfinished=False, length=False, refusal=False,
                        repetition=False)
    with pytest.raises(ConfigError) as error:
        build_stage(HeuristicFilter, length={"min_completion": 10, "max_completion": 5})
    assert "min_completion (10) is above max_completion (5)" in str(error.value)
    with pytest.raises(ConfigError) as error:
        build_stage(HeuristicFilter, refusal={"phrase": ["x"]})
    assert error.value.key == "refusal.phrase"
    with pytest.raises(ValidationError, match="limit for 2-grams"):
        HeuristicFilter(repetition={"top_ngrams": {2: 1.5}})


def test_a_pipeline_file_switches_checks(tmp_path: Path) -> None:
    from stillroom.pipeline.config import parse_pipeline_text

    model, _ = parse_pipeline_text(
        "stages:\n  - type: heuristic_filter\n    refusal: false\n    language: [en]\n"
        "    length: {unit: chars, max_completion: 2000}\n"
    )
    (stage,) = model.stages  # type: ignore[attr-defined]
    assert isinstance(stage, HeuristicFilter) and stage.refusal is None
    assert stage.length is not None and stage.length.max_completion == 2000


# -- in a pipeline ---------------------------------------------------------------------------------

ROWS = [
    {"id": "good", "prompt": "Explain photosynthesis.", "completion": VARIED},
    {"id": "empty", "prompt": "Name a prime.", "completion": "TODO"},
    {"id": "refusal", "prompt": "Tell a joke.", "completion": "I must decline to do that."},
    {"id": "loop", "prompt": "How big does it get?", "completion": LOOP},
    {"id": "cut", "prompt": "Count to ten.", "completion": "1, 2, 3",
     "metadata": {"complete": {"finish_reasons": ["length"]}}},
]


def test_a_run_drops_each_failure_with_its_reason_and_reports_the_checks(tmp_path: Path) -> None:
    result = heuristic_filter(ROWS, tmp_path / "out", progress=False)
    assert result.counts == {"data": 1, "failed": 0, "dropped": 4}
    folder = OutputFolder(tmp_path / "out")
    (kept,) = folder.read_rows("data")
    assert kept["id"] == "good" and kept["metadata"]["heuristic_filter"]["failed"] == []
    assert "heuristic_failures" not in kept
    dropped = {r["id"]: r for r in folder.read_rows("dropped")}
    assert dropped["empty"]["drop_reason"].startswith("empty: ")
    assert dropped["refusal"]["drop_reason"].startswith("refusal: ")
    assert dropped["loop"]["drop_reason"].startswith("repetition: ")
    assert dropped["cut"]["drop_reason"].startswith("unfinished: ")
    figures = result.summary["stage_results"]["heuristic_filter"]
    assert figures["rows checked"] == 5 and figures["rows dropped"] == 4
    assert {check: figures[f"failing {check}"] for check in HeuristicFilter().checks()} == {
        "empty": 1, "unfinished": 1, "length": 0, "refusal": 1, "repetition": 1}
    assert HeuristicFilter().result_line(figures) == (
        "heuristics: 4 of 5 rows dropped (empty 1, unfinished 1, refusal 1, repetition 1)"
    )
    assert figures["rows failing a check"] == 4 and figures["failing refusal"] == 1


def test_drop_false_keeps_every_row_and_records_the_failures(tmp_path: Path) -> None:
    stage = HeuristicFilter(drop=False)
    result = Pipeline([stage], input=ROWS).run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 5, "failed": 0, "dropped": 0}
    rows = {r["id"]: r for r in OutputFolder(tmp_path / "out").read_rows("data")}
    assert rows["good"]["heuristic_failures"] == []
    assert [f["check"] for f in rows["empty"]["heuristic_failures"]] == ["empty"]
    figures = result.summary["stage_results"]["heuristic_filter"]
    assert stage.result_line(figures) == (
        "heuristics: 4 of 5 rows failing (empty 1, unfinished 1, refusal 1, repetition 1)"
    )


def test_a_row_without_text_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no prompt or completion"):
        Pipeline([HeuristicFilter()], input=[{"id": "1", "score": 2}]).run(
            tmp_path / "out", progress=False
        )
