"""preference_pairs output folder -> stillroom train dpo -> a model transformers loads.

The pairs come from the real stage run as a pipeline on fixed rated rows (conversational, with
UltraFeedback-style aspect ratings), so the trainer reads exactly what the stage writes: a
Parquet ``data/`` folder with lineage and the other columns beside prompt/chosen/rejected. The
student is a tiny random Llama with the embedded SmolLM2 tokenizer, so training takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("trl")

from stillroom import Pipeline  # noqa: E402
from stillroom.data.output import OutputFolder  # noqa: E402
from stillroom.feedback.pairs import PreferencePairs  # noqa: E402
from stillroom.train.dpo import TRAIN_FILE, load_dpo_config, train_dpo  # noqa: E402
from tests.tiny_models import save_tiny_student  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def rated_rows() -> list[dict]:
    rows = []
    for i in range(6):
        rows.append({
            "id": f"q{i}",
            "messages": [{"role": "system", "content": "Answer with a number."},
                         {"role": "user", "content": f"What is {i} + {i}?"}],
            "completions": [f"{2 * i}", f"{2 * i + 1}", "I am not sure."],
            "ratings": [{"helpfulness": 5, "honesty": 5}, {"helpfulness": 2, "honesty": "N/A"},
                        {"helpfulness": 1, "honesty": 3}],
        })
    rows.append({**rows[0], "id": "tie", "ratings": [4, 4, 4]})  # dropped: nothing to prefer
    return rows


def test_pairs_folder_trains_and_the_final_model_loads(
    tmp_path: Path, smollm2_tokenizer_dir: Path
) -> None:

    result = Pipeline([PreferencePairs(strategy="best_worst")], input=rated_rows()).run(
        tmp_path / "pairs", progress=False)
    assert result.counts == {"data": 6, "dropped": 1, "failed": 0}
    written = OutputFolder(tmp_path / "pairs").read_rows("data")
    assert written[0]["chosen"][0]["role"] == "assistant"  # TRL's conversational format

    _tiny_student(tmp_path / "student", smollm2_tokenizer_dir)

    (tmp_path / "dpo.yaml").write_text(
        "student: student\ndata: pairs\noutput_dir: run\nmax_steps: 2\nbatch_size: 3\n"
        "learning_rate: 0.001\nmax_length: 128\n", encoding="utf-8")
    final = train_dpo(load_dpo_config(tmp_path / "dpo.yaml"))

    record = json.loads((final / TRAIN_FILE).read_text(encoding="utf-8"))
    assert record["format"] == "conversational"
    assert record["rows"] == record["pairs_trained"] == 6 and record["steps"] == 2
    assert [step for step, _ in record["margins"]] == [1, 2]
    assert record["margins"][1][1] > 0  # one DPO step already favours the chosen answers
    model = transformers.AutoModelForCausalLM.from_pretrained(final)
    loaded = transformers.AutoTokenizer.from_pretrained(final)
    prompt = loaded.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]  # a working causal LM, not just weights


@pytest.mark.timeout(300)
def test_principle_preference_soft_labels_reach_dpo(
    tmp_path: Path, smollm2_tokenizer_dir: Path
) -> None:
    """The real principle_preference stage on the embedded model writes the pairs (Parquet, with
    its ``preference`` record); train dpo reads their soft labels by default, oriented to chosen."""
    from stillroom.feedback.principle_preference import PrinciplePreference
    from stillroom.llm.llamacpp import LlamaCppConfig
    from stillroom.train.dpo import build_trainer

    rows = [
        {"id": "egg", "prompt": "How do I boil an egg?",
         "completions": ["Put the egg in boiling water for nine minutes, then cool it.",
                         "Eggs are stupid. Figure it out yourself."]},
        {"id": "paris", "prompt": "What is the capital of France?",
         "completions": ["I will not tell you.", "The capital of France is Paris."]},
    ]
    pipeline = Pipeline([PrinciplePreference()], input=rows,
                        backends={"default": LlamaCppConfig(n_ctx=512)})
    pipeline.run(tmp_path / "pairs", progress=False, max_failure_rate=1.0)
    written = OutputFolder(tmp_path / "pairs").read_rows("data")
    assert written, "the embedded judge dropped every pair"
    (tmp_path / "student").mkdir()
    _tiny_student(tmp_path / "student", smollm2_tokenizer_dir)
    (tmp_path / "dpo.yaml").write_text(
        "student: student\ndata: pairs\noutput_dir: run\nmax_steps: 1\nbatch_size: 2\n"
        "max_length: 128\n", encoding="utf-8")
    trainer, facts = build_trainer(load_dpo_config(tmp_path / "dpo.yaml"))
    assert facts["soft_labelled_pairs"] == len(written) and facts["loss"] == "cdpo"
    expected = [max(r["preference"]["p_first"], 1 - r["preference"]["p_first"]) for r in written]
    assert trainer.train_dataset["p_chosen"] == pytest.approx(expected)
    assert expected == pytest.approx([r["p_chosen"] for r in written])  # the stage's own p
    assert all(0.5 < p < 1 for p in expected)  # real soft labels, not hard ones


def _tiny_student(folder: Path, tokenizer_dir: Path) -> None:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    save_tiny_student(folder, tokenizer)
