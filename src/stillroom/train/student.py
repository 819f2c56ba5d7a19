"""A student to distil into: a layer-pruned copy of the teacher, or a plain copy of any model.

Usage (Python; needs the ``train`` extra)::

    from stillroom.train.student import init_student

    # every other decoder layer of the embedded SmolLM2-135M, first and last kept
    init_student("embedded", "students/smol-16L")
    # explicit layers, from a local transformers folder or a .gguf file
    init_student("models/teacher", "students/t-4L", keep=[0, 9, 19, 29])
    # a plain float32 copy (keep_every=1): "any local model or GGUF" as the student
    init_student("models/other.gguf", "students/other-full", keep_every=1)

The output folder is an ordinary ``save_pretrained`` folder (weights, config, generation config,
tokenizer with its chat template), loadable by ``AutoModelForCausalLM.from_pretrained`` and by
the transformers backend (``kind: transformers``, ``model: students/smol-16L``). Next to it,
``stillroom_student.json`` records where the student came from: the teacher's identity (name
and file size for a GGUF, name and config hash for a folder), its layer and parameter counts,
the kept teacher layer indices (in student order) and the student's counts.

The method. Depth pruning keeps whole decoder layers and drops the rest; embeddings, the final
norm and the LM head are copied unchanged, so teacher and student share a tokenizer and a
vocabulary and logit-level distillation (:mod:`stillroom.train.losses`) applies directly.

* DistilBERT (Sanh et al., 2019) initialises its 6-layer student from 12-layer BERT by taking
  one layer out of two; the released extraction takes teacher layers 0, 2, 4, 7, 9 and 11, i.e.
  it keeps both the first and the last layer rather than a strict stride.
* Minitron (Muralidharan et al., 2024; Sreenivas et al., 2024) prunes depth by dropping whole
  layers and then distils; its layer-importance study reports that the first and last layers
  matter most (dropping them raises the LM loss the most).

Hence the defaults ``keep_every=2, keep_first=True, keep_last=True``: layers 0, 2, 4, ... plus
the last one (16 of SmolLM2's 30 layers). A pruned copy is not a usable model by itself: a
15-layer SmolLM2 copy starts near gibberish and needs far more training than a quickstart has
(see the design notes), so expect to distil for a long time, or use ``keep_every=1``.

Three things must follow the layers, or the copy breaks in ways that are easy to miss:

* each kept layer's attention ``layer_idx`` is renumbered 0..n-1. The KV cache is a list of
  ``num_hidden_layers`` slots addressed by ``layer_idx``; a kept layer still carrying its
  teacher index (say 28 in a 16-layer model) writes to a slot that does not exist, or to
  another layer's slot, so ``generate(use_cache=True)`` fails or differs from an uncached run;
* ``config.num_hidden_layers`` and any per-layer config list (``layer_types`` for models that
  mix sliding and full attention, ``no_rope_layers``) are cut to the kept layers;
* tied input/output embeddings stay tied, as in the teacher, so the saved model does not grow
  an untied LM head.

Only models whose decoder layers sit in ``model.model.layers`` (Llama, Mistral, Qwen2, Gemma,
SmolLM2/3 and the like) can be pruned; others raise ``ValueError`` naming the architecture.
Models are loaded in float32 on the CPU.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stillroom.llm.llamacpp import EMBEDDED_MODEL_NAME

STUDENT_FILE = "stillroom_student.json"
"""Written next to the saved student: teacher identity, kept layers, parameter counts."""

# Config lists with one entry per decoder layer; they are cut to the kept layers.
_PER_LAYER_CONFIG_LISTS = ("layer_types", "no_rope_layers")


def load_model(path_or_gguf: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a local transformers folder or a .gguf file, float32 on CPU.

    ``None`` loads the embedded SmolLM2-135M GGUF. A GGUF is de-quantized by transformers, so
    the weights are the GGUF's (Q4_1 for the embedded one), not the original checkpoint's. The
    de-quantized copy is saved once and read from then on (:mod:`stillroom.llm.gguf_dense`;
    ``STILLROOM_MODEL_CACHE=off`` converts the GGUF every time): the same weights and tokenizer.
    Raises :class:`~stillroom.errors.ConfigError` (key ``model``) when nothing loadable is there.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stillroom.llm.gguf_dense import dense_folder, load_gguf
    from stillroom.llm.transformers_backend import locate

    folder, gguf_file = locate(str(path_or_gguf) if path_or_gguf is not None else None)
    if gguf_file is not None:
        dense = dense_folder(folder / gguf_file)
        if dense is None:
            model, tokenizer = load_gguf(folder / gguf_file)
            return model.eval(), tokenizer
        folder = dense
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), tokenizer


def kept_layers(
    num_layers: int,
    keep_every: int = 2,
    keep: Sequence[int] | None = None,
    keep_first: bool = True,
    keep_last: bool = True,
) -> list[int]:
    """The teacher layer indices a student keeps, in order.

    With ``keep`` the list is used as given (``keep_every``, ``keep_first`` and ``keep_last``
    are ignored); it must be non-empty, increasing (layers run in order, so a shuffled list is
    almost surely a mistake), without repeats, and within ``0..num_layers-1``.

    Otherwise one layer in ``keep_every``: layers 0, k, 2k, ... when ``keep_first``, else the
    last of each group of k (k-1, 2k-1, ...); the final layer is added when ``keep_last``.
    """
    if keep is not None:
        return _checked_keep_list(keep, num_layers)
    if isinstance(keep_every, bool) or not isinstance(keep_every, int) or keep_every < 1:
        raise ValueError(f"keep_every must be a whole number >= 1, got {keep_every!r}")
    start = 0 if keep_first else keep_every - 1
    indices = list(range(start, num_layers, keep_every))
    if keep_last and num_layers - 1 not in indices:
        indices.append(num_layers - 1)
    if not indices:
        raise ValueError(
            f"keep_every={keep_every} with keep_first=False keeps none of {num_layers} layers"
        )
    return indices


def _checked_keep_list(keep: Sequence[int], num_layers: int) -> list[int]:
    indices = list(keep)
    if not indices:
        raise ValueError("keep is empty: a student needs at least one layer")
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"keep must hold layer indices (ints), got {index!r}")
        if not 0 <= index < num_layers:
            raise ValueError(
                f"keep: layer {index} does not exist; the teacher has layers 0..{num_layers - 1}"
            )
    if len(set(indices)) != len(indices):
        raise ValueError(f"keep lists a layer twice: {indices}")
    if indices != sorted(indices):
        raise ValueError(f"keep must be in increasing order (layers run in order): {indices}")
    return indices


def prune_layers(
    model: Any,
    keep_every: int = 2,
    keep: Sequence[int] | None = None,
    keep_first: bool = True,
    keep_last: bool = True,
) -> Any:
    """A copy of ``model`` with only some decoder layers; ``model`` itself is left untouched.

    Which layers: see :func:`kept_layers`. The kept layers are renumbered 0..n-1 (attention
    ``layer_idx``, used to address the KV cache), ``config.num_hidden_layers`` and per-layer
    config lists follow, and embeddings are tied when the teacher's are.
    """
    layers = _decoder_layers(model)
    indices = kept_layers(len(layers), keep_every, keep, keep_first, keep_last)
    student = _copy_without_layers(model)
    import torch

    student.model.layers = torch.nn.ModuleList(copy.deepcopy(layers[i]) for i in indices)
    for new_index, layer in enumerate(student.model.layers):
        _renumber(layer, new_index)
    _cut_config(student.config, indices)
    if getattr(student.config, "tie_word_embeddings", False):
        student.tie_weights()
    return student


def _architecture(model: Any) -> str:
    names = getattr(getattr(model, "config", None), "architectures", None)
    return names[0] if names else type(model).__name__


def _decoder_layers(model: Any) -> Any:
    """The decoder's layer list (``model.model.layers``), or ValueError naming the model."""
    import torch

    decoder = getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != count:
        raise ValueError(
            f"cannot prune {_architecture(model)}: its decoder layers are not at "
            "model.model.layers (Llama-family layout) with config.num_hidden_layers entries"
        )
    return layers


def _copy_without_layers(model: Any) -> Any:
    """Deep copy of everything but the decoder layers (copied later, only the kept ones).

    One deepcopy keeps shared tensors shared, so tied embeddings stay tied in the copy.
    """
    import torch

    decoder = model.model
    layers = decoder.layers
    decoder.layers = torch.nn.ModuleList()
    try:
        return copy.deepcopy(model)
    finally:
        decoder.layers = layers


def _renumber(layer: Any, new_index: int) -> None:
    """Every per-layer index inside ``layer`` (attention's ``layer_idx`` at least)."""
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = new_index


def _cut_config(config: Any, indices: list[int]) -> None:
    configs = [config]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        configs.append(text)
    for cfg in configs:
        before = cfg.num_hidden_layers
        for name in _PER_LAYER_CONFIG_LISTS:
            values = getattr(cfg, name, None)
            if isinstance(values, list | tuple) and len(values) == before:
                setattr(cfg, name, [values[i] for i in indices])
        cfg.num_hidden_layers = len(indices)


def parameter_count(model: Any) -> int:
    """Parameters of ``model``, a tied tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def teacher_identity(teacher: str | Path | None) -> dict[str, Any]:
    """What names the teacher: a GGUF's file name and size, a folder's name and config hash."""
    from stillroom.llm.transformers_backend import locate

    folder, gguf_file = locate(str(teacher) if teacher is not None else None)
    if gguf_file is not None:
        path = folder / gguf_file
        out: dict[str, Any] = {"model": path.name, "size": path.stat().st_size}
    else:
        config = (folder / "config.json").read_bytes()
        out = {"model": folder.name, "config_sha256": hashlib.sha256(config).hexdigest()[:16]}
    out["source"] = "embedded" if teacher is None else str(teacher)
    if teacher is None:
        out["name"] = EMBEDDED_MODEL_NAME
    return out


def init_student(
    teacher: str | Path = "embedded",
    out: str | Path = "student",
    keep_every: int = 2,
    keep: Sequence[int] | None = None,
    *,
    keep_first: bool = True,
    keep_last: bool = True,
    overwrite: bool = False,
) -> Path:
    """Load ``teacher``, keep some of its layers, save the student to ``out``; returns ``out``.

    ``teacher`` is ``"embedded"`` (SmolLM2-135M), a transformers folder or a .gguf file.
    ``keep_every=1`` saves a plain float32 copy. ``out`` must be empty or missing unless
    ``overwrite`` (files of an older, larger save would otherwise linger beside the new ones).
    """
    source = None if str(teacher) == "embedded" else teacher
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True or pick a new folder")
    identity = teacher_identity(source)  # fails fast (ConfigError) before the slow load
    model, tokenizer = load_model(source)
    layers = len(_decoder_layers(model))
    indices = kept_layers(layers, keep_every, keep, keep_first, keep_last)
    student = model if indices == list(range(layers)) else prune_layers(model, keep=indices)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "teacher": {
            **identity,
            "architecture": _architecture(model),
            "num_hidden_layers": layers,
            "parameters": parameter_count(model),
        },
        "student": {
            "kept_layers": indices,
            "num_hidden_layers": len(indices),
            "parameters": parameter_count(student),
        },
        "method": {"keep_every": keep_every, "keep": list(keep) if keep is not None else None,
                   "keep_first": keep_first, "keep_last": keep_last, "dtype": "float32"},
    }
    (out / STUDENT_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out
