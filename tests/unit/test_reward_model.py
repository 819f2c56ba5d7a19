"""reward_model: a real (tiny, random) sequence-classification reward model built here.

The model is a 2-layer LlamaForSequenceClassification with the embedded SmolLM2's tokenizer (its
chat template, and its pad token, which is also its end-of-turn token), saved with
save_pretrained to a temporary folder: nothing is downloaded. Its scores mean nothing; the tests
compare them with a plain reference loop (one text at a time, ``model(**tokenizer(text))``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.errors import ConfigError
from stillroom.feedback import reward_model as module
from stillroom.feedback.pairs import PreferencePairs
from stillroom.feedback.reward_model import RewardError, RewardModel, RewardScorer
from stillroom.pipeline.config import parse_pipeline_text

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["hi there", "What is 2 + 2?", "Tell me a story about a frog."]
COMPLETIONS = [
    "hello",
    "4",
    "Once upon a time a small green frog lived in a quiet pond near an old mill, and every "
    "evening it sang to the moon until the miller's children came to listen.",
    "It is four, since two and two make four.",
    "no",
    # Ends with the pad token (<|im_end|> is SmolLM2's pad and end-of-turn token), so the head's
    # "last token that is not padding" is not the text's last token.
    "A frog.<|im_end|>",
]


# -- the model -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory,
            smollm2_tokenizer_dir: Path) -> dict[str, Path]:
    """Reward model folders: ``chat`` (the tokenizer has a chat template), ``plain`` (it has
    none), ``nopad`` (the config names no pad token), ``nan`` (the head's weights are NaN)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,  # scores spread enough that completions do not tie
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForSequenceClassification(config).eval()
    root = tmp_path_factory.mktemp("reward-models")
    out = {name: root / f"tiny-rm-{name}" for name in ("chat", "plain", "nopad", "nan")}
    model.save_pretrained(out["chat"])
    tokenizer.save_pretrained(out["chat"])

    shutil.copytree(out["chat"], out["plain"])
    (out["plain"] / "chat_template.jinja").unlink()

    shutil.copytree(out["chat"], out["nopad"])
    config_file = out["nopad"] / "config.json"
    data = json.loads(config_file.read_text())
    data["pad_token_id"] = None
    config_file.write_text(json.dumps(data))

    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    model.save_pretrained(out["nan"])
    tokenizer.save_pretrained(out["nan"])
    return out


_REFERENCE: dict[Path, Any] = {}


def reference(folder: Path, pairs: list[tuple[Any, str]]) -> list[float]:
    """Scores the straightforward way: one text at a time, no padding, the model's own pooling."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if folder not in _REFERENCE:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        _REFERENCE[folder] = (tokenizer, model)
    tokenizer, model = _REFERENCE[folder]
    scores = []
    for prompt, completion in pairs:
        if tokenizer.chat_template:
            chat = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            text = tokenizer.apply_chat_template(
                [*chat, {"role": "assistant", "content": completion}], tokenize=False
            )
            inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        else:
            inputs = tokenizer(f"{prompt}\n\n{completion}", return_tensors="pt")
        with torch.no_grad():
            scores.append(float(model(**inputs).logits[0, 0]))
    return scores


def pairs() -> list[tuple[str, str]]:
    return [(PROMPTS[i % len(PROMPTS)], text) for i, text in enumerate(COMPLETIONS)]


def close_to(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(
        abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(got, want, strict=True)
    )


def run(stages: list[Any], rows: list[dict[str, Any]], out: Path) -> Any:
    pipeline = Pipeline(stages, input=rows)
    return pipeline.run(out, progress=False, max_failure_rate=1.0, diversity_embeddings=False)


def read(out: Path, kind: str = "data") -> list[dict[str, Any]]:
    return sorted(OutputFolder(out).read_rows(kind), key=lambda row: str(row.get("id")))


# -- scores ----------------------------------------------------------------------------------------


def test_scores_equal_a_one_at_a_time_reference(folders: dict[str, Path]) -> None:
    prompts, texts = zip(*pairs(), strict=True)
    scorer = RewardScorer(folders["chat"], batch_size=4)
    scores = scorer.score(list(prompts), list(texts))
    assert close_to(scores, reference(folders["chat"], pairs()))
    assert scorer.uses_chat_template and scorer.loaded_dtype == "float32"
    assert scorer.forward_calls == 2  # 6 texts, 4 a batch: padded batches were really run
    assert len(set(round(score, 4) for score in scores)) == len(scores)  # distinct texts differ


def test_batched_equals_single_and_order_does_not_matter(folders: dict[str, Path]) -> None:
    prompts, texts = (list(part) for part in zip(*pairs(), strict=True))
    single = RewardScorer(folders["chat"], batch_size=1).score(prompts, texts)
    batched = RewardScorer(folders["chat"], batch_size=8)
    assert close_to(batched.score(prompts, texts), single)
    assert batched.forward_calls == 1
    assert close_to(batched.score(prompts[::-1], texts[::-1]), single[::-1])


@pytest.mark.parametrize("kind", ["plain", "nopad"])
def test_no_chat_template_and_no_pad_token(folders: dict[str, Path], kind: str) -> None:
    """Without a chat template the text is ``prompt\\n\\ncompletion``; with no pad token in the
    config, a batch still scores each text at its own last token."""
    prompts, texts = (list(part) for part in zip(*pairs(), strict=True))
    scorer = RewardScorer(folders[kind], batch_size=8)
    assert close_to(scorer.score(prompts, texts), reference(folders[kind], pairs()))
    assert scorer.uses_chat_template is (kind == "nopad")
    assert scorer.forward_calls == 1


def test_concurrent_calls_share_batches(folders: dict[str, Path]) -> None:
    scorer = RewardScorer(folders["chat"], batch_size=8)

    async def main() -> list[list[float]]:
        return await asyncio.gather(
            *(scorer.score_async(prompt, COMPLETIONS[:3]) for prompt in PROMPTS + ["one more"])
        )

    results = asyncio.run(main())
    assert scorer.forward_calls == 2  # 12 texts from 4 calls, 8 a batch
    for prompt, scores in zip(PROMPTS + ["one more"], results, strict=True):
        assert close_to(scores, reference(folders["chat"], [(prompt, t) for t in COMPLETIONS[:3]]))


def test_scorer_errors(folders: dict[str, Path]) -> None:
    scorer = RewardScorer(folders["chat"], max_length=60)
    with pytest.raises(ValueError, match="aligned"):
        scorer.score(["a", "b"], ["x"])
    assert scorer.score([], []) == []
    with pytest.raises(RewardError, match="completion 1: completion is empty") as empty:
        scorer.score(["a", "b"], ["x", "  "])
    assert empty.value.kind == "EmptyCompletion" and empty.value.index == 1
    with pytest.raises(RewardError, match=r"tokens, more than max_length \(60\)") as long:
        scorer.score(["a"], ["word " * 80])
    assert long.value.kind == "TooLong"
    # max_length above the model's 512 positions: the model's limit applies.
    with pytest.raises(RewardError, match=r"position limit \(512\)"):
        RewardScorer(folders["chat"], max_length=100_000).score(["a"], ["word " * 600])
    with pytest.raises(RewardError, match="not a finite number") as nan:
        RewardScorer(folders["nan"]).score(["a"], ["b"])
    assert nan.value.kind == "NonFiniteScore"


# -- the stage -------------------------------------------------------------------------------------


def test_ratings_then_preference_pairs_choose_the_best(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    rows = [
        {"id": f"r{i}", "prompt": prompt, "completions": COMPLETIONS[i : i + 3]}
        for i, prompt in enumerate(PROMPTS)
    ]
    stages = [
        RewardModel(model=str(folders["chat"]), batch_size=4),
        PreferencePairs(strategy="best_worst"),
    ]
    result = run(stages, rows, tmp_path / "out")
    assert result.counts.get("data") == 3, result.failures_by_reason
    for row, source in zip(read(tmp_path / "out"), rows, strict=True):
        want = reference(folders["chat"], [(source["prompt"], t) for t in source["completions"]])
        assert close_to(row["ratings"], want)
        best = max(range(3), key=lambda i: row["ratings"][i])
        worst = min(range(3), key=lambda i: row["ratings"][i])
        assert (row["chosen_index"], row["rejected_index"]) == (best, worst)
        assert row["chosen"] == source["completions"][best]
        entry = row["metadata"]["reward_model"]
        assert set(LINEAGE_KEYS) <= set(entry)
        assert entry["method"] == "reward_model" and entry["model"] == "tiny-rm-chat"
        assert entry["model_identity"]["name"] == "tiny-rm-chat"
        assert len(entry["model_identity"]["config"]) == 16
        assert entry["format"] == "chat_template" and entry["parent_id"] == source["id"]


def test_messages_and_a_single_completion(folders: dict[str, Path], tmp_path: Path) -> None:
    chat = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "What colour is the sky?"},
    ]
    rows = [
        # The trailing assistant turn is the answer being replaced, not part of the prompt.
        {"id": "m", "messages": [*chat, {"role": "assistant", "content": "old"}],
         "completions": ["Blue.", "It depends on the weather and the hour."]},
        {"id": "s", "prompt": "hi there", "completion": "hello"},
    ]
    result = run([RewardModel(model=str(folders["chat"]))], rows, tmp_path / "out")
    assert result.counts.get("data") == 2
    by_id = {row["id"]: row for row in read(tmp_path / "out")}
    want = reference(folders["chat"], [(chat, text) for text in rows[0]["completions"]])
    assert close_to(by_id["m"]["ratings"], want)
    # One table holds both rows, so each reads back with the other's column, empty.
    assert by_id["m"].get("reward") is None and by_id["s"].get("ratings") is None
    (single,) = reference(folders["chat"], [("hi there", "hello")])
    assert isinstance(by_id["s"]["reward"], float) and close_to([by_id["s"]["reward"]], [single])
    assert by_id["s"]["metadata"]["reward_model"]["column"] == "reward"


def test_an_answer_in_any_row_shape_is_scored(folders: dict[str, Path], tmp_path: Path) -> None:
    """The answer where `complete` writes it: the last turn of `messages`, or an assistant
    message list in `completion` beside a conversational `prompt`."""
    chat = [{"role": "user", "content": "What colour is the sky?"}]
    answer = {"role": "assistant", "content": "Blue."}
    rows = [{"id": "m", "messages": [*chat, answer]},
            {"id": "c", "prompt": chat, "completion": [answer]}]
    stage = RewardModel(model=str(folders["chat"]))
    assert all(stage.check_row(row) is None for row in rows)
    run([stage], rows[:1], tmp_path / "m")
    run([stage], rows[1:], tmp_path / "c")
    (want,) = reference(folders["chat"], [(chat, "Blue.")])
    for out in ("m", "c"):
        (row,) = read(tmp_path / out)
        assert close_to([row["reward"]], [want])


def test_bad_completions_fail_the_row_with_the_reason(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    rows = [
        {"id": "ok", "prompt": "hi", "completions": ["a", "b"]},
        {"id": "empty", "prompt": "hi", "completions": ["a", " "]},
        {"id": "long", "prompt": "hi", "completions": ["a", "word " * 80]},
        {"id": "single", "prompt": "hi", "completion": ""},
    ]
    result = run([RewardModel(model=str(folders["chat"]), max_length=60)], rows, tmp_path / "out")
    assert [row["id"] for row in read(tmp_path / "out")] == ["ok"]
    failed = {row["id"]: row for row in read(tmp_path / "out", "failed")}
    assert failed["empty"]["error_type"] == "EmptyCompletion"
    assert failed["empty"]["error"].startswith("completions[1]: completion is empty")
    assert failed["long"]["error_type"] == "TooLong"
    assert "completions[1]" in failed["long"]["error"] and "max_length (60)" in failed["long"]["error"]
    assert failed["single"]["error_type"] == "EmptyCompletion"
    assert failed["single"]["error"].startswith("completion: ")
    assert result.counts.get("failed") == 3


def test_non_finite_scores_fail_the_row(folders: dict[str, Path], tmp_path: Path) -> None:
    rows = [{"id": "x", "prompt": "hi", "completions": ["a", "b"]}]
    run([RewardModel(model=str(folders["nan"]))], rows, tmp_path / "out")
    (failed,) = read(tmp_path / "out", "failed")
    assert failed["error_type"] == "NonFiniteScore"
    assert failed["error"].startswith("completions[0]: the model's score is nan")


def test_check_row(folders: dict[str, Path]) -> None:
    stage = RewardModel(model=str(folders["chat"]))
    assert stage.check_row({"prompt": "p", "completions": ["a"]}) is None
    assert stage.check_row({"prompt": "p", "completion": "a"}) is None
    assert "needs `completions`" in (stage.check_row({"prompt": "p"}) or "")
    assert "non-empty list" in (stage.check_row({"prompt": "p", "completions": []}) or "")
    assert "hold texts" in (stage.check_row({"prompt": "p", "completions": ["a", 3]}) or "")
    assert "prompt" in (stage.check_row({"completions": ["a"]}) or "")


# -- configuration ---------------------------------------------------------------------------------


def rewrite_config(folder: Path, **changes: Any) -> None:
    data = json.loads((folder / "config.json").read_text())
    data.update(changes)
    (folder / "config.json").write_text(json.dumps(data))


def test_config_errors_name_the_model_key(folders: dict[str, Path], tmp_path: Path) -> None:
    def error(model: str) -> ConfigError:
        with pytest.raises(ConfigError) as caught:
            RewardModel(model=model)
        assert caught.value.key == "model"
        return caught.value

    assert "no reward model folder at" in str(error(str(tmp_path / "missing")))
    (tmp_path / "weights.bin").write_text("x")
    assert "is a file; name the folder" in str(error(str(tmp_path / "weights.bin")))
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in str(error(str(tmp_path / "empty")))

    causal = tmp_path / "causal"
    causal.mkdir()
    shutil.copy(folders["chat"] / "config.json", causal / "config.json")
    rewrite_config(causal, architectures=["LlamaForCausalLM"])
    assert "ForSequenceClassification" in str(error(str(causal)))
    rewrite_config(
        causal,
        architectures=["LlamaForSequenceClassification"],
        id2label={"0": "bad", "1": "good"},
    )
    assert "it has 2 labels" in str(error(str(causal)))
    del_labels = json.loads((causal / "config.json").read_text())
    del del_labels["id2label"], del_labels["label2id"]
    (causal / "config.json").write_text(json.dumps(del_labels))
    assert "it has 2 labels" in str(error(str(causal)))  # the default when nothing says


def test_missing_packages_name_the_extra(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = module.importlib.util.find_spec
    monkeypatch.setattr(
        module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'stillroom\[reward\]'"):
        RewardModel(model=str(folders["chat"]))


def test_options_are_checked(folders: dict[str, Path]) -> None:
    for bad in ({"device": "gpu"}, {"batch_size": 0}, {"max_length": 0}, {"dtype": "int8"}):
        with pytest.raises(ValidationError):
            RewardModel(model=str(folders["chat"]), **bad)
    a = RewardModel(model=str(folders["chat"]), batch_size=2, device="cpu")
    b = RewardModel(model=str(folders["chat"]), batch_size=16)
    assert a.identity() == b.identity()  # how it runs is not what it computes
    assert a.identity()["model"]["name"] == "tiny-rm-chat"
    assert a.identity() != RewardModel(model=str(folders["plain"])).identity()


def test_yaml_pipeline_reads_the_model_relative_to_the_file(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "rm").symlink_to(folders["chat"], target_is_directory=True)
    (project / "rows.jsonl").write_text(
        json.dumps({"id": "a", "prompt": "hi there", "completions": COMPLETIONS[:3]}) + "\n"
    )
    text = (
        "input: rows.jsonl\n"
        "stages:\n"
        "  - type: reward_model\n"
        "    model: models/rm\n"
        "    batch_size: 2\n"
        "    dtype: float32\n"
        "  - type: preference_pairs\n"
    )
    (project / "pipeline.yaml").write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the model is found from the file's folder, not the cwd

    pipeline = Pipeline.from_file(project / "pipeline.yaml")
    result = pipeline.run(tmp_path / "out", progress=False, diversity_embeddings=False)
    assert result.counts.get("data") == 1
    (row,) = read(tmp_path / "out")
    assert close_to(row["ratings"], reference(folders["chat"], [("hi there", t) for t in COMPLETIONS[:3]]))
    assert row["chosen_index"] == max(range(3), key=lambda i: row["ratings"][i])
    assert row["metadata"]["reward_model"]["model"] == "rm"

    with pytest.raises(ConfigError) as caught:
        parse_pipeline_text(text.replace("models/rm", "models/nope"), "p.yaml", base_dir=project)
    assert caught.value.key == "model" and str(project / "models" / "nope") in str(caught.value)
