"""``stillroom export rl DATA -o FILE``: verifiable tasks in a file RL trainers read as is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import app, friendly_errors
from stillroom.cli.app import out as console
from stillroom.verify.base import verifiers

export_app = typer.Typer(
    help="Write stillroom data in a form other tools read.", no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(export_app, name="export")


@export_app.command("rl")
@friendly_errors
def rl(
    data: Annotated[Path, typer.Argument(
        help="A stillroom output folder (its data/), JSONL, Parquet or CSV with `prompt` (or "
        "`messages`) and the columns the verifier reads (`answer`, `tests`, ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write: .jsonl or .parquet.")],
    verifier: Annotated[str, typer.Option(
        "--verifier", "-k", help=f"Verifier: {', '.join(sorted(verifiers.items()))}.")],
    options: Annotated[str | None, typer.Option(
        "--options", help="The verifier's options as a JSON object, e.g. "
        "'{\"reference_column\": \"answer\"}'.")] = None,
    standard: Annotated[bool, typer.Option(
        "--standard", help="Write `prompt` as text (TRL's standard format) instead of a list of "
        "{role, content} turns (conversational, the default).")] = False,
) -> None:
    """Export verifiable tasks for RL: prompt, reference columns, verifier and its options.

    The file loads with datasets.load_dataset("json" | "parquet", data_files=FILE) and trains
    as is with `stillroom train grpo` (no `rewards` key) or TRL's GRPOTrainer with
    stillroom.verify.rewards.RowVerifierReward() as the reward function.
    """
    from stillroom.cli.verify import _options
    from stillroom.export_rl import export_rl

    written = export_rl(data, out, verifier=verifier, options=_options(options),
                        prompt_format="standard" if standard else "conversational")
    count = sum(1 for _ in written.open("rb")) if written.suffix == ".jsonl" else None
    if count is None:
        import pyarrow.parquet as pq

        count = pq.ParquetFile(written).metadata.num_rows
    console.print(f"exported {count:,} tasks ({verifier}) to {written}", highlight=False,
                  markup=False)
