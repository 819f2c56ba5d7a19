#!/usr/bin/env python
"""One KD optimizer step: offline top-k KD against online-teacher KD, and ours against TRL's GKDTrainer.

How to run (from the repository root, with the repo's .venv):

    python bench/kd_step.py [--steps 3] [--warmup 1] [--batch-size 4] [--seq-len 64] [--k 20]
                            [--keep-every 2] [--work DIR] [--out bench/results/kd_step.json]

The setup, shared by every variant. Teacher: the embedded SmolLM2-135M-Instruct GGUF, saved once
as a float32 transformers folder. Student: its layer-pruned copy (``prune_layers(keep_every=2)``,
as ``init_student`` makes it: 16 of 30 layers, embeddings and LM head kept). Data: rows of a
chat-templated prompt and a completion cut from a fixed English passage (written for this
script) so that prompt + completion + EOS is exactly ``--seq-len`` tokens; every batch has the
same shape. The offline rows carry the teacher's top-``--k`` logprobs in the format the
``complete`` stage writes (``{token, id, logprob, top_logprobs}`` per completion token), computed
here once from the teacher's forward pass, before any timing: what generation would have stored.

The variants, each in its own process so that each peak memory is its own:

* ``offline``: ``stillroom train kd`` with ``mode: offline``, alpha 0.5 (CE + top-k forward KL);
* ``online``: ``mode: online``, alpha 0.5, beta 0 (CE + forward KL on full logits; the teacher
  runs a forward pass on every batch and stays resident);
* ``online_kd_only``: ``mode: online``, alpha 1, beta 0: the same loss as TRL's GKD below;
* ``trl_gkd``: TRL's ``trl.experimental.gkd.GKDTrainer``, ``lmbda=0`` (never on-policy),
  ``beta=0`` (forward KL), on the very same tokenized examples, padded by the same collator.

All four processes load first; then they take turns, one optimizer step at a time (the first
variant of each round rotating), so that whatever else the machine does falls on every variant
alike. Each runs ``--warmup`` + ``--steps`` optimizer steps with AdamW (the Trainer's default),
no checkpoints, no LoRA. Seconds per step: from the variant's turn starting to the end of its
optimizer step (data loading and collation included); the minimum over the timed steps is used
for the ratios (other work on the machine only ever adds time); the median and the process CPU
seconds are reported too. Peak memory: the process's peak resident set (``VmHWM`` in
/proc/self/status) over the timed steps, reset after the warm-up by writing 5 to
/proc/self/clear_refs, so model loading is not counted; the whole-process peak is reported too.
``tracemalloc`` would miss torch's allocations, which is why RSS is used.

What to expect: a step is mostly the student's forward and backward pass, which all variants
share; online adds one teacher forward pass (no backward), so the online/offline time ratio
grows with the teacher/student size ratio (here 135M vs 85M parameters, the pruned student
keeping the full embedding and LM head).

Prints each variant and the ratios online/offline (time, memory) and trl_gkd/online_kd_only,
and writes them to ``--out``. Wall-clock timings on a shared 2-core machine are noisy (the load
average is recorded before and after).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = ("offline", "online", "online_kd_only", "trl_gkd")

TOPICS = ["rivers", "bread", "bicycles", "libraries", "volcanoes", "gardens", "trains", "tea",
          "bridges", "owls", "maps", "clocks", "glass", "salt", "kites", "lighthouses"]

# Our own text: the completions are consecutive windows of it.
PASSAGE = (
    "A river begins as rain or melting snow high in the hills. Small streams join, and the water "
    "cuts a channel through soil and rock as it runs downhill. Over many years the channel "
    "widens, and the river carries sand and gravel towards the sea. Where the land flattens, the "
    "current slows, the river bends from side to side, and the sand it carried settles on the "
    "inside of each bend. Towns grew up beside rivers because the water was useful for "
    "drinking, for farming and for moving goods by boat. Mills used the current to grind grain, "
    "and bridges were built where the banks were firm and the water was shallow. Floods were a "
    "danger as well as a gift: they damaged houses, but they also spread rich mud over the "
    "fields. Today engineers measure the flow of a river every day, and they build walls and "
    "basins to hold back the water after heavy rain. Fish swim upstream each spring to lay "
    "their eggs in clean gravel, and birds hunt along the banks. A healthy river needs shade "
    "from trees, water that is not too warm, and room to spread out when it rises. People who "
    "live near a river learn to read it: the colour of the water, the sound of the current and "
    "the height of the banks all tell them what the weather upstream has been doing. In dry "
    "summers the river may shrink to a chain of pools, and in wet winters it may cover the "
    "meadows for weeks. Either way, it keeps moving, and it keeps shaping the land it crosses."
)


# -- setup (parent) ----------------------------------------------------------------------------------


def prepare(work: Path, seq_len: int, rows_needed: int, k: int, keep_every: int) -> dict[str, Any]:
    """Teacher and student folders, and the data rows with the teacher's top-k logprobs."""
    import torch

    from stillroom.train.common import render_prompt
    from stillroom.train.student import load_model, parameter_count, prune_layers

    work.mkdir(parents=True, exist_ok=True)
    marker = work / f"models-keep-every-{keep_every}"
    if not marker.exists():  # the GGUF is de-quantized once, then both folders are reused
        teacher, tokenizer = load_model(None)
        teacher.save_pretrained(work / "teacher")
        tokenizer.save_pretrained(work / "teacher")
        prune_layers(teacher, keep_every=keep_every).save_pretrained(work / "student")
        tokenizer.save_pretrained(work / "student")
        marker.touch()
    teacher, tokenizer = load_model(work / "teacher")
    passage = tokenizer(PASSAGE, add_special_tokens=False).input_ids
    rows = []
    offset = 0
    for index in range(rows_needed):
        prompt = render_prompt([{"role": "user", "content": f"Tell me about {TOPICS[index % len(TOPICS)]}."}],
                               tokenizer)
        prompt_ids = tokenizer(prompt).input_ids
        length = seq_len - len(prompt_ids) - 1  # and the EOS
        ids = _window(tokenizer, passage, offset, length)
        offset = (offset + 7) % (len(passage) - length - 8)
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt_ids + ids])).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        entries = []
        for j, token in enumerate(ids):
            dist = logprobs[len(prompt_ids) + j - 1]
            top = dist.topk(k)
            entries.append({
                "token": tokenizer.decode([token]), "id": token, "logprob": float(dist[token]),
                "top_logprobs": [{"token": tokenizer.decode([int(i)]), "id": int(i), "logprob": float(v)}
                                 for v, i in zip(top.values, top.indices, strict=True)],
            })
        rows.append({"id": f"b{index}", "prompt": f"Tell me about {TOPICS[index % len(TOPICS)]}.",
                     "completion": tokenizer.decode(ids), "logprobs": entries})
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    student, _ = load_model(work / "student")
    return {"teacher_parameters": parameter_count(teacher), "student_parameters": parameter_count(student),
            "teacher_layers": teacher.config.num_hidden_layers,
            "student_layers": student.config.num_hidden_layers, "vocab": len(tokenizer)}


def _window(tokenizer: Any, passage: list[int], offset: int, length: int) -> list[int]:
    """``length`` passage tokens whose text re-tokenizes to the same ids (so online mode, which
    tokenizes the text, sees the same sequence as offline mode, which uses the stored ids)."""
    for start in range(offset, offset + 50):
        ids = passage[start:start + length]
        if len(ids) == length and tokenizer(tokenizer.decode(ids), add_special_tokens=False).input_ids == ids:
            return ids
    raise RuntimeError("no window of the passage re-tokenizes to itself")


# -- one variant (child process) ----------------------------------------------------------------------


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def kd_config(work: Path, variant: str, args: argparse.Namespace) -> Any:
    from stillroom.train.kd import parse_kd_config

    lines = {"mode": "offline" if variant == "offline" else "online",
             "student": str(work / "student"), "data": str(work / "data.jsonl"),
             "output_dir": str(work / f"run-{variant}"), "max_steps": args.warmup + args.steps,
             "learning_rate": 1e-5, "batch_size": args.batch_size, "max_length": args.seq_len,
             "save_steps": 10**6, "resume": False, "seed": 0,
             "alpha": 1.0 if variant == "online_kd_only" else 0.5}
    if variant != "offline":
        lines["teacher"] = str(work / "teacher")
    return parse_kd_config("".join(f"{k}: {json.dumps(v)}\n" for k, v in lines.items()))


def gkd_trainer(work: Path, args: argparse.Namespace, callback: Any) -> Any:
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from stillroom.train.common import read_rows
    from stillroom.train.kd import build_examples
    from stillroom.train.kd_trainer import KDCollator
    from stillroom.train.sft import detect_format
    from stillroom.train.student import load_model

    config = kd_config(work, "online_kd_only", args)
    model, tokenizer = load_model(work / "student")
    teacher, _ = load_model(work / "teacher")
    rows = read_rows(config)
    examples, _ = build_examples(config, rows, detect_format(rows), tokenizer)
    collate = KDCollator(tokenizer.pad_token_id, offline=False)
    gkd_args = GKDConfig(
        output_dir=str(work / "run-trl_gkd"), max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=1e-5, lmbda=0.0, beta=0.0,
        max_length=args.seq_len, save_strategy="no", logging_steps=1, report_to="none",
        disable_tqdm=True, seed=0, data_seed=0, gradient_checkpointing=False,
        bf16=False,
    )
    from datasets import Dataset

    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])

    def collator(features: list[dict[str, Any]]) -> dict[str, Any]:
        from stillroom.train.kd_trainer import Example

        batch = collate([Example(f["input_ids"], f["labels"], 0) for f in features])
        return {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}

    return GKDTrainer(model=model, teacher_model=teacher, args=gkd_args, train_dataset=dataset,
                      data_collator=collator, processing_class=tokenizer, callbacks=[callback])


def run_variant(work: Path, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build the variant's trainer, then run one optimizer step each time the parent says ``go``
    (a line on stdin), reporting ``STEP wall cpu`` after each (a line on stdout)."""
    import torch
    from transformers import TrainerCallback

    from stillroom.train.kd import build_trainer

    walls: list[float] = []
    cpus: list[float] = []
    state: dict[str, Any] = {}

    def wait_for_turn() -> None:
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("the parent went away")
        state["wall"], state["cpu"] = time.perf_counter(), time.process_time()

    class Turns(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args_: Any, trainer_state: Any, control: Any, **kwargs: Any) -> None:
            wait_for_turn()

        def on_step_end(self, args_: Any, trainer_state: Any, control: Any, **kwargs: Any) -> None:
            walls.append(time.perf_counter() - state["wall"])
            cpus.append(time.process_time() - state["cpu"])
            if trainer_state.global_step == args.warmup:
                gc.collect()
                state["rss_before_timed"] = rss_mib()
                state["lifetime_peak_before_timed"] = peak_rss_mib()
                state["peak_reset"] = reset_peak()
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
            print(f"STEP {walls[-1]:.4f} {cpus[-1]:.4f}", flush=True)
            if trainer_state.global_step < args.warmup + args.steps:
                wait_for_turn()

    load_started = time.perf_counter()
    if variant == "trl_gkd":
        trainer = gkd_trainer(work, args, Turns())
    else:
        trainer, _ = build_trainer(kd_config(work, variant, args))
        trainer.add_callback(Turns())
    load_seconds = time.perf_counter() - load_started
    print("READY", flush=True)
    trainer.train()
    # The Trainer saves a checkpoint at the last step (after the clock stopped); nothing to keep.
    shutil.rmtree(work / f"run-{variant}", ignore_errors=True)
    timed, timed_cpu = walls[args.warmup:], cpus[args.warmup:]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    out = {
        "variant": variant,
        "steps_timed": len(timed),
        "seconds_per_step": min(timed),
        "seconds_per_step_median": statistics.median(timed),
        "seconds_per_step_all": [round(x, 4) for x in timed],
        "cpu_seconds_per_step_median": statistics.median(timed_cpu),
        "peak_rss_mib_timed": peak_rss_mib() if state.get("peak_reset") else None,
        "rss_mib_before_timed": state.get("rss_before_timed"),
        "peak_rss_mib_lifetime": max(peak_rss_mib(), state.get("lifetime_peak_before_timed", 0.0)),
        "load_seconds": round(load_seconds, 2),
        "first_loss": losses[0] if losses else None,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        out["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# -- parent --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--k", type=int, default=20, help="stored top-k logprobs (offline)")
    parser.add_argument("--keep-every", type=int, default=2, help="student = every k-th teacher layer")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/stillroom-bench-kd"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kd_step.json")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # a child runs one variant
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step's end starts the clock)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.work, args.variant, args)), flush=True)
        return

    started = time.perf_counter()
    setup = prepare(args.work, args.seq_len, args.batch_size * (args.warmup + args.steps), args.k,
                    args.keep_every)
    print(f"setup: {setup} ({time.perf_counter() - started:.0f}s)", flush=True)
    variants = args.variants.split(",")
    loadavg_before = os.getloadavg()
    results = run_in_lockstep(variants, args)
    loadavg_after = os.getloadavg()
    for variant in variants:
        r = results[variant]
        print(f"{variant:>15}: {r['seconds_per_step']:.3f} s/step (median "
              f"{r['seconds_per_step_median']:.3f}, cpu {r['cpu_seconds_per_step_median']:.3f}), "
              f"peak RSS {r['peak_rss_mib_timed'] or float('nan'):.0f} MiB "
              f"(lifetime {r['peak_rss_mib_lifetime']:.0f})", flush=True)
    ratios = _ratios(results)
    for name, value in ratios.items():
        print(f"{name}: {value}")
    report = {
        "setup": {**setup, "batch_size": args.batch_size, "seq_len": args.seq_len, "k": args.k,
                  "steps_timed": args.steps, "warmup": args.warmup, "keep_every": args.keep_every},
        "results": results,
        "ratios": ratios,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg_after,
        "note": "wall-clock on a shared machine, variants in lockstep; ratios use the fastest step",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({report['total_seconds']}s)")


def run_in_lockstep(variants: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One process per variant, all loaded at once; then one optimizer step at a time, the
    variants taking turns (the first of each round rotating), so that a change in the machine's
    load falls on every variant alike while each keeps its own memory peak."""
    children = {
        variant: subprocess.Popen(
            [sys.executable, __file__, "--variant", variant, *_passed(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        for variant in variants
    }
    try:
        for variant, child in children.items():
            _expect(child, "READY", variant)
        for step in range(args.warmup + args.steps):
            order = variants[step % len(variants):] + variants[: step % len(variants)]
            for variant in order:
                child = children[variant]
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
                _expect(child, "STEP", variant)
        results = {v: json.loads(_expect(c, "RESULT", v)[len("RESULT "):]) for v, c in children.items()}
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
            child.wait()
    return results


def _expect(child: subprocess.Popen[str], prefix: str, variant: str) -> str:
    """The child's next line starting with ``prefix`` (transformers prints its own lines too)."""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise SystemExit(f"variant {variant} stopped before {prefix} (exit {child.wait()})")


def _passed(args: argparse.Namespace) -> list[str]:
    return ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
            str(args.batch_size), "--seq-len", str(args.seq_len), "--k", str(args.k),
            "--keep-every", str(args.keep_every), "--work", str(args.work)]


def _ratios(results: dict[str, Any]) -> dict[str, float]:
    def ratio(a: str, b: str, key: str) -> float | None:
        if a in results and b in results and results[a].get(key) and results[b].get(key):
            return round(results[a][key] / results[b][key], 3)
        return None

    pairs = {
        "online_over_offline_time": ratio("online", "offline", "seconds_per_step"),
        "online_over_offline_peak_rss": ratio("online", "offline", "peak_rss_mib_timed"),
        "trl_gkd_over_ours_time": ratio("trl_gkd", "online_kd_only", "seconds_per_step"),
        "trl_gkd_over_ours_peak_rss": ratio("trl_gkd", "online_kd_only", "peak_rss_mib_timed"),
    }
    return {name: value for name, value in pairs.items() if value is not None}


if __name__ == "__main__":
    main()
