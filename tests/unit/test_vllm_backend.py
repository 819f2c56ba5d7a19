"""The vLLM backend's batching, parameter mapping and output reading, with a fake ``vllm`` module.

There is no GPU here, so ``vllm`` is replaced by a small stand-in that records the prompts and
SamplingParams it is given and answers like vLLM's offline API: ``RequestOutput`` with
``outputs[0].text / token_ids / finish_reason / stop_reason / logprobs`` and ``prompt_logprobs``
(dicts of token id -> Logprob). The tokenizer is one token per character (id = code point), with
"\\x01" as BOS and "\\x02" as EOS, so expected ids can be written down. The real engine is
exercised by tests/integration/test_vllm_gpu.py where a GPU is present.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom.errors import ConfigError
from stillroom.llm import backends
from stillroom.llm.backend import BackendConfig
from stillroom.llm.transformers_backend import TransformersConfig
from stillroom.llm.types import BackendError, GenerationParams, Request
from stillroom.llm.vllm_backend import VLLMBackend, VLLMConfig
from stillroom.pipeline.config import pipeline_file_model

BOS, EOS = 1, 2

# -- the fake vllm ----------------------------------------------------------------------------------


class CharTokenizer:
    bos_token_id = BOS
    eos_token_id = EOS

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) for c in text]
        bos = [self.bos_token_id] if add_special_tokens and self.bos_token_id is not None else []
        return {"input_ids": bos + ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids if not (skip_special_tokens and i in (BOS, EOS)))

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool, tokenize: bool
    ) -> str:
        assert tokenize is False
        for message in messages:
            if not isinstance(message["content"], str):
                raise TypeError("content must be a string")
        text = "\x01" + "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class SamplingParams:
    """vLLM's defaults for the fields the backend sets; an unknown keyword fails, as in vLLM."""

    DEFAULTS: dict[str, Any] = {
        "n": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 16, "stop": None, "seed": None,
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": None,
        "prompt_logprobs": None,
    }
    OPTIONAL = ("structured_outputs", "guided_decoding")

    def __init__(self, **kwargs: Any):
        unknown = set(kwargs) - set(self.DEFAULTS) - set(self.OPTIONAL)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)}")
        self.__dict__.update({**self.DEFAULTS, **kwargs})


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: Any
    logprobs: list[dict[int, Logprob]] | None


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


def position(chosen: int, chosen_logprob: float, k: int) -> dict[int, Logprob]:
    """vLLM's shape: the k best alternatives ("A", "B"... at -1, -2...) and the chosen token;
    the alternatives come first so the backend has to sort."""
    out = {ord("A") + j: Logprob(-1.0 - j, rank=j + 2) for j in range(k)}
    out[chosen] = Logprob(chosen_logprob, rank=1)
    return out


@dataclass
class FakeLLM:
    """Answers ``reply`` (one token a character), then EOS; cuts at stop strings like vLLM."""

    kwargs: dict[str, Any]
    reply: str = "hello world"
    max_model_len: int = 64
    calls: list[tuple[list[list[int]], list[Any]]] = field(default_factory=list)
    fail_with: BaseException | None = None
    refuse_token: int | None = None  # a ValueError for any prompt holding this id
    bos: int | None = BOS  # None: a model without a BOS token

    def __post_init__(self) -> None:
        self.llm_engine = types.SimpleNamespace(
            model_config=types.SimpleNamespace(max_model_len=self.max_model_len)
        )

    def get_tokenizer(self) -> CharTokenizer:
        tokenizer = CharTokenizer()
        tokenizer.bos_token_id = self.bos  # type: ignore[assignment]
        return tokenizer

    def generate(self, prompts: list[Any], params: list[Any], use_tqdm: bool = True) -> list[Any]:
        assert use_tqdm is False
        assert len(prompts) == len(params)
        ids = [list(p["prompt_token_ids"]) for p in prompts]
        self.calls.append((ids, list(params)))
        if self.fail_with is not None:
            raise self.fail_with
        if self.refuse_token is not None and any(self.refuse_token in p for p in ids):
            raise ValueError("a request is invalid")
        return [self._one(p, sp) for p, sp in zip(ids, params, strict=True)]

    def _one(self, prompt: list[int], params: Any) -> RequestOutput:
        tokens: list[int] = []
        text, finish, stop_reason = "", "length", None
        for char in self.reply + "\x02":
            if len(tokens) >= params.max_tokens:
                break
            tokens.append(ord(char))
            if char == "\x02":
                finish = "stop"
                break
            text += char
            hit = [s for s in params.stop or () if s in text]
            if hit:
                text, finish, stop_reason = text[: text.index(hit[0])], "stop", hit[0]
                break
        logprobs = None
        if params.logprobs is not None:
            # The second token is sampled from outside the top k.
            logprobs = [
                position(t, -9.0 if i == 1 else -0.5, params.logprobs) for i, t in enumerate(tokens)
            ]
        prompt_logprobs = None
        if params.prompt_logprobs:
            prompt_logprobs = [None] + [
                position(t, -0.25 * at, params.prompt_logprobs)
                for at, t in enumerate(prompt[1:], start=1)
            ]
        output = CompletionOutput(text, tokens, finish, stop_reason, logprobs)
        return RequestOutput([output], prompt_logprobs)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A fake ``vllm`` (and ``vllm.sampling_params``) in sys.modules; ``engines`` lists the LLMs
    built, ``settings`` holds what the next LLM is built with."""
    record = types.SimpleNamespace(engines=[], settings={})

    def make_llm(**kwargs: Any) -> FakeLLM:
        engine = FakeLLM(kwargs, **record.settings)
        record.engines.append(engine)
        return engine

    vllm = types.ModuleType("vllm")
    vllm.LLM = make_llm  # type: ignore[attr-defined]
    vllm.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")

    @dataclass
    class StructuredOutputsParams:
        json: Any = None

    sampling.StructuredOutputsParams = StructuredOutputsParams  # type: ignore[attr-defined]
    record.sampling_module = sampling
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sampling)
    return record


def build(**options: Any) -> VLLMBackend:
    backend = VLLMConfig(model="org/some-model", **options).build()
    assert isinstance(backend, VLLMBackend)
    return backend


def raw(prompt: str, sample: int = 0, **params: Any) -> Request:
    return Request(prompt=prompt, params=GenerationParams(**params), sample=sample)


def chat(content: str, **params: Any) -> Request:
    return Request(
        messages=[{"role": "user", "content": content}], params=GenerationParams(**params)
    )


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


# -- batching ---------------------------------------------------------------------------------------


async def test_requests_arriving_together_go_to_one_generate_call(fake_vllm: Any) -> None:
    backend = build()
    completions = await asyncio.gather(*(backend.generate(raw(f"q{i}")) for i in range(5)))
    engine = fake_vllm.engines[0]
    assert len(engine.calls) == 1
    prompts, _ = engine.calls[0]
    assert prompts == [[BOS, *ids(f"q{i}")] for i in range(5)]
    assert [c.text for c in completions] == ["hello world"] * 5
    await backend.aclose()


async def test_batch_size_caps_one_call_and_scores_join_the_batches(fake_vllm: Any) -> None:
    backend = build(batch_size=2)
    await asyncio.gather(
        backend.generate(raw("a")),
        backend.score("p", "c"),
        backend.generate(raw("b")),
        backend.generate(raw("d")),
        backend.generate(raw("e")),
    )
    sizes = [len(prompts) for prompts, _ in fake_vllm.engines[0].calls]
    assert sizes == [2, 2, 1]
    assert len(fake_vllm.engines) == 1  # one engine, built once
    await backend.aclose()


async def test_the_engine_is_built_with_the_config(fake_vllm: Any) -> None:
    backend = build(
        tensor_parallel_size=4,
        dtype="bfloat16",
        gpu_memory_utilization=0.5,
        max_model_len=4096,
        enforce_eager=True,
        engine_args={"quantization": "fp8"},
    )
    backend.load()
    assert fake_vllm.engines[0].kwargs == {
        "model": "org/some-model",
        "tensor_parallel_size": 4,
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.5,
        "enforce_eager": True,
        "max_logprobs": 20,
        "max_model_len": 4096,
        "quantization": "fp8",
    }
    await backend.aclose()


# -- parameters -------------------------------------------------------------------------------------


async def test_each_request_keeps_its_own_sampling_params(fake_vllm: Any) -> None:
    backend = build(max_new_tokens=7)
    await asyncio.gather(
        backend.generate(raw("a", sample=2, seed=10, temperature=0.7, top_p=0.9, max_tokens=5,
                             stop=("x", ""), presence_penalty=2.0, frequency_penalty=1.5,
                             top_logprobs=3)),
        backend.generate(raw("b")),
    )
    first, second = fake_vllm.engines[0].calls[0][1]
    assert (first.seed, first.temperature, first.top_p, first.max_tokens) == (12, 0.7, 0.9, 5)
    assert (first.stop, first.presence_penalty, first.frequency_penalty) == (["x"], 2.0, 1.5)
    assert (first.logprobs, first.n) == (3, 1)
    # Unset: OpenAI defaults, the configured length, no seed, no logprobs.
    assert (second.seed, second.temperature, second.top_p, second.max_tokens) == (None, 1.0, 1.0, 7)
    assert (second.stop, second.logprobs, second.presence_penalty) == (None, None, 0.0)
    await backend.aclose()


async def test_the_budget_is_capped_to_the_context_left(fake_vllm: Any) -> None:
    fake_vllm.settings = {"max_model_len": 10}
    backend = build()
    await backend.generate(raw("abc", max_tokens=100))  # 4 prompt tokens with BOS
    assert fake_vllm.engines[0].calls[0][1][0].max_tokens == 6
    await backend.aclose()


async def test_a_json_schema_constrains_decoding(fake_vllm: Any) -> None:
    schema = {"type": "object"}
    backend = build()
    await backend.generate(raw("a", json_schema=schema))
    params = fake_vllm.engines[0].calls[0][1][0]
    assert params.structured_outputs.json == schema
    assert VLLMBackend.supports_json_schema
    await backend.aclose()


async def test_a_json_schema_uses_guided_decoding_on_older_vllm(fake_vllm: Any) -> None:
    @dataclass
    class GuidedDecodingParams:
        json: Any = None

    del fake_vllm.sampling_module.StructuredOutputsParams
    fake_vllm.sampling_module.GuidedDecodingParams = GuidedDecodingParams
    backend = build()
    await backend.generate(raw("a", json_schema={"type": "array"}))
    params = fake_vllm.engines[0].calls[0][1][0]
    assert params.guided_decoding.json == {"type": "array"}
    assert not hasattr(params, "structured_outputs")
    await backend.aclose()


# -- prompts ----------------------------------------------------------------------------------------


async def test_chat_requests_get_the_chat_template_once_with_its_bos(fake_vllm: Any) -> None:
    backend = build()
    completion = await backend.generate(chat("hi"))
    prompt = fake_vllm.engines[0].calls[0][0][0]
    assert prompt == [BOS, *ids("<user>hi<assistant>")]
    assert completion.prompt_tokens == len(prompt)
    rendered = await backend.render_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], add_generation_prompt=False
    )
    assert rendered == "\x01<user>hi"
    await backend.aclose()


async def test_a_raw_prompt_already_holding_bos_gets_no_second_one(fake_vllm: Any) -> None:
    backend = build()
    await asyncio.gather(backend.generate(raw("\x01<user>x")), backend.generate(raw("y")))
    prompts = fake_vllm.engines[0].calls[0][0]
    assert prompts == [[BOS, *ids("<user>x")], [BOS, *ids("y")]]
    await backend.aclose()


async def test_a_template_that_rejects_the_messages_is_a_bad_request(fake_vllm: Any) -> None:
    backend = build()
    request = Request(messages=[{"role": "user", "content": 5}])
    with pytest.raises(BackendError) as caught:
        await backend.generate(request)
    assert caught.value.kind == "BadRequestError"
    await backend.aclose()


# -- outputs ----------------------------------------------------------------------------------------


async def test_completion_fields_and_logprobs_in_the_llamacpp_format(fake_vllm: Any) -> None:
    fake_vllm.settings = {"reply": "hey"}
    backend = build()
    completion = await backend.generate(raw("q", top_logprobs=2))
    assert completion.text == "hey"
    assert completion.finish_reason == "stop"
    assert completion.model == "org/some-model"
    # The EOS the engine stopped on is not reported, as the other backends do not report it.
    assert completion.completion_tokens == 3
    assert completion.logprobs is not None and len(completion.logprobs) == 3
    first, second, _ = completion.logprobs
    assert first == {
        "token": "h",
        "id": ord("h"),
        "logprob": -0.5,
        "top_logprobs": [
            {"token": "h", "id": ord("h"), "logprob": -0.5},
            {"token": "A", "id": ord("A"), "logprob": -1.0},
        ],
    }
    # A sampled token outside the top k keeps its own logprob and is not among the top k.
    assert second["token"] == "e" and second["logprob"] == -9.0
    assert [t["token"] for t in second["top_logprobs"]] == ["A", "B"]
    await backend.aclose()


async def test_no_logprobs_unless_asked_and_zero_gives_the_chosen_token_only(
    fake_vllm: Any,
) -> None:
    backend = build()
    plain, zero = await asyncio.gather(
        backend.generate(raw("q")), backend.generate(raw("q", top_logprobs=0))
    )
    assert plain.logprobs is None
    assert zero.logprobs is not None
    assert zero.logprobs[0] == {"token": "h", "id": ord("h"), "logprob": -0.5, "top_logprobs": []}
    await backend.aclose()


async def test_a_stop_string_is_cut_with_the_tokens_holding_it(fake_vllm: Any) -> None:
    backend = build()
    completion = await backend.generate(raw("q", stop=("o w",), top_logprobs=1))
    assert completion.text == "hell"
    assert completion.finish_reason == "stop"
    assert completion.completion_tokens == 4
    assert completion.logprobs is not None
    assert "".join(e["token"] for e in completion.logprobs) == "hell"
    await backend.aclose()


async def test_a_run_cut_by_max_tokens_reports_length(fake_vllm: Any) -> None:
    backend = build()
    completion = await backend.generate(raw("q", max_tokens=3, top_logprobs=0))
    assert (completion.text, completion.finish_reason, completion.completion_tokens) == (
        "hel",
        "length",
        3,
    )
    assert completion.logprobs is not None and len(completion.logprobs) == 3
    await backend.aclose()


# -- scoring ----------------------------------------------------------------------------------------


async def test_score_gives_the_completion_tokens_logprobs_after_the_prompt(fake_vllm: Any) -> None:
    backend = build()
    scored = await backend.score("ab", "cd")
    prompt, params = (x[0] for x in fake_vllm.engines[0].calls[0])
    assert prompt == [BOS, *ids("abcd")]
    assert (params.max_tokens, params.prompt_logprobs, params.temperature) == (1, 1, 0.0)
    # The fake gives position p a logprob of -0.25 p: "c" is at 3, "d" at 4.
    assert scored == [
        {"token": "c", "id": ord("c"), "logprob": -0.75},
        {"token": "d", "id": ord("d"), "logprob": -1.0},
    ]
    await backend.aclose()


async def test_score_with_top_logprobs_and_chat_messages(fake_vllm: Any) -> None:
    backend = build()
    scored = await backend.score([{"role": "user", "content": "q"}], "ok", top_logprobs=3)
    prompt, params = (x[0] for x in fake_vllm.engines[0].calls[0])
    context = [BOS, *ids("<user>q<assistant>")]
    assert prompt == context + ids("ok")
    assert params.prompt_logprobs == 3
    first = scored[0]
    assert (first["token"], first["logprob"]) == ("o", -0.25 * len(context))
    # Best first: the alternatives at -1, -2 beat the actual token here.
    assert [t["logprob"] for t in first["top_logprobs"]] == [-1.0, -2.0, -3.0]
    assert [t["token"] for t in first["top_logprobs"]] == ["A", "B", "C"]
    await backend.aclose()


async def test_score_without_prompt_starts_after_bos_and_empty_text_needs_no_call(
    fake_vllm: Any,
) -> None:
    backend = build()
    scored, empty = await asyncio.gather(backend.score(None, "xy"), backend.score("p", ""))
    assert [e["token"] for e in scored] == ["x", "y"]
    assert empty == []
    assert fake_vllm.engines[0].calls[0][0] == [[BOS, *ids("xy")]]
    await backend.aclose()


async def test_score_without_prompt_or_bos_leaves_out_the_first_token(fake_vllm: Any) -> None:
    fake_vllm.settings = {"bos": None}
    backend = build()
    scored = await backend.score("", "xyz", top_logprobs=1)
    assert fake_vllm.engines[0].calls[0][0] == [ids("xyz")]
    assert [(e["token"], e["logprob"]) for e in scored] == [("y", -0.25), ("z", -0.5)]
    await backend.aclose()


# -- errors -----------------------------------------------------------------------------------------


async def test_an_overlong_prompt_fails_alone(fake_vllm: Any) -> None:
    fake_vllm.settings = {"max_model_len": 10}
    backend = build()
    long, short, long_score = await asyncio.gather(
        backend.generate(raw("x" * 20)),
        backend.generate(raw("ok")),
        backend.score("p", "y" * 9),  # BOS + 10 tokens + the one generated > 10
        return_exceptions=True,
    )
    assert isinstance(long, BackendError)
    assert (long.kind, long.status, long.retryable) == ("BadRequestError", 400, False)
    assert "21 tokens" in long.message and "holds 10" in long.message
    assert isinstance(long_score, BackendError) and long_score.status == 400
    assert not isinstance(short, BaseException) and short.text
    assert fake_vllm.engines[0].calls[0][0] == [[BOS, *ids("ok")]]
    await backend.aclose()


async def test_too_many_top_logprobs_is_a_bad_request(fake_vllm: Any) -> None:
    backend = build(max_logprobs=5)
    with pytest.raises(BackendError) as caught:
        await backend.generate(raw("q", top_logprobs=6))
    assert (caught.value.kind, caught.value.status) == ("BadRequestError", 400)
    assert "max_logprobs" in caught.value.message
    await backend.aclose()


async def test_a_request_vllm_refuses_fails_alone(fake_vllm: Any) -> None:
    fake_vllm.settings = {"refuse_token": ord("!")}
    backend = build()
    bad, good = await asyncio.gather(
        backend.generate(raw("!")), backend.generate(raw("fine")), return_exceptions=True
    )
    assert isinstance(bad, BackendError) and bad.kind == "BadRequestError"
    assert not isinstance(good, BaseException) and good.text == "hello world"
    # The batch failed validation as a whole, then each request ran alone.
    assert [len(p) for p, _ in fake_vllm.engines[0].calls] == [2, 1, 1]
    await backend.aclose()


async def test_an_engine_crash_fails_the_batch_without_retry(fake_vllm: Any) -> None:
    fake_vllm.settings = {"fail_with": RuntimeError("CUDA error: an illegal memory access")}
    backend = build()
    results = await asyncio.gather(
        backend.generate(raw("a")), backend.score("p", "c"), return_exceptions=True
    )
    for error in results:
        assert isinstance(error, BackendError)
        assert error.kind == "InternalServerError" and not error.retryable
        assert "illegal memory access" in error.message
    await backend.aclose()


# -- config and identity ----------------------------------------------------------------------------


def test_config_defaults_and_registration() -> None:
    config = VLLMConfig(model="org/m", batch_size=32)
    assert backends.get("vllm") is VLLMConfig
    assert config.concurrency == 64 and config.timeout is None
    assert VLLMConfig(model="org/m").concurrency == 512
    assert VLLMConfig(model="org/m", concurrency=3).concurrency == 3
    assert VLLMConfig(model="org/m", tensor_parallel_size=4).gpus_per_replica() == 4
    # Other backends need no GPU of their own.
    assert TransformersConfig().gpus_per_replica() == 0
    assert BackendConfig.gpus_per_replica(TransformersConfig()) == 0


@pytest.mark.parametrize(
    "options",
    [
        {},  # model is required
        {"model": "m", "tensor_parallel_size": 0},
        {"model": "m", "gpu_memory_utilization": 0},
        {"model": "m", "gpu_memory_utilization": 1.5},
        {"model": "m", "dtype": "int8"},
        {"model": "m", "batch_size": 0},
        {"model": "m", "max_model_len": 0},
        {"model": "m", "engine_args": {"dtype": "half"}},
        {"model": "m", "tensr_parallel_size": 2},
    ],
)
def test_bad_options_fail_at_config_time(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        VLLMConfig(**options)


def test_a_pipeline_file_names_the_vllm_backend() -> None:
    data = {
        "backends": {"teacher": {"kind": "vllm", "model": "org/m", "tensor_parallel_size": 2}},
        "stages": [{"type": "complete", "backend": "teacher"}],
    }
    parsed = pipeline_file_model().model_validate(data)
    teacher = parsed.backends["teacher"]  # type: ignore[attr-defined]
    assert isinstance(teacher, VLLMConfig) and teacher.gpus_per_replica() == 2


def test_identity_leaves_out_runtime_fields() -> None:
    base = VLLMConfig(model="org/m")
    other = VLLMConfig(
        model="org/m",
        tensor_parallel_size=8,
        gpu_memory_utilization=0.5,
        batch_size=4,
        enforce_eager=True,
        max_logprobs=50,
        concurrency=1,
    )
    assert base.identity() == other.identity()
    assert base.identity()["model"] == "org/m"
    assert VLLMConfig(model="org/m", dtype="float16").identity() != base.identity()


def test_cache_identity_of_a_local_folder_hashes_its_config(
    fake_vllm: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    config = VLLMConfig(model=str(folder), dtype="bfloat16", max_model_len=2048)
    backend = config.build()
    first = backend.cache_identity()
    assert first["backend"] == "vllm" and first["model"] == "my-model"
    assert (first["dtype"], first["max_model_len"], first["max_new_tokens"]) == (
        "bfloat16",
        2048,
        1024,
    )
    assert config.identity()["model"] == "my-model"
    (folder / "config.json").write_text('{"hidden_size": 16}')
    assert backend.cache_identity()["config"] != first["config"]
    hub = VLLMConfig(model="org/m").build().cache_identity()
    assert hub == {"backend": "vllm", "model": "org/m", "dtype": "auto", "max_new_tokens": 1024}


def test_a_missing_local_folder_fails_at_build(fake_vllm: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        VLLMConfig(model=str(tmp_path / "nothing")).build()
    assert caught.value.key == "model"


def test_without_vllm_build_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an uninstalled package looks like
    with pytest.raises(ConfigError) as caught:
        VLLMConfig(model="org/m").build()
    assert caught.value.key == "kind"
    assert "pip install vllm" in str(caught.value)


def test_importing_stillroom_does_not_import_vllm() -> None:
    code = "import sys, stillroom.llm; assert 'vllm' not in sys.modules, 'vllm imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
