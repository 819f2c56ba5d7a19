"""``stillroom dedup INPUT -o OUT --method minhash``: drop duplicate rows, keep one per cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from stillroom.cli.app import app, friendly_errors, option_flags, print_result
from stillroom.cli.options import (
    AddressOption,
    ExecutorOption,
    Limit,
    NoProgress,
    OutOption,
    Overwrite,
    RolesOption,
    WorkersOption,
    role_list,
)


@app.command()
@friendly_errors
def dedup(
    input: Annotated[
        Path,
        typer.Argument(help="JSONL, Parquet, CSV or a datasets folder with `text`, `prompt` "
                            "(+ `completion`) or `messages`, or the column named by --column."),
    ],
    out_dir: OutOption,
    method: Annotated[
        Literal["exact", "minhash", "semantic"],
        typer.Option("--method", "-m", help="exact: same normalized text; minhash: word n-gram "
                                            "Jaccard; semantic: embedding cosine."),
    ] = "minhash",
    threshold: Annotated[
        float | None,
        typer.Option("--threshold", "-t", min=0.0, max=1.0,
                     help="minhash: Jaccard (default 0.8); semantic: cosine (default 0.95)."),
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option("--column", "-c", help="The text column (repeat to join several) "
                                            "(default: text, else prompt + completion, else "
                                            "messages)."),
    ] = None,
    keep_by: Annotated[
        str | None,
        typer.Option("--keep-by", help="Keep the row with the highest value of this column in "
                                       "each cluster (default: the first row)."),
    ] = None,
    ngram: Annotated[
        int | None, typer.Option("--ngram", min=1, help="minhash: words per shingle (default 5).")
    ] = None,
    num_perm: Annotated[
        int | None,
        typer.Option("--num-perm", min=2, help="minhash: permutations (default 128)."),
    ] = None,
    bands: Annotated[
        int | None,
        typer.Option("--bands", min=1, help="minhash: LSH bands (with --rows-per-band) "
                                            "(default: the error-minimizing choice)."),
    ] = None,
    rows_per_band: Annotated[
        int | None, typer.Option("--rows-per-band", min=1, help="minhash: rows per LSH band.")
    ] = None,
    verify_jaccard: Annotated[
        bool | None,
        typer.Option("--verify-jaccard/--no-verify-jaccard",
                     help="minhash: check candidate pairs' exact Jaccard (default: on)."),
    ] = None,
    false_negative_weight: Annotated[
        float | None,
        typer.Option("--false-negative-weight", min=0.0, max=1.0,
                     help="minhash: weight of missed pairs against false candidates when "
                          "choosing LSH bands (default: 0.9 verified, 0.5 not)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="minhash: seed of the permutations (default 0).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="semantic: a local sentence-transformers folder "
                                     "(default: the packaged all-MiniLM-L6-v2)."),
    ] = None,
    roles: RolesOption = None,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
    limit: Limit = None,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    workers: WorkersOption = None,
) -> None:
    """Drop duplicate rows (to dropped/, with the kept row's id), keeping one row per cluster."""
    from stillroom import api
    from stillroom.curate.dedup import Dedup

    stage = api.build_stage(
        Dedup,
        flags=option_flags(dedup, rows="--rows-per-band"),
        method=method,
        column=(column[0] if len(column) == 1 else column) if column else None,
        threshold=threshold,
        ngram=ngram,
        num_perm=num_perm,
        bands=bands,
        rows=rows_per_band,
        verify_jaccard=verify_jaccard,
        false_negative_weight=false_negative_weight,
        keep_by=keep_by,
        model=model,
        seed=seed,
        roles=role_list(roles),
    )
    result = api.run_stage(
        stage,
        input,
        out_dir,
        name=f"stillroom dedup --method {method}",
        # No model is called: no request cache.
        use_cache=False,
        overwrite=overwrite,
        progress=not no_progress,
        limit=limit,
        executor=executor,
        ray_address=address,
        workers=workers,
    )
    print_result(result, [stage])
