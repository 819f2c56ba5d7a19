"""``stillroom train grpo CONFIG.yaml``: GRPO of a student with verifiers as rewards (``train``
extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stillroom.cli.app import check_config_file, friendly_errors
from stillroom.cli.app import out as console
from stillroom.cli.train import train_app


@train_app.command("grpo")
@friendly_errors
def grpo(
    config: Annotated[Path, typer.Argument(
        help="GRPO config YAML (student, data, rewards: [{verifier, options, weight}], ...).")],
) -> None:
    """GRPO (TRL's GRPOTrainer) rewarded by stillroom's verifiers; saves OUTPUT_DIR/final.

    Each completion's reward is the weighted sum of the verifiers' verdicts (1 passed, 0 not) on
    its final answer: an inline <think> trace is cut off (tags in any case, with white space
    inside), one that never ends earns 0. When the chat template opens the trace (the prompt
    ends with <think>; `think_opened: auto`), a completion that never closes it earns 0. Without
    `rewards`, each row's `verifier` and `verifier_options` (`stillroom export rl`) are used.
    """
    check_config_file(config, "GRPO config")
    import json

    from stillroom.train.grpo import TRAIN_FILE, load_grpo_config, train_grpo

    final = train_grpo(load_grpo_config(config))
    record = json.loads((final / TRAIN_FILE).read_text(encoding="utf-8"))
    parts = [f"{name} {record[key]:.4f}" for name, key in
             (("first reward", "first_reward"), ("final reward", "final_reward"))
             if record[key] is not None]
    tail = f" ({', '.join(parts)})" if parts else ""
    console.print(f"trained {record['steps']} steps on {record['rows']:,} prompts{tail}",
                  highlight=False, markup=False)
    console.print(f"saved {final}", highlight=False, markup=False)
