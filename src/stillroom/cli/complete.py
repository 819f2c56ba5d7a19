"""``stillroom complete INPUT -o OUT``: the one-stage shortcut, a completion for every row."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import app, friendly_errors, option_flags, print_result
from stillroom.cli.options import (
    AddressOption,
    CacheDir,
    ConcurrencyOption,
    EmbeddingsOption,
    ExecutorOption,
    FlushRows,
    FlushSeconds,
    GpusPerWorker,
    Limit,
    MaxFailureRate,
    NoCache,
    NoProgress,
    OutOption,
    Overwrite,
    WorkersOption,
    diversity_embeddings,
    executor_options,
    run_options,
)
from stillroom.llm.backend import backends

# Read from the registry, so a backend a plugin adds is listed too.
BACKEND_HELP = (f"{', '.join(sorted(backends.items()))} (default: guessed from --model and "
                "--base-url).")

@app.command()
@friendly_errors
def complete(
    input: Annotated[Path, typer.Argument(help="JSONL, Parquet, CSV or a datasets folder with `prompt` or `messages`.")],
    out: OutOption,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model name, .gguf file or folder (default: the embedded SmolLM2-135M-Instruct).")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help=BACKEND_HELP)] = None,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="Environment variable holding the API key.")] = None,
    concurrency: ConcurrencyOption = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Completions per row (n > 1 writes `completions`).")] = 1,
    temperature: Annotated[float | None, typer.Option("--temperature", "-t", min=0.0, help="Sampling temperature, 0 to 2; 0 always picks the likeliest token (default: the backend's, 1.0 for the local ones).")] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling: sample only from the likeliest tokens that together hold this probability (default: the backend's, 1.0 = all tokens).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="Most tokens in each completion (default: the backend's limit).")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop sequence (repeatable).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Run seed (each sample's request seed derives from it).")] = 0,
    top_logprobs: Annotated[int | None, typer.Option("--top-logprobs", min=0, max=20, help="Keep each token's top-K logprobs.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    prompt_template: Annotated[str | None, typer.Option("--prompt-template", help="Build the prompt from columns, e.g. '{question}'.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.001, help="Seconds per request attempt.")] = None,
    max_retries: Annotated[int | None, typer.Option("--max-retries", min=0, help="Retries per request.")] = None,
    overwrite: Overwrite = False,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    max_failure_rate: MaxFailureRate = 0.0,
    no_progress: NoProgress = False,
    limit: Limit = None,
    flush_rows: FlushRows = 1000,
    flush_seconds: FlushSeconds = 10.0,
    embeddings: EmbeddingsOption = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusPerWorker = None,
) -> None:
    """Answer every row with `prompt` or `messages`: a `completion` (text, or an assistant message
    list for a conversational prompt), a `messages` row gets the answer as its last turn, and
    n > 1 writes `completions`. These are the shapes TRL trains on (see the README's row formats)."""
    from stillroom import api
    from stillroom.stages.complete import Complete

    config = api.backend_config(
        model,
        base_url=base_url,
        kind=backend,
        concurrency=concurrency,
        timeout=timeout,
        max_retries=max_retries,
        api_key_env=api_key_env,
    )
    # Built here rather than by api.complete, so that a bad value names the flag that gave it.
    stage = api.build_stage(
        Complete, flags=option_flags(complete), n=n, temperature=temperature, top_p=top_p,
        max_tokens=max_tokens, stop=stop, top_logprobs=top_logprobs, system=system,
        prompt_template=prompt_template,
    )
    result = api.run_stage(
        stage,
        input,
        out,
        backends={"default": config},
        seed=seed,
        name="stillroom complete",
        **executor_options(executor, address, workers, gpus_per_worker),
        **run_options(overwrite, no_cache, cache_dir, max_failure_rate, no_progress, limit,
                      flush_rows, flush_seconds),
        diversity_embeddings=diversity_embeddings(embeddings),
    )
    print_result(result, [stage])
