#!/usr/bin/env python
"""One KD optimizer step: offline top-k KD against online-teacher KD, and ours against TRL's GKDTrainer.

How to run (from the repository root, with the repo's .venv):

    python bench/kd_step.py [--steps 3] [--warmup 1] [--batch-size 4] [--seq-len 64] [--k 20]
                            [--keep-every 2] [--work DIR] [--out bench/results/kd_step.json]
    python bench/kd_step.py --on-policy [--max-new-tokens N] [--top-logprobs K]
                            [--server-threads N] [--out bench/results/kd_step_on_policy.json]

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

On-policy distillation (``--on-policy``, or any ``on_policy_*`` name in ``--variants``):
``stillroom train kd`` with ``mode: on_policy``, the same student and prompts, the student
sampling ``--max-new-tokens`` (default: the offline rows' completion length, so a sample is as
long as a stored completion unless the student ends it early) at temperature 1, the teacher
scoring every sampled token, the sampled-token reverse-KL estimate (the top-k form with
``--top-logprobs K``), the request cache on (the default), one step = one micro-batch:

* ``on_policy_embedded``: the teacher is the embedded GGUF in the training process (llama.cpp;
  the trainer splits the cores: half to torch, the rest to llama.cpp);
* ``on_policy_served``: the same GGUF in another process behind an OpenAI-compatible
  ``/v1/completions`` that scores a token-id prompt (vLLM's ``prompt_logprobs`` answer, asked
  with ``score_api: prompt_logprobs``), reached over HTTP through the openai backend, with
  ``--server-threads`` threads (torch in the trainer gets the other cores, the split the
  trainer makes beside an in-process teacher). llama-cpp-python's own server cannot be the
  teacher: its ``/v1/completions`` refuses a token-id prompt (version 0.3.x; see
  ``stillroom.llm.openai_compat``), so this script serves the model itself
  (``--serve-teacher``): a served teacher on this machine, the HTTP hop and the process
  boundary real, whatever server would run it elsewhere;
* each also with ``_no_overlap``: ``overlap: false``, sampling and scoring in lock-step.

Measured per timed step as above (an on-policy run takes one untimed step more: with overlap
a run's last step has no next micro-batch to sample), plus the seconds the trainer waited for
the teacher (the run's own clock: the wait for a micro-batch's scores after its sampling) and
their share of the step, and the tokens sampled. The served teacher's process is measured apart (its peak RSS is
reported beside the trainer's; their sum is the memory the method needs on one machine).
The on-policy variants and the named baselines ``offline`` and ``online`` (the existing KD steps,
always included) run one after another, each alone on the machine, not in lockstep: in lockstep
a teacher would keep scoring in the background during the other variants' turns, which would
flatter overlap. A step of on-policy distillation does more than a KD step (it samples the
student autoregressively before its forward and backward pass), so the ratios to the baselines
say what the method costs here, not how efficient either implementation is.

Prints each variant and the ratios online/offline (time, memory) and trl_gkd/online_kd_only
(with ``--on-policy``: each on-policy variant over offline and over online, and no-overlap over
overlap), and writes them to ``--out``. Wall-clock timings on a shared 2-core machine are noisy
(the load average is recorded before and after).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = ("offline", "online", "online_kd_only", "trl_gkd")
ON_POLICY = ("on_policy_embedded", "on_policy_embedded_no_overlap", "on_policy_served",
             "on_policy_served_no_overlap")
BASELINES = ("offline", "online")  # the KD steps every on-policy run is compared with

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
            "student_layers": student.config.num_hidden_layers, "vocab": len(tokenizer),
            "completion_tokens": min(len(r["logprobs"]) for r in rows)}


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


def on_policy_config(work: Path, variant: str, args: argparse.Namespace) -> Any:
    from stillroom.train.kd import parse_kd_config

    threads: int | None = None  # beside an in-process teacher the trainer splits the cores
    if variant.startswith("on_policy_served"):
        teacher: dict[str, Any] = {
            "kind": "openai", "base_url": f"http://127.0.0.1:{args.teacher_port}/v1",
            "model": "smollm2", "score_api": "prompt_logprobs"}
        # The cores the server leaves, so that the student and teacher split the machine as
        # they do with the teacher in process (torch on every core beside a busy server would
        # oversubscribe it, and spin).
        threads = max(1, (os.cpu_count() or 2) - args.server_threads)
    else:
        teacher = {"kind": "llamacpp"}
    threads = args.torch_threads or threads
    lines: dict[str, Any] = {
        "mode": "on_policy", "student": str(work / "student"), "data": str(work / "data.jsonl"),
        "output_dir": str(work / f"run-{variant}"), "teacher": teacher,
        # One step more than timed: with overlap the run's last step samples nothing (there is
        # no next micro-batch), so it would look faster than any step in a longer run.
        "max_steps": args.warmup + args.steps + 1, "learning_rate": 1e-5,
        "batch_size": args.batch_size, "max_length": args.seq_len,
        "max_new_tokens": args.max_new_tokens, "save_steps": 10**6, "resume": False, "seed": 0,
        "overlap": not variant.endswith("_no_overlap"),
        "kl_estimate": "topk" if args.top_logprobs else "sampled"}
    if args.top_logprobs:
        lines["top_logprobs"] = args.top_logprobs
    if threads is not None:
        lines["torch_threads"] = threads
    return parse_kd_config("".join(f"{k}: {json.dumps(v)}\n" for k, v in lines.items()))


def on_policy_trainer(work: Path, variant: str, args: argparse.Namespace, callback: Any,
                      holder: dict[str, Any]) -> Any:
    """The on-policy run, ready to start: ``train_on_policy`` builds its trainer itself, so the
    bench wraps the trainer class that run uses to add the turn-taking callback and to keep the
    trainer (its ``on_policy`` run holds the teacher-wait clock); no public hook offers either."""
    from stillroom.train import on_policy

    config = on_policy_config(work, variant, args)
    original = on_policy.trainer_class

    def timed_class() -> type:
        base = original()

        class Timed(base):  # type: ignore[misc,valid-type]
            def __init__(self, *a: Any, **kw: Any):
                super().__init__(*a, **kw)
                holder["trainer"] = self
                self.add_callback(callback)

        return Timed

    on_policy.trainer_class = timed_class  # type: ignore[assignment]
    return lambda: on_policy.train_on_policy(config)


def on_policy_facts(work: Path, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """What the run recorded: tokens sampled per timed step, teacher requests and failures."""
    output = work / f"run-{variant}"
    lines = [json.loads(line) for line in
             (output / "teacher_scores.jsonl").read_text(encoding="utf-8").splitlines() if line]
    timed = [line for line in lines if args.warmup < line["step"] <= args.warmup + args.steps]
    record = json.loads((output / "final" / "stillroom_train.json").read_text(encoding="utf-8"))
    return {
        "sampled_tokens_per_step": sum(line["sampled_tokens"] for line in timed) / args.steps,
        "scored_tokens_per_step": sum(line["tokens"] for line in timed) / args.steps,
        "teachers": record.get("teachers"),
        "run_teacher_wait_share": record.get("teacher_wait_share"),
        "kd_losses": record.get("kd_losses"),
    }


def serve_teacher(port: int, threads: int) -> None:
    """The embedded GGUF behind ``POST /v1/completions`` scoring a token-id prompt, answered in
    vLLM's ``prompt_logprobs`` shape (one entry per prompt token, the first null, each keyed by
    token id). Written here because no server installed on this machine scores given token ids
    (llama-cpp-python's takes text prompts only); the scoring itself is stillroom's llama.cpp
    backend, so the served teacher computes what the embedded one does."""
    from aiohttp import web

    from stillroom.llm.llamacpp import LlamaCppConfig
    from stillroom.llm.types import BackendError

    backend = LlamaCppConfig(n_threads=threads).build()

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        ids = [int(token) for token in body["prompt"]]
        k = int(body.get("prompt_logprobs") or 1)
        try:
            entries = await backend.score_tokens(ids, 1, k)
        except BackendError as error:
            return web.json_response({"error": {"message": error.message}}, status=400)
        positions: list[dict[str, Any] | None] = [None]
        for entry in entries:
            top = entry["top_logprobs"]
            position = {str(alt["id"]): {"logprob": alt["logprob"], "rank": rank,
                                         "decoded_token": alt["token"]}
                        for rank, alt in enumerate(top, start=1)}
            position.setdefault(str(entry["id"]), {"logprob": entry["logprob"],
                                                   "rank": len(top) + 1,
                                                   "decoded_token": entry["token"]})
            positions.append(position)
        return web.json_response({
            "id": "bench-teacher", "object": "text_completion", "model": body.get("model"),
            "choices": [{"index": 0, "text": "", "finish_reason": "length", "logprobs": None,
                         "prompt_logprobs": positions}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 0,
                      "total_tokens": len(ids)},
        })

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/v1/completions", completions)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


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
    waits: list[float] = []
    state: dict[str, Any] = {}
    holder: dict[str, Any] = {}
    on_policy = variant in ON_POLICY

    def teacher_wait() -> float:
        return float(holder["trainer"].on_policy.wait_seconds) if on_policy else 0.0

    def wait_for_turn() -> None:
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("the parent went away")
        state["wall"], state["cpu"] = time.perf_counter(), time.process_time()
        state["wait"] = teacher_wait()

    class Turns(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args_: Any, trainer_state: Any, control: Any,  # type: ignore[override]
                           **kwargs: Any) -> None:
            if on_policy:  # the run loads its models and teacher itself, before this
                state["load_seconds"] = time.perf_counter() - load_started
                print("READY", flush=True)
            wait_for_turn()

        def on_step_end(self, args_: Any, trainer_state: Any, control: Any,  # type: ignore[override]
                        **kwargs: Any) -> None:
            walls.append(time.perf_counter() - state["wall"])
            cpus.append(time.process_time() - state["cpu"])
            waits.append(teacher_wait() - state["wait"])
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

    if args.torch_threads and not on_policy:  # an on-policy run sets its own, from its config
        torch.set_num_threads(args.torch_threads)
    load_started = time.perf_counter()
    facts: dict[str, Any] = {}
    if on_policy:
        on_policy_trainer(work, variant, args, Turns(), holder)()
        trainer = holder["trainer"]
        load_seconds = state["load_seconds"]
        facts = on_policy_facts(work, variant, args)
    else:
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
    end = args.warmup + args.steps  # an on-policy run has one untimed step more
    timed, timed_cpu = walls[args.warmup:end], cpus[args.warmup:end]
    if on_policy:
        timed_waits = waits[args.warmup:end]
        facts["teacher_wait_seconds_per_step"] = statistics.median(timed_waits)
        facts["teacher_wait_share"] = round(sum(timed_waits) / sum(timed), 4)
        facts["teacher_wait_seconds_all"] = [round(x, 4) for x in timed_waits]
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
        **facts,
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
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated, of {', '.join(VARIANTS + ON_POLICY)} (default: "
                        "the four KD variants; with --on-policy the on-policy ones)")
    parser.add_argument("--on-policy", action="store_true",
                        help="the on-policy variants against offline and online KD")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="on-policy sample length (default: the offline completion length)")
    parser.add_argument("--top-logprobs", type=int, default=0,
                        help="on-policy: ask the teacher for K alternatives and use the top-k "
                        "reverse KL (0: the sampled-token estimate)")
    parser.add_argument("--server-threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="llama.cpp threads of the served teacher")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch threads of every variant (0: each its default: torch's for "
                        "KD, the trainer's split beside a teacher for on-policy); 1 compares "
                        "them at one core each on a busy machine")
    parser.add_argument("--work", type=Path, default=Path("/tmp/stillroom-bench-kd"))
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench/results/kd_step.json (kd_step_on_policy.json with "
                        "on-policy variants)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # a child runs one variant
    parser.add_argument("--teacher-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--serve-teacher", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step's end starts the clock)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.serve_teacher:
        serve_teacher(args.teacher_port, args.server_threads)
        return
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.work, args.variant, args)), flush=True)
        return

    if args.variants is not None:
        variants = args.variants.split(",")
    else:
        variants = list(BASELINES + ON_POLICY) if args.on_policy else list(VARIANTS)
    unknown = sorted(set(variants) - set(VARIANTS + ON_POLICY))
    if unknown:
        parser.error(f"unknown variants {unknown}")
    on_policy = any(v in ON_POLICY for v in variants)
    if on_policy:  # the named baselines are always measured in the same run
        variants = [v for v in BASELINES if v not in variants] + variants
    out = args.out or ROOT / "bench" / "results" / (
        "kd_step_on_policy.json" if on_policy else "kd_step.json")

    started = time.perf_counter()
    setup = prepare(args.work, args.seq_len, args.batch_size * (args.warmup + args.steps), args.k,
                    args.keep_every)
    print(f"setup: {setup} ({time.perf_counter() - started:.0f}s)", flush=True)
    if args.max_new_tokens is None:
        args.max_new_tokens = setup["completion_tokens"]
    loadavg_before = os.getloadavg()
    server: dict[str, Any] = {}
    if on_policy:
        with served_teacher(args, any(v.startswith("on_policy_served") for v in variants), server):
            results = run_alone(variants, args)
    else:
        results = run_in_lockstep(variants, args)
    loadavg_after = os.getloadavg()
    for variant in variants:
        r = results[variant]
        line = (f"{variant:>29}: {r['seconds_per_step']:.3f} s/step (median "
                f"{r['seconds_per_step_median']:.3f}, cpu {r['cpu_seconds_per_step_median']:.3f}), "
                f"peak RSS {r['peak_rss_mib_timed'] or float('nan'):.0f} MiB "
                f"(lifetime {r['peak_rss_mib_lifetime']:.0f})")
        if variant in ON_POLICY:
            line += (f", teacher wait {r['teacher_wait_share']:.0%} of the step "
                     f"({r['teacher_wait_seconds_per_step']:.3f} s), "
                     f"{r['sampled_tokens_per_step']:.0f} tokens sampled per step")
        print(line, flush=True)
    if server:
        print(f"served teacher process: peak RSS {server['peak_rss_mib']:.0f} MiB, "
              f"{server['threads']} llama.cpp threads", flush=True)
    ratios = _ratios(results)
    for name, value in ratios.items():
        print(f"{name}: {value}")
    report = {
        "setup": {**setup, "batch_size": args.batch_size, "seq_len": args.seq_len, "k": args.k,
                  "steps_timed": args.steps, "warmup": args.warmup, "keep_every": args.keep_every,
                  "torch_threads": args.torch_threads or None,
                  **({"max_new_tokens": args.max_new_tokens, "top_logprobs": args.top_logprobs,
                      "server_threads": args.server_threads} if on_policy else {})},
        "results": results,
        "ratios": ratios,
        **({"served_teacher": server} if server else {}),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg_after,
        "note": ("wall-clock on a shared machine, each variant alone in turn; ratios use the "
                 "fastest step" if on_policy else
                 "wall-clock on a shared machine, variants in lockstep; ratios use the fastest step"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({report['total_seconds']}s)")


@contextmanager
def served_teacher(args: argparse.Namespace, wanted: bool, facts: dict[str, Any]) -> Iterator[None]:
    """The bench's teacher server (``--serve-teacher``) while the block runs, when ``wanted``;
    its peak resident memory goes into ``facts``."""
    if not wanted:
        yield
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        args.teacher_port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve-teacher", "--teacher-port", str(args.teacher_port),
         "--server-threads", str(args.server_threads)])
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the teacher server exited with {process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", args.teacher_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the teacher server did not listen in 120 s") from None
                time.sleep(0.2)
        yield
        status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        facts.update(peak_rss_mib=peak / 1024, threads=args.server_threads)
    finally:
        process.terminate()
        process.wait(10)


def run_alone(variants: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One process per variant, one after another, each running its steps with the machine to
    itself (the parent still says ``go`` for each step, as in lockstep, so a child is the same)."""
    results = {}
    for variant in variants:
        child = subprocess.Popen(
            [sys.executable, __file__, "--variant", variant, *_passed(args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        try:
            _expect(child, "READY", variant)
            for _ in range(args.warmup + args.steps):
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
                _expect(child, "STEP", variant)
            results[variant] = json.loads(_expect(child, "RESULT", variant)[len("RESULT "):])
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
    return results


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
            "--keep-every", str(args.keep_every), "--work", str(args.work),
            "--max-new-tokens", str(args.max_new_tokens), "--top-logprobs", str(args.top_logprobs),
            "--teacher-port", str(args.teacher_port), "--torch-threads", str(args.torch_threads)]


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
    for variant in ON_POLICY:
        for baseline in BASELINES:
            pairs[f"{variant}_over_{baseline}_time"] = ratio(variant, baseline, "seconds_per_step")
            pairs[f"{variant}_over_{baseline}_peak_rss"] = ratio(variant, baseline,
                                                                 "peak_rss_mib_timed")
        if not variant.endswith("_no_overlap"):
            pairs[f"{variant}_no_overlap_over_overlap_time"] = ratio(
                f"{variant}_no_overlap", variant, "seconds_per_step")
    return {name: value for name, value in pairs.items() if value is not None}


if __name__ == "__main__":
    main()
