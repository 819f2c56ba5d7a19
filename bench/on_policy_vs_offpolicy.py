"""On-policy context distillation against the quickstart's off-policy recipe, same CPU budget.

    python bench/on_policy_vs_offpolicy.py QUICKSTART_OUT [--budget 900] [--heldout 100]
        [--offpolicy train|PATH] [--student embedded|PATH] [--lr 5e-5]

QUICKSTART_OUT is a finished ``stillroom quickstart -o QUICKSTART_OUT`` folder: its verified
training rows (``data/``) and held-out prompts (``heldout.jsonl``).

1. **On-policy context distillation** (``stillroom train kd``, ``mode: on_policy``): the student
   (the embedded SmolLM2-135M-Instruct in float32, or ``--student``) samples its own answer to
   each bare training prompt (T = 1); the teacher is the embedded model through llama.cpp in
   this process with the seed's three worked examples in its context (the quickstart's
   ``teacher_messages``), and it scores every token the student wrote (top-5 log-probs); the
   loss is the per-token reverse KL (top-k form). The prompts are those of the quickstart's
   verified rows, so both methods see the same prompts; the teacher's verified answers are not
   used. It trains until the budget is spent.
2. **Off-policy, the quickstart's recipe**: SFT on the rejection-sampled (verified) answers with
   top-k KD, ``0.5 * CE + 0.5 * KD`` (``mode: offline``), from the same student, until the same
   budget is spent (``--offpolicy train``, default), or an already trained student folder
   (``--offpolicy PATH``, e.g. the one ``bench/grpo_vs_sft.py --sft train`` trained with the same
   budget; its record says how many CPU seconds it used).
3. **Evaluation** on the held-out prompts as the quickstart evaluates (greedy, the ``exact``
   verifier, Wilson intervals, exact McNemar and a paired bootstrap interval of the difference).

The budget is CPU seconds of this process while training (``time.process_time``: every thread's
time, the in-process teacher's included, from the first step to the last; loading and
evaluation excluded), as in ``bench/grpo_vs_sft.py``. The off-policy recipe's data cost (the
teacher's rejection sampling, paid once by the quickstart) is not counted against it; the
on-policy run pays its teacher inside the budget. Teacher requests sent and cache hits come from
the on-policy run's record. Results are printed and written to ``--out`` (default
``bench/results/on_policy_vs_offpolicy.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "on_policy_vs_offpolicy.json"
MAX_NEW_TOKENS = 24  # as the quickstart's evaluation; its teacher answers were at most 16 tokens

from grpo_vs_sft import cpu_budget, paired, print_results, train_sft_budgeted  # noqa: E402


def on_policy_rows(qs: Path, work: Path) -> Path:
    """The verified rows' prompts with the teacher's worked-examples conversation rebuilt from
    each row's numbers (the quickstart keeps only the student's view in ``data/``)."""
    from stillroom.data.readers import iter_rows
    from stillroom.quickstart_task import SEED_TASK, instance

    out = work / "on_policy_rows.jsonl"
    lines = []
    for _, row in iter_rows(qs / "data"):
        match = re.fullmatch(r"addition-(\d+)-(\d+)", str(row["id"]))
        if match is None:
            raise SystemExit(f"row {row['id']!r} is not a quickstart addition row")
        made = instance(SEED_TASK, int(match[1]), int(match[2]))
        if made["prompt"] != row["prompt"]:
            raise SystemExit(f"row {row['id']}: its prompt is not the seed's")
        lines.append(json.dumps({"id": made["id"], "prompt": made["prompt"],
                                 "teacher_messages": made["teacher_messages"]}))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def train_on_policy_budgeted(rows: Path, work: Path, budget: float, student: str, lr: float,
                             batch_size: int) -> dict[str, Any]:
    from stillroom.train.on_policy import train_on_policy
    from stillroom.train.on_policy_config import OnPolicyRunConfig

    shutil.rmtree(work / "on_policy", ignore_errors=True)
    config = OnPolicyRunConfig(
        mode="on_policy", student=student, data=str(rows), output_dir=str(work / "on_policy"),
        teacher={"kind": "llamacpp"}, teacher_prompt_column="teacher_messages",
        sampling_temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, top_logprobs=5,
        kl_estimate="auto", epochs=1000, learning_rate=lr, batch_size=batch_size,
        # The teacher's context (three worked examples, the prompt and the student's answer)
        # is up to 197 tokens; since over-long rows are refused rather than cut, 160 no longer
        # fits it (the first measurement ran before that check, with the context cut to 160).
        max_length=224, save_steps=10**6, resume=False, seed=0,
    )
    budgeter = cpu_budget(budget)
    final = train_on_policy(config, callbacks=[budgeter])
    record = json.loads((final / "stillroom_train.json").read_text(encoding="utf-8"))
    teachers = record["teachers"]
    return {"path": str(final), "steps": record["steps"], "cpu_seconds": round(budgeter.spent, 1),
            "wall_seconds": record["train_seconds"], "learning_rate": lr,
            "teacher_requests_sent": sum(t["requests_sent"] for t in teachers.values()),
            "teacher_cache_hits": sum(t["cache_hits"] for t in teachers.values()),
            "teacher_failures": sum(t["failures"] for t in teachers.values()),
            "teacher_wait_share": record["teacher_wait_share"],
            "sampled_tokens": record["sampled_tokens"], "scored_tokens": record["scored_tokens"],
            "first_kd": record["kd_losses"][0][1] if record["kd_losses"] else None,
            "final_kd": record["kd_losses"][-1][1] if record["kd_losses"] else None,
            "kd_curve": record["kd_losses"]}


def given_student(path: Path) -> dict[str, Any]:
    record = json.loads((path / "stillroom_train.json").read_text(encoding="utf-8"))
    return {"path": str(path), "steps": record["steps"], "reused": True,
            "cpu_seconds": record.get("train_cpu_seconds"), "wall_seconds": record["train_seconds"],
            "final_loss": record.get("final_loss")}


def evaluate_all(qs: Path, models: dict[str, str], heldout: int | None, out: Path) -> dict[str, Any]:
    from stillroom.evaluate import evaluate

    rows = [json.loads(line) for line in
            (qs / "heldout.jsonl").read_text(encoding="utf-8").splitlines() if line]
    rows = [{k: v for k, v in row.items() if k != "teacher_messages"} for row in rows[:heldout]]
    config = {"models": models, "verifier": "exact",
              "verifier_options": {"reference_column": "answer"}, "perplexity": False,
              "paired_test": {"a": "on_policy", "b": "off_policy"},
              "generation": {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": 25}}
    return evaluate(config, rows=rows, out=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("quickstart", type=Path, help="a finished `stillroom quickstart` folder")
    parser.add_argument("--budget", type=float, default=900, help="CPU seconds of training per method")
    parser.add_argument("--heldout", type=int, default=None, help="evaluate the first N held-out prompts")
    parser.add_argument("--offpolicy", default="train",
                        help="`train` (default) or a trained off-policy student folder to reuse")
    parser.add_argument("--student", default="embedded", help="the student both methods start from")
    parser.add_argument("--also-baseline", type=Path, default=None,
                        help="another model to evaluate and test both methods against (e.g. the "
                             "pruned copy before its recovery, when --student is the recovered one)")
    parser.add_argument("--lr", type=float, default=5e-5, help="on-policy learning rate")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="CPU cores of this machine")
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "stillroom-on-policy-bench")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    qs = args.quickstart
    for needed in ("data", "heldout.jsonl"):
        if not (qs / needed).exists():
            print(f"{qs} is not a finished quickstart folder (no {needed})", file=sys.stderr)
            return 2
    args.work.mkdir(parents=True, exist_ok=True)
    rows = on_policy_rows(qs, args.work)

    print(f"on-policy context distillation, {args.budget:.0f} CPU s ...", flush=True)
    started = time.perf_counter()
    on_policy = train_on_policy_budgeted(rows, args.work, args.budget, args.student, args.lr,
                                         args.batch_size)
    print(f"  {on_policy['steps']} steps in {time.perf_counter() - started:.0f} s", flush=True)
    if args.offpolicy == "train":
        import torch

        torch.set_num_threads(args.threads)
        print(f"off-policy (SFT + top-k KD), {args.budget:.0f} CPU s ...", flush=True)
        off_policy = train_sft_budgeted(qs, args.work, args.budget, args.student)
    else:
        off_policy = given_student(Path(args.offpolicy))

    baseline = args.student
    models = {"baseline": baseline, "on_policy": on_policy["path"], "off_policy": off_policy["path"]}
    if args.also_baseline is not None:
        models["initial"] = str(args.also_baseline)
    result = evaluate_all(qs, models, args.heldout, args.work / "eval.json")
    passed = {name: [item["outputs"][name]["passed"] for item in result["items"]]
              for name in models}
    import torch

    summary = {
        "what": "on-policy context distillation vs the off-policy recipe, same CPU budget",
        "quickstart": str(qs), "budget_cpu_seconds": args.budget, "student": args.student,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "heldout_n": result["n"], "on_policy": on_policy, "off_policy": off_policy,
        "accuracy": {name: {k: result["models"][name][k] for k in ("accuracy", "correct", "n", "ci")}
                     for name in passed},
        "paired": {"on_policy_vs_off_policy": paired(passed["on_policy"], passed["off_policy"]),
                   "on_policy_vs_baseline": paired(passed["on_policy"], passed["baseline"]),
                   "off_policy_vs_baseline": paired(passed["off_policy"], passed["baseline"]),
                   **({"on_policy_vs_initial": paired(passed["on_policy"], passed["initial"]),
                       "off_policy_vs_initial": paired(passed["off_policy"], passed["initial"])}
                      if "initial" in passed else {})},
        "ci_method": "Wilson score, 95%; difference: paired bootstrap over items, 95%",
        "test": "exact McNemar (two-sided binomial test on discordant pairs)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_results(summary)
    print(f"on-policy: {on_policy['steps']} steps, {on_policy['cpu_seconds']} CPU s, teacher "
          f"requests {on_policy['teacher_requests_sent']} sent, {on_policy['teacher_cache_hits']} "
          f"cache hits, wait share {on_policy['teacher_wait_share']}; off-policy: "
          f"{off_policy['steps']} steps, {off_policy.get('cpu_seconds')} CPU s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
