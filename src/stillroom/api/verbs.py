"""The verbs: each builds its stage from keyword options and runs it (see the package docstring).

Each returns the run's :class:`~stillroom.pipeline.pipeline.RunResult`; what its stage did is in
``result.summary["stage_results"][<stage name>]`` (the stage's ``summarize``), the figures the
card, the report and the CLI's one-line result show. ``run_options`` are those of
:class:`~stillroom.pipeline.pipeline.RunOptions` (``overwrite``, ``progress``, ``limit``,
``executor``, ``ray_address``, ``workers``, ...).
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from pydantic import BaseModel

from stillroom.api.options import WHOLE, build_stage
from stillroom.api.runs import run_stage
from stillroom.pipeline.inputs import InputConfig, rows_in_memory

# Each verb imports its own stage's module, inside the verb: importing all of them here made
# every command (``stillroom run`` included, which imports this package) pay for every stage's
# dependencies, and fail with a bare ImportError when one of them is broken.

if TYPE_CHECKING:
    import datasets

    from stillroom.curate.decontaminate import ShortItems
    from stillroom.curate.dedup import Method
    from stillroom.curate.heuristics import (
        EmptyCheck,
        LanguageCheck,
        LengthCheck,
        RefusalCheck,
        RepetitionCheck,
        UnfinishedCheck,
    )
    from stillroom.curate.ifd_scoring import Dtype, Format
    from stillroom.curate.select import DifficultyStep, DiversityStep, Embedder, QualityStep
    from stillroom.llm.backend import BackendConfig
    from stillroom.pipeline.mixing import MixSource
    from stillroom.pipeline.pipeline import RunResult

Row = dict[str, Any]
Input: TypeAlias = "str | os.PathLike[str] | list[Row] | datasets.Dataset | InputConfig"
Out = str | os.PathLike[str]


def complete(
    input: Input,
    out: Out,
    *,
    backend: BackendConfig | None = None,
    n: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    stop: list[str] | None = None,
    seed: int = 0,
    top_logprobs: int | None = None,
    system: str | None = None,
    prompt_template: str | None = None,
    json_schema: dict[str, Any] | type[BaseModel] | None = None,
    **run_options: Any,
) -> RunResult:
    """Answer every row's ``prompt`` or ``messages`` with ``backend`` (default: the embedded
    model); ``seed`` is the run's, each request's seed derives from it. ``json_schema`` (a dict
    or a pydantic model class) asks for JSON that fits it (see :mod:`stillroom.stages.complete`)."""
    from stillroom.stages.complete import Complete

    stage = build_stage(
        Complete, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop,
        top_logprobs=top_logprobs, system=system, prompt_template=prompt_template,
        json_schema=json_schema,
    )
    return run_stage(stage, input, out, backends=None if backend is None else {"default": backend},
                     seed=seed, name="stillroom complete", **run_options)


def heuristic_filter(
    input: Input,
    out: Out,
    *,
    prompt_column: str = "auto",
    completion_column: str = "auto",
    empty: EmptyCheck | dict[str, Any] | bool = True,
    unfinished: UnfinishedCheck | dict[str, Any] | bool = True,
    length: LengthCheck | dict[str, Any] | bool = True,
    refusal: RefusalCheck | dict[str, Any] | bool = True,
    repetition: RepetitionCheck | dict[str, Any] | bool = True,
    language: LanguageCheck | dict[str, Any] | list[str] | bool | None = None,
    drop: bool = True,
    **run_options: Any,
) -> RunResult:
    """Run the heuristic checks (see :mod:`stillroom.curate.heuristics`) over ``input``.

    Each check takes ``True`` (its defaults), ``False`` (off), or its options (a dict or the
    check's model). Bad options raise ConfigError before anything is read.
    """
    from stillroom.curate.heuristics import HeuristicFilter

    stage = build_stage(
        HeuristicFilter, prompt_column=prompt_column, completion_column=completion_column,
        empty=empty, unfinished=unfinished, length=length, refusal=refusal,
        repetition=repetition, language=language, drop=drop,
    )
    return run_stage(stage, input, out, name="stillroom heuristic_filter", **run_options)


def ifd_filter(
    input: Input,
    out: Out,
    *,
    model: str | os.PathLike[str] | None = None,
    top_fraction: float | None = None,
    top_k: int | None = None,
    max_ifd: float = 1.0,
    max_length: int = 1024,
    format: Format = "auto",
    batch_size: int = 16,
    batch_tokens: int = 4096,
    device: str = "auto",
    dtype: Dtype = "float32",
    **run_options: Any,
) -> RunResult:
    """Keep the rows of ``input`` with the highest IFD below ``max_ifd`` (Superfiltering, see
    :mod:`stillroom.curate.ifd`)."""
    from stillroom.curate.ifd import IFDFilter

    stage = build_stage(
        IFDFilter, model=None if model is None else str(model), top_fraction=top_fraction,
        top_k=top_k, max_ifd=max_ifd, max_length=max_length, format=format,
        batch_size=batch_size, batch_tokens=batch_tokens, device=device, dtype=dtype,
    )
    return run_stage(stage, input, out, name=f"stillroom filter --ifd ({stage.selection_label})",
                     **run_options)


def select(
    input: Input,
    out: Out,
    *,
    size: int | None = None,
    quality: QualityStep | dict[str, Any] | None = None,
    difficulty: DifficultyStep | dict[str, Any] | None = None,
    diversity: DiversityStep | dict[str, Any] | None = None,
    seed: int = 0,
    embed: Embedder | None = None,
    **run_options: Any,
) -> RunResult:
    """Keep ``size`` good, hard and varied rows of ``input`` (s1 / LIMA, see
    :mod:`stillroom.curate.select`).

    Each step is a dict of its options (or its model) or None (off). ``embed`` replaces the
    embedding model (texts -> one vector per text). Bad options, and columns the options name
    that no input row holds, raise ConfigError before the run starts.
    """
    from stillroom.curate.select import Select, check_input_columns

    steps = {"quality": quality, "difficulty": difficulty, "diversity": diversity}
    stage = build_stage(Select, size=size, seed=seed, **{
        name: step.model_dump(exclude_unset=True) if isinstance(step, BaseModel) else step
        for name, step in steps.items()
    })
    if embed is not None:
        stage.use_embedder(embed)
    rows_to_check = _rows_to_check(input)
    if rows_to_check is not None:
        check_input_columns(stage, rows_to_check)
    return run_stage(stage, input, out, name="stillroom select", **run_options)


def _rows_to_check(input: Any) -> str | os.PathLike[str] | list[Row] | None:
    """What :func:`select` checks its columns against before the run: the file, or the rows
    given (a Dataset as plain rows, whatever its format); of an InputConfig, the rows of its
    ``path`` up to its ``limit``. None for ``{rows: N}`` or a mix, whose rows exist only once the
    run starts: the stage checks the rows it receives then. (An InputConfig used to be iterated
    as if it were rows, an AttributeError.)"""
    if isinstance(input, InputConfig):
        if input.path is None:
            return None
        if input.limit is None:
            return input.path
        from stillroom.data.readers import iter_rows, resolve_input_path

        read = iter_rows(resolve_input_path(input.path))
        return [row for _, row in itertools.islice(read, input.limit)]
    in_memory = rows_in_memory(input)
    return cast("str | os.PathLike[str] | list[Row]", input if in_memory is None else in_memory)


def decontaminate(
    input: Input,
    out: Out,
    *,
    against: list[str | os.PathLike[str]],
    bench_columns: list[str] | None = None,
    bench_id_column: str | None = None,
    columns: list[str] | None = None,
    ngram: int = 8,
    threshold: float = 0.5,
    short_items: ShortItems = "exact",
    roles: list[str] | None = None,
    **run_options: Any,
) -> RunResult:
    """Drop the rows of ``input`` that copy an item of the ``against`` benchmarks (n-gram
    overlap, Tulu 3's rule; see :mod:`stillroom.curate.decontaminate`); ``roles`` (e.g.
    ``["user"]``): only those turns of chat messages are checked."""
    from stillroom.curate.decontaminate import Decontaminate

    stage = build_stage(
        Decontaminate, against=[str(spec) for spec in against], bench_columns=bench_columns,
        bench_id_column=bench_id_column, columns=columns, ngram=ngram, threshold=threshold,
        short_items=short_items, roles=roles,
    )
    return run_stage(stage, input, out, name="stillroom decontaminate", **run_options)


def verify(
    input: Input,
    out: Out,
    *,
    kind: str,
    answer_column: str = "completion",
    options: dict[str, Any] | None = None,
    drop_failed: bool = False,
    **run_options: Any,
) -> RunResult:
    """Check every row with the verifier ``kind`` (``passed`` and ``reason`` on each row)."""
    from stillroom.verify.stage import Verify

    stage = build_stage(Verify, kind=kind, answer_column=answer_column,
                        options=dict(options or {}), drop_failed=drop_failed)
    return run_stage(stage, input, out, name=f"stillroom verify --kind {kind}", **run_options)


def dedup(
    input: Input,
    out: Out,
    *,
    method: Method = "minhash",
    column: str | list[str] | None = None,
    threshold: float | None = None,
    ngram: int | None = None,
    num_perm: int | None = None,
    bands: int | None = None,
    rows: int | None = None,
    verify_jaccard: bool | None = None,
    false_negative_weight: float | None = None,
    keep_by: str | None = None,
    model: str | None = None,
    seed: int | None = None,
    roles: list[str] | None = None,
    **run_options: Any,
) -> RunResult:
    """Drop duplicate rows of ``input``, keeping one per cluster (see
    :mod:`stillroom.curate.dedup`); an option left None takes the stage's default. ``roles``
    (e.g. ``["user"]``): only those turns of chat messages are compared."""
    from stillroom.curate.dedup import Dedup

    stage = build_stage(
        Dedup, method=method, column=column, threshold=threshold, ngram=ngram,
        num_perm=num_perm, bands=bands, rows=rows, verify_jaccard=verify_jaccard,
        false_negative_weight=false_negative_weight, keep_by=keep_by, model=model, seed=seed,
        roles=roles,
    )
    return run_stage(stage, input, out, name=f"stillroom dedup --method {method}", **run_options)


def mix(
    sources: list[MixSource],
    out: Out,
    *,
    size: int | None = None,
    allow_synthetic_only: bool = False,
    seed: int = 0,
    **run_options: Any,
) -> RunResult:
    """Write the mix of ``sources`` to ``out`` (see :mod:`stillroom.pipeline.mixing`): the mix is the
    input of a pipeline whose one stage passes the rows through."""
    # A problem of the sources together (shares, no real source) is named as the CLI gives them.
    mixed = build_stage(InputConfig, flags={WHOLE: "--source"}, mix=sources, size=size,
                        allow_synthetic_only=allow_synthetic_only)
    return run_stage(_take, mixed, out, seed=seed, name="stillroom mix", **run_options)


def _take(row: Row) -> Row:
    """The mix's stage: every mixed row as it is."""
    return row
