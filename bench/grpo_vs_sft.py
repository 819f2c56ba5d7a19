"""GRPO from the baseline against the quickstart's SFT+KD student, on the same CPU budget.

    python bench/grpo_vs_sft.py QUICKSTART_OUT [--budget 900] [--heldout 100] [--sft auto]

QUICKSTART_OUT is a finished ``stillroom quickstart -o QUICKSTART_OUT`` folder: its verified
training rows (``data/``: the bare prompt, the reference ``answer`` and the teacher's answer), its
held-out prompts (``heldout.jsonl``) and its student (``student/final``).

1. **GRPO** (``stillroom.train.grpo``) from the baseline (the embedded SmolLM2-135M-Instruct in
   float32, the quickstart's student before training) on the same training prompts, rewarded by
   the quickstart's strict checker (the ``exact`` verifier against ``answer``) plus a small
   reward for the equation's form (a ``regex``); the teacher's answers are not used. It trains
   until the budget is spent.
2. **SFT+KD**, the quickstart's recipe (offline top-k KD, ``0.5 * CE + 0.5 * KD``, on the
   teacher's verified answers). ``--sft auto`` (default) reuses the quickstart's student when its
   recorded training fits the budget (its record holds wall seconds; wall x torch threads bounds
   its CPU seconds) and says how much of the budget it used; ``--sft train`` retrains it from the
   baseline for the whole budget (more epochs over the same rows).
3. **Evaluation** on the held-out prompts (``--heldout N``: the first N), as the quickstart
   evaluates: greedy, the ``exact`` verifier, accuracy with Wilson intervals, and the exact
   McNemar test with a paired bootstrap interval of the difference: GRPO vs SFT+KD (and each vs
   the baseline).

The budget is CPU seconds of this process while training (``time.process_time``: every
thread's time, from the first step to the last; model loading and evaluation excluded), not wall
seconds, because the machine is shared: another process's load slows the wall clock, not the
CPU time a step needs. A run stops at the first step that ends past the budget. Training runs in
fresh folders under ``--work`` (default: the system's temporary folder; no resume: a budget is one uninterrupted run). Results are printed
and written to ``--out`` (default ``bench/results/grpo_vs_sft.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "grpo_vs_sft.json"
# As the quickstart: the teacher's answers were at most 16 tokens; eval generates up to 24.
MAX_NEW_TOKENS = 24


def cpu_budget(seconds: float) -> Any:
    """A callback that stops training at the first step ending past ``seconds`` of CPU time."""
    from transformers import TrainerCallback

    class CpuBudget(TrainerCallback):  # type: ignore[misc]  # transformers is untyped here
        def __init__(self) -> None:
            self.started = time.process_time()
            self.spent = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.started = time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.spent = time.process_time() - self.started
            if self.spent >= seconds:
                control.should_training_stop = True

    return CpuBudget()


def grpo_config(qs: Path, work: Path, learning_rate: float) -> Any:
    from stillroom.train.grpo import GRPORunConfig
    from stillroom.verify.rewards import RewardSpec

    return GRPORunConfig(
        student="embedded", data=str(qs / "data"), output_dir=str(work / "grpo"),
        # Epochs far beyond the budget: the budget ends the run (and the linear schedule over
        # so many steps keeps the learning rate near its start, as in the example).
        epochs=1000, learning_rate=learning_rate, batch_size=8, num_generations=4,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, max_length=160, save_steps=10**6,
        resume=False, seed=0,
        rewards=[RewardSpec(verifier="exact", options={"reference_column": "answer"}),
                 RewardSpec(verifier="regex", name="form", weight=0.25,
                            options={"pattern": r"\d+ \+ \d+ = \d+"})],
    )


def train_grpo_budgeted(qs: Path, work: Path, budget: float, learning_rate: float) -> dict[str, Any]:
    from stillroom.train.grpo import train_grpo

    shutil.rmtree(work / "grpo", ignore_errors=True)
    budgeter = cpu_budget(budget)
    final = train_grpo(grpo_config(qs, work, learning_rate), callbacks=[budgeter])
    record = json.loads((final / "stillroom_train.json").read_text(encoding="utf-8"))
    return {"path": str(final), "steps": record["steps"], "cpu_seconds": round(budgeter.spent, 1),
            "wall_seconds": record["train_seconds"], "learning_rate": learning_rate,
            "first_reward": record["first_reward"], "final_reward": record["final_reward"],
            "reward_curve": record["rewards_curve"]}


def train_sft_budgeted(qs: Path, work: Path, budget: float,
                       student: str = "embedded") -> dict[str, Any]:
    """The quickstart's KD recipe, from ``student`` (the baseline), until the budget is spent."""
    from stillroom.quickstart import QuickstartSettings
    from stillroom.train.common import loss_curve, run_training, save_final
    from stillroom.train.kd import KDRunConfig, build_trainer

    settings = QuickstartSettings()
    shutil.rmtree(work / "sft_kd", ignore_errors=True)
    config = KDRunConfig(student=student, data=str(qs / "data"), output_dir=str(work / "sft_kd"),
                         epochs=1000, batch_size=settings.batch_size,
                         learning_rate=settings.learning_rate, max_length=160, seed=settings.seed,
                         save_steps=10**6, mode="offline", alpha=settings.kd_alpha, resume=False)
    trainer, facts = build_trainer(config)
    budgeter = cpu_budget(budget)
    trainer.add_callback(budgeter)
    started = time.perf_counter()
    run_training(trainer, None)
    losses = loss_curve(trainer)
    record = {"recipe": "kd", "mode": "offline", "config": config.model_dump(mode="json"),
              "rows": facts["rows"], "steps": trainer.state.global_step, "losses": losses,
              "train_seconds": round(time.perf_counter() - started, 3),
              "train_cpu_seconds": round(budgeter.spent, 1)}
    final = save_final(trainer, config.path(config.output_dir) / "final", record)
    return {"path": str(final), "steps": record["steps"], "cpu_seconds": record["train_cpu_seconds"],
            "wall_seconds": record["train_seconds"], "reused": False,
            "final_loss": losses[-1][1] if losses else None}


def quickstart_student(qs: Path) -> dict[str, Any]:
    final = qs / "student" / "final"
    record = json.loads((final / "stillroom_train.json").read_text(encoding="utf-8"))
    return {"path": str(final), "steps": record["steps"], "wall_seconds": record["train_seconds"],
            "cpu_seconds": None, "reused": True, "final_loss": record.get("final_loss")}


def paired(first: list[bool], second: list[bool], seed: int = 0) -> dict[str, Any]:
    from stillroom.evaluate.stats import mcnemar_exact, paired_bootstrap_interval, paired_counts

    only_first, only_second = paired_counts(first, second)
    low, high = paired_bootstrap_interval(first, second, confidence=0.95, seed=seed)
    n = len(first)
    return {**mcnemar_exact(only_first, only_second), "n": n,
            "accuracy_difference": (sum(first) - sum(second)) / n if n else None,
            "difference_ci": [low, high]}


def evaluate_all(qs: Path, models: dict[str, str], heldout: int | None, out: Path) -> dict[str, Any]:
    from stillroom.evaluate import evaluate

    rows = [json.loads(line) for line in (qs / "heldout.jsonl").read_text(encoding="utf-8").splitlines() if line]
    rows = [{k: v for k, v in row.items() if k != "teacher_messages"} for row in rows[:heldout]]
    config = {"models": models, "verifier": "exact", "verifier_options": {"reference_column": "answer"},
              "perplexity": False, "paired_test": {"a": "grpo", "b": "sft_kd"},
              "generation": {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": 25}}
    return evaluate(config, rows=rows, out=out)


def print_results(summary: dict[str, Any]) -> None:
    """Accuracy with intervals per model, then each paired test."""
    print(f"\nheld-out accuracy (exact), n = {summary['heldout_n']}:")
    for name, figures in summary["accuracy"].items():
        low, high = figures["ci"]
        print(f"  {name:10s} {figures['accuracy']:.3f}  [{low:.3f}, {high:.3f}]")
    for name, test in summary["paired"].items():
        low, high = test["difference_ci"]
        print(f"  {name}: difference {test['accuracy_difference']:+.3f} [{low:+.3f}, {high:+.3f}], "
              f"McNemar p = {test['p_value']:.3g} (b {test['b']}, c {test['c']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("quickstart", type=Path, help="a finished `stillroom quickstart` folder")
    parser.add_argument("--budget", type=float, default=900, help="CPU seconds of training per method")
    parser.add_argument("--heldout", type=int, default=None, help="evaluate the first N held-out prompts")
    parser.add_argument("--sft", choices=("auto", "reuse", "train"), default="auto")
    parser.add_argument("--grpo-lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores here)")
    # The trained models (about 0.5 GB each) go outside the repository by default.
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "stillroom-grpo-vs-sft")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    qs = args.quickstart
    for needed in ("data", "heldout.jsonl", "student/final/stillroom_train.json"):
        if not (qs / needed).exists():
            print(f"{qs} is not a finished quickstart folder (no {needed})", file=sys.stderr)
            return 2
    args.work.mkdir(parents=True, exist_ok=True)

    print(f"GRPO from the baseline, {args.budget:.0f} CPU s ...", flush=True)
    grpo = train_grpo_budgeted(qs, args.work, args.budget, args.grpo_lr)
    reused = quickstart_student(qs)
    # The quickstart recorded wall seconds only; wall x threads bounds the CPU seconds it used.
    bound = reused["wall_seconds"] * args.threads
    if args.sft == "reuse" or (args.sft == "auto" and bound <= args.budget):
        fits = ("within the budget: its recipe (2 epochs) ended before the budget was spent"
                if bound <= args.budget else "which may exceed the budget (reused as asked)")
        sft = {**reused, "cpu_seconds_at_most": round(bound, 1),
               "budget_note": f"the quickstart's student trained {reused['wall_seconds']:.0f} wall s "
                              f"(at most {bound:.0f} CPU s at {args.threads} threads) against a "
                              f"{args.budget:.0f} CPU s budget, {fits}"}
    else:
        print(f"SFT+KD from the baseline, {args.budget:.0f} CPU s ...", flush=True)
        sft = train_sft_budgeted(qs, args.work, args.budget)

    result = evaluate_all(qs, {"baseline": "embedded", "grpo": grpo["path"], "sft_kd": sft["path"]},
                          args.heldout, args.work / "eval.json")
    passed = {name: [item["outputs"][name]["passed"] for item in result["items"]]
              for name in ("baseline", "grpo", "sft_kd")}
    summary = {
        "what": "GRPO from the baseline vs the quickstart's SFT+KD student, same CPU budget",
        "quickstart": str(qs), "budget_cpu_seconds": args.budget, "torch_threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "heldout_n": result["n"], "grpo": grpo, "sft_kd": sft,
        "accuracy": {name: {k: result["models"][name][k] for k in ("accuracy", "correct", "n", "ci")}
                     for name in passed},
        "paired": {"grpo_vs_sft_kd": paired(passed["grpo"], passed["sft_kd"]),
                   "grpo_vs_baseline": paired(passed["grpo"], passed["baseline"]),
                   "sft_kd_vs_baseline": paired(passed["sft_kd"], passed["baseline"])},
        "ci_method": "Wilson score, 95%; difference: paired bootstrap over items, 95%",
        "test": "exact McNemar (two-sided binomial test on discordant pairs)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_results(summary)
    print(f"GRPO: {grpo['steps']} steps, {grpo['cpu_seconds']} CPU s; SFT+KD: {sft['steps']} steps"
          + (f" ({sft['budget_note']})" if sft.get("reused") else f", {sft['cpu_seconds']} CPU s"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
