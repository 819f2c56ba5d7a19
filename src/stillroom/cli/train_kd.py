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
    """Knowledge distillation, online (teacher in the loop), offline (stored top-k logprobs) or
    on_policy (the student samples, any scoring backend scores its tokens); saves
    OUTPUT_DIR/final.

    Loss: (1 - alpha) * CE + alpha * T^2 * KD at T = `temperature`.

    \b
    Which settings give which method (mode: online):
    word-level KD: beta 0, lambda_on_policy 0 (the defaults). Supervised:
      forward KL on the data's fixed completions, nothing sampled.
      mode: offline is the same from stored top-k logprobs.
    GKD: alpha 1, lambda_on_policy 0.5 (GKD's lmbda, the fraction of
      batches the student samples), beta 0.5 (generalized JSD: 0 forward
      KL, 1 reverse KL), temperature 1, sampling_temperature 0.9 (TRL's
      GKD defaults).
    on-policy reverse KL: alpha 1, lambda_on_policy 1, beta 1: every
      batch sampled by the student, KL(student || teacher) on it.

    sampling_temperature (default 0.9) is the on-policy samples' only.

    \b
    mode: on_policy: teacher (or teachers + route_column) is a backend
      that scores given tokens (llamacpp in process, a vLLM server,
      llama-cpp-python's server with score_api: text_echo, transformers);
      loss: per-token reverse KL (kl_estimate: auto | sampled | topk);
      records teacher_scores.jsonl and teacher_failures.jsonl.
    """
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
