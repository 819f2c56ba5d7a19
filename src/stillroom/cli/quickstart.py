"""``stillroom quickstart -o OUT``: the built-in end-to-end recipe on the embedded model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.main import (
    CacheDir,
    NoCache,
    NoProgress,
    Overwrite,
    app,
    friendly_errors,
    print_result,
)


@app.command()
@friendly_errors
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("quickstart-out"),
    limit: Annotated[int, typer.Option("--limit", min=1, max=175, help="How many of the 175 seed tasks.")] = 40,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Longest answer, in tokens.")] = 160,
    overwrite: Overwrite = False,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    no_progress: NoProgress = False,
) -> None:
    """Seed tasks -> prompts -> answers from the embedded SmolLM2-135M-Instruct -> OUT."""
    from stillroom.quickstart import quickstart as run_quickstart

    result = run_quickstart(
        out,
        limit=limit,
        max_tokens=max_tokens,
        overwrite=overwrite,
        use_cache=not no_cache,
        cache_dir=cache_dir,
        progress=not no_progress,
    )
    print_result(result)
    typer.echo(f"Open {result.out / 'report.html'} for the report; `stillroom inspect {result.out}` for a look.")
