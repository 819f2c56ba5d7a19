"""Layer pruning on tiny random Llama models (built from a config, nothing downloaded).

The embedded SmolLM2 is covered by tests/integration/test_student.py; here the same mechanics
run on 6-layer models small enough to build per test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from stillroom.train.student import (  # noqa: E402
    STUDENT_FILE,
    init_student,
    kept_layers,
    parameter_count,
    prune_layers,
)

PROMPT = [[3, 17, 42, 8, 25]]


def tiny_llama(layers: int = 6, **extra: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        # Wide weights so greedy decoding wanders instead of repeating one token.
        initializer_range=0.3,
        **extra,
    )
    return transformers.LlamaForCausalLM(config).eval()


def greedy(model: Any, use_cache: bool, new: int = 10) -> list[int]:
    ids = torch.tensor(PROMPT)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
        use_cache=use_cache, pad_token_id=0,
    )
    return [int(t) for t in out[0, ids.shape[1]:]]


# -- which layers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [0, 2, 4, 5]),
        ({"keep_last": False}, [0, 2, 4]),
        ({"keep_first": False}, [1, 3, 5]),
        ({"keep_every": 3}, [0, 3, 5]),
        ({"keep_every": 1}, [0, 1, 2, 3, 4, 5]),
        ({"keep_every": 10, "keep_last": False}, [0]),
        ({"keep": [1, 4], "keep_every": 3}, [1, 4]),
    ],
)
def test_kept_layers(kwargs: dict[str, Any], expected: list[int]) -> None:
    assert kept_layers(6, **kwargs) == expected


def test_thirty_layers_every_other_keeps_sixteen() -> None:
    assert kept_layers(30) == [*range(0, 30, 2), 29]
    assert len(kept_layers(30, keep_last=False)) == 15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep": []}, "keep is empty"),
        ({"keep": [0, 6]}, "layer 6 does not exist"),
        ({"keep": [-1]}, "layer -1 does not exist"),
        ({"keep": [1, 1]}, "twice"),
        ({"keep": [3, 1]}, "increasing order"),
        ({"keep": [0, 1.0]}, "ints"),
        ({"keep": [True]}, "ints"),
        ({"keep_every": 0}, "keep_every"),
        ({"keep_every": 7, "keep_first": False, "keep_last": False}, "keeps none"),
    ],
)
def test_bad_choices_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kept_layers(6, **kwargs)


# -- the pruned copy --------------------------------------------------------------------------


def test_pruned_copy_keeps_the_teachers_layers_and_leaves_the_teacher_alone() -> None:
    teacher = tiny_llama()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = prune_layers(teacher)

    assert len(student.model.layers) == student.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1, 2, 3]
    for new, old in enumerate([0, 2, 4, 5]):
        ours = student.model.layers[new].state_dict()
        theirs = teacher.model.layers[old].state_dict()
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), (new, old, name)
    assert student.lm_head.weight is student.model.embed_tokens.weight
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    # A copy, not a view: training the student must not move the teacher.
    assert student.model.embed_tokens.weight.data_ptr() != teacher.model.embed_tokens.weight.data_ptr()

    per_layer = parameter_count(teacher.model.layers[0])
    assert parameter_count(student) == parameter_count(teacher) - 2 * per_layer
    assert teacher.config.num_hidden_layers == len(teacher.model.layers) == 6
    assert [layer.self_attn.layer_idx for layer in teacher.model.layers] == list(range(6))
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_kv_cache_matches_an_uncached_run() -> None:
    student = prune_layers(tiny_llama(), keep=[1, 3, 4])
    cached = greedy(student, use_cache=True)
    assert cached == greedy(student, use_cache=False)
    assert len(set(cached)) > 1  # a run that repeats one token would prove little


def test_without_renumbering_the_cache_breaks() -> None:
    """Why prune_layers renumbers: put the teacher indices back and cached decoding fails."""
    student = prune_layers(tiny_llama(), keep=[1, 3, 4])
    for layer, old in zip(student.model.layers, [1, 3, 4], strict=True):
        layer.self_attn.layer_idx = old
    with pytest.raises(IndexError):
        greedy(student, use_cache=True)


def test_per_layer_config_lists_are_cut() -> None:
    teacher = tiny_llama(layer_types=["full_attention"] * 6)
    teacher.config.layer_types = [f"t{i}" for i in range(6)]
    student = prune_layers(teacher, keep=[0, 3, 5])
    assert student.config.layer_types == ["t0", "t3", "t5"]
    assert teacher.config.layer_types == [f"t{i}" for i in range(6)]


def test_untied_teacher_gives_untied_student() -> None:
    teacher = tiny_llama(layers=4)
    teacher.config.tie_word_embeddings = False
    teacher.lm_head.weight = torch.nn.Parameter(teacher.lm_head.weight.detach().clone() * 2)
    student = prune_layers(teacher, keep=[0, 3])
    assert student.lm_head.weight is not student.model.embed_tokens.weight
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)


def test_models_without_a_llama_layer_list_are_refused() -> None:
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=32)
    config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(ValueError, match="cannot prune GPT2LMHeadModel"):
        prune_layers(transformers.GPT2LMHeadModel(config))


# -- init_student on a local folder -----------------------------------------------------------


def test_init_student_from_a_folder(tmp_path: Path) -> None:
    teacher = tiny_llama()
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    tokenizer_src = _tiny_tokenizer()
    tokenizer_src.save_pretrained(teacher_dir)

    out = init_student(teacher_dir, tmp_path / "student", keep=[0, 5])
    record = json.loads((out / STUDENT_FILE).read_text())
    assert record["teacher"]["model"] == "teacher"
    assert record["teacher"]["architecture"] == "LlamaForCausalLM"
    assert record["teacher"]["parameters"] == parameter_count(teacher)
    assert record["student"]["kept_layers"] == [0, 5]
    assert record["student"]["num_hidden_layers"] == 2

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert parameter_count(reloaded) == record["student"]["parameters"]
    expected = prune_layers(teacher, keep=[0, 5])
    ids = torch.tensor(PROMPT)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected(ids).logits)

    with pytest.raises(FileExistsError, match="not empty"):
        init_student(teacher_dir, out, keep=[0])
    plain = init_student(teacher_dir, tmp_path / "copy", keep_every=1)
    assert json.loads((plain / STUDENT_FILE).read_text())["student"]["kept_layers"] == list(range(6))


def _tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(97)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0")
