"""``stillroom quickstart -o OUT``: the whole loop on the embedded model, seeds to an evaluated
student (needs the ``train`` extra for steps 4-5)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import app, friendly_errors, print_result
from stillroom.cli.app import out as console
from stillroom.cli.options import CacheDir, NoCache, NoProgress, Overwrite
from stillroom.errors import OutputFolderError


@app.command()
@friendly_errors
def quickstart(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("quickstart-out"),
    train_prompts: Annotated[int, typer.Option(min=1, help="Training prompts drawn from the seed task.")] = 200,
    heldout: Annotated[int, typer.Option(min=1, help="Held-out prompts for the evaluation.")] = 100,
    max_samples: Annotated[int, typer.Option(min=1, help="Teacher samples spent at most per prompt.")] = 8,
    epochs: Annotated[float, typer.Option(min=0.01, help="Training epochs over the verified rows.")] = 2,
    kd_alpha: Annotated[float, typer.Option(min=0, max=1, help="Weight of the top-k KD term from the stored teacher logprobs (0: SFT only).")] = 0.5,
    overwrite: Overwrite = False,
    no_cache: NoCache = False,
    cache_dir: CacheDir = None,
    no_progress: NoProgress = False,
) -> None:
    """Seed task -> prompts -> verified teacher answers -> curation -> student -> evaluation."""
    from stillroom.quickstart import EVAL_FILE, QuickstartSettings
    from stillroom.quickstart import quickstart as run_quickstart
    from stillroom.report.distillation import headline

    try:  # an output folder that cannot be made is refused before anything runs
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(
            f"cannot write the output folder {out}: {error.strerror or error}; choose a folder "
            "you can write"
        ) from None
    settings = QuickstartSettings(train_prompts=train_prompts, heldout=heldout,
                                  max_samples=max_samples, epochs=epochs, kd_alpha=kd_alpha)
    result = run_quickstart(
        out,
        settings=settings,
        overwrite=overwrite,
        use_cache=not no_cache,
        cache_dir=cache_dir,
        progress=not no_progress,
    )
    print_result(result)
    eval_path = result.out / EVAL_FILE
    if eval_path.exists():
        console.print(headline(json.loads(eval_path.read_text(encoding="utf-8"))),
                      highlight=False, markup=False, soft_wrap=True)
        console.print(f"Per-item results: {eval_path}", highlight=False, markup=False)
    typer.echo(f"Open {result.out / 'report.html'} for the report; `stillroom inspect {result.out}` for a look.")
