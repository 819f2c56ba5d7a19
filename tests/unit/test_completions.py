"""The `completions` stage (UltraFeedback-style teachers and principles) with scripted backends."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError
from stillroom.generate.completions import Completions, Teacher
from stillroom.generate.principles import (
    DEFAULT_WEIGHTS,
    PRINCIPLE_PROMPTS,
    PRINCIPLES_VERSION,
)
from stillroom.llm.cache import request_key
from stillroom.llm.types import BackendError, Request
from stillroom.pipeline.config import parse_pipeline_text
from stillroom.pipeline.stage import StageContext
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig, rows


@pytest.fixture(autouse=True)
def fresh_backends() -> None:
    fakes.CURRENT.clear()


def system_of(request: Request) -> str | None:
    assert request.messages is not None
    first = request.messages[0]
    return str(first["content"]) if first["role"] == "system" else None


def echo_script(slot: str) -> Any:
    """Answers with what it was sent, so a completion can be traced back to its request."""

    def script(request: Request, attempt: int) -> str:
        system = system_of(request)
        prompt = request.messages[-1]["content"]  # type: ignore[index]
        return f"{slot}|{prompt}|{request.params.temperature}|{request.sample}|{system}"

    return script


def backends(*slots: str, **options: Any) -> dict[str, ScriptedConfig]:
    for slot in slots:
        fakes.CURRENT[slot] = ScriptedBackend(echo_script(slot))
    return {slot: ScriptedConfig(slot=slot, **options) for slot in slots}


def run(stage: Completions, data: list[dict[str, Any]], configs: dict[str, ScriptedConfig],
        out: Path, **options: Any) -> OutputFolder:
    Pipeline([stage], input=data, backends=configs).run(out, progress=False, **options)
    return OutputFolder(out)


THREE_TEACHERS = [
    Teacher(backend="a", n=2),
    Teacher(backend="b", n=1, model="b-label"),
    Teacher(backend="a", n=3, model="a-hot", temperature=1.3),
]


def test_three_teachers_completions_land_aligned_with_their_sources(tmp_path: Path) -> None:
    configs = backends("a", "b")
    stage = Completions(teachers=THREE_TEACHERS, temperature=0.5)
    folder = run(stage, rows(5), configs, tmp_path / "out")
    data = folder.read_rows("data")
    assert len(data) == 5
    for row in data:
        texts, sources = row["completions"], row["completion_sources"]
        assert len(texts) == len(sources) == 6
        assert [s["teacher"] for s in sources] == [0, 0, 1, 2, 2, 2]
        assert [s["sample"] for s in sources] == [0, 1, 0, 0, 1, 2]
        assert [s["model"] for s in sources] == ["scripted-model"] * 2 + ["b-label"] + ["a-hot"] * 3
        for text, source in zip(texts, sources, strict=True):
            slot, prompt, temperature, _, system = text.split("|")
            assert slot == source["backend"] and prompt == row["prompt"]
            # the teacher's own temperature wins over the stage's
            assert float(temperature) == (1.3 if source["teacher"] == 2 else 0.5)
            principle, index = source["system_prompt_id"].split("/")
            assert source["principle"] == principle
            assert system == PRINCIPLE_PROMPTS[principle][int(index)]
            assert source["finish_reason"] == "stop"
        lineage = row["metadata"]["completions"]
        assert lineage["method"] == "completions" and lineage["step"] == "teachers"
        assert lineage["parent_id"] == row["id"] and lineage["seed_id"] == row["id"]
        assert lineage["template"] == PRINCIPLES_VERSION
        assert lineage["model"] == ["scripted-model", "b-label", "a-hot"]
        assert "logprobs" not in row
    # per row: 2 + 3 requests to a, 1 to b
    assert len(fakes.CURRENT["a"].calls) == 25 and len(fakes.CURRENT["b"].calls) == 5


def test_the_system_prompts_sent_are_the_recorded_ones(tmp_path: Path) -> None:
    configs = backends("a")
    stage = Completions(teachers=[Teacher(backend="a", n=4)])
    folder = run(stage, rows(3), configs, tmp_path / "out")
    sent = {(c.messages[-1]["content"], c.sample): system_of(c)  # type: ignore[index]
            for c in fakes.CURRENT["a"].calls}
    for row in folder.read_rows("data"):
        for position, source in enumerate(row["completion_sources"]):
            principle, index = source["system_prompt_id"].split("/")
            assert sent[(row["prompt"], position)] == PRINCIPLE_PROMPTS[principle][int(index)]


def test_principles_none_sends_no_system_prompt(tmp_path: Path) -> None:
    configs = backends("a")
    folder = run(Completions(teachers=[Teacher(backend="a", n=2)], principles=None), rows(2),
                 configs, tmp_path / "out")
    assert all(system_of(c) is None for c in fakes.CURRENT["a"].calls)
    for row in folder.read_rows("data"):
        assert all(s["principle"] is None and s["system_prompt_id"] is None
                   for s in row["completion_sources"])
        assert row["metadata"]["completions"]["template"] is None


def test_principle_goes_after_a_conversations_own_system_prompt(tmp_path: Path) -> None:
    configs = backends("a")
    data = [{"id": "m1", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "hi"}]}]
    folder = run(Completions(teachers=[Teacher(backend="a")]), data, configs, tmp_path / "out")
    row = folder.read_rows("data")[0]
    principle, index = row["completion_sources"][0]["system_prompt_id"].split("/")
    request = fakes.CURRENT["a"].calls[0]
    assert request.messages is not None and len(request.messages) == 2
    assert system_of(request) == "Be brief.\n\n" + PRINCIPLE_PROMPTS[principle][int(index)]


def test_principles_none_parses_from_yaml() -> None:
    text = "stages:\n  - type: completions\n    teachers: [{backend: a}]\n    principles: none\n"
    model, _ = parse_pipeline_text(text)
    assert model.stages[0].principles is None  # type: ignore[attr-defined]


def test_principle_sampling_is_reproducible_and_follows_the_weights() -> None:
    stage = Completions(teachers=[Teacher(n=2), Teacher(n=2)])
    ctx = StageContext("completions", seed=0)
    counts: Counter[str] = Counter()
    for row in rows(1500):
        plan = stage.plan(row, ctx)
        assert plan == stage.plan(dict(row), StageContext("completions", seed=0))
        counts.update(choice.principle for _, _, choice in plan if choice is not None)
    total = sum(counts.values())
    assert total == 6000
    for principle, weight in DEFAULT_WEIGHTS.items():
        assert abs(counts[principle] / total - weight) < 0.025, (principle, counts)
    # another seed gives another (but equally weighted) draw
    other = [stage.plan(row, StageContext("completions", seed=1)) for row in rows(50)]
    assert other != [stage.plan(row, ctx) for row in rows(50)]


def test_custom_weights_never_pick_a_zero_weight_principle() -> None:
    stage = Completions(teachers=[Teacher(n=4)], principles={"honesty": 3, "truthfulness": 1,
                                                             "helpfulness": 0})
    ctx = StageContext("completions", seed=0)
    counts = Counter(choice.principle for row in rows(1000)
                     for _, _, choice in stage.plan(row, ctx) if choice is not None)
    assert set(counts) == {"honesty", "truthfulness"}
    assert abs(counts["honesty"] / 4000 - 0.75) < 0.03
    ids = Counter(choice.system_prompt_id for row in rows(300)
                  for _, _, choice in stage.plan(row, ctx) if choice is not None)
    assert {f"honesty/{i}" for i in range(len(PRINCIPLE_PROMPTS["honesty"]))} <= set(ids)


def test_same_seed_same_sources_on_a_fresh_run(tmp_path: Path) -> None:
    configs = backends("a", "b")
    stage = Completions(teachers=THREE_TEACHERS)
    first = run(stage, rows(4), configs, tmp_path / "one", use_cache=False).read_rows("data")
    second = run(stage, rows(4), configs, tmp_path / "two", use_cache=False).read_rows("data")
    key = sorted
    assert key([(r["id"], r["completion_sources"]) for r in first]) == key(
        [(r["id"], r["completion_sources"]) for r in second])


def test_equal_teachers_on_one_backend_are_separate_cache_entries(tmp_path: Path) -> None:
    configs = backends("a")
    stage = Completions(teachers=[Teacher(backend="a", n=2), Teacher(backend="a", n=2)],
                        principles=None)
    run(stage, rows(1), configs, tmp_path / "out")
    calls = fakes.CURRENT["a"].calls
    identity = {"backend": "scripted", "model": "scripted-model"}
    assert len({request_key(identity, c) for c in calls}) == 4
    assert len({c.effective_seed() for c in calls}) == 4
    # a rerun into another folder is served from the cache: no new request
    run(stage, rows(1), configs, tmp_path / "again")
    assert len(fakes.CURRENT["a"].calls) == 4


def test_one_empty_sample_fails_the_row_by_default(tmp_path: Path) -> None:
    configs = backends("a")

    def script(request: Request, attempt: int) -> str:
        prompt = request.messages[-1]["content"]  # type: ignore[index]
        return "  " if prompt == "p1" and request.sample == 2 else "ok"

    fakes.CURRENT["a"] = ScriptedBackend(script)
    folder = run(Completions(teachers=[Teacher(backend="a", n=3)]), rows(3), configs,
                 tmp_path / "out", max_failure_rate=1.0)
    failed = folder.read_rows("failed")
    assert [r["id"] for r in failed] == ["r1"]
    assert failed[0]["error_type"] == "EmptyCompletion" and "sample 2" in failed[0]["error"]
    assert sorted(r["id"] for r in folder.read_rows("data")) == ["r0", "r2"]


def test_a_failed_request_fails_the_row_with_its_kind(tmp_path: Path) -> None:
    configs = backends("a", max_retries=1)

    def script(request: Request, attempt: int) -> str:
        if request.messages[-1]["content"] == "p0" and request.sample == 1:  # type: ignore[index]
            raise fakes.server_error(500)
        return "ok"

    fakes.CURRENT["a"] = ScriptedBackend(script)
    folder = run(Completions(teachers=[Teacher(backend="a", n=2)]), rows(2), configs,
                 tmp_path / "out", max_failure_rate=1.0)
    failed = folder.read_rows("failed")
    assert [r["id"] for r in failed] == ["r0"]
    assert failed[0]["error_type"] == "InternalServerError" and failed[0]["attempts"] == 2
    assert "teacher 0 (a) sample 1" in failed[0]["error"]


def failing_script(bad_samples: set[int]) -> Any:
    def script(request: Request, attempt: int) -> str:
        if request.sample in bad_samples:
            if request.sample % 2:
                raise BackendError("bad", kind="BadRequestError", status=400)
            return ""
        return f"text {request.sample}"

    return script


def test_min_completions_keeps_a_row_with_enough_and_records_the_failures(tmp_path: Path) -> None:
    configs = backends("a", max_retries=0)
    fakes.CURRENT["a"] = ScriptedBackend(failing_script({1, 2}))
    stage = Completions(teachers=[Teacher(backend="a", n=4)], min_completions=2)
    folder = run(stage, rows(2), configs, tmp_path / "out")
    data = folder.read_rows("data")
    assert len(data) == 2 and not folder.read_rows("failed")
    for row in data:
        assert row["completions"] == ["text 0", "text 3"]
        assert [s["sample"] for s in row["completion_sources"]] == [0, 3]
        failures = row["metadata"]["completions"]["failed_samples"]
        assert [(f["sample"], f["error_type"]) for f in failures] == [
            (1, "BadRequestError"), (2, "EmptyCompletion")]
        assert all(f["error"] for f in failures)


def test_min_completions_fails_a_row_with_too_few(tmp_path: Path) -> None:
    configs = backends("a", max_retries=0)
    fakes.CURRENT["a"] = ScriptedBackend(failing_script({1, 2}))
    stage = Completions(teachers=[Teacher(backend="a", n=4)], min_completions=3)
    folder = run(stage, rows(1), configs, tmp_path / "out", max_failure_rate=1.0)
    assert not folder.read_rows("data")
    failed = folder.read_rows("failed")[0]
    assert failed["error_type"] == "TooFewCompletions"
    assert "only 2 of 4" in failed["error"] and "sample 1" in failed["error"]


def test_min_completions_above_the_total_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="min_completions"):
        Completions(teachers=[Teacher(n=2), Teacher(n=1)], min_completions=4)


def test_unknown_or_zero_principles_are_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown principle"):
        Completions(teachers=[Teacher()], principles={"kindness": 1.0})
    with pytest.raises(ValueError, match="weight > 0"):
        Completions(teachers=[Teacher()], principles={"honesty": 0.0})


def test_logprobs_only_when_asked(tmp_path: Path) -> None:
    configs = backends("a")
    stage = Completions(teachers=[Teacher(backend="a", n=2)], top_logprobs=3)
    row = run(stage, rows(1), configs, tmp_path / "with").read_rows("data")[0]
    assert len(row["logprobs"]) == 2
    assert all(isinstance(entries, list) and entries for entries in row["logprobs"])
    assert all(c.params.top_logprobs == 3 for c in fakes.CURRENT["a"].calls)

    fakes.CURRENT.clear()
    configs = backends("a")
    row = run(Completions(teachers=[Teacher(backend="a", n=2)]), rows(1), configs,
              tmp_path / "without").read_rows("data")[0]
    assert "logprobs" not in row
    assert all(c.params.top_logprobs is None for c in fakes.CURRENT["a"].calls)


def test_backends_without_logprobs_are_refused_when_logprobs_are_asked() -> None:
    from stillroom.llm.backend import backends as registry

    anthropic = registry.items().get("anthropic")
    if anthropic is None:
        pytest.skip("anthropic backend not registered")
    configs = {"a": ScriptedConfig(slot="a"),
               "c": anthropic(model="claude-x", base_url="http://127.0.0.1:9")}
    teachers = [Teacher(backend="a"), Teacher(backend="c")]
    with pytest.raises(ConfigError, match=r"teachers\[1\].*logprobs"):
        Pipeline([Completions(teachers=teachers, top_logprobs=2)], backends=configs)
    Pipeline([Completions(teachers=teachers)], backends=configs)  # fine without logprobs


def test_a_row_without_an_id_gets_a_stable_one(tmp_path: Path) -> None:
    configs = backends("a")
    data = [{"prompt": "no id here"}]
    first = run(Completions(teachers=[Teacher(backend="a")]), data, configs, tmp_path / "one")
    second = run(Completions(teachers=[Teacher(backend="a")]), data, configs, tmp_path / "two")
    row = first.read_rows("data")[0]
    assert row["id"].startswith("prompt-") and row["id"] == second.read_rows("data")[0]["id"]
    assert row["metadata"]["completions"]["parent_id"] is None


def test_generated_columns_and_default_sampling() -> None:
    stage = Completions(teachers=[Teacher()])
    assert stage.generated_columns() == ["completions"]
    # UltraFeedback's sampling: T=1, top_p=1, up to 1024 tokens, its principle mix
    assert (stage.temperature, stage.top_p, stage.max_tokens) == (1.0, 1.0, 1024)
    assert stage.principles == DEFAULT_WEIGHTS
