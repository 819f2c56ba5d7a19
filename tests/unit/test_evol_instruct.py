"""Evol-Instruct with a scripted backend: operations, elimination rules, the pool, the tree."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline, StageContext
from stillroom.data.output import OutputFolder
from stillroom.generate.evol_instruct import (
    COPIES_EVOLVING_PROMPT,
    EMPTY_INSTRUCTION,
    EQUALITY_TEMPLATE,
    IN_DEPTH,
    NO_INFORMATION_GAIN,
    OPERATIONS,
    SORRY_SHORT_RESPONSE,
    STOPWORDS_ONLY_RESPONSE,
    TEMPLATES,
    UNPARSED_VERDICT,
    EvolInstruct,
    copied_phrase,
    is_only_stopwords,
    is_sorry_and_short,
    parse_equality,
)
from stillroom.llm.types import Request
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig, last_user

STAGE = "evol_instruct"
_REWRITE = re.compile(r"Given Prompt#:\n(.*)\n\n#(?:Rewritten|Created) Prompt#:\n$", re.DOTALL)
_JUDGE = re.compile(r"First instruction:\n(.*)\n\nSecond instruction:\n(.*)\n\nAnswer with",
                    re.DOTALL)


class Script:
    """Plays rewriter, judge and answerer; each role is a function a test can replace.

    rewrite(parent, epoch) -> the evolved instruction; judge(parent, child) -> the verdict text;
    answer(instruction) -> the answer.
    """

    def __init__(
        self,
        rewrite: Callable[[str, int], str] | None = None,
        judge: Callable[[str, str], str] | None = None,
        answer: Callable[[str], str] | None = None,
    ):
        self.rewrite = rewrite or (lambda parent, epoch: f"{parent} +e{epoch}")
        self.judge = judge or (lambda parent, child: "Not Equal")
        self.answer = answer or (lambda instruction: f"A careful answer about {instruction}")
        self.requests: list[tuple[str, Request]] = []

    def __call__(self, request: Request, attempt: int) -> str:
        text = last_user(request)
        if (match := _REWRITE.search(text)) is not None:
            self.requests.append(("rewrite", request))
            return self.rewrite(match.group(1), request.sample)
        if (match := _JUDGE.search(text)) is not None:
            self.requests.append(("judge", request))
            return self.judge(match.group(1), match.group(2))
        self.requests.append(("answer", request))
        return self.answer(text)


def run(
    tmp_path: Path,
    script: Script,
    rows: list[dict[str, Any]] | None = None,
    **stage_options: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], Any]:
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(script)
    data = rows if rows is not None else [{"id": "s0", "prompt": "What is 1+1?"}]
    stage = EvolInstruct(**stage_options)
    out = tmp_path / "out"
    result = Pipeline(
        [stage], input=data, backends={"default": ScriptedConfig(max_retries=1)}, seed=0
    ).run(out, progress=False, max_failure_rate=1.0, cache_dir=tmp_path / "cache")
    folder = OutputFolder(out)
    return (folder.read_rows("data"), folder.read_rows("dropped"), folder.read_rows("failed"),
            result)


def lineage(row: dict[str, Any]) -> dict[str, Any]:
    return row["metadata"][STAGE]


def evolved(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in rows if lineage(r)["step"] != "seed"),
                  key=lambda r: lineage(r)["epoch"])


# --- the rules as functions ---


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Equal", "equal"),
        ("equal.", "equal"),
        ("EQUAL - they ask the same thing", "equal"),
        ("Not Equal", "not_equal"),
        ("not equal.", "not_equal"),
        ("NOT-EQUAL", "not_equal"),
        ("They are not equal because the second adds a constraint.", "not_equal"),
        ("They aren't equal.", "not_equal"),
        ("Unequal", "not_equal"),
        ("Equal or Not Equal: Not Equal", "not_equal"),
        ("Judgement (Equal / Not Equal): Equal", "equal"),
        ("The second one is harder.", None),
        ("", None),
        ("Equality of the two is unclear", None),
    ],
)
def test_the_equality_verdict_is_parsed_tolerantly(text: str, verdict: str | None) -> None:
    assert parse_equality(text) == verdict


def test_copied_phrases_are_found_in_any_case() -> None:
    assert copied_phrase("#Rewritten Prompt#: Add two numbers") == "rewritten prompt"
    assert copied_phrase("In the GIVEN PROMPT, add 1 and 1") == "given prompt"
    assert copied_phrase("#Created Prompt#:\nName a rare fruit") == "created prompt"
    assert copied_phrase("Rewrite this prompt so it is given to a child") is None


def test_sorry_counts_only_in_a_short_response() -> None:
    assert is_sorry_and_short("Sorry, I cannot help with that.")
    assert is_sorry_and_short("I'm SORRY " + "word " * 77)  # 79 words
    assert not is_sorry_and_short("sorry " + "word " * 79)  # exactly 80 words: kept
    assert not is_sorry_and_short("A short answer with no apology.")


def test_stopwords_only_means_no_content_word() -> None:
    assert is_only_stopwords("")
    assert is_only_stopwords("... !?")
    assert is_only_stopwords("It is what it is, and that's that.")
    assert not is_only_stopwords("It is two.")
    assert not is_only_stopwords("42")


def test_in_depth_templates_limit_the_added_words_and_keep_prompts_answerable() -> None:
    versions = {template.version for template in TEMPLATES.values()}
    assert len(versions) == len(OPERATIONS)  # each operation its own template and version
    for op in IN_DEPTH:
        text = TEMPLATES[op].text
        assert "10 to 20 words" in text
        assert "reasonable" in text and "answer it" in text
        assert "#Rewritten Prompt#" in text
    breadth = TEMPLATES["in_breadth"].text
    assert "same domain" in breadth and "rarer" in breadth and "#Created Prompt#" in breadth
    assert "{input_format}" in TEMPLATES["complicate_input"].text
    assert set(EQUALITY_TEMPLATE.fields()) == {"first", "second"}


# --- operation choice ---


def test_operation_choice_is_reproducible_and_covers_all_six() -> None:
    stage = EvolInstruct()
    ctx = StageContext(STAGE, seed=0)
    picks = [stage.choose_operation(ctx, f"row{i}", epoch) for i in range(200) for epoch in (1, 2)]
    again = [stage.choose_operation(StageContext(STAGE, seed=0), f"row{i}", epoch)
             for i in range(200) for epoch in (1, 2)]
    assert picks == again
    counts = Counter(picks)
    assert set(counts) == set(OPERATIONS)
    assert min(counts.values()) > 30  # uniform: about 67 each of 400
    # the pick depends on the epoch too: a chain does not repeat one operation
    per_row = [{stage.choose_operation(ctx, f"row{i}", epoch) for epoch in range(1, 5)}
               for i in range(50)]
    assert sum(len(ops) > 1 for ops in per_row) > 40
    other_seed = [stage.choose_operation(StageContext(STAGE, seed=1), f"row{i}", 1)
                  for i in range(200)]
    assert other_seed != picks[::2]


def test_operation_weights_decide_what_may_be_picked() -> None:
    ctx = StageContext(STAGE, seed=0)
    only = EvolInstruct(operations={"in_breadth": 1.0, "deepening": 0.0})
    assert {only.choose_operation(ctx, f"r{i}", 1) for i in range(50)} == {"in_breadth"}
    skewed = EvolInstruct(operations={"add_constraints": 9.0, "concretizing": 1.0})
    counts = Counter(skewed.choose_operation(ctx, f"r{i}", 1) for i in range(500))
    assert set(counts) == {"add_constraints", "concretizing"}
    assert counts["add_constraints"] > 3 * counts["concretizing"]
    for bad in ({"telepathy": 1.0}, {"deepening": -1.0}, {"deepening": 0.0}):
        with pytest.raises(ValidationError):
            EvolInstruct(operations=bad)


def test_the_row_gets_the_template_of_its_operation_whatever_the_row_order(tmp_path: Path) -> None:
    rows = [{"id": f"s{i}", "prompt": f"Question number {i}?"} for i in range(24)]
    script = Script()
    data, _, _, _ = run(tmp_path / "a", script, rows, epochs=2)
    steps = {r["id"]: (lineage(r)["seed_id"], lineage(r)["step"], lineage(r)["epoch"])
             for r in data}
    assert len({step for _, step, _ in steps.values()} - {"seed"}) >= 4
    ctx = StageContext(STAGE, seed=0)
    stage = EvolInstruct()
    for seed_id, step, epoch in steps.values():
        if step != "seed":
            assert step == stage.choose_operation(ctx, seed_id, epoch)
    # every rewrite request is exactly the chosen operation's template on the parent
    sent = [last_user(req) for kind, req in script.requests if kind == "rewrite"]
    by_parent = {r["id"]: r["prompt"] for r in data}
    for row in evolved(data):
        info = lineage(row)
        parent_text = by_parent[info["parent_id"]]
        expected = TEMPLATES[info["step"]].format(prompt=parent_text,
                                                  input_format=info["input_format"])
        assert expected in sent
        assert info["template"] == TEMPLATES[info["step"]].version
        if info["step"] == "complicate_input":
            assert info["input_format"] in EvolInstruct().input_formats
        else:
            assert info["input_format"] is None
    reversed_data, _, _, _ = run(tmp_path / "b", Script(), list(reversed(rows)), epochs=2)
    assert {r["id"]: (lineage(r)["seed_id"], lineage(r)["step"], lineage(r)["epoch"])
            for r in reversed_data} == steps


# --- the elimination rules, each with a dropped and a kept case ---


def test_rule_4_an_instruction_copying_the_evolving_prompt_is_dropped(tmp_path: Path) -> None:
    script = Script(rewrite=lambda parent, epoch: (
        f"#Rewritten Prompt#: {parent} in French" if epoch == 1 else f"{parent} in French"))
    data, dropped, _, _ = run(tmp_path, script, epochs=2)
    assert [r["drop_reason"] for r in dropped] == [COPIES_EVOLVING_PROMPT]
    assert lineage(dropped[0])["elimination"]["phrase"] == "rewritten prompt"
    assert [r["prompt"] for r in evolved(data)] == ["What is 1+1? in French"]  # epoch 2 kept
    # the copy check needs no request: only the epoch-2 evolution was judged and answered
    kinds = Counter(kind for kind, _ in script.requests)
    assert kinds == {"rewrite": 2, "judge": 1, "answer": 2}


def test_rule_4_catches_the_breadth_label_too(tmp_path: Path) -> None:
    script = Script(rewrite=lambda parent, epoch: "#Created Prompt#:\nName a rare red fruit.")
    _, dropped, _, _ = run(tmp_path, script, epochs=1, operations={"in_breadth": 1.0})
    assert [r["drop_reason"] for r in dropped] == [COPIES_EVOLVING_PROMPT]


def test_rule_1_no_information_gain_is_dropped_and_not_equal_is_kept(tmp_path: Path) -> None:
    script = Script(judge=lambda parent, child: "Equal." if child.endswith("+e1") else
                    "They are NOT equal: the second adds a step.")
    data, dropped, _, _ = run(tmp_path, script, epochs=2)
    assert [r["drop_reason"] for r in dropped] == [NO_INFORMATION_GAIN]
    assert lineage(dropped[0])["judge"]["verdict"] == "equal"
    assert "completion" not in dropped[0] or dropped[0]["completion"] is None  # never answered
    [kept] = evolved(data)
    assert lineage(kept)["judge"]["verdict"] == "not_equal"
    assert kept["prompt"] == "What is 1+1? +e2"  # the parent (the seed) was evolved again
    judged = [last_user(req) for kind, req in script.requests if kind == "judge"]
    assert all("First instruction:\nWhat is 1+1?\n" in text for text in judged)


def test_an_unparsed_verdict_is_kept_and_recorded_or_dropped_when_asked(tmp_path: Path) -> None:
    script = Script(judge=lambda parent, child: "Hmm, hard to say.")
    data, dropped, _, _ = run(tmp_path / "keep", script, epochs=1)
    assert dropped == []
    [kept] = evolved(data)
    assert lineage(kept)["judge"] == {"verdict": "unparsed", "text": "Hmm, hard to say.",
                                      "model": "scripted-model"}
    data, dropped, _, _ = run(tmp_path / "drop", Script(judge=script.judge), epochs=1,
                              on_unparsed_verdict="drop")
    assert evolved(data) == []
    assert [r["drop_reason"] for r in dropped] == [UNPARSED_VERDICT]


def test_rule_2_a_short_sorry_answer_is_dropped_and_a_long_one_kept(tmp_path: Path) -> None:
    long_sorry = "Sorry for the long answer: " + " ".join(f"step{i}" for i in range(80))

    def answer(instruction: str) -> str:
        if instruction.endswith("+e1"):
            return "I'm sorry, but I can't answer that."
        if instruction.endswith("+e2"):
            return long_sorry
        return "Two."

    data, dropped, _, _ = run(tmp_path, Script(answer=answer), epochs=2)
    assert [r["drop_reason"] for r in dropped] == [SORRY_SHORT_RESPONSE]
    assert dropped[0]["completion"] == "I'm sorry, but I can't answer that."
    elimination = lineage(dropped[0])["elimination"]
    assert (elimination["rule"], elimination["words"]) == (SORRY_SHORT_RESPONSE, 7)
    [kept] = evolved(data)
    assert kept["completion"] == long_sorry and kept["prompt"] == "What is 1+1? +e2"


def test_rule_3_an_answer_of_stop_words_and_punctuation_is_dropped(tmp_path: Path) -> None:
    answers = {"+e1": "... it is what it is!", "+e2": "", "+e3": "It is 2."}
    script = Script(answer=lambda text: answers.get(text[-3:], "Two."))
    data, dropped, _, _ = run(tmp_path, script, epochs=3)
    assert [r["drop_reason"] for r in dropped] == [STOPWORDS_ONLY_RESPONSE] * 2
    [kept] = evolved(data)
    assert kept["completion"] == "It is 2." and kept["prompt"] == "What is 1+1? +e3"
    assert all(r["completion"] for r in data)  # never an empty value in data/


def test_an_empty_rewrite_is_a_failed_evolution(tmp_path: Path) -> None:
    script = Script(rewrite=lambda parent, epoch: "  \n" if epoch == 1 else f"{parent} +e{epoch}")
    data, dropped, _, _ = run(tmp_path, script, epochs=2)
    assert [r["drop_reason"] for r in dropped] == [EMPTY_INSTRUCTION]
    assert [r["prompt"] for r in evolved(data)] == ["What is 1+1? +e2"]
    assert all(r["prompt"] for r in data)


# --- the pool and the tree ---


def test_a_failed_evolution_goes_back_to_the_pool(tmp_path: Path) -> None:
    # epochs 1 and 2 fail (Equal), epoch 3 succeeds, epoch 4 evolves epoch 3's child
    script = Script(judge=lambda parent, child: "Equal" if child.endswith(("+e1", "+e2"))
                    else "Not Equal")
    data, dropped, _, result = run(tmp_path, script, epochs=4)
    assert result.counts == {"data": 3, "dropped": 2, "failed": 0}
    for row in dropped:  # both failures were evolutions of the seed itself
        assert lineage(row)["parent_id"] == "s0"
        assert row["parent_prompt"] == "What is 1+1?"
        assert lineage(row)["depth"] == 1
    third, fourth = evolved(data)
    assert third["prompt"] == "What is 1+1? +e3"
    assert lineage(third)["parent_id"] == "s0" and lineage(third)["depth"] == 1
    assert lineage(third)["path"] == [lineage(third)["step"]]
    assert fourth["prompt"] == "What is 1+1? +e3 +e4"
    assert lineage(fourth)["parent_id"] == third["id"] and lineage(fourth)["depth"] == 2
    rewrites = [_REWRITE.search(last_user(req)).group(1)  # type: ignore[union-attr]
                for kind, req in script.requests if kind == "rewrite"]
    assert rewrites == ["What is 1+1?"] * 3 + ["What is 1+1? +e3"]
    # the parent is evolved again as a fresh sample, not served the cached failure
    assert [req.sample for kind, req in script.requests if kind == "rewrite"] == [1, 2, 3, 4]


def test_the_tree_can_be_rebuilt_from_parent_ids(tmp_path: Path) -> None:
    rows = [{"id": f"s{i}", "prompt": f"Seed task {i}."} for i in range(6)]
    # a deterministic mix of failures: every evolution whose text hash is odd-ish is Equal
    script = Script(judge=lambda parent, child: "Equal" if len(child) % 3 == 0 else "Not Equal")
    data, dropped, failed, result = run(tmp_path, script, rows, epochs=4)
    assert failed == [] and dropped  # some evolutions failed
    assert result.counts["data"] + result.counts["dropped"] == 6 * (1 + 4)
    nodes = {r["id"]: r for r in data}
    assert len(nodes) == len(data)  # ids are unique
    everything = data + dropped
    for row in everything:
        info = lineage(row)
        assert info["method"] == "evol_instruct" and info["model"] in (None, "scripted-model")
        if info["step"] == "seed":
            assert info["parent_id"] is None and info["seed_id"] == row["id"]
            assert (info["depth"], info["path"], info["epoch"]) == (0, [], 0)
            continue
        parent = nodes[info["parent_id"]]  # the parent of anything is a kept instruction
        parent_info = lineage(parent)
        assert info["seed_id"] == parent_info["seed_id"]
        assert info["depth"] == parent_info["depth"] + 1
        assert info["path"] == [*parent_info["path"], info["step"]]
        assert info["epoch"] > parent_info["epoch"]
        assert row["prompt"] == f"{parent['prompt']} +e{info['epoch']}"
        assert info["template"] == TEMPLATES[info["step"]].version
    # each epoch of each seed produced exactly one attempt, and the attempt of epoch e evolved
    # the newest kept instruction of that seed from before e
    for seed in rows:
        attempts = sorted((r for r in everything if lineage(r)["seed_id"] == seed["id"]
                           and lineage(r)["step"] != "seed"), key=lambda r: lineage(r)["epoch"])
        assert [lineage(r)["epoch"] for r in attempts] == [1, 2, 3, 4]
        current = seed["id"]
        for attempt in attempts:
            assert lineage(attempt)["parent_id"] == current
            if attempt in data:
                current = attempt["id"]


# --- the original, columns, failures, parameters ---


def test_the_original_is_kept_answered_and_rooted(tmp_path: Path) -> None:
    data, _, _, _ = run(tmp_path / "a", Script(), epochs=1)
    [original] = [r for r in data if lineage(r)["step"] == "seed"]
    assert original["id"] == "s0" and original["prompt"] == "What is 1+1?"
    assert original["completion"] == "A careful answer about What is 1+1?"
    rows = [{"id": "s0", "prompt": "What is 1+1?", "completion": "Two.", "topic": "math"}]
    script = Script()
    data, _, _, _ = run(tmp_path / "b", script, rows, epochs=1)
    [original] = [r for r in data if lineage(r)["step"] == "seed"]
    assert original["completion"] == "Two." and original["topic"] == "math"
    [child] = evolved(data)
    assert child.get("topic") is None  # the parent's other columns describe the parent
    assert sum(kind == "answer" for kind, _ in script.requests) == 1  # only the child
    data, _, _, _ = run(tmp_path / "c", Script(), epochs=1, keep_original=False)
    assert [lineage(r)["step"] for r in data] != [] and all(
        lineage(r)["step"] != "seed" and lineage(r)["seed_id"] == "s0" for r in data)


def test_an_original_with_an_empty_answer_is_dropped_but_still_evolved(tmp_path: Path) -> None:
    script = Script(answer=lambda text: "" if text == "What is 1+1?" else "Two.")
    data, dropped, _, _ = run(tmp_path, script, epochs=1)
    assert [r["drop_reason"] for r in dropped] == ["empty_answer"]
    assert lineage(dropped[0])["step"] == "seed"
    assert [lineage(r)["parent_id"] for r in data] == ["s0"]


def test_another_column_can_hold_the_instruction(tmp_path: Path) -> None:
    rows = [{"id": "a1", "instruction": "Name a colour."}]
    data, _, _, _ = run(tmp_path, Script(), rows, epochs=1, column="instruction")
    assert sorted(r["prompt"] for r in data) == ["Name a colour.", "Name a colour. +e1"]
    stage = EvolInstruct(column="instruction")
    assert "needs a `instruction` column" in (stage.check_row({"id": "x", "prompt": "p"}) or "")
    assert "empty" in (stage.check_row({"instruction": "  "}) or "")
    assert "text" in (stage.check_row({"instruction": 3}) or "")
    assert stage.check_row({"instruction": "ok"}) is None


def test_a_request_failing_after_retries_fails_the_seed_row(tmp_path: Path) -> None:
    def answer(instruction: str) -> str:
        if instruction == "Broken task. +e1 +e2":
            raise fakes.server_error(500)
        return "Fine."

    rows = [{"id": "ok", "prompt": "Good task."}, {"id": "bad", "prompt": "Broken task."}]
    data, dropped, failed, result = run(tmp_path, Script(answer=answer), rows, epochs=2)
    assert [r["id"] for r in failed] == ["bad"]
    assert failed[0]["error_type"] == "InternalServerError" and failed[0]["attempts"] == 2
    assert "epoch 2" in failed[0]["error"] and "answering" in failed[0]["error"]
    assert {lineage(r)["seed_id"] for r in data} == {"ok"} and dropped == []
    assert result.counts == {"data": 3, "dropped": 0, "failed": 1}


def test_sampling_parameters_follow_the_reference_code(tmp_path: Path) -> None:
    script = Script()
    run(tmp_path, script, epochs=1)
    params = {kind: req.params for kind, req in script.requests}
    assert (params["rewrite"].temperature, params["rewrite"].top_p,
            params["rewrite"].max_tokens) == (1.0, 0.95, 2048)
    assert (params["answer"].temperature, params["answer"].top_p,
            params["answer"].max_tokens) == (1.0, 0.95, 2048)
    assert params["judge"].temperature == 0.0 and params["judge"].max_tokens == 32
    assert all(p.seed == 0 for p in params.values())


def test_stage_declares_backends_and_generated_columns() -> None:
    stage = EvolInstruct(backend="evolver", answer_backend="teacher")
    assert stage.backend_names() == {"evolver", "teacher"}
    assert EvolInstruct().backend_names() == {"default"}
    assert EvolInstruct(judge_backend="judge").backend_names() == {"default", "judge"}
    assert stage.generated_columns() == ["prompt", "completion"]
