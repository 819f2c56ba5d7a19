"""teacher_logprobs with a fake scoring backend; LLMClient.score's retries and cache."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.errors import ConfigError, InputError
from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.cache import RequestCache, request_key
from stillroom.llm.client import LLMClient, score_key
from stillroom.llm.openai_compat import OpenAIConfig
from stillroom.llm.types import BackendError, Completion, Request, RequestFailed
from stillroom.pipeline.stage import Dropped, RowFailure, StageContext, stages
from stillroom.stages.teacher_logprobs import TeacherLogprobs
from tests.fakes import ScriptedConfig


class FakeScorer(Backend):
    """Scores each whitespace-separated word as one token: logprob -0.5, its alternatives the
    word itself and "alt<i>" tokens, best first. "FAIL" in a completion is a permanent error,
    "FLAKY" a retryable one on the first attempt."""

    kind = "fake_scoring"
    supports_scoring = True

    def __init__(self) -> None:
        super().__init__("fake-teacher")
        self.calls: list[tuple[Any, str, int | None]] = []
        self.attempts: Counter[str] = Counter()

    async def generate(self, request: Request) -> Completion:
        raise AssertionError("teacher_logprobs must not generate")

    async def score(
        self, prompt: Any, completion: str, top_logprobs: int | None = None
    ) -> list[dict[str, Any]]:
        self.calls.append((prompt, completion, top_logprobs))
        self.attempts[completion] += 1
        if "FAIL" in completion:
            raise BackendError("too long for the model", kind="BadRequestError", status=400)
        if "FLAKY" in completion and self.attempts[completion] == 1:
            raise BackendError("busy", kind="InternalServerError", status=500, retryable=True)
        entries = []
        for position, word in enumerate(completion.split(" ")):
            token = word if position == 0 else f" {word}"
            entry: dict[str, Any] = {"token": token, "id": 100 + position, "logprob": -0.5,
                                     "rank": 1}  # an extra key a backend may add
            if top_logprobs is not None:
                entry["top_logprobs"] = [{"token": token, "id": 100 + position, "logprob": -0.5}] + [
                    {"token": f"alt{i}", "id": i, "logprob": -1.0 - i}
                    for i in range(top_logprobs - 1)
                ]
            entries.append(entry)
        return entries


CURRENT: dict[str, FakeScorer] = {}


@backends.register("fake_scoring")
class FakeScoringConfig(BackendConfig):
    kind: Literal["fake_scoring"] = "fake_scoring"
    model: str | None = "fake-teacher"
    retry_base_delay: float = 0.001
    retry_max_delay: float = 0.01

    _runtime_fields: ClassVar[frozenset[str]] = BackendConfig._runtime_fields

    def backend_class(self) -> type[Backend]:
        return FakeScorer

    def build(self) -> Backend:
        return CURRENT.setdefault("teacher", FakeScorer())


@pytest.fixture(autouse=True)
def scorer() -> FakeScorer:
    CURRENT.clear()
    backend = FakeScorer()
    CURRENT["teacher"] = backend
    return backend


def sft_rows() -> list[dict[str, Any]]:
    return [
        {"id": "a", "prompt": "Capital of France?", "completion": "Paris is the capital."},
        {"id": "b", "messages": [{"role": "user", "content": "Hi"}], "completion": "Hello there"},
    ]


def run(stage: TeacherLogprobs, rows: list[dict[str, Any]], out: Path, **config: Any) -> Any:
    pipeline = Pipeline([stage], input=rows, backends={"teacher": FakeScoringConfig(**config)})
    return pipeline.run(out, progress=False, max_failure_rate=1.0)


def read(out: Path, kind: str = "data") -> list[dict[str, Any]]:
    return sorted(OutputFolder(out).read_rows(kind), key=lambda row: str(row.get("id")))


# -- options and backends --------------------------------------------------------------------------


def test_registered_with_defaults_and_bounds() -> None:
    assert stages.get("teacher_logprobs") is TeacherLogprobs
    stage = TeacherLogprobs(backend="teacher")
    assert (stage.top_logprobs, stage.completion_column, stage.output_column) == (
        5, "completion", "logprobs"
    )
    for bad in ({}, {"backend": "t", "top_logprobs": 0}, {"backend": "t", "top_logprobs": 21},
                {"backend": "t", "output_column": ""}, {"backend": "t", "temperature": 1}):
        with pytest.raises(ValidationError):
            TeacherLogprobs(**bad)


@pytest.mark.parametrize(
    "config",
    [ScriptedConfig(), OpenAIConfig(model="m", base_url="http://127.0.0.1:9/v1")],
    ids=["scripted", "openai"],
)
def test_a_backend_that_cannot_score_is_refused_naming_the_key(config: BackendConfig) -> None:
    with pytest.raises(ConfigError, match="cannot score") as error:
        Pipeline([TeacherLogprobs(backend="t")], input=sft_rows(), backends={"t": config})
    assert error.value.key == "backend"


def test_the_default_llamacpp_backend_is_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"'default' \(llamacpp\) cannot score"):
        Pipeline([TeacherLogprobs(backend="default")], input=sft_rows())


def test_scoring_flags_of_the_builtin_backends() -> None:
    from stillroom.llm.llamacpp import LlamaCppConfig
    from stillroom.llm.transformers_backend import TransformersBackend
    from stillroom.llm.vllm_backend import VLLMBackend

    assert TransformersBackend.supports_scoring and VLLMBackend.supports_scoring
    assert not LlamaCppConfig().backend_class().supports_scoring
    assert not Backend.supports_scoring


def test_the_base_backend_score_names_the_backend_kind() -> None:
    from tests.fakes import ScriptedBackend

    with pytest.raises(NotImplementedError, match="scripted backend cannot score"):
        asyncio.run(ScriptedBackend().score("p", "c"))


def test_bad_rows_are_named_before_any_request(scorer: FakeScorer, tmp_path: Path) -> None:
    stage = TeacherLogprobs(backend="teacher")
    assert stage.check_row(sft_rows()[0]) is None
    assert "`completion`" in (stage.check_row({"prompt": "q"}) or "")
    assert "must be text" in (stage.check_row({"prompt": "q", "completion": 3}) or "")
    assert "`prompt` or `messages`" in (stage.check_row({"completion": "c"}) or "")
    other = TeacherLogprobs(backend="teacher", completion_column="answer")
    assert other.check_row({"prompt": "q", "answer": "a"}) is None
    with pytest.raises(InputError, match="`completion`"):
        run(stage, [*sft_rows(), {"id": "c", "prompt": "q"}], tmp_path / "out")
    assert scorer.calls == []


# -- output ----------------------------------------------------------------------------------------


def test_rows_get_kd_shaped_logprobs_and_lineage(scorer: FakeScorer, tmp_path: Path) -> None:
    result = run(TeacherLogprobs(backend="teacher", top_logprobs=3, system="Be brief."),
                 sft_rows(), tmp_path / "out")
    assert result.counts == {"data": 2, "failed": 0, "dropped": 0}
    a, b = read(tmp_path / "out")
    # The prompt becomes a user turn, messages stay a conversation; system goes first.
    assert sorted(scorer.calls, key=lambda call: call[1]) == [
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "Hello there", 3),
        ([{"role": "system", "content": "Be brief."},
          {"role": "user", "content": "Capital of France?"}], "Paris is the capital.", 3),
    ]
    assert a["completion"] == "Paris is the capital." and a["prompt"] == "Capital of France?"
    assert len(a["logprobs"]) == 4
    assert "".join(entry["token"] for entry in a["logprobs"]) == a["completion"]
    first = a["logprobs"][0]
    assert first == {  # exactly the keys KD reads: the backend's "rank" is left out
        "token": "Paris", "logprob": -0.5, "id": 100,
        "top_logprobs": [{"token": "Paris", "logprob": -0.5, "id": 100},
                         {"token": "alt0", "logprob": -1.0, "id": 0},
                         {"token": "alt1", "logprob": -2.0, "id": 1}],
    }
    for row, scored in ((a, 4), (b, 2)):
        entry = row["metadata"]["teacher_logprobs"]
        assert set(LINEAGE_KEYS) <= set(entry)
        assert entry["method"] == "teacher_logprobs" and entry["parent_id"] == row["id"]
        assert entry["model"] == "fake-teacher" and entry["seed_id"] == row["id"]
        assert entry["backend"] == "teacher" and entry["top_logprobs"] == 3
        assert entry["scored_tokens"] == scored == len(row["logprobs"])


def test_columns_and_template_are_configurable(scorer: FakeScorer, tmp_path: Path) -> None:
    stage = TeacherLogprobs(backend="teacher", completion_column="answer", output_column="teacher",
                            prompt_template="Q: {question}", top_logprobs=1)
    run(stage, [{"id": "x", "question": "why?", "answer": "because"}], tmp_path / "out")
    [row] = read(tmp_path / "out")
    assert scorer.calls == [([{"role": "user", "content": "Q: why?"}], "because", 1)]
    assert "logprobs" not in row
    assert row["teacher"] == [{"token": "because", "logprob": -0.5, "id": 100,
                               "top_logprobs": [{"token": "because", "logprob": -0.5, "id": 100}]}]
    assert row["metadata"]["teacher_logprobs"]["template"] == "Q: {question}"


def test_an_empty_completion_is_dropped_with_lineage(scorer: FakeScorer, tmp_path: Path) -> None:
    rows = [*sft_rows(), {"id": "e", "prompt": "q", "completion": "  "}]
    result = run(TeacherLogprobs(backend="teacher"), rows, tmp_path / "out")
    assert result.counts == {"data": 2, "failed": 0, "dropped": 1}
    [dropped] = read(tmp_path / "out", "dropped")
    assert dropped["id"] == "e" and "`completion` is empty" in dropped["drop_reason"]
    assert dropped["metadata"]["teacher_logprobs"]["method"] == "teacher_logprobs"
    assert "  " not in [call[1] for call in scorer.calls]


def test_a_scoring_failure_goes_to_failed_and_retryable_errors_are_retried(
    scorer: FakeScorer, tmp_path: Path
) -> None:
    rows = [{"id": "f", "prompt": "q", "completion": "FAIL now"},
            {"id": "g", "prompt": "q", "completion": "FLAKY once"}, sft_rows()[0]]
    result = run(TeacherLogprobs(backend="teacher"), rows, tmp_path / "out", max_retries=2)
    assert result.counts == {"data": 2, "failed": 1, "dropped": 0}
    [failed] = read(tmp_path / "out", "failed")
    assert failed["id"] == "f" and failed["error_type"] == "BadRequestError"
    assert failed["attempts"] == 1 and "too long" in failed["error"]  # not retryable: one try
    assert scorer.attempts["FLAKY once"] == 2
    # sorted: a folder's rows are in the order their answers arrived (g's retry may finish first)
    assert sorted(row["id"] for row in read(tmp_path / "out")) == ["a", "g"]


def test_a_row_made_by_an_earlier_stage_is_checked_in_process() -> None:
    stage = TeacherLogprobs(backend="teacher")
    ctx = StageContext("teacher_logprobs", 0)
    with pytest.raises(RowFailure, match="`completion`") as error:
        asyncio.run(stage.process({"id": "x", "prompt": "q"}, ctx))
    assert error.value.kind == "BadInput"
    dropped = asyncio.run(stage.process({"id": "x", "prompt": "q", "completion": ""}, ctx))
    assert isinstance(dropped, list) and isinstance(dropped[0], Dropped)


def test_nothing_scored_fails_the_row(scorer: FakeScorer) -> None:
    async def nothing(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []

    scorer.score = nothing  # type: ignore[method-assign]
    ctx = StageContext("teacher_logprobs", 0, clients={"teacher": LLMClient(scorer)})
    with pytest.raises(RowFailure, match="scored no token") as error:
        asyncio.run(TeacherLogprobs(backend="teacher").process(sft_rows()[0], ctx))
    assert error.value.kind == "NothingScored"


# -- LLMClient.score -------------------------------------------------------------------------------


def test_client_score_caches_under_its_own_key(scorer: FakeScorer, tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "cache.sqlite")
    client = LLMClient(scorer, cache=cache)

    async def twice() -> tuple[Any, Any, Any]:
        first = await client.score("p", "a b", 2)
        again = await client.score("p", "a b", 2)
        other_k = await client.score("p", "a b", 3)
        return first, again, other_k

    first, again, other_k = asyncio.run(twice())
    assert first == again and len(other_k[0]["top_logprobs"]) == 3
    assert [call[2] for call in scorer.calls] == [2, 3]  # the repeat came from the cache
    stats = client.stats
    assert stats.cache_hits == 1 and stats.prompt_tokens == 4 and stats.cached_prompt_tokens == 2
    identity = scorer.cache_identity()
    # A score never shares a key with a generate request of the same text.
    assert score_key(identity, "p", "a b", 2) != request_key(identity, Request(prompt="p"))
    assert score_key(identity, "p", "a b", 2) != score_key(identity, "p", "a b", None)
    cache.close()


def test_client_score_gives_up_after_the_retries(scorer: FakeScorer) -> None:
    client = LLMClient(scorer, max_retries=1, retry_base_delay=0.0)
    with pytest.raises(RequestFailed) as error:
        asyncio.run(client.score(None, "FAIL"))
    assert error.value.attempts == 1 and client.stats.failed_requests == 1
    assert asyncio.run(client.score(None, "FLAKY x"))[0]["token"] == "FLAKY"
    assert client.stats.retries == 1
