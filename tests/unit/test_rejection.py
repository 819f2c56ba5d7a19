"""Rejection sampling, majority vote and pass@k with the scripted backend."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.llm.types import Request
from stillroom.verify.rejection import (
    MajorityVote,
    RejectionSample,
    group_final_answers,
    pass_at_k,
    pass_at_k_summary,
)
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig


@pytest.fixture(autouse=True)
def fresh_backend() -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = ScriptedBackend()
    fakes.CURRENT["default"] = backend
    return backend


def use(script: Any) -> ScriptedBackend:
    backend = ScriptedBackend(script)
    fakes.CURRENT["default"] = backend
    return backend


def run(stage: Any, rows: list[dict[str, Any]], out: Path, **config: Any) -> Any:
    pipeline = Pipeline([stage], input=rows, backends={"default": ScriptedConfig(**config)})
    return pipeline.run(out, progress=False, max_failure_rate=1.0)


def read(out: Path, kind: str = "data") -> list[dict[str, Any]]:
    return OutputFolder(out).read_rows(kind)


def math_rows(n: int = 1) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"what is {i} + 7?", "answer": str(i + 7)} for i in range(n)]


def right_from(first_right: int, answer: str = "7") -> Any:
    """Wrong answers for samples before ``first_right``, the right one from there on."""

    def script(request: Request, attempt: int) -> str:
        if request.sample >= first_right:
            return f"3 + 4 gives \\boxed{{{answer}}}"
        return "I think it is \\boxed{5}"

    return script


def assert_lineage(row: dict[str, Any], stage: str, method: str) -> None:
    entry = row["metadata"][stage]
    assert set(LINEAGE_KEYS) <= set(entry)
    assert entry["method"] == method
    assert row["id"]


# -- pass@k ---------------------------------------------------------------------------------------


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumerating_every_subset() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k)), (n, c, k)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0


def test_pass_at_k_rejects_impossible_counts() -> None:
    for n, c, k in [(0, 0, 1), (3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_summary_averages_over_rows_and_counts_samples() -> None:
    rows = [
        {"samples_spent": 4, "pass_at_k": {"pass@1": 0.5, "pass@4": 1.0}},
        {"samples_spent": 4, "pass_at_k": {"pass@1": 0.0, "pass@4": 0.0}},  # a dropped row
    ]
    assert pass_at_k_summary(rows) == {
        "prompts": 2, "samples_spent": 8, "pass@1": 0.25, "pass@4": 0.5,
    }


# -- rejection sampling ---------------------------------------------------------------------------


def test_stops_as_soon_as_k_pass(tmp_path: Path) -> None:
    backend = use(right_from(2))
    stage = RejectionSample(k=1, max_samples=8, batch=1)
    result = run(stage, math_rows(), tmp_path / "out")
    assert len(backend.calls) == 3
    assert [c.sample for c in backend.calls] == [0, 1, 2]
    [row] = read(tmp_path / "out")
    assert result.counts == {"data": 1, "failed": 0, "dropped": 0}
    assert row["completion"] == "3 + 4 gives \\boxed{7}"
    assert row["completions"] == [row["completion"]]
    assert row["samples_spent"] == 3 and row["passed_count"] == 1
    assert_lineage(row, "rejection_sample", "rejection_sampling")
    entry = row["metadata"]["rejection_sample"]
    assert entry["verifier"] == "math" and entry["model"] == "scripted-model"
    assert [s["passed"] for s in entry["samples"]] == [False, False, True]
    assert "expected 7" in entry["samples"][0]["reason"]


def test_the_kept_answer_is_written_in_the_rows_trl_shape(tmp_path: Path) -> None:
    """As `complete` writes it: the last turn of `messages` (an old answer there replaced), an
    assistant message list beside a conversational `prompt`; `completions` stay texts."""
    use(right_from(1))
    question = {"role": "user", "content": "what is 3 + 4?"}
    kept = {"role": "assistant", "content": "3 + 4 gives \\boxed{7}"}
    rows = [{"id": "m", "messages": [question, {"role": "assistant", "content": "old"}],
             "answer": "7"}]
    run(RejectionSample(k=1, max_samples=4, batch=1), rows, tmp_path / "m")
    [row] = read(tmp_path / "m")
    assert row["messages"] == [question, kept] and row.get("completion") is None
    assert row["completions"] == [kept["content"]]

    run(RejectionSample(k=1, max_samples=4, batch=1),
        [{"id": "c", "prompt": [question], "answer": "7"}], tmp_path / "c")
    [row] = read(tmp_path / "c")
    assert row["completion"] == [kept]

    use(by_sample(["Answer: 7", "Answer: 7", "Answer: 8"]))
    voted = {"role": "user", "content": "and 4 + 3?"}  # another request: not from the cache
    run(MajorityVote(n=3), [{"id": "v", "messages": [voted]}], tmp_path / "v")
    [row] = read(tmp_path / "v")
    assert row["messages"] == [voted, {"role": "assistant", "content": "Answer: 7"}]


def test_batches_run_whole_and_keep_at_most_k_in_sample_order(tmp_path: Path) -> None:
    backend = use(right_from(1))
    stage = RejectionSample(k=2, max_samples=9, batch=4)
    run(stage, math_rows(), tmp_path / "out")
    assert len(backend.calls) == 4  # one batch of 4 gave 3 passes; no second batch
    [row] = read(tmp_path / "out")
    assert row["samples_spent"] == 4 and row["passed_count"] == 3
    assert len(row["completions"]) == 2


def test_spends_exactly_max_samples_when_none_pass_and_drops_with_reasons(tmp_path: Path) -> None:
    backend = use(right_from(99))
    stage = RejectionSample(k=1, max_samples=5, batch=2)
    result = run(stage, math_rows(), tmp_path / "out")
    assert sorted(c.sample for c in backend.calls) == [0, 1, 2, 3, 4]
    assert result.counts == {"data": 0, "failed": 0, "dropped": 1}
    [row] = read(tmp_path / "out", "dropped")
    assert row["drop_reason"] == "no sample passed the verifier after 5 samples"
    assert row["samples_spent"] == 5 and row["passed_count"] == 0 and row["completions"] == []
    assert_lineage(row, "rejection_sample", "rejection_sampling")
    assert len(row["metadata"]["rejection_sample"]["samples"]) == 5


def test_pass_at_k_draws_every_sample_and_reports_the_estimate(tmp_path: Path) -> None:
    backend = use(right_from(2))  # samples 2 and 3 of 4 pass
    stage = RejectionSample(k=1, max_samples=4, batch=2, pass_at_k=[1, 2, 4])
    run(stage, math_rows(), tmp_path / "out")
    assert len(backend.calls) == 4
    [row] = read(tmp_path / "out")
    assert row["passed_count"] == 2 and row["completions"] == ["3 + 4 gives \\boxed{7}"]
    assert row["pass_at_k"] == pytest.approx(
        {"pass@1": 0.5, "pass@2": 1 - 1 / 6, "pass@4": 1.0}
    )


def test_pass_at_k_over_the_run_goes_into_the_card_and_counts_dropped_prompts(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        messages = request.messages or []
        if "what is 1 + 7" in str(messages[-1]["content"]):
            return "no idea"  # prompt q1 never passes: dropped, pass@k 0
        return "\\boxed{5}" if request.sample == 0 else "3 + 4 gives \\boxed{7}"

    use(script)
    stage = RejectionSample(k=1, max_samples=2, batch=2, pass_at_k=[1, 2])
    rows = [{"id": "q0", "prompt": "what is 0 + 7?", "answer": "7"},
            {"id": "q1", "prompt": "what is 1 + 7?", "answer": "8"}]
    result = run(stage, rows, tmp_path / "out")
    assert result.counts == {"data": 1, "failed": 0, "dropped": 1}
    figures = result.summary["stage_results"]["rejection_sample"]
    assert figures == pytest.approx(
        {"prompts": 2, "samples_spent": 4, "pass@1": (0.5 + 0) / 2, "pass@2": (1 + 0) / 2}
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| rejection_sample | pass@2 | 0.500 |" in card


def test_an_empty_sample_is_a_sample_that_did_not_pass(tmp_path: Path) -> None:
    use(lambda request, attempt: "" if request.sample == 0 else "\\boxed{7}")
    run(RejectionSample(k=1, max_samples=3, batch=1), math_rows(), tmp_path / "out")
    [row] = read(tmp_path / "out")
    assert row["samples_spent"] == 2
    assert "empty completion" in row["metadata"]["rejection_sample"]["samples"][0]["reason"]


def test_a_request_failing_after_retries_fails_the_row(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        if request.sample == 1:
            raise fakes.server_error(500)
        return "\\boxed{5}"

    use(script)
    result = run(RejectionSample(k=1, max_samples=4, batch=2), math_rows(), tmp_path / "out",
                 max_retries=1)
    assert result.counts == {"data": 0, "failed": 1, "dropped": 0}
    [row] = read(tmp_path / "out", "failed")
    assert row["error_type"] == "InternalServerError"
    assert "sample 1" in row["error"]


def test_a_row_without_a_reference_answer_is_named_before_any_request() -> None:
    stage = RejectionSample()
    problem = stage.check_row({"id": "x", "prompt": "what is 2 + 2?"})
    assert problem is not None and "`answer`" in problem
    assert stage.check_row({"id": "x", "prompt": "2 + 2?", "answer": "4"}) is None


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ValidationError, match="max_samples"):
        RejectionSample(k=5, max_samples=4)
    with pytest.raises(ValidationError, match="pass_at_k"):
        RejectionSample(max_samples=4, pass_at_k=[8])
    with pytest.raises(ValidationError, match="no option"):
        RejectionSample(verifier_options={"nope": 1})


# -- majority vote --------------------------------------------------------------------------------


def test_equivalent_forms_are_one_group() -> None:
    labels, answers = group_final_answers(
        ["Answer: 1/2", "so it is \\boxed{0.5}", "Answer: 3", "no idea", "#### \\frac{1}{2}"], 5
    )
    assert labels == [0, 0, 1, None, 0]
    assert answers == ["1/2", "3"]


def by_sample(texts: list[str]) -> Any:
    return lambda request, attempt: texts[request.sample]


def test_majority_vote_labels_the_prompt(tmp_path: Path) -> None:
    backend = use(by_sample(["Answer: 1/2", "\\boxed{0.5}", "Answer: 3", "hmm"]))
    result = run(MajorityVote(n=4), [{"id": "a", "prompt": "half of one?"}], tmp_path / "out")
    assert len(backend.calls) == 4 and result.counts["data"] == 1
    [row] = read(tmp_path / "out")
    assert row["answer"] == "1/2"
    assert row["vote_share"] == pytest.approx(0.5)  # 2 of 4 samples, the answerless one included
    assert row["votes"] == [{"answer": "1/2", "count": 2}, {"answer": "3", "count": 1}]
    assert row["completion"] == "Answer: 1/2"
    assert len(row["completions"]) == 4
    assert_lineage(row, "majority_vote", "self_consistency")


def test_a_tie_is_dropped(tmp_path: Path) -> None:
    use(by_sample(["Answer: 1", "Answer: 2", "Answer: 2.0", "Answer: 1"]))
    result = run(MajorityVote(n=4), [{"id": "a", "prompt": "?"}], tmp_path / "out")
    assert result.counts["dropped"] == 1
    [row] = read(tmp_path / "out", "dropped")
    assert row["drop_reason"].startswith("tie between")
    assert row["answer"] is None
    assert_lineage(row, "majority_vote", "self_consistency")


def test_a_share_under_min_share_is_dropped_and_one_above_is_kept(tmp_path: Path) -> None:
    texts = ["Answer: 4", "Answer: 4", "Answer: 5", "nothing"]
    use(by_sample(texts))
    result = run(MajorityVote(n=4, min_share=0.6), [{"id": "a", "prompt": "?"}], tmp_path / "a")
    assert result.counts["dropped"] == 1
    assert "share 0.50" in read(tmp_path / "a", "dropped")[0]["drop_reason"]
    result = run(MajorityVote(n=4, min_share=0.5), [{"id": "a", "prompt": "?"}], tmp_path / "b")
    assert result.counts["data"] == 1 and read(tmp_path / "b")[0]["answer"] == "4"


def test_no_answer_in_any_sample_is_dropped(tmp_path: Path) -> None:
    use(lambda request, attempt: "I do not know")
    result = run(MajorityVote(n=2), [{"id": "a", "prompt": "?"}], tmp_path / "out")
    assert result.counts["dropped"] == 1
    assert read(tmp_path / "out", "dropped")[0]["drop_reason"] == (
        "no final answer in any of 2 samples"
    )


def test_votes_over_an_existing_column_without_requests(
    tmp_path: Path, fresh_backend: ScriptedBackend
) -> None:
    rows = [{"id": "a", "completions": ["#### 12", "Answer: 12", "Answer: 13"]}]
    stage = MajorityVote(completions_column="completions")
    assert stage.backend_names() == set()
    result = run(stage, rows, tmp_path / "out")
    assert fresh_backend.calls == []
    assert result.counts["data"] == 1
    row = read(tmp_path / "out")[0]
    assert row["answer"] == "12" and row["vote_share"] == pytest.approx(2 / 3)


def test_majority_vote_request_failure_fails_the_row(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        if request.sample == 2:
            raise fakes.server_error(500)
        return "Answer: 1"

    use(script)
    result = run(MajorityVote(n=3), [{"id": "a", "prompt": "?"}], tmp_path / "out",
                 max_retries=0)
    assert result.counts == {"data": 0, "failed": 1, "dropped": 0}


def test_top_logprobs_keeps_the_kept_samples_tokens(tmp_path: Path) -> None:
    backend = use(right_from(1))
    stage = RejectionSample(k=2, max_samples=4, batch=1, top_logprobs=3)
    run(stage, math_rows(), tmp_path / "out")
    assert all(call.params.top_logprobs == 3 for call in backend.calls)
    [row] = read(tmp_path / "out")
    # The logprobs are those of the kept (passing) samples, not of the failed first one.
    assert [entry["token"] for entry in row["logprobs"]] == row["completion"].split()
    assert len(row["completions_logprobs"]) == len(row["completions"]) == 2
    assert row["completions_logprobs"][0] == row["logprobs"]


def test_top_logprobs_needs_a_backend_that_returns_them(tmp_path: Path) -> None:
    from stillroom.errors import ConfigError

    class TextOnlyBackend(ScriptedBackend):
        supports_logprobs = False

    class TextOnlyConfig(ScriptedConfig):
        def backend_class(self) -> Any:
            return TextOnlyBackend

    backend = use(right_from(0))
    with pytest.raises(ConfigError, match="does not return logprobs") as error:
        Pipeline([RejectionSample(top_logprobs=3)], input=math_rows(),
                 backends={"default": TextOnlyConfig()})
    assert error.value.key == "top_logprobs" and backend.calls == []
