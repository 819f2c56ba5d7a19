"""``stillroom train kd CONFIG.yaml``: logit distillation into a student (``train`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import check_config_file, friendly_errors
from stillroom.cli.app import out as console
from stillroom.cli.train import train_app


@train_app.command("kd")
@friendly_errors
def kd(
    config: Annotated[Path, typer.Argument(help="KD config YAML (mode, student, data, teacher, ...).")],
) -> None:
    """Knowledge distillation, online (teacher in the loop) or offline (stored top-k logprobs);
    saves OUTPUT_DIR/final."""
    check_config_file(config, "KD config")
    import json

    from stillroom.train.kd import TRAIN_FILE, load_kd_config, train_kd

    final = train_kd(load_kd_config(config))
    record = json.loads((final / TRAIN_FILE).read_text(encoding="utf-8"))
    parts = []
    for name, key in (("loss", "losses"), ("kd", "kd_losses"), ("ce", "ce_losses")):
        if record[key]:
            parts.append(f"{name} {record[key][-1][1]:.4f}")
    tail = f" (final {', '.join(parts)})" if parts else ""
    console.print(f"trained {record['steps']} steps on {record['rows']:,} rows, {record['mode']} "
                  f"KD{tail}", highlight=False, markup=False)
    console.print(f"saved {final}", highlight=False, markup=False)
