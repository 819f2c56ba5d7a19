"""IFD (Superfiltering): the scorer on a tiny random Llama, selection, the stage and its inputs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.api import build_stage, ifd_filter
from stillroom.curate.ifd import REASON_NOT_HELPFUL, IFDFilter
from stillroom.curate.ifd_scoring import (
    REASON_EMPTY,
    REASON_ONE_TOKEN,
    REASON_PROMPT_TOO_LONG,
    IFDScore,
    IFDScorer,
    example_of,
    select_top,
)
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError, InputError
from stillroom.pipeline.config import parse_pipeline_text
from tests.tiny_models import byte_tokenizer, tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

PAIRS = [
    ("Say hello to the user\n", "Hello there, nice to meet you!"),
    ("Add the numbers\n2 and 3\n", "The sum is 5."),
    ("Write a long story about a cat\n", "Once upon a time a cat lived in a quiet house. " * 3),
    ("Name a color\n", "Blue, like the sky."),
    ("x\n", "ok"),
    ("Summarize the text\nCats sleep a lot. Dogs bark.\n", "Cats sleep; dogs bark."),
]


# -- a tiny causal LM and byte-level tokenizers (no download) ---------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return byte_tokenizer(bos=False)


@pytest.fixture(scope="module")
def bos_tokenizer() -> Any:
    return byte_tokenizer(bos=True)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_llama(tokenizer, max_positions=512)


@pytest.fixture(scope="module")
def gpt2(tokenizer: Any) -> Any:
    """Absolute position embeddings: wrong position ids under left padding would show."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=512)
    return GPT2LMHeadModel(config).eval()


def by_hand(model: Any, context: list[int], answer: list[int]) -> float:
    """Mean loss of ``answer`` after ``context`` from one unbatched forward pass's logits."""
    ids = context + answer
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    positions = [p for p in range(len(context), len(ids)) if p > 0]  # nothing predicts token 0
    return -sum(float(logprobs[p - 1, ids[p]]) for p in positions) / len(positions)


def ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- the score -------------------------------------------------------------------------------------


def test_ifd_equals_a_computation_by_hand(model: Any, tokenizer: Any) -> None:
    scores = IFDScorer.from_model(model, tokenizer, batch_size=4).score(PAIRS)
    for (prompt, answer), score in zip(PAIRS, scores, strict=True):
        conditioned = by_hand(model, ids(tokenizer, prompt), ids(tokenizer, answer))
        # No BOS: the answer alone has no token before its first, which is not scored.
        direct = by_hand(model, [], ids(tokenizer, answer))
        assert score.unscored is None
        assert score.loss_conditioned == pytest.approx(conditioned, rel=1e-5)
        assert score.loss_direct == pytest.approx(direct, rel=1e-5)
        assert score.ppl_conditioned == pytest.approx(math.exp(conditioned), rel=1e-5)
        assert score.ppl_direct == pytest.approx(math.exp(direct), rel=1e-5)
        assert score.ifd == pytest.approx(math.exp(conditioned) / math.exp(direct), rel=1e-5)
        assert score.answer_tokens == len(ids(tokenizer, answer)) and not score.truncated


def test_a_tokenizer_with_bos_scores_every_answer_token_alone(
    model: Any, bos_tokenizer: Any
) -> None:
    pairs = [*PAIRS[:2], ("Answer yes or no\n", "y")]  # one token: scoreable after a BOS
    scores = IFDScorer.from_model(model, bos_tokenizer).score(pairs)
    for (prompt, answer), score in zip(pairs, scores, strict=True):
        answer_ids = ids(bos_tokenizer, answer)
        conditioned = by_hand(model, [1, *ids(bos_tokenizer, prompt)], answer_ids)
        direct = by_hand(model, [1], answer_ids)
        assert score.ifd == pytest.approx(math.exp(conditioned - direct), rel=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_batched_scores_equal_one_at_a_time(
    kind: str, request: pytest.FixtureRequest, tokenizer: Any
) -> None:
    model = request.getfixturevalue("model" if kind == "llama" else "gpt2")
    many = PAIRS + [(f"Repeat {i}\n", "word " * (i * 3 + 2)) for i in range(8)]
    batched = IFDScorer.from_model(model, tokenizer, batch_size=8)
    alone = IFDScorer.from_model(model, tokenizer, batch_size=1)
    together, single = batched.score(many), alone.score(many)
    assert alone.forward_calls == 2 * len(many)
    assert batched.forward_calls <= math.ceil(2 * len(many) / 8) + 1  # padded batches were used
    for a, b in zip(together, single, strict=True):
        assert a.ifd == pytest.approx(b.ifd, rel=1e-4)
        assert a.ppl_conditioned == pytest.approx(b.ppl_conditioned, rel=1e-4)
    if kind == "gpt2":  # and both equal the plain computation
        prompt, answer = many[2]
        expected = (by_hand(model, ids(tokenizer, prompt), ids(tokenizer, answer))
                    - by_hand(model, [], ids(tokenizer, answer)))
        assert together[2].ifd == pytest.approx(math.exp(expected), rel=1e-5)


def test_batches_hold_similar_lengths_within_batch_tokens(model: Any, tokenizer: Any) -> None:
    scorer = IFDScorer.from_model(model, tokenizer, batch_size=4, batch_tokens=150)
    backend = scorer.client.backend
    shapes: list[list[int]] = []
    run_batch = backend._score_rows

    def recording(rows: list[Any], results: list[Any]) -> None:
        shapes.append([len(row.context) + len(row.target) for row in rows])
        run_batch(rows, results)

    backend._score_rows = recording  # type: ignore[method-assign]
    scorer.score(PAIRS)
    assert scorer.forward_calls == len(shapes)
    assert sum(len(lengths) for lengths in shapes) == 2 * len(PAIRS)
    for lengths in shapes:
        assert len(lengths) <= 4
        assert len(lengths) == 1 or len(lengths) * max(lengths) <= 150
    # Both requests of every pair were pooled together, longest first: a batch never holds a
    # sequence longer than one in an earlier batch.
    flat = [length for lengths in shapes for length in lengths]
    assert flat == sorted(flat, reverse=True)


def test_unscoreable_pairs_and_truncation(model: Any, tokenizer: Any) -> None:
    scorer = IFDScorer.from_model(model, tokenizer, max_length=40)
    long_answer = "abcdefghij" * 6  # 60 byte tokens
    empty, one, too_long_prompt, cut = scorer.score(
        [("Say it\n", "  "), ("Say a letter\n", "a"), ("p" * 45 + "\n", "fine"), ("Go\n", long_answer)]
    )
    assert empty.unscored == REASON_EMPTY and empty.ifd is None
    assert one.unscored == REASON_ONE_TOKEN
    assert too_long_prompt.unscored == REASON_PROMPT_TOO_LONG
    # The reference cuts prompt + answer at max_length: the answer keeps its first tokens, and
    # the answer alone is scored on those same tokens.
    prompt_ids = ids(tokenizer, "Go\n")
    kept = ids(tokenizer, long_answer)[: 40 - len(prompt_ids)]
    assert cut.truncated and cut.answer_tokens == len(kept)
    expected = by_hand(model, prompt_ids, kept) - by_hand(model, [], kept)
    assert cut.ifd == pytest.approx(math.exp(expected), rel=1e-5)


@pytest.mark.parametrize("bos", [False, True])
def test_when_every_answer_is_cut_one_more_request_tells_what_alone_leaves_out(
    bos: bool, model: Any, tokenizer: Any, bos_tokenizer: Any
) -> None:
    chosen = bos_tokenizer if bos else tokenizer
    scorer = IFDScorer.from_model(model, chosen, max_length=30)
    long_answer = "abcdefghij" * 6
    (cut,) = scorer.score([("Go\n", long_answer)])
    assert scorer.client.stats.requests_sent == 3  # the answer alone, once more, cut to fit
    lead = [1] if bos else []
    prompt_ids = [*lead, *ids(chosen, "Go\n")]
    kept = ids(chosen, long_answer)[: 30 - len(prompt_ids)]
    assert cut.truncated and cut.answer_tokens == len(kept)
    expected = by_hand(model, prompt_ids, kept) - by_hand(model, lead, kept)
    assert cut.ifd == pytest.approx(math.exp(expected), rel=1e-5)


def test_max_length_is_capped_by_the_models_positions(model: Any, tokenizer: Any) -> None:
    scorer = IFDScorer.from_model(model, tokenizer, max_length=100_000)
    prompt, answer = "Go\n", "word " * 150  # 750 byte tokens; the model holds 512 positions
    (score,) = scorer.score([(prompt, answer)])
    kept = ids(tokenizer, answer)[: 512 - len(ids(tokenizer, prompt))]
    assert score.truncated and score.answer_tokens == len(kept)
    expected = by_hand(model, ids(tokenizer, prompt), kept) - by_hand(model, [], kept)
    assert score.ifd == pytest.approx(math.exp(expected), rel=1e-5)


def test_scores_go_through_the_request_cache(model: Any, tokenizer: Any, tmp_path: Path) -> None:
    from stillroom.llm import LLMClient, RequestCache, TransformersBackend

    backend = TransformersBackend.from_model(model, tokenizer, name="tiny-llama", batch_size=8)
    cache = RequestCache.in_dir(tmp_path)
    try:
        client = LLMClient(backend, cache=cache, timeout=None)
        first = IFDScorer.from_client(client, max_length=40).score(PAIRS)
        passes, sent = backend.score_passes, client.stats.requests_sent
        assert first[-1].unscored == REASON_PROMPT_TOO_LONG and sent == 2 * len(PAIRS)
        assert passes > 0 and client.stats.cache_hits == 0
        again = IFDScorer.from_client(client, max_length=40).score(PAIRS)
        # Every request came from the cache: the model did not run again.
        assert backend.score_passes == passes and client.stats.requests_sent == sent
        assert client.stats.cache_hits == sent and again == first
        # max_length is part of the request: another one is asked of the model.
        IFDScorer.from_client(client, max_length=39).score(PAIRS[:1])
        assert backend.score_passes > passes
    finally:
        cache.close()


def test_a_failed_request_is_the_pairs_failure_not_the_runs(tokenizer: Any) -> None:
    from stillroom.llm import LLMClient
    from stillroom.llm.backend import Backend
    from stillroom.llm.types import BackendError

    class Refusing(Backend):
        kind = "refusing"
        supports_scoring = True

        async def generate(self, request: Any) -> Any:
            raise AssertionError("IFD only scores")

        async def score(self, prompt: Any, completion: str, top_logprobs: Any = None,
                        **limits: Any) -> list[dict[str, Any]]:
            if "refuse" in completion:
                raise BackendError("too long for the engine", kind="BadRequestError", status=400)
            return [{"token": "x", "id": 1, "logprob": -1.0 if prompt else -2.0}] * 2

    scorer = IFDScorer.from_client(LLMClient(Refusing("fake")))
    fine, refused = scorer.score([("p\n", "fine"), ("p\n", "please refuse")])
    assert fine.ifd == pytest.approx(math.exp(-1.0)) and fine.failure is None
    assert refused.ifd is None and refused.failure_kind == "BadRequestError"
    assert "too long for the engine" in (refused.failure or "")
    assert "cannot score" in _config_error(lambda: IFDScorer.from_client(
        LLMClient(_NotScoring("fake"))))


class _NotScoring:
    """A backend that cannot score (only its class attributes are read)."""

    kind = "not_scoring"
    supports_scoring = False
    model = "fake"

    def __init__(self, model: str) -> None:
        self.model = model

    def cache_identity(self) -> dict[str, Any]:
        return {"backend": self.kind}


def _config_error(call: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        call()
    return str(raised.value)


# -- selection -------------------------------------------------------------------------------------


def test_top_fraction_counts_every_row_and_rounds_up() -> None:
    scores = [0.5, 0.9, None, 1.2, 0.7, 1.0, 0.3, 0.8, 0.6, 0.2]
    chosen = select_top(scores, len(scores), top_fraction=0.25, top_k=None)
    # ceil(0.25 * 10) = 3 of the rows with IFD < 1, highest first; 1.0 and 1.2 are never kept.
    assert chosen.kept == {1, 7, 4} and chosen.cutoff == 0.7 and chosen.count == 3
    assert chosen.ranks[1] == 1 and chosen.ranks[9] == 7 and 3 not in chosen.ranks
    assert select_top([0.5] * 30, 30, top_fraction=0.1, top_k=None).count == 3  # not 4


def test_top_k_ties_and_too_few_eligible() -> None:
    chosen = select_top([0.4, 0.6, 0.6, 0.1], 4, top_fraction=None, top_k=2)
    assert chosen.kept == {1, 2} and chosen.cutoff == 0.6
    tie = select_top([0.6, 0.4, 0.6], 3, top_fraction=None, top_k=1)
    assert tie.kept == {0}  # a tie at the cut goes to the earlier row
    few = select_top([1.5, 0.3, None], 3, top_fraction=None, top_k=5)
    assert few.kept == {1} and few.cutoff == 0.3
    nothing = select_top([1.5, 2.0], 2, top_fraction=0.5, top_k=None)
    assert nothing.kept == frozenset() and nothing.cutoff is None
    assert select_top([0.5, 0.95], 2, top_fraction=1.0, top_k=None, max_ifd=0.9).kept == {0}


# -- input columns ---------------------------------------------------------------------------------


def test_alpaca_rows_use_the_reference_template() -> None:
    with_input = example_of({"instruction": "Translate.", "input": "Hi", "output": "Salut"})
    assert with_input.prompt == "Translate.\nHi\n" and with_input.answer == "Salut"
    for row in ({"instruction": "Name a fruit.", "output": "Apple"},
                {"instruction": "Name a fruit.", "input": None, "output": "Apple"},
                {"instruction": "Name a fruit.", "input": "", "output": "Apple"}):
        example = example_of(row)
        assert example.prompt == "Name a fruit.\n" and example.format == "alpaca"


def test_prompt_completion_and_messages_rows() -> None:
    plain = example_of({"prompt": "What is 2+2?", "completion": "4"})
    assert (plain.prompt, plain.answer, plain.format) == ("What is 2+2?\n", "4", "prompt_completion")
    chat = example_of({
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
        "completion": [{"role": "assistant", "content": "Hello."}],
    })
    assert (chat.prompt, chat.answer) == ("Hi?\n", "Hello.")
    messages = example_of({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "second "}, {"type": "text", "text": "question"}]},
        {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "a question never answered"},
    ]})
    assert (messages.prompt, messages.answer) == ("second question\n", "second answer")
    # auto: Alpaca columns win over the others when a row has several sets.
    both = {"instruction": "I", "output": "O", "prompt": "P", "completion": "C"}
    assert example_of(both).answer == "O" and example_of(both, "prompt_completion").answer == "C"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "q", "answer": "a"}, "IFD needs `instruction` and `output`"),
        ({"instruction": "q", "output": 3}, "`output` must be text, got int"),
        ({"messages": [{"role": "user", "content": "q"}]}, "`messages` has no assistant turn"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "no user turn before"),
        ({"messages": "hello"}, "`messages` must be a list of messages"),
    ],
)
def test_rows_that_cannot_be_read(row: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        example_of(row)


# -- the stage -------------------------------------------------------------------------------------


class FixedScorer:
    """Stands in for the model: each answer's text gives its IFD (``"0.42"``), or a reason
    (``"fail"``: its request failed)."""

    name = "fixed"

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []
        self.closed = 0

    async def ascore(self, pairs: list[tuple[str, str]]) -> list[IFDScore]:
        self.calls.append(pairs)
        out = []
        for _, answer in pairs:
            if not answer.strip():
                out.append(IFDScore(None, None, None, None, None, 0, False, unscored=REASON_EMPTY))
            elif answer == "fail":
                out.append(IFDScore(None, None, None, None, None, 0, False,
                                    failure="InternalServerError: the engine died (after 1 attempt)",
                                    failure_kind="InternalServerError"))
            else:
                value = float(answer)
                out.append(IFDScore(value, value * 2, 2.0, math.log(value * 2), math.log(2.0), 3,
                                    truncated=answer == "0.55"))
        return out

    async def aclose(self) -> None:
        self.closed += 1


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> FixedScorer:
    scorer = FixedScorer()
    monkeypatch.setattr(IFDFilter, "scorer", lambda self, ctx=None: scorer)
    return scorer


def rows_with(*answers: str) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "instruction": f"task {i}", "output": a} for i, a in enumerate(answers)]


def run(stage: Any, rows: list[dict[str, Any]], out: Path) -> Any:
    return Pipeline([stage], input=rows).run(out, progress=False, max_failure_rate=1.0)


def test_stage_keeps_the_top_fraction_and_says_why_it_drops(
    fixed: FixedScorer, tmp_path: Path
) -> None:
    rows = rows_with("0.3", "1.4", "0.9", "0.55", "", "1.0", "0.7", "0.2")
    result = run(IFDFilter(top_fraction=0.25), rows, tmp_path / "out")
    folder = OutputFolder(tmp_path / "out")
    kept = folder.read_rows("data")
    assert [row["id"] for row in kept] == ["r2", "r6"]  # ceil(0.25 * 8) = 2, in input order
    assert kept[0]["ifd"] == 0.9 and kept[0]["ifd_ppl_conditioned"] == 1.8
    assert kept[0]["ifd_ppl_direct"] == 2.0 and kept[0]["ifd_answer_tokens"] == 3
    lineage = kept[0]["metadata"]["ifd_filter"]
    assert lineage["method"] == "ifd" and lineage["model"] == "fixed" and lineage["rank"] == 1
    assert lineage["kept"] is True and lineage["cutoff"] == 0.7 and lineage["seed_id"] == "r2"
    assert lineage["template"].startswith("ifd.prompt_no_input@")
    reasons = {row["id"]: row["drop_reason"] for row in folder.read_rows("dropped")}
    assert reasons == {
        "r1": REASON_NOT_HELPFUL,
        "r5": REASON_NOT_HELPFUL,  # exactly 1 is not below 1
        "r0": "ifd below the top 25% cutoff (0.7)",
        "r3": "ifd below the top 25% cutoff (0.7)",
        "r7": "ifd below the top 25% cutoff (0.7)",
        "r4": REASON_EMPTY,
    }
    dropped = {row["id"]: row for row in folder.read_rows("dropped")}
    assert dropped["r3"]["ifd"] == 0.55 and dropped["r3"]["ifd_truncated"] is True
    assert dropped["r3"]["metadata"]["ifd_filter"]["kept"] is False
    assert dropped["r4"]["ifd"] is None
    assert len(fixed.calls) == 1 and fixed.calls[0][0] == ("task 0\n", "0.3")
    figures = result.summary["stage_results"]["ifd_filter"]
    assert figures == {"selection": "top 25%", "rows": 8, "kept": 2, "cutoff": 0.7, "ifd >= 1": 2,
                       "below the cutoff": 3, "not scored": 1, "rows scored": 7,
                       "median ifd": 0.7, "answers truncated": 1}
    assert IFDFilter(top_fraction=0.25).result_line(figures) == (
        "ifd: kept 2 of 8 rows (top 25%, cutoff 0.7); 2 had ifd >= 1, 1 could not be scored"
    )


def test_stage_top_k_a_bad_row_from_an_earlier_stage_and_a_nan_loss(
    fixed: FixedScorer, tmp_path: Path
) -> None:
    def lose_output(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if not (row["id"] == "r1" and k == "output")}

    rows = rows_with("0.3", "0.8", "0.6", "0.5", "nan")
    run_stage = IFDFilter(top_k=2)
    Pipeline([lose_output, run_stage], input=rows).run(tmp_path / "out", progress=False,
                                                       max_failure_rate=1.0)
    folder = OutputFolder(tmp_path / "out")
    assert [row["id"] for row in folder.read_rows("data")] == ["r2", "r3"]
    failed = {row["id"]: row for row in folder.read_rows("failed")}
    assert set(failed) == {"r1", "r4"} and "IFD needs" in failed["r1"]["error"]
    assert failed["r4"]["error_type"] == "NonFiniteScore"  # never ranked, never kept
    reasons = [row["drop_reason"] for row in folder.read_rows("dropped")]
    assert reasons == ["ifd below the top 2 cutoff (0.5)"]


def test_a_row_without_the_columns_stops_the_run_before_the_model_loads(
    fixed: FixedScorer, tmp_path: Path
) -> None:
    source = tmp_path / "pairs.jsonl"
    source.write_text('{"instruction": "a", "output": "0.5"}\n{"question": "b", "answer": "c"}\n')
    with pytest.raises(InputError) as raised:
        ifd_filter(source, tmp_path / "out", progress=False)
    assert f"{source}:2" in str(raised.value) and "IFD needs `instruction`" in str(raised.value)
    assert not fixed.calls and not (tmp_path / "out" / "data").exists()


def test_library_function_reports_the_outcome(fixed: FixedScorer, tmp_path: Path) -> None:
    result = ifd_filter(rows_with("0.2", "0.4", "0.6", "1.3"), tmp_path / "out", top_k=1,
                        progress=False)
    figures = result.summary["stage_results"]["ifd_filter"]
    assert figures["kept"] == 1 and figures["cutoff"] == 0.6
    assert figures["ifd >= 1"] == 1


def test_a_failed_scoring_request_fails_its_row_and_the_scorer_is_closed(
    fixed: FixedScorer, tmp_path: Path
) -> None:
    run(IFDFilter(top_k=1), rows_with("0.3", "fail", "0.6"), tmp_path / "out")
    folder = OutputFolder(tmp_path / "out")
    assert [row["id"] for row in folder.read_rows("data")] == ["r2"]
    (failed,) = folder.read_rows("failed")
    assert failed["id"] == "r1" and failed["error_type"] == "InternalServerError"
    assert "the engine died" in failed["error"]
    assert fixed.closed == 1  # the stage frees the model it scored with


@pytest.fixture(scope="module")
def model_folder(model: Any, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_stage_scores_through_a_pipeline_backend_and_its_cache(
    model: Any, tokenizer: Any, model_folder: Path, tmp_path: Path
) -> None:
    from stillroom.llm import TransformersConfig

    answers = ["Hello there, nice to meet you!", "The sum is 5.", "Blue, like the sky.", "ok"]
    rows = [{"id": f"r{i}", "instruction": f"Task number {i}", "output": a}
            for i, a in enumerate(answers)]
    backends = {"scorer": TransformersConfig(model=str(model_folder), batch_size=2)}

    def run_with_backend(out: Path) -> Any:
        pipeline = Pipeline([IFDFilter(backend="scorer", top_k=2)], input=rows, backends=backends)
        return pipeline.run(out, progress=False, cache_dir=tmp_path / "cache",
                            max_failure_rate=1.0)

    first = run_with_backend(tmp_path / "out")
    folder = OutputFolder(tmp_path / "out")
    scored = {row["id"]: row for row in folder.read_rows("data") + folder.read_rows("dropped")}
    expected = IFDScorer.from_model(model, tokenizer).score(
        [(f"Task number {i}\n", a) for i, a in enumerate(answers)])
    for i, score in enumerate(expected):
        assert scored[f"r{i}"]["ifd"] == pytest.approx(score.ifd, rel=1e-5)
        assert scored[f"r{i}"]["metadata"]["ifd_filter"]["model"] == model_folder.name
    assert first.backends["scorer"]["cache_hits"] == 0
    # A second run is answered by the request cache: both requests of every row.
    again = run_with_backend(tmp_path / "again")
    assert again.backends["scorer"]["cache_hits"] == 2 * len(rows)
    assert [r["ifd"] for r in OutputFolder(tmp_path / "again").read_rows("data")] == [
        r["ifd"] for r in folder.read_rows("data")]


def test_a_backend_must_score_and_replaces_the_stages_own_model(model_folder: Path) -> None:
    from stillroom.llm import LlamaCppConfig, TransformersConfig

    with pytest.raises(ConfigError, match="cannot score a given completion"):
        Pipeline([IFDFilter(backend="chat")], input=rows_with("0.5"),
                 backends={"chat": LlamaCppConfig()})
    with pytest.raises(ConfigError, match="not both") as raised:
        build_stage(IFDFilter, backend="scorer", device="cpu")
    assert "device" in str(raised.value)
    stage = IFDFilter(backend="scorer")
    assert stage.backend_names() == {"scorer"} and IFDFilter().backend_names() == set()
    assert "model" not in stage.identity() and stage.identity()["backend"] == "scorer"
    # A stage without one keeps the identity it had (no `backend` key), so runs resume.
    assert "backend" not in IFDFilter().identity()
    Pipeline([stage], input=rows_with("0.5"),
             backends={"scorer": TransformersConfig(model=str(model_folder))})


# -- options ---------------------------------------------------------------------------------------


def test_bad_options_fail_at_config_time(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        build_stage(IFDFilter, top_fraction=0.2, top_k=3)
    with pytest.raises(ConfigError) as raised:
        build_stage(IFDFilter, top_fraction=0)
    assert raised.value.key == "top_fraction"
    with pytest.raises(ConfigError) as raised:
        build_stage(IFDFilter, model=str(tmp_path / "nope.gguf"))
    assert raised.value.key == "model" and "nope.gguf" in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        build_stage(IFDFilter, device="gpu")
    assert raised.value.key == "device"
    assert IFDFilter().top_fraction == 0.1 and IFDFilter(top_k=5).top_fraction is None


def test_pipeline_file_names_the_line_of_a_missing_model(tmp_path: Path) -> None:
    text = "stages:\n  - type: ifd_filter\n    model: models/missing.gguf\n    top_k: 5\n"
    with pytest.raises(ConfigError) as raised:
        parse_pipeline_text(text, "ifd.yaml", base_dir=tmp_path)
    assert raised.value.line == 3 and str(tmp_path / "models" / "missing.gguf") in str(raised.value)


def test_identity_ignores_how_scores_are_batched() -> None:
    assert IFDFilter(batch_size=4, device="cpu").identity() == IFDFilter(batch_size=64).identity()
    assert IFDFilter(max_length=512).identity() != IFDFilter().identity()
