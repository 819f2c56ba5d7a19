"""``stillroom train sft CONFIG.yaml``: fine-tune a student on a data folder (``train`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import app, check_config_file, friendly_errors
from stillroom.cli.app import out as console

train_app = typer.Typer(
    help="Train a student on stillroom data (needs the `train` extra).", no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(train_app, name="train")


@train_app.command("sft")
@friendly_errors
def sft(
    config: Annotated[Path, typer.Argument(help="SFT config YAML (student, data, output_dir, ...).")],
) -> None:
    """Supervised fine-tuning with the loss on completions only; saves OUTPUT_DIR/final."""
    check_config_file(config, "SFT config")
    import json

    from stillroom.train.sft import TRAIN_FILE, load_sft_config, train_sft

    final = train_sft(load_sft_config(config))
    record = json.loads((final / TRAIN_FILE).read_text(encoding="utf-8"))
    loss = record["final_loss"]
    tail = f" (final loss {loss:.4f})" if loss is not None else ""
    console.print(f"trained {record['steps']} steps on {record['rows']:,} rows{tail}",
                  highlight=False, markup=False)
    console.print(f"saved {final}", highlight=False, markup=False)
