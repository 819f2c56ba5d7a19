"""`stillroom eval` on the embedded SmolLM2-135M: through transformers (float32 from the GGUF) and
through llama.cpp, on a few arithmetic items with short answers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stillroom.cli.main import app
from stillroom.evaluate import evaluate

ITEMS = [(3, 4), (10, 5), (2, 2), (7, 1), (6, 3), (9, 9)]


def rows() -> list[dict[str, Any]]:
    return [{"id": f"add-{a}-{b}", "prompt": f"What is {a} + {b}? Answer with just the number.",
             "answer": str(a + b), "completion": f"{a + b}"} for a, b in ITEMS]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_eval_embedded_model_via_transformers_and_llamacpp(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("llama_cpp")
    config = {
        "models": {
            "baseline": "embedded",
            "student": {"backend": {"kind": "llamacpp"}},
            "teacher": {"column": "completion"},
        },
        "generation": {"max_new_tokens": 16, "batch_size": 6},
    }
    result = evaluate(config, rows=rows(), out=tmp_path / "eval.json")
    saved = json.loads((tmp_path / "eval.json").read_text())
    for key in ("metric", "n", "baseline", "student", "teacher", "heldout_prompts", "paired_test",
                "models", "items"):
        assert key in saved
    assert saved["n"] == 6 and saved["teacher"] == 1.0
    assert saved["heldout_prompts"][0] == "What is 3 + 4? Answer with just the number."
    baseline, student = result["models"]["baseline"], result["models"]["student"]
    # Held-out teacher answers are short numbers: a finite perplexity through transformers, and
    # "n/a" for the model only reachable through a backend.
    assert math.isfinite(baseline["perplexity"]) and baseline["perplexity"] > 1
    detail = baseline["perplexity_detail"]
    assert detail["scored"] == 6 and detail["tokens"] >= 12  # each answer: >= 1 token and EOS
    assert student["perplexity"] == "n/a"
    for name in ("baseline", "student"):
        model = result["models"][name]
        assert 0 < model["tokens"] <= 16 * 6 and model["seconds"] > 0
        outputs = [item["outputs"][name] for item in result["items"]]
        assert all(o["output"].strip() and o["reason"] for o in outputs)
        # Real answers: most mention a number (the model is weak, but it answers arithmetic).
        assert sum(any(ch.isdigit() for ch in o["output"]) for o in outputs) >= 4, outputs
        assert model["accuracy"] == sum(o["passed"] for o in outputs) / 6
    test = saved["paired_test"]
    assert test["models"] == ["student", "baseline"]
    assert test["b"] + test["c"] <= 6 and 0 < test["p_value"] <= 1


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_cli_eval_smoke_with_llamacpp(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()[:3]))
    (tmp_path / "eval.yaml").write_text(
        "data: held.jsonl\n"
        "models:\n"
        "  student: {backend: {kind: llamacpp}}\n"
        "  teacher: {column: completion}\n"
        "  thinker:\n"
        "    backend: {kind: llamacpp}\n"
        "    budget_forcing: {max_thinking_tokens: 10, min_thinking_tokens: 4, max_answer_tokens: 6}\n"
        "generation: {max_new_tokens: 12}\n"
    )
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "eval.yaml"), "-o",
                                      str(tmp_path / "out" / "eval.json")])
    assert result.exit_code == 0, result.output
    assert "accuracy (math verifier) on 3 held-out items" in result.output
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["n"] == 3 and saved["teacher"] == 1.0 and saved["baseline"] is None
    assert saved["paired_test"]["models"] == ["student", "teacher"]
    assert len(saved["items"]) == 3 and saved["items"][0]["outputs"]["student"]["output"]
    # Budget forcing through llama.cpp's raw prompts: thinking capped at 10 tokens (or ended by
    # the model after at least 4, or after its one "Wait"), then a forced answer.
    for item in saved["items"]:
        forced = item["outputs"]["thinker"]
        assert forced["answer_tokens"] <= 6 and forced["output"].startswith("Final Answer:")
        assert forced["thinking_tokens"] <= 10
        assert forced["capped"] or forced["thinking_tokens"] >= 4 or forced["waits"] == 1
    summary = saved["models"]["thinker"]["budget_forcing"]
    assert summary["options"]["max_thinking_tokens"] == 10
