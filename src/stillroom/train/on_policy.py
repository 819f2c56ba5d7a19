"""On-policy distillation from a teacher anywhere: the student samples, a teacher (any backend
that scores given token ids: llama.cpp in process, a vLLM or SGLang server,
transformers, vLLM in process) scores every token the student wrote, and the student lowers the
per-token reverse KL to it (GKD with lambda = 1, beta = 1, Agarwal et al. 2024; the "on-policy
distillation" write-ups of 2025). ``stillroom train kd`` with ``mode: on_policy``; the config
and its keys are in :mod:`stillroom.train.on_policy_config`.

The method, per micro-batch of rows:

1. The student renders each row's prompt with its chat template (as ``train grpo`` does:
   :func:`stillroom.train.grpo.prompt_turns`, :func:`~stillroom.train.common.render_prompt`)
   and samples a completion at ``sampling_temperature`` (no top-k/top-p) up to
   ``max_new_tokens``, up to and including its EOS; nothing else shapes the draw (the
   student's own ``generation_config``, a repetition penalty or min_p, is not applied). The draw
   is seeded from ``(seed, micro-batch)``. A row whose rendered prompt plus ``max_new_tokens``
   does not fit ``max_length`` is refused before the first step, never cut (the teacher's
   prompt likewise; ``teacher_context`` comes on top of it). The log-probs of the sampled
   tokens at T = 1 under the sampling weights are kept. At ``sampling_temperature: 1`` (the
   default) the samples come from the student itself and the sampled-token estimate below is
   unbiased; another temperature samples a different distribution and biases it (the loss
   still scores the tokens at T = 1).
2. The row's teacher (``teacher``, or ``teachers`` picked by the row's ``route_column`` value)
   reads its context, the row's prompt or, with ``teacher_prompt_column``, that column (context
   distillation: the teacher sees the worked examples, the student does not), rendered with the
   *student's* chat template and tokenized with the student's tokenizer, followed by the
   sampled ids, and returns the log-prob of every sampled token (and its top ``top_logprobs``
   alternatives where asked and the server gives them). Requests go through
   :class:`~stillroom.llm.client.LLMClient`: the request cache (``cache``), retries, the
   concurrency limit and the timeout of the backend's config.
3. The loss is the reverse KL ``KL(student || teacher)`` per sampled token, only at positions
   the teacher scored (the sampled EOS is scored like any other token), averaged over them
   (:mod:`stillroom.train.on_policy_losses`): the sampled-token estimate (``kl_estimate:
   sampled``: ``log q(y) - log p(y)`` as a per-token reward of a policy gradient, truncated
   importance ratio ``max_ratio``), or the exact reverse KL over the teacher's top-k plus a tail
   bucket (``topk``); ``auto`` uses the top-k form where the teacher gave alternatives and the
   sampled one elsewhere. ``kd_loss`` (the estimate) is logged per step.

Overlap. Requests run on an asyncio loop in a background thread. With ``overlap: true`` (the
default) the trainer, on reaching micro-batch i, has the student sample micro-batch i+1 and
sends it before waiting for i's scores, so the teacher scores while the student samples and
trains. Micro-batch i+1 is then sampled by the weights before step i's update, one step stale
when i ends a step: the importance ratio of the sampled-token estimate (the current weights'
probability over the sampling weights', truncated at ``max_ratio``) corrects for it; the top-k
form is exact at the current weights whatever drew the sample. ``overlap: false`` samples and
scores each micro-batch when it is reached (lock-step). A resumed run draws each micro-batch
from the same seed as an uninterrupted one, but with overlap its first micro-batch is sampled by
the checkpoint's weights where the uninterrupted run sampled it one update earlier (it had
prefetched it), so from there on the two runs differ slightly; lock-step runs resume exactly.

Schedule. Rows are read in whole epochs, each a permutation of the rows from ``(seed,
epoch)``, cut to the run's micro-batches: a micro-batch that ends one epoch is filled from the
next one's permutation (so it may hold a row twice), and with more rows per micro-batch than
the data has (``batch_size`` above the row count) each micro-batch holds several epochs, a row
repeated in it, each copy sampled on its own. The seconds the trainer waited for the
teacher are recorded (``teacher_wait_seconds`` and their share of the training time).

A step never trains on a missing score. A sample whose request fails after the client's retries
(or whose answer scores other tokens) is left out of its step and written to
``output_dir/teacher_failures.jsonl`` (step, row, id, teacher, reason); a micro-batch left with no
scored sample stops the run with :class:`~stillroom.train.on_policy_trainer.TeacherFailed`
naming the teacher and the reason (exit 1). Checkpoints written before it stay, and a rerun with
``resume: true`` continues from the last one.

Which servers can score: vLLM and SGLang (``/v1/completions`` with a token-id prompt, ``echo``
and ``logprobs``, or vLLM's ``prompt_logprobs``); llama-cpp-python's server cannot (it refuses a
token-id prompt): run a GGUF teacher in process with ``kind: llamacpp`` instead.

Tokenizers. The teacher reads the student's token ids, so both must share one tokenizer, and
that is checked before the first step: a teacher in process with its tokenizer at hand
(``llamacpp`` GGUF, ``transformers`` folder) has its vocabulary compared with the student's
(:func:`~stillroom.train.kd_alignment.check_same_vocabulary`, naming the first id whose texts
differ); any other teacher (a server) is probed, never from the request cache: it scores a
short sequence of student ids (a text, the EOS and the chat template's special tokens) and each
returned token's text must be the student's text for that id (decoded text compared; a piece
that is not whole UTF-8 is skipped, and so is a special token the server writes as ""), else a
ConfigError names the first mismatching token (position, id, both texts). Methods that distil across different
tokenizers exist, and stillroom does not support them yet: ULD (Universal Logit Distillation,
Boizard et al. 2024: a Wasserstein-style loss over sorted probabilities that needs no shared
vocabulary), DSKD (Dual-Space Knowledge Distillation, Zhang et al. 2024: projects the two
models' hidden states into each other's space with cross-model attention to align tokens),
MinED token alignment (FuseLLM, "Knowledge Fusion of Large Language Models", Wan et al. 2024:
pairs tokens by minimum edit distance of their texts) and TRL's GOLD (General Online Logit
Distillation, 2025, experimental: on-policy distillation with ULD-style matching across
tokenizers).

Threads. torch and an in-process llama.cpp teacher share the machine's cores: unless set,
``torch_threads`` is half the cores and the llama.cpp teacher's ``n_threads`` (when its config
sets none) the rest, at least one each.

Outputs, in ``output_dir``: ``checkpoint-N/`` (resume as in SFT), ``teacher_scores.jsonl`` (one
line per scored sample: ``step``, ``micro_batch``, ``row``, ``id``, ``teacher``, ``tokens``
scored, ``sampled_tokens``, ``kd`` (its mean sampled-token reverse-KL estimate), ``cached``),
``teacher_failures.jsonl``, the request cache ``teacher-cache.sqlite`` (``cache: true``), and
``final/`` with the model, tokenizer and ``stillroom_train.json``: config, ``recipe: kd``,
``mode: on_policy``, rows, steps, ``losses`` and ``kd_losses`` ([[step, value], ...]), per
teacher totals (``teachers``: samples, tokens, requests sent, cache hits, failures; samples,
tokens and failures over the whole run from the two files, requests and cache hits of this
process), ``teacher_wait_seconds``, ``teacher_wait_share``, and the checkpoint resumed from. A
resumed run first drops the lines of both files written after its checkpoint's step, so none is
lost or duplicated; a torn last line (a write cut by a kill) is dropped, a damaged line
before it is refused (InputError naming the file and line).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from stillroom.data.rows import Row
from stillroom.errors import InputError
from stillroom.train.common import (
    checked_turns,
    latest_checkpoint,
    load_student,
    loss_curve,
    peft_config,
    read_rows,
    record_head,
    render_prompt,
    row_where,
    run_training,
    save_final,
    trainer_arguments,
)
from stillroom.train.on_policy_config import OnPolicyRunConfig
from stillroom.train.on_policy_teachers import (
    PROBE_TEXT,
    TeacherPool,
    check_tokenizers,
    probe_sequence,
    route_rows,
)
from stillroom.train.on_policy_trainer import (
    Prefetcher,
    Sample,
    TeacherFailed,
    accept_entries,
    loss_tensors,
    schedule,
    trainer_class,
)

SCORES_FILE = "teacher_scores.jsonl"
FAILURES_FILE = "teacher_failures.jsonl"


# -- prompts -----------------------------------------------------------------------------------------


def prompt_ids(text: str, tokenizer: Any) -> list[int]:
    # A chat template that writes the BOS text itself must not get a second one.
    bos = getattr(tokenizer, "bos_token", None)
    special = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=special).input_ids)


def teacher_turns(row: Row, column: str) -> list[dict[str, str]]:
    """The teacher's prompt from ``column`` (text, or {role, content} turns); a ValueError that
    names the column (``checked_turns``' own messages name ``prompt``)."""
    value = row.get(column)
    where = f"`{column}` (teacher_prompt_column)"
    if value is None:
        raise ValueError(f"no `{column}` column (teacher_prompt_column); it has {sorted(row)}")
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where} is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{where} must be text or a non-empty list of {{role, content}} turns, "
                         f"got {type(value).__name__}")
    if not all(isinstance(turn, dict) and isinstance(turn.get("role"), str)
               and isinstance(turn.get("content"), str) for turn in value):
        raise ValueError(f"{where} turns must be {{role, content}} objects with text content")
    if not any(turn["content"].strip() for turn in value):
        raise ValueError(f"{where} is empty")
    return checked_turns(value)


def contexts(config: OnPolicyRunConfig, rows: list[Row], tokenizer: Any,
             source: str) -> tuple[list[list[int]], list[list[int]]]:
    """Each row's student prompt ids and the teacher's context ids; a row without a usable
    prompt, or one too long, is an InputError naming it, before the first step.

    Length rule (nothing is cut: a cut prompt loses the head of its chat template, and a teacher
    given more than the student reads scores another sequence than the one meant): the
    student's rendered prompt plus ``max_new_tokens`` must fit ``max_length``; so must the
    teacher's own prompt (``teacher_prompt_column``'s, or the student's), and ``teacher_context``
    comes on top of it: the teacher reads at most ``max_length`` plus the tokens the context
    adds, which its context window must hold."""
    from stillroom.train.grpo import prompt_turns

    limit = config.max_length - config.max_new_tokens
    students, teachers = [], []
    for index, row in enumerate(rows):
        try:
            student = prompt_ids(render_prompt(prompt_turns(row), tokenizer), tokenizer)
            own = (teacher_turns(row, config.teacher_prompt_column)
                   if config.teacher_prompt_column else None)
            own_ids = prompt_ids(render_prompt(own, tokenizer), tokenizer) if own else student
            turns = [*config.teacher_context, *(own or prompt_turns(row))] \
                if config.teacher_context else own
        except ValueError as problem:
            raise InputError(f"{row_where(index, row)}: {problem}", path=source) from None
        for whose, ids in (("prompt", student), ("teacher's prompt", own_ids)):
            if len(ids) > limit:
                raise InputError(
                    f"{row_where(index, row)}: its {whose} is {len(ids)} tokens; with "
                    f"max_new_tokens {config.max_new_tokens} it does not fit max_length "
                    f"{config.max_length} (rows are refused, never cut): shorten it or raise "
                    "max_length", path=source)
        students.append(student)
        teachers.append(prompt_ids(render_prompt(turns, tokenizer), tokenizer)
                        if turns is not None and config.teacher_context else own_ids)
    return students, teachers


# -- the record files -------------------------------------------------------------------------------


def parse_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path``. An unparsable last line is a write cut by a kill (the
    appender writes whole lines) and is dropped; one in the middle is damage: InputError
    naming the file and line."""
    if not path.exists():
        return []
    texts = path.read_text(encoding="utf-8").splitlines()
    out = []
    for number, text in enumerate(texts, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if not isinstance(line, dict) or not isinstance(line.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            if number == len(texts):
                break
            raise InputError(f"a damaged line, not a record of this run ({text[:60]!r}), "
                             "before the last one: remove or fix it to resume", path=str(path), line=number) from None
        out.append(line)
    return out


def keep_lines(path: Path, last_step: int | None) -> None:
    """Keep the lines of steps up to ``last_step`` (a resumed checkpoint's), none without one."""
    if not path.exists():
        return
    if last_step is None:
        path.unlink()
        return
    kept = [line for line in parse_lines(path) if line["step"] <= last_step]
    path.write_text("".join(json.dumps(line) + "\n" for line in kept), encoding="utf-8")


def read_lines(path: Path) -> list[dict[str, Any]]:
    return parse_lines(path)


class Appender:
    """Appends JSON lines and flushes each batch, so a crash loses at most the step in flight
    (which a resumed run drops anyway)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(line) + "\n" for line in lines))


# -- sampling -------------------------------------------------------------------------------------


def draw(model: Any, prompts: list[list[int]], pad_id: int, eos: int | None,
         temperature: float, max_new_tokens: int, seed: int) -> list[tuple[list[int], list[float]]]:
    """Per prompt, the ids sampled from the raw distribution at ``temperature`` (up to and
    including EOS) and their log-probs at T = 1; seeded, the caller's random state untouched.

    Nothing but the temperature shapes the draw: ``generate`` fills every setting left unset
    from the model's own ``generation_config`` (a checkpoint's repetition_penalty, min_p, top_k,
    suppress_tokens...), which would sample from another distribution than the log-probs kept.
    So the model's config is swapped for transformers' defaults while it samples."""
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt):] = torch.tensor(prompt)
        mask[b, width - len(prompt):] = 1
    settings = GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, min_p=None,
        repetition_penalty=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad_id,
        eos_token_id=eos,
    )
    # The model generate() reads (a PEFT wrapper's is the base model's).
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = inner.generation_config
    was_training = model.training
    model.eval()
    inner.generation_config = GenerationConfig()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=settings, return_dict_in_generate=True,
                                 output_logits=True)
    finally:
        inner.generation_config = own
        model.train(was_training)
    generated = out.sequences[:, width:].cpu()
    # The raw logits (before the temperature): log-probs at T = 1 of the sampling weights.
    logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float().cpu(), dim=-1)
    chosen = logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
    drawn = []
    for b in range(len(prompts)):
        tokens = generated[b].tolist()
        end = tokens.index(eos) + 1 if eos is not None and eos in tokens else len(tokens)
        drawn.append((tokens[:end], chosen[b, :end].tolist()))
    return drawn


# -- the run ----------------------------------------------------------------------------------------


class OnPolicyRun:
    """What the trainer asks each micro-batch for: samples, scores, tensors, and the records."""

    def __init__(self, config: OnPolicyRunConfig, rows: list[Row], routes: list[str],
                 student_prompts: list[list[int]], teacher_prompts: list[list[int]],
                 tokenizer: Any, pool: TeacherPool, total: int):
        from stillroom.train.kd_alignment import Pieces

        self.config = config
        self.rows = rows
        self.routes = routes
        self.student_prompts = student_prompts
        self.teacher_prompts = teacher_prompts
        self.tokenizer = tokenizer
        self.pool = pool
        self.kl_estimate = config.kl_estimate
        self.max_ratio = config.max_ratio
        self.order = schedule(len(rows), total, config.batch_size, config.seed)
        self.pieces = Pieces(tokenizer)
        self.trainer: Any = None
        self.prefetch = Prefetcher(self.sample, self.send, self.rows_of, total, config.overlap)
        output = config.path(config.output_dir)
        self.scores_file = Appender(output / SCORES_FILE)
        self.failures_file = Appender(output / FAILURES_FILE)
        self.wait_seconds = 0.0
        self._lines: list[dict[str, Any]] = []

    def rows_of(self, g: int) -> list[int]:
        size = self.config.batch_size
        return self.order[g * size:(g + 1) * size]

    def send(self, sample: Sample) -> tuple[str, Any]:
        name = self.routes[sample.row]
        context = self.teacher_prompts[sample.row]
        return name, self.pool.submit(name, context + sample.completion, len(context))

    def sample(self, g: int, rows: list[int]) -> list[Sample]:
        """The student's samples for ``rows``, drawn from ``(seed, g)`` without touching the
        trainer's own random state."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        prompts = [self.student_prompts[r] for r in rows]
        seed = random.Random(f"{self.config.seed}:sample:{g}").getrandbits(62)
        drawn = draw(model, prompts, self.tokenizer.pad_token_id, self.tokenizer.eos_token_id,
                     self.config.sampling_temperature, self.config.max_new_tokens, seed)
        return [Sample(row, prompts[b], tokens, logprobs)
                for b, (row, (tokens, logprobs)) in enumerate(zip(rows, drawn, strict=True))]

    def micro_batch(self, model: Any, inputs: dict[str, Any], step: int) -> tuple[dict[str, Any], float]:
        """The tensors of the micro-batch ``inputs`` names (its schedule positions), scored samples
        only; failures recorded; TeacherFailed when none was scored."""
        del model  # the sampler reads the trainer's model itself
        g = int(inputs["positions"][0]) // self.config.batch_size
        ready = self.prefetch.take(g)
        self.wait_seconds += ready.waited
        kept, entries, failures, lines = [], [], [], []
        for sample, name, score in zip(ready.samples, ready.teachers, ready.scores, strict=True):
            row = self.rows[sample.row]
            reason = accept_entries(sample, score)
            where = {"step": step, "micro_batch": g, "row": sample.row, "id": row.get("id"),
                     "teacher": name}
            if reason is not None:
                failures.append({**where, "reason": reason})
                self.pool.totals[name].failures += 1
                continue
            assert score.entries is not None
            kept.append(sample)
            entries.append(score.entries)
            lines.append({**where, "tokens": len(score.entries),
                          "sampled_tokens": len(sample.completion), "cached": score.cached})
            self.pool.totals[name].samples += 1
            self.pool.totals[name].tokens += len(score.entries)
        self.failures_file.write(failures)
        if not kept:
            first = failures[0]
            raise TeacherFailed(
                f"step {step}: every sample of micro-batch {g} lost its teacher score (teacher "
                f"{first['teacher']!r}: {first['reason']}); see {FAILURES_FILE} in the output "
                "folder. Fix the teacher and rerun: resume: true continues from the last checkpoint")
        self._lines = lines
        topk = self.kl_estimate != "sampled" and self.config.top_logprobs is not None
        batch = loss_tensors(kept, entries, self.tokenizer.pad_token_id, self.pieces.id_of,
                             len(self.tokenizer), topk)
        return batch, ready.waited

    def record(self, per_sample: list[float]) -> None:
        """Write the scored samples' lines with their mean reverse-KL estimates."""
        for line, kd in zip(self._lines, per_sample, strict=True):
            line["kd"] = round(float(kd), 6)
        self.scores_file.write(self._lines)
        self._lines = []


def micro_batches(config: OnPolicyRunConfig, rows: int) -> tuple[int, int]:
    """``(optimizer steps, micro-batches)``: ``max_steps``, else ``epochs`` over the rows."""
    if config.max_steps is not None:
        steps = config.max_steps
    else:
        per_epoch = -(-rows // config.batch_size)
        micro = max(1, round(config.epochs * per_epoch))
        steps = -(-micro // config.gradient_accumulation)
    return steps, steps * config.gradient_accumulation


class _Positions:
    """The schedule's positions as the dataset the Trainer iterates (in order, see the sampler)."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


def _collate(positions: list[int]) -> dict[str, Any]:
    import torch

    return {"positions": torch.tensor(positions, dtype=torch.long)}


def build_pool(config: OnPolicyRunConfig) -> TeacherPool:
    """The teachers' clients (one request cache for all: keys carry each backend's identity)."""
    import torch

    from stillroom.llm.cache import RequestCache
    from stillroom.llm.client import LLMClient

    configs = config.teacher_configs()
    in_process = any(c.kind == "llamacpp" for c in configs.values())
    torch_threads, teacher_threads = config.threads(in_process)
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    cache_path = config.cache_path()
    cache = RequestCache(cache_path) if cache_path is not None else None
    clients = {}
    for name, backend in configs.items():
        if backend.kind == "llamacpp" and backend.n_threads is None:
            backend = backend.model_copy(update={"n_threads": teacher_threads})
        clients[name] = LLMClient.from_config(backend, cache=cache)
    return TeacherPool(clients, top_logprobs=config.top_logprobs)


def train_on_policy(config: OnPolicyRunConfig, callbacks: list[Any] | None = None) -> Path:
    """Distil on-policy into the student; save ``output_dir/final`` and return its path.
    ``callbacks``: transformers TrainerCallbacks added to the trainer (a budget, a timer)."""
    from transformers import TrainingArguments

    output_dir = config.path(config.output_dir)
    source = str(config.path(config.data))
    rows = read_rows(config)
    configs = config.teacher_configs()
    routes = route_rows(rows, list(configs), config.route_column, config.default_teacher)
    model, tokenizer = load_student(config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    student_prompts, teacher_prompts = contexts(config, rows, tokenizer, source)
    output_dir.mkdir(parents=True, exist_ok=True)
    pool = build_pool(config)
    pool.text_of = lambda ids: tokenizer.decode(ids, skip_special_tokens=False,
                                                clean_up_tokenization_spaces=False)
    try:
        # The probe is shaped as a sample is: a rendered prompt, then the text as the answer.
        asked = prompt_ids(render_prompt([{"role": "user", "content": "Repeat this."}],
                                         tokenizer), tokenizer)
        probe = probe_sequence(tokenizer, asked,
                               tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids)
        check_tokenizers(configs, pool, tokenizer, probe, len(asked),
                         "teacher" if config.teacher is not None else "teachers")
        lora = peft_config(config)
        if lora is not None:
            from peft import get_peft_model

            model = get_peft_model(model, lora)
        steps, total = micro_batches(config, len(rows))
        run = OnPolicyRun(config, rows, routes, student_prompts, teacher_prompts, tokenizer,
                          pool, total)
        arguments = {**trainer_arguments(config), "max_steps": steps}
        args = TrainingArguments(**arguments, remove_unused_columns=False)
        trainer = trainer_class()(model=model, args=args,
                                  train_dataset=_Positions(total * config.batch_size),
                                  data_collator=_collate, processing_class=tokenizer, on_policy=run)
        run.trainer = trainer
        for callback in callbacks or []:
            trainer.add_callback(callback)
        checkpoint = latest_checkpoint(output_dir) if config.resume else None
        last_step = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None
        for name in (SCORES_FILE, FAILURES_FILE):
            keep_lines(output_dir / name, last_step)
        started = time.perf_counter()
        run_training(trainer, checkpoint)
        seconds = time.perf_counter() - started
        record = _record(config, trainer, run, pool, rows, checkpoint, seconds)
    finally:
        pool.close()
    return save_final(trainer, output_dir / "final", record)


def _record(config: OnPolicyRunConfig, trainer: Any, run: OnPolicyRun, pool: TeacherPool,
            rows: list[Row], checkpoint: Path | None, seconds: float) -> dict[str, Any]:
    output_dir = config.path(config.output_dir)
    scored, failed = read_lines(output_dir / SCORES_FILE), read_lines(output_dir / FAILURES_FILE)
    teachers = pool.stats()
    for name, totals in teachers.items():  # the whole run's, resumed parts included
        totals["samples"] = sum(1 for line in scored if line["teacher"] == name)
        totals["tokens"] = sum(line["tokens"] for line in scored if line["teacher"] == name)
        totals["failures"] = sum(1 for line in failed if line["teacher"] == name)
    return {
        **record_head("kd", config, trainer, checkpoint, mode="on_policy"),
        "rows": len(rows),
        "kd_losses": loss_curve(trainer, "kd_loss"),
        "ce_losses": [],
        "kl_estimate": config.kl_estimate,
        "sampled_tokens": sum(line["sampled_tokens"] for line in scored),
        "scored_tokens": sum(line["tokens"] for line in scored),
        "teachers": teachers,
        "teacher_wait_seconds": round(run.wait_seconds, 3),
        "teacher_wait_share": round(run.wait_seconds / seconds, 4) if seconds > 0 else None,
        "train_seconds": round(seconds, 3),
    }


__all__ = [
    "FAILURES_FILE",
    "SCORES_FILE",
    "OnPolicyRun",
    "contexts",
    "draw",
    "keep_lines",
    "parse_lines",
    "micro_batches",
    "train_on_policy",
]
