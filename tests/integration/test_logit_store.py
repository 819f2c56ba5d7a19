"""`complete` with `logprobs_format: compact` on the embedded model (llama.cpp), then
`stillroom train kd` offline on a tiny student with the same SmolLM2 tokenizer. teacher_logprobs
writing the same numbers compact is checked in tests/integration/test_teacher_logprobs.py, on the
rows it scores anyway (one model load fewer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.logit_store import SCALE
from stillroom.data.output import OutputFolder
from stillroom.llm.llamacpp import LlamaCppConfig
from stillroom.stages.complete import Complete
from tests.tiny_models import save_tiny_student

PROMPTS = [{"id": "a", "prompt": "What is 2 + 3? Answer briefly."},
           {"id": "b", "prompt": "Name a color."},
           {"id": "c", "prompt": "Say hello in French."}]


def generate(folder: Path, fmt: str) -> list[dict[str, Any]]:
    stage = Complete(top_logprobs=3, logprobs_format=fmt, max_tokens=24, temperature=0.0)
    result = Pipeline([stage], input=PROMPTS, seed=1,
                      backends={"default": LlamaCppConfig(n_threads=1)}).run(folder, progress=False)
    assert result.counts == {"data": 3, "failed": 0, "dropped": 0}
    return sorted(OutputFolder(folder).read_rows("data"), key=lambda row: row["id"])




@pytest.mark.integration
@pytest.mark.timeout(300)
def test_compact_logprobs_from_the_embedded_model_train_offline_kd(
    tmp_path: Path, smollm2_tokenizer_dir: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from typer.testing import CliRunner

    from stillroom.cli.main import app
    from stillroom.train.kd import build_examples, parse_kd_config
    from stillroom.train.sft import detect_format

    compact = generate(tmp_path / "compact", "compact")
    records = generate(tmp_path / "records", "records")
    for row, old in zip(compact, records, strict=True):
        assert row.get("logprobs") is None and row["completion"] == old["completion"]
        assert row["logprobs_ids"] == [entry["id"] for entry in old["logprobs"]]
        assert all(len(top) <= 3 for top in row["logprobs_top_ids"])
    size = {name: sum(p.stat().st_size for p in (tmp_path / name / "data").glob("*.parquet"))
            for name in ("compact", "records")}
    assert 0 < size["compact"] < size["records"]

    # One reader: the same aligned targets from both layouts, logprobs within half a step.
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = parse_kd_config("mode: offline\ndata: unused\nalpha: 1.0\n")
    new, new_counts = build_examples(config, compact, detect_format(compact), tokenizer)
    old, old_counts = build_examples(config, records, detect_format(records), tokenizer)
    assert new_counts == old_counts and new_counts["teacher_tokens"] > 0
    for a, b in zip(new, old, strict=True):
        assert a.labels == b.labels and a.input_ids == b.input_ids
        for then, now in zip(b.teacher, a.teacher, strict=True):
            assert [i for i, _ in now] == [i for i, _ in then]
            assert all(abs(x - y) <= 0.5 / SCALE + 1e-9
                       for (_, x), (_, y) in zip(now, then, strict=True))

    student = save_tiny_student(tmp_path / "student", tokenizer)
    (tmp_path / "kd.yaml").write_text(
        "".join(f"{k}: {json.dumps(v)}\n" for k, v in {
            "mode": "offline", "student": str(student), "data": "compact", "output_dir": "run",
            "max_steps": 2, "batch_size": 2, "save_steps": 10, "max_length": 128,
            "learning_rate": 0.005,
        }.items()))
    result = CliRunner().invoke(app, ["train", "kd", str(tmp_path / "kd.yaml")])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps on 3 rows, offline KD" in result.output
    record = json.loads((tmp_path / "run" / "final" / "stillroom_train.json").read_text())
    assert record["teacher_tokens"] == new_counts["teacher_tokens"]
