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
    soft_labels: Annotated[bool | None, typer.Option(
        "--soft-labels/--no-soft-labels",
        help="Train pairs that carry a soft label (principle_preference's probability that chosen "
        "is better) with cDPO, per-pair label smoothing 1 - p (the default); --no-soft-labels "
        "trains every pair as a hard label. Overrides the config's `soft_labels`.",
        show_default=False)] = None,
) -> None:
    """Direct Preference Optimization on prompt/chosen/rejected pairs; saves OUTPUT_DIR/final.

    Pairs with soft labels (principle_preference) train with conservative DPO:
    -p log sigmoid(beta h) - (1 - p) log sigmoid(-beta h). Ratings in
    score_chosen/score_rejected are never read as probabilities.
    """
    check_config_file(config, "DPO config")
    import json

    from stillroom.train.dpo import TRAIN_FILE, load_dpo_config, train_dpo

    settings = load_dpo_config(config)
    if soft_labels is not None:
        settings = settings.model_copy(update={"soft_labels": soft_labels})
    final = train_dpo(settings)
    record = json.loads((final / TRAIN_FILE).read_text(encoding="utf-8"))
    parts = [f"{name} {record[key]:.4f}" for name, key in
             (("final loss", "final_loss"), ("reward margin", "final_margin"),
              ("accuracy", "final_accuracy")) if record[key] is not None]
    tail = f" ({', '.join(parts)})" if parts else ""
    soft = record.get("soft_labelled_pairs") or 0
    labels = f", {soft:,} with soft labels (cDPO)" if soft else ""
    console.print(f"trained {record['steps']} steps on {record['pairs_trained']:,} pairs{labels}"
                  f"{tail}", highlight=False, markup=False)
    console.print(f"saved {final}", highlight=False, markup=False)
