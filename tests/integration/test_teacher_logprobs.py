"""teacher_logprobs on the embedded SmolLM2 (transformers backend), read back by offline KD, and
the same numbers written compact (logprobs_format: compact)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stillroom import Pipeline
from stillroom.data.logit_store import to_compact
from stillroom.data.output import OutputFolder
from stillroom.llm.transformers_backend import TransformersConfig
from stillroom.stages.teacher_logprobs import TeacherLogprobs

ROWS = [
    {"id": "r0", "prompt": "What is the capital of France?",
     "completion": "Paris is the capital of France."},
    {"id": "r1", "prompt": "What is 2 + 2?", "completion": "2 + 2 = 4"},
    # Text no model wrote, with a line break and a non-ASCII character.
    {"id": "r2", "prompt": "Say hello.", "completion": "Hello,\nnaïve world!"},
]
K = 3


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_scores_given_completions_and_kd_reads_them(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pipeline = Pipeline(
        [TeacherLogprobs(backend="teacher", top_logprobs=K)],
        input=ROWS,
        backends={"teacher": TransformersConfig(batch_size=4)},
    )
    result = pipeline.run(tmp_path / "out", progress=False)
    assert result.counts == {"data": 3, "failed": 0, "dropped": 0}
    rows = sorted(OutputFolder(tmp_path / "out").read_rows("data"), key=lambda row: row["id"])

    for row in rows:
        entries = row["logprobs"]
        assert "".join(entry["token"] for entry in entries) == row["completion"]
        assert row["metadata"]["teacher_logprobs"]["scored_tokens"] == len(entries)
        for entry in entries:
            assert set(entry) == {"token", "logprob", "id", "top_logprobs"}
            assert entry["logprob"] <= 0.0
            alternatives = entry["top_logprobs"]
            assert len(alternatives) == K
            values = [alt["logprob"] for alt in alternatives]
            assert values == sorted(values, reverse=True)
            assert values[0] <= 0.0 and len({alt["id"] for alt in alternatives}) == K
            same = [alt for alt in alternatives if alt["id"] == entry["id"]]
            if same:  # one distribution: the chosen token has the same number in both places
                assert same[0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-4)
            else:  # a token left out of the top-k is no likelier than the k-th
                assert entry["logprob"] <= values[-1] + 1e-4
    # The model's own favourite continuation shows up as a top-1 somewhere.
    assert any(e["top_logprobs"][0]["id"] == e["id"] for row in rows for e in row["logprobs"])

    # Offline KD takes the rows as they are: every completion token is labelled and has teacher
    # data (the appended EOS is labelled too, with CE only).
    from stillroom.train.kd import build_examples, load_tokenizer, parse_kd_config
    from stillroom.train.sft import detect_format

    config = parse_kd_config(f"mode: offline\ndata: {tmp_path / 'out'}\nalpha: 1.0\n")
    tokenizer = load_tokenizer(config, "embedded")
    examples, counts = build_examples(config, rows, detect_format(rows), tokenizer)
    assert len(examples) == 3
    for example, row in zip(examples, rows, strict=True):
        scored = len(row["logprobs"])
        labelled = example.labels[example.prompt_length:]
        assert len(labelled) == scored + 1 and labelled[-1] == tokenizer.eos_token_id
        assert labelled[:-1] == [entry["id"] for entry in row["logprobs"]]
        teacher = example.teacher[example.prompt_length:]
        assert all(len(topk) >= K for topk in teacher[:-1]) and teacher[-1] == []
    assert counts["teacher_tokens"] == sum(len(row["logprobs"]) for row in rows)
    assert counts["label_tokens"] == counts["teacher_tokens"] + 3

    # The compact layout (logprobs_format: compact) holds the same numbers, quantized. Checked
    # here, on the rows just scored, so the teacher is loaded once more rather than twice.
    stage = TeacherLogprobs(backend="teacher", top_logprobs=K, logprobs_format="compact")
    compact = Pipeline([stage], input=ROWS, backends={"teacher": TransformersConfig(batch_size=4)}
                       ).run(tmp_path / "compact", progress=False)
    assert compact.counts == {"data": 3, "failed": 0, "dropped": 0}
    packed = sorted(OutputFolder(tmp_path / "compact").read_rows("data"), key=lambda row: row["id"])
    for old, new in zip(rows, packed, strict=True):
        assert new.get("logprobs") is None
        expected = to_compact(old["logprobs"], "logprobs")
        assert {name: new[name] for name in expected} == expected

