"""Scoring given token ids (``Backend.score_tokens``) where no real engine is needed: the
transformers backend on a tiny random Llama in memory, the vLLM backend on the fake ``vllm`` of
test_vllm_backend, and the OpenAI-compatible backend's two answer shapes (legacy echo logprobs,
vLLM's prompt_logprobs) parsed from bodies written here."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from stillroom.llm.types import BackendError
from tests.tiny_models import byte_tokenizer, tiny_llama
from tests.unit.test_vllm_backend import BOS, build, fake_vllm  # noqa: F401 - the fixture

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


async def _gather(*calls: Any) -> list[Any]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


# -- transformers -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Any:
    from stillroom.llm.transformers_backend import TransformersBackend

    tokenizer = byte_tokenizer(bos=True)
    model = tiny_llama(tokenizer, max_positions=32)
    return model, TransformersBackend.from_model(model, tokenizer, name="tiny", batch_size=2)


def by_hand(model: Any, ids: list[int], k: int) -> tuple[list[float], list[list[int]]]:
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    rows = range(len(ids) - 1)
    return ([float(logprobs[p, ids[p + 1]]) for p in rows],
            [logprobs[p].topk(k).indices.tolist() for p in rows])


def test_transformers_scores_given_ids_as_a_forward_pass_does(tiny: Any) -> None:
    model, backend = tiny
    # Ids no tokenizer would make of any text ("a" after BOS twice, a lone byte): taken as given.
    sequences = [[1, 1, 70, 71, 72, 73], [1, 80, 81, 82, 83, 84, 85, 86, 87], [90, 91]]
    starts = [2, 4, 1]
    scored = asyncio.run(_gather(
        *(backend.score_tokens(ids, start, 3) for ids, start in zip(sequences, starts, strict=True)),
        backend.score_tokens(sequences[0], 2),
    ))
    for ids, start, entries in zip(sequences, starts, scored, strict=False):
        logprobs, tops = by_hand(model, ids, 3)
        assert [e["id"] for e in entries] == ids[start:]
        assert [e["logprob"] for e in entries] == pytest.approx(logprobs[start - 1 :], abs=1e-4)
        assert [[alt["id"] for alt in e["top_logprobs"]] for e in entries] == tops[start - 1 :]
    assert "top_logprobs" not in scored[3][0]
    assert [e["logprob"] for e in scored[3]] == [e["logprob"] for e in scored[0]]


def test_transformers_refuses_ids_out_of_range_and_too_long(tiny: Any) -> None:
    _, backend = tiny
    vocabulary = int(backend._model.get_input_embeddings().num_embeddings)
    bad, long = asyncio.run(_gather(
        backend.score_tokens([1, 70, vocabulary], 1), backend.score_tokens([70] * 33, 1)
    ))
    assert isinstance(bad, BackendError) and not bad.retryable
    assert f"token id {vocabulary} is outside" in bad.message
    assert isinstance(long, BackendError) and "33 tokens" in long.message and "holds 32" in long.message


# -- vLLM in process (the fake engine) --------------------------------------------------------------


async def test_vllm_scores_given_ids_from_prompt_logprobs(fake_vllm: Any) -> None:  # noqa: F811
    backend = build()
    ids = [BOS, BOS, 97, 98, 99]  # as given: a second BOS stays
    scored, plain = await asyncio.gather(backend.score_tokens(ids, 2, 2), backend.score_tokens(ids, 4))
    prompts, params = fake_vllm.engines[0].calls[0]
    assert prompts == [ids, ids]  # one batch, the ids untouched
    assert (params[0].max_tokens, params[0].prompt_logprobs, params[0].temperature) == (1, 2, 0.0)
    assert params[1].prompt_logprobs == 1
    # The fake gives position p a logprob of -0.25 p and alternatives "A", "B" at -1, -2.
    assert [(e["id"], e["token"], e["logprob"]) for e in scored] == [
        (97, "a", -0.5), (98, "b", -0.75), (99, "c", -1.0)]
    assert [[(t["id"], t["logprob"]) for t in e["top_logprobs"]] for e in scored] == [
        [(97, -0.5), (65, -1.0)], [(98, -0.75), (65, -1.0)], [(99, -1.0), (65, -1.0)]]  # a tie: by rank
    assert plain == [{"token": "c", "id": 99, "logprob": -1.0}]
    await backend.aclose()


async def test_vllm_refuses_what_the_engine_cannot_hold(fake_vllm: Any) -> None:  # noqa: F811
    fake_vllm.settings = {"max_model_len": 10}
    backend = build(max_logprobs=3)
    long, many = await _gather(backend.score_tokens([BOS] + [97] * 9, 1),
                               backend.score_tokens([BOS, 97], 1, 4))
    assert isinstance(long, BackendError) and "11 tokens" in long.message
    assert isinstance(many, BackendError) and "max_logprobs" in many.message
    with pytest.raises(BackendError, match="start must be"):
        await backend.score_tokens([BOS, 97], 2)
    await backend.aclose()


# -- OpenAI-compatible answers ----------------------------------------------------------------------

IDS = [11, 12, 13, 14]


def echo_body(**changes: Any) -> dict[str, Any]:
    """A legacy echo answer for IDS (then one generated token), as vLLM writes it."""
    logprobs = {
        "tokens": ["a", "b", "c", "d", "!"],
        "token_logprobs": [None, -1.0, -2.0, -0.5, -3.0],
        "top_logprobs": [None, {"b": -1.0, "x": -0.25}, {"y": -0.5, "z": -0.75, "c": -2.0},
                         {"d": -0.5}, {"!": -3.0}],
        "text_offset": [0, 1, 2, 3, 4],
    }
    logprobs.update(changes)
    return {"choices": [{"text": "!", "logprobs": logprobs}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 1}}


def vllm_body(positions: Any = None) -> dict[str, Any]:
    if positions is None:
        positions = [
            None,
            {"12": {"logprob": -1.0, "rank": 2, "decoded_token": "b"},
             "99": {"logprob": -0.25, "rank": 1, "decoded_token": "x"}},
            {"13": {"logprob": -2.0, "rank": 7, "decoded_token": "c"},
             "98": {"logprob": -0.5, "rank": 1, "decoded_token": "y"},
             "97": {"logprob": -0.5, "rank": 2, "decoded_token": "z"}},
            {"14": {"logprob": -0.5, "rank": 1, "decoded_token": "d"}},
        ]
    return {"choices": [{"text": "!", "logprobs": None, "prompt_logprobs": positions}]}


def test_the_scoring_body_asks_for_the_prompts_logprobs_in_either_shape() -> None:
    from stillroom.llm.openai_compat import score_tokens_body

    echo = score_tokens_body("m", IDS, None, "echo", {"top_k": 5, "echo": False})
    assert echo == {"top_k": 5, "model": "m", "prompt": IDS, "max_tokens": 1, "temperature": 0,
                    "echo": True, "logprobs": 1}
    vllm = score_tokens_body("m", IDS, 4, "prompt_logprobs")
    assert vllm == {"model": "m", "prompt": IDS, "max_tokens": 1, "temperature": 0,
                    "prompt_logprobs": 4}


def test_echo_answers_are_read_from_start_and_the_generated_token_dropped() -> None:
    from stillroom.llm.openai_compat import parse_token_scores

    scored = parse_token_scores(echo_body(), IDS, 1, 2, "echo")
    assert [(e["id"], e["token"], e["logprob"]) for e in scored] == [
        (12, "b", -1.0), (13, "c", -2.0), (14, "d", -0.5)]
    assert scored[1]["top_logprobs"] == [{"id": None, "token": "y", "logprob": -0.5},
                                         {"id": None, "token": "z", "logprob": -0.75}]
    plain = parse_token_scores(echo_body(), IDS, 3, None, "echo")
    assert plain == [{"id": 14, "token": "d", "logprob": -0.5}]


def test_prompt_logprobs_answers_name_alternatives_by_id_best_first() -> None:
    from stillroom.llm.openai_compat import parse_token_scores

    scored = parse_token_scores(vllm_body(), IDS, 2, 3, "prompt_logprobs")
    assert [(e["id"], e["token"], e["logprob"]) for e in scored] == [(13, "c", -2.0), (14, "d", -0.5)]
    assert [(t["id"], t["token"]) for t in scored[0]["top_logprobs"]] == [
        (98, "y"), (97, "z"), (13, "c")]  # a tie goes by rank
    # The shape of a chat answer: the field beside choices.
    top_level = {"choices": [{"text": "!"}], "prompt_logprobs": vllm_body()["choices"][0][
        "prompt_logprobs"]}
    assert parse_token_scores(top_level, IDS, 2, None, "prompt_logprobs") == [
        {"id": 13, "token": "c", "logprob": -2.0}, {"id": 14, "token": "d", "logprob": -0.5}]


@pytest.mark.parametrize(("body", "shape", "message", "retryable"), [
    (echo_body(token_logprobs=[None, -1.0, "-2", -0.5, -3.0]), "echo",
     r"token_logprobs\[2\] is a string, not a number", False),
    (echo_body(token_logprobs=[None, -1.0, True, -0.5, -3.0]), "echo",
     r"token_logprobs\[2\] is a boolean", False),
    (echo_body(tokens="abcd!"), "echo", "logprobs.tokens is a string, not a list", False),
    (echo_body(top_logprobs=[None, ["b"], {}, {}, {}]), "echo",
     r"top_logprobs\[1\] is a list, not an object", False),
    (echo_body(top_logprobs=None), "echo", "top_logprobs is null", False),
    (echo_body(token_logprobs=[None, -1.0, -2.0, -3.0]), "echo",
     "has 4 positions for the 4 token ids", True),  # usage says one was generated: one is cut
    ({"choices": [{"text": "!", "logprobs": None}]}, "echo", "without log-probs of the prompt",
     False),
    (echo_body(token_logprobs=[-3.0]), "echo", "without log-probs of the prompt", False),
    ({"choices": []}, "echo", "choices is a list", False),
    ([], "echo", "the body is a list", False),
    (vllm_body([None, {}]), "prompt_logprobs", "has 2 positions for the 4", True),
    (vllm_body([None, {"12": {"logprob": -1}}, {"x": {}}, {}]), "prompt_logprobs",
     "has the key 'x', not a token id", False),
    (vllm_body([None, {"12": {"logprob": -1}}, {"99": {"logprob": -1}}, {}]), "prompt_logprobs",
     r"prompt_logprobs\[2\] does not hold the prompt's token id 13", False),
    (vllm_body([None, {"12": {"logprob": None}}, {}, {}]), "prompt_logprobs",
     r"\['12'\].logprob is null", False),
    (vllm_body([None, None, None, None]), "prompt_logprobs",
     r"prompt_logprobs\[1\] does not hold", False),
    ({"choices": [{"text": "!"}]}, "prompt_logprobs", "without prompt_logprobs", False),
])
def test_malformed_answers_name_the_field(
    body: Any, shape: Any, message: str, retryable: bool
) -> None:
    from stillroom.llm.openai_compat import parse_token_scores

    with pytest.raises(BackendError, match=message) as caught:
        parse_token_scores(body, IDS, 1, 2, shape)
    assert caught.value.retryable is retryable


POSITIVE = [  # a log-prob above 0 beyond rounding, where each shape puts one
    (echo_body(token_logprobs=[None, -1.0, 0.5, -0.5, -3.0]), "echo",
     r"token_logprobs\[2\] is 0.5, not a log-prob"),
    (echo_body(top_logprobs=[None, {"b": -1.0, "x": 2.0}, {}, {}, {}]), "echo",
     r"top_logprobs\[1\]\['x'\] is 2.0, not a log-prob"),
    (echo_body(token_logprobs=[None, -1.0, float("nan"), -0.5, -3.0]), "echo",
     r"token_logprobs\[2\] is nan, not a log-prob"),
    (echo_body(token_logprobs=[None, float("inf"), -2.0, -0.5, -3.0]), "echo",
     r"token_logprobs\[1\] is inf, not a log-prob"),
    (vllm_body([None, {"12": {"logprob": 5}}, {"13": {"logprob": -1}}, {"14": {"logprob": -1}}]),
     "prompt_logprobs", r"prompt_logprobs\[1\]\['12'\].logprob is 5.0, not a log-prob"),
    (vllm_body([None, {"12": {"logprob": -1}}, {"13": {"logprob": -1}, "7": {"logprob": 0.01}},
                {"14": {"logprob": -1}}]),
     "prompt_logprobs", r"prompt_logprobs\[2\]\['7'\].logprob is 0.01, not a log-prob"),
]


@pytest.mark.parametrize(("body", "shape", "message"), POSITIVE)
def test_a_positive_logprob_is_a_malformed_answer(body: Any, shape: Any, message: str) -> None:
    from stillroom.llm.openai_compat import parse_token_scores

    with pytest.raises(BackendError, match=message) as caught:
        parse_token_scores(body, IDS, 1, 2, shape)
    assert not caught.value.retryable and caught.value.kind == "APIResponseValidationError"


def test_a_logprob_a_rounding_above_zero_is_read_as_zero() -> None:
    """A float32 log_softmax of a sure token can come out a hair above 0; -inf (a token the
    teacher rules out) passes as it is."""
    from stillroom.llm.openai_compat import parse_token_scores

    echo = parse_token_scores(
        echo_body(token_logprobs=[None, 3e-5, -math.inf, 0.0, -3.0],
                  top_logprobs=[None, {"b": 3e-5}, {"c": -math.inf}, {"d": 1e-4}, {}]),
        IDS, 1, 2, "echo")
    assert [e["logprob"] for e in echo] == [0.0, -math.inf, 0.0]
    assert [[t["logprob"] for t in e["top_logprobs"]] for e in echo] == [[0.0], [-math.inf], [0.0]]
    assert all(math.copysign(1.0, e["logprob"]) == 1.0 for e in (echo[0], echo[2]))  # not -0.0
    positions = [None, {"12": {"logprob": 9e-5}, "3": {"logprob": -9.0}},
                 {"13": {"logprob": -1.0}, "4": {"logprob": 2e-5}}, {"14": {"logprob": -2.0}}]
    vllm = parse_token_scores(vllm_body(positions), IDS, 1, 2, "prompt_logprobs")
    assert [e["logprob"] for e in vllm] == [0.0, -1.0, -2.0]
    assert [[(t["id"], t["logprob"]) for t in e["top_logprobs"]] for e in vllm] == [
        [(12, 0.0), (3, -9.0)], [(4, 0.0), (13, -1.0)], [(14, -2.0)]]


def test_score_api_keeps_old_fingerprints_and_parts_the_cache() -> None:
    from stillroom.llm.openai_compat import OpenAIConfig

    echo = OpenAIConfig(model="m", base_url="http://127.0.0.1:1/v1")
    vllm = OpenAIConfig(model="m", base_url="http://127.0.0.1:1/v1", score_api="prompt_logprobs")
    assert "score_api" not in echo.identity() and vllm.identity()["score_api"] == "prompt_logprobs"
    assert echo.build().cache_identity() != vllm.build().cache_identity()
    assert echo.build().supports_token_scoring


# -- score_api: text_echo (llama-cpp-python's server) -------------------------------------------


def _echo_answer(tokens: list[str], values: list[float | None],
                 tops: list[dict[str, float] | None] | None = None) -> dict[str, Any]:
    return {"choices": [{"logprobs": {"tokens": tokens, "token_logprobs": values,
                                      "top_logprobs": tops or [None] * len(tokens)}}]}


def test_text_echo_reads_entries_after_the_dropped_bos_ids() -> None:
    from stillroom.llm.text_echo_scoring import parse_text_echo

    # ids: BOS(1) a b BOS(1) c d ; the server drops both BOS ids and appends the generated token.
    ids = [1, 10, 11, 1, 12, 13]
    answer = _echo_answer(["a", "b", "c", "d", "e"], [None, -0.5, -0.25, -0.125, -2.0],
                          [None, {"b": -0.5, "x": -1.0}, {"c": -0.25}, {"d": -0.125, "y": -3.0},
                           {"e": -2.0}])
    entries = parse_text_echo(answer, ids, 4, 2, "<s>ab<s>cd")
    assert [(e["id"], e["token"], e["logprob"]) for e in entries] == [(12, "c", -0.25),
                                                                       (13, "d", -0.125)]
    assert entries[1]["top_logprobs"] == [{"id": None, "token": "d", "logprob": -0.125},
                                          {"id": None, "token": "y", "logprob": -3.0}]


def test_text_echo_refuses_an_echo_that_kept_the_first_token() -> None:
    from stillroom.llm.text_echo_scoring import parse_text_echo

    # Plain text: the first token is not a BOS, the server kept it and wrote no generated token;
    # the count alone matches (4 ids, first once: 3 + 1), the joined texts give it away.
    answer = _echo_answer(["Two", " and", " two", " make"], [None, -1.0, -2.0, -3.0])
    with pytest.raises(BackendError, match="one position off"):
        parse_text_echo(answer, [5, 6, 7, 8], 2, None, "Two and two make")
    with pytest.raises(BackendError, match="one position off"):  # a wrong count
        parse_text_echo(_echo_answer(["a"], [None]), [1, 5, 6, 7], 2, None, "<s>abc")


@pytest.mark.parametrize("answer, match", [
    ({"choices": []}, "without choices"),
    ({"choices": [{"logprobs": {"tokens": "abc", "token_logprobs": []}}]}, "tokens is not a list"),
    ({"choices": [{"logprobs": {"tokens": ["a", "b", "c"], "token_logprobs": [None, "x", -1.0]}}]},
     "not a number"),
    ({"choices": [{"logprobs": {"tokens": ["a", "b", "c"], "token_logprobs": [None, None, -1.0]}}]},
     "is null"),
])
def test_text_echo_names_what_is_wrong_in_a_malformed_echo(answer: dict[str, Any], match: str) -> None:
    from stillroom.llm.text_echo_scoring import parse_text_echo

    with pytest.raises(BackendError, match=match):
        parse_text_echo(answer, [1, 5, 6, 7], 2, None, "<s>abc")


def test_text_echo_refuses_a_positive_logprob_and_reads_rounding_as_zero() -> None:
    from stillroom.llm.text_echo_scoring import parse_text_echo

    # ids: BOS a b c; the echo drops the BOS: entries 1 and 2 score b and c.
    ids, text, tokens = [1, 5, 6, 7], "<s>abc", ["a", "b", "c", "!"]
    tops: list[dict[str, float] | None] = [None, {"b": -1.0}, {"c": -1.0}, {"!": -1.0}]
    for values, alternatives, message in [
        ([None, -1.0, 0.75, -1.0], tops, r"token_logprobs\[2\] is 0.75, not a log-prob"),
        ([None, -1.0, -1.0, -1.0], [None, {"b": -1.0, "q": 0.5}, {"c": -1.0}, None],
         r"top_logprobs\[1\]\['q'\] is 0.5, not a log-prob"),
    ]:
        with pytest.raises(BackendError, match=message) as caught:
            parse_text_echo(_echo_answer(tokens, values, alternatives), ids, 2, 2, text)
        assert not caught.value.retryable
    entries = parse_text_echo(
        _echo_answer(tokens, [None, -1.0, 5e-5, -1.0],
                     [None, {"b": -1.0}, {"c": 5e-5, "q": -2.0}, None]), ids, 2, 2, text)
    assert [e["logprob"] for e in entries] == [-1.0, 0.0]
    assert [t["logprob"] for t in entries[1]["top_logprobs"]] == [0.0, -2.0]


def test_text_echo_needs_the_aiohttp_client() -> None:
    from pydantic import ValidationError

    from stillroom.llm.openai_compat import OpenAIConfig

    with pytest.raises(ValidationError, match="text_echo"):
        OpenAIConfig(kind="openai", base_url="http://127.0.0.1:1/v1", model="m", client="sdk",
                     score_api="text_echo")
