"""The library functions behind the CLI verbs. Each verb is a thin wrapper over one of these."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError, OutputFolderError
from stillroom.llm.backend import BackendConfig, backends
from stillroom.pipeline.pipeline import Pipeline, RunResult
from stillroom.report.summary import failure_examples, summarize
from stillroom.stages.complete import Complete
from stillroom.verify.stage import verify  # noqa: F401  (the library function behind `stillroom verify`)


def backend_config(
    model: str | None = None,
    *,
    base_url: str | None = None,
    kind: str | None = None,
    **options: Any,
) -> BackendConfig:
    """Pick a backend from what the user gave, the way a user would guess.

    A base URL means an OpenAI-compatible server; no model means the embedded model; a ``.gguf``
    file runs in-process through llama.cpp; a folder is a transformers model; ``claude-*`` is
    Anthropic; any other name is a model on OpenAI's API.
    """
    if base_url is not None and model is None:
        # A server serves models by name; without one every request would be refused.
        raise ConfigError(
            "a server at a base URL needs the name of the model it serves: add --model NAME",
            key="--model",
        )
    if kind is None:
        if base_url is not None:
            kind = "openai"
        elif model is None or model.endswith(".gguf"):
            kind = "llamacpp"
        elif model.startswith("claude"):
            kind = "anthropic"
        elif Path(model).expanduser().is_dir():
            kind = "transformers"
        else:
            kind = "openai"
    config_class = backends.get(kind)
    fields: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if model is not None:
        fields["model"] = model
    if base_url is not None:
        if "base_url" not in config_class.model_fields:
            raise ConfigError(f"backend {kind!r} takes no base URL", key="base_url")
        fields["base_url"] = base_url
    unknown = set(fields) - set(config_class.model_fields)
    if unknown:
        raise ConfigError(f"backend {kind!r} has no option(s) {sorted(unknown)}", key=sorted(unknown)[0])
    return config_class(kind=kind, **fields)


def complete(
    input: str | os.PathLike[str] | list[dict[str, Any]],
    out: str | os.PathLike[str],
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
    **run_options: Any,
) -> RunResult:
    """Answer every row's ``prompt`` or ``messages``: a pipeline of one ``complete`` stage."""
    stage = Complete(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=stop,
        top_logprobs=top_logprobs,
        system=system,
        prompt_template=prompt_template,
    )
    pipeline = Pipeline(
        [stage],
        input=input,
        backends={"default": backend} if backend is not None else None,
        seed=seed,
        name="stillroom complete",
    )
    return pipeline.run(out, **run_options)


def run_pipeline(path: str | os.PathLike[str], out: str | os.PathLike[str], **run_options: Any) -> RunResult:
    return Pipeline.from_file(path).run(out, **run_options)


def inspect_output(out: str | os.PathLike[str], samples: int = 3) -> dict[str, Any]:
    """What an output folder holds: counts, reasons, a few rows; works on unfinished runs too."""
    folder = OutputFolder(out)
    if not folder.root.is_dir() or not (folder.root / "data").is_dir():
        raise OutputFolderError(f"{folder.root} is not a stillroom output folder (no data/ inside)")
    # A folder being written may be caught between a shard's rewrite and its record: only a
    # folder nobody writes is judged.
    damage = [] if folder.writer() else folder.damage()
    if damage:
        raise OutputFolderError(
            f"{damage[0]}{f' (and {len(damage) - 1} more damaged files)' if len(damage) > 1 else ''}"
            "; run the command that made this folder again: it undoes the damaged commits and "
            "does their rows again (answers come from the request cache)"
        )
    try:
        summary = summarize(folder)
        summary["samples"] = folder.read_rows("data", limit=samples)
        summary["failure_examples"] = failure_examples(folder)
    except (OSError, ValueError) as error:  # pyarrow's errors for a damaged or vanishing file
        writer = folder.writer()
        raise OutputFolderError(
            f"cannot read {folder.root}: {error}"
            + (f"; it is being written by {writer}: inspect it again when that is done"
               if writer else "; run the command that made it again to repair it")
        ) from None
    return summary
