"""``stillroom inspect OUT``: counts, a few rows, failures and drops by reason."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import app, friendly_errors, out


@app.command()
@friendly_errors
def inspect(
    folder: Annotated[Path, typer.Argument(help="An output folder written by stillroom.")],
    samples: Annotated[int, typer.Option("--samples", "-n", min=0, help="Rows to show.")] = 3,
) -> None:
    """Show what an output folder holds (finished or not)."""
    from stillroom.api import inspect_output
    from stillroom.cli.show import show_inspection

    show_inspection(out, folder, inspect_output(folder, samples))
