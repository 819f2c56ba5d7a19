"""``stillroom train dpo CONFIG.yaml``: DPO of a student on preference pairs (``train`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import check_config_file, friendly_errors
from stillroom.cli.app import out as console
from stillroom.cli.train import train_app


@train_app.command("dpo")
@friendly_errors
def dpo(
    config: Annotated[Path, typer.Argument(help="DPO config YAML (student, data, beta, ...).")],
) -> None:
    """Direct Preference Optimization on prompt/chosen/rejected pairs; saves OUTPUT_DIR/final."""
    check_config_file(config, "DPO config")
    import json

    from stillroom.train.dpo import TRAIN_FILE, load_dpo_config, train_dpo

    final = train_dpo(load_dpo_config(config))
    record = json.loads((final / TRAIN_FILE).read_text(encoding="utf-8"))
    parts = [f"{name} {record[key]:.4f}" for name, key in
             (("final loss", "final_loss"), ("reward margin", "final_margin"),
              ("accuracy", "final_accuracy")) if record[key] is not None]
    tail = f" ({', '.join(parts)})" if parts else ""
    console.print(f"trained {record['steps']} steps on {record['pairs_trained']:,} pairs{tail}",
                  highlight=False, markup=False)
    console.print(f"saved {final}", highlight=False, markup=False)
