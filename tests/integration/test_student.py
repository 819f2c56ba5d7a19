"""A pruned student of the embedded SmolLM2-135M (30 layers), saved and loaded back.

Loading de-quantizes the GGUF (tens of seconds on two cores), so the teacher is loaded once for
the module, and init_student is handed that same load instead of de-quantizing a second time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from stillroom.train import student as student_module  # noqa: E402
from stillroom.train.student import (  # noqa: E402
    STUDENT_FILE,
    init_student,
    load_model,
    parameter_count,
    prune_layers,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

KEPT = [*range(0, 30, 2), 29]  # every other layer, the last one added
MESSAGES = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def teacher() -> tuple[Any, Any]:
    return load_model()


@pytest.fixture(scope="module")
def student(teacher: tuple[Any, Any]) -> Any:
    return prune_layers(teacher[0])


@pytest.fixture(scope="module")
def saved(teacher: tuple[Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(student_module, "load_model", lambda source: teacher)
        yield init_student("embedded", tmp_path_factory.mktemp("students") / "smol-16")


def prompt_ids(tokenizer: Any) -> Any:
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text)["input_ids"]])


def test_the_teacher_is_smollm2(teacher: tuple[Any, Any]) -> None:
    model, tokenizer = teacher
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == len(model.model.layers) == 30
    assert model.dtype == torch.float32
    assert parameter_count(model) == 134_515_008
    assert "<|im_start|>" in tokenizer.chat_template


def test_every_other_layer_with_first_and_last(teacher: tuple[Any, Any], student: Any) -> None:
    model = teacher[0]
    assert student.config.num_hidden_layers == len(student.model.layers) == 16
    assert model.config.num_hidden_layers == 30  # the teacher is not touched
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == list(range(16))
    per_layer = parameter_count(model.model.layers[0])
    assert parameter_count(student) == parameter_count(model) - 14 * per_layer == 84_953_664
    assert student.lm_head.weight is student.model.embed_tokens.weight
    for new, old in enumerate(KEPT):
        ours = student.model.layers[new].state_dict()
        theirs = model.model.layers[old].state_dict()
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs), (new, old)
    assert torch.equal(student.model.norm.weight, model.model.norm.weight)


def test_kv_cache_gives_the_same_greedy_tokens(teacher: tuple[Any, Any], student: Any) -> None:
    # Renumbered layers address cache slots 0..15; with teacher indices (up to 29) the cached run
    # would index past the 16-slot cache (see tests/unit/test_student.py).
    ids = prompt_ids(teacher[1])

    def run(use_cache: bool) -> list[int]:
        out = student.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
            use_cache=use_cache, pad_token_id=teacher[1].pad_token_id,
        )
        return [int(t) for t in out[0, ids.shape[1]:]]

    cached = run(True)
    assert len(cached) == 8
    assert cached == run(False)


def test_saved_student_reloads_with_identical_logits(
    teacher: tuple[Any, Any], student: Any, saved: Path
) -> None:
    record = json.loads((saved / STUDENT_FILE).read_text())
    assert record["teacher"]["name"] == "SmolLM2-135M-Instruct"
    assert record["teacher"]["model"].endswith(".gguf") and record["teacher"]["size"] > 0
    assert record["teacher"]["num_hidden_layers"] == 30
    assert record["teacher"]["parameters"] == 134_515_008
    assert record["student"] == {
        "kept_layers": KEPT, "num_hidden_layers": 16, "parameters": 84_953_664,
    }

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(saved)
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == list(range(16))
    ids = prompt_ids(teacher[1])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, student(ids).logits)

    assert tokenizer.chat_template == teacher[1].chat_template
    assert torch.equal(prompt_ids(tokenizer), ids)
    assert tokenizer.pad_token == teacher[1].pad_token
