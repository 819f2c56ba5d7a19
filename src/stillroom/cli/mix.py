"""``stillroom mix -o OUT --source real:human.jsonl --source synthetic:gen/data:0.3``."""

from __future__ import annotations

from typing import Annotated

import typer

from stillroom.cli.app import app, friendly_errors, print_result
from stillroom.cli.options import NoProgress, OutOption, Overwrite, run_options


@app.command()
@friendly_errors
def mix(
    out_dir: OutOption,
    source: Annotated[
        list[str],
        typer.Option("--source", "-s",
                     help="KIND:PATH[:SHARE], KIND real or synthetic; SHARE is the fraction of "
                          "the mix (none: every row). Repeat for each source."),
    ],
    size: Annotated[int | None, typer.Option("--size", min=1, help="At most N rows in all.")] = None,
    allow_synthetic_only: Annotated[
        bool, typer.Option("--allow-synthetic-only", help="Allow a mix with no real source.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling and order.")] = 0,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Mix real and synthetic data with target shares, keeping the real rows (accumulate)."""
    from stillroom import api
    from stillroom.pipeline.mixing import parse_source

    sources = [parse_source(text) for text in source]
    result = api.mix(
        sources, out_dir, size=size, allow_synthetic_only=allow_synthetic_only, seed=seed,
        **run_options(overwrite, True, None, 0.0, no_progress, None, 10_000, 10.0),
    )
    print_result(result)
