"""``evaluate(config)``: every model answers the held-out prompts, then the measures and the tests.

The order of work: read the rows and check everything (config, verifier on every row, model
paths, backend capabilities) before any model loads; then one model at a time (loaded, used,
freed, so only one sits in memory): generate, verify, perplexity; then the judge; then the
paired test and the JSON. See :mod:`stillroom.evaluate` for the config and the output.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stillroom.data.rows import is_conversation, prompt_messages, row_answer
from stillroom.errors import ConfigError, InputError
from stillroom.evaluate.config import ROLES, EvalConfig, ModelSpec, as_config
from stillroom.evaluate.generation import (
    BackendGenerator,
    Generation,
    Sampling,
    TransformersGenerator,
    thinking_prompts,
)
from stillroom.evaluate.stats import (
    mcnemar_exact,
    paired_bootstrap_interval,
    paired_counts,
    wilson_interval,
)
from stillroom.llm.types import Message

Log = Callable[[str], None]
NOT_APPLICABLE = "n/a"


@dataclass(slots=True)
class Item:
    """One held-out row: the prompt turns, the reference answer and the row itself."""

    id: str
    turns: list[Message]
    prompt: str
    answer: Any
    completion: str | None
    row: dict[str, Any]


@dataclass(slots=True)
class ModelRun:
    """What one model produced on the items."""

    name: str
    outputs: list[str]
    extras: list[dict[str, Any]]
    seconds: float = 0.0
    load_seconds: float = 0.0
    tokens: int | None = None
    perplexity: dict[str, Any] | None = None
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    budget: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None


# -- items ---------------------------------------------------------------------------------------


def read_items(config: EvalConfig, rows: Sequence[dict[str, Any]] | None = None) -> list[Item]:
    """The held-out items from ``rows`` or ``config.data`` (JSONL, Parquet, a stillroom output)."""
    if rows is None:
        if config.data is None:
            raise ConfigError("required key is missing (or pass rows=...)", key="data")
        from stillroom.data.readers import iter_rows

        source = config.path(config.data)
        if source.is_dir() and (source / "data").is_dir():
            source = source / "data"
        rows = [row for _, row in iter_rows(source)]
        where = str(source)
    else:
        where = "<rows>"
    rows = list(rows)[: config.limit] if config.limit else list(rows)
    if not rows:
        raise InputError("no rows to evaluate on", path=where)
    return [_item(config, index, row, where) for index, row in enumerate(rows)]


def _item(config: EvalConfig, index: int, row: dict[str, Any], where: str) -> Item:
    from stillroom.feedback.judging import transcript

    messages = row.get("messages")
    prompt = row.get(config.prompt_column)
    if isinstance(prompt, str) and prompt.strip():
        turns: list[Message] = [{"role": "user", "content": prompt}]
        shown = prompt
    elif (isinstance(messages, list) and messages) or is_conversation(prompt):
        # The conversation before the answer: `messages` (which may end with it) or a
        # conversational prompt (data.rows).
        source = {"messages": messages} if messages is not None else {"prompt": prompt}
        turns = [{"role": m["role"], "content": m["content"]}
                 for m in prompt_messages(source) or []]
        if not turns:
            raise InputError(f"row {index}: `messages` must be {{role, content}} messages with a "
                             "turn before the answer", path=where)
        shown = transcript({"messages": turns})
    else:
        raise InputError(f"row {index}: needs `{config.prompt_column}` (text) or `messages`",
                         path=where)
    if config.generation.system is not None and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": config.generation.system}, *turns]
    item_id = row.get(config.id_column)
    # The teacher's answer: a text, an assistant message list, or a `messages` row's last turn.
    completion = row_answer(row, config.completion_column)
    return Item(id=str(item_id) if item_id is not None else f"item-{index}", turns=turns,
                prompt=shown, answer=row.get(config.answer_column),
                completion=completion, row=row)


# -- checks before any model loads -------------------------------------------------------------


def check(config: EvalConfig, items: Sequence[Item]) -> Any:
    """Everything that can be known wrong before loading a model; returns the verifier."""
    from stillroom.verify.stage import build_verifier

    verifier = build_verifier(config.verifier, "completion", config.verifier_options_for_run())
    for index, item in enumerate(items):
        problem = verifier.check_row({**item.row, "completion": ""})
        if problem:
            raise InputError(f"row {index} (id {item.id}): {problem}", path=config.data)
    for name, spec in config.models.items():
        _check_model(config, name, spec, items)
    return verifier


def _check_model(config: EvalConfig, name: str, spec: ModelSpec, items: Sequence[Item]) -> None:
    key = f"models.{name}"
    if spec.kind == "column":
        column = spec.column or ""
        # The column's answer in any row shape (`completion` of a `messages` row: its last turn).
        missing = [item.id for item in items if row_answer(item.row, column) is None]
        if missing:
            raise InputError(f"{key}.column: {len(missing)} row(s) have no text in "
                             f"`{spec.column}` (first: id {missing[0]})", path=config.data)
    elif spec.kind == "transformers":
        import importlib.util

        absent = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if absent:
            raise ConfigError(f"needs {', '.join(absent)}: pip install 'stillroom[train]'", key=key)
        from stillroom.llm.transformers_backend import locate

        try:
            locate(_model_path(config, spec))
        except ConfigError as error:
            raise ConfigError(error.reason, key=f"{key}.model") from None
    elif config.budget_for(name) is not None or spec.thinking is not None:
        backend = spec.backend_config.backend_class()
        if not (backend.supports_raw_prompt and backend.renders_chat_template):
            what, off = (("budget forcing", "set budget_forcing: false for this model")
                         if config.budget_for(name) is not None else
                         ("thinking: on/off", "for an OpenAI-compatible server, leave `thinking` "
                          "out and put the template's switch in the backend's extra_body, e.g. "
                          "{chat_template_kwargs: {enable_thinking: false}}"))
            raise ConfigError(
                f"{what} writes into the assistant's turn, so it needs a backend that "
                f"takes raw prompts and renders its chat template; {backend.kind} does not "
                f"({off})", key=f"{key}.backend",
            )


def _model_path(config: EvalConfig, spec: ModelSpec) -> str | None:
    assert spec.model is not None
    return None if spec.model == "embedded" else str(config.path(spec.model))


# -- one model -----------------------------------------------------------------------------------


def run_model(config: EvalConfig, name: str, items: Sequence[Item], log: Log) -> ModelRun:
    """Load (or connect to) one model, let it answer every item, score perplexity; free it."""
    spec = config.models[name]
    if spec.kind == "column":
        assert spec.column is not None
        # Answers written with an inline trace are graded on their answer part too.
        answers = [answer_part(Generation(str(row_answer(item.row, spec.column)), 0, "stop"),
                               None, spec.think_start, spec.think_end, False) for item in items]
        run = ModelRun(name, [answer for answer, _ in answers], [trace for _, trace in answers])
        traced = [trace for _, trace in answers if trace]
        if traced:
            run.reasoning = reasoning_summary(None, traced)
        return run
    sampling = Sampling(config.generation.temperature, config.generation.top_p,
                        config.generation.seed)
    started = time.perf_counter()
    generator: Any
    if spec.kind == "transformers":
        log(f"{name}: loading {spec.model}")
        generator = TransformersGenerator.load(
            _model_path(config, spec), name=name, device=spec.device, sampling=sampling,
            batch_size=spec.batch_size or config.generation.batch_size)
    else:
        generator = BackendGenerator(spec.backend_config, name=name, sampling=sampling,
                                     use_cache=config.cache)
    load_seconds = time.perf_counter() - started
    try:
        log(f"{name}: answering {len(items)} prompts")
        run = _answer(config, name, generator, items)
        run.load_seconds = load_seconds
        if spec.kind == "transformers" and config.perplexity:
            run.perplexity = _perplexity(config, generator, items, spec)
    finally:
        generator.close()
        del generator
        gc.collect()
    return run


def _answer(config: EvalConfig, name: str, generator: Any, items: Sequence[Item]) -> ModelRun:
    spec = config.models[name]
    budget = config.budget_for(name)
    max_new = config.generation.max_new_tokens
    if budget is not None:
        from stillroom.evaluate.budget import budget_force

        prompts = [generator.render(item.turns) for item in items]
        forced = budget_force(generator, prompts, budget, max_new_tokens=max_new)
        extras = [{"tokens": f.tokens, "finish_reason": f.finish_reason, **f.record(),
                   **({"error": "; ".join(f.errors)} if f.errors else {})} for f in forced]
        run = ModelRun(name, [f.answer for f in forced], extras)
        run.budget = {
            "mean_thinking_tokens": sum(f.thinking_tokens for f in forced) / len(forced),
            "waits": sum(f.waits for f in forced),
            "capped": sum(f.capped for f in forced),
            "options": budget.model_dump(mode="json"),
        }
        run.reasoning = reasoning_summary(
            spec.thinking or "budget forcing",
            [{"reasoning_tokens": f.thinking_tokens, "reasoning_chars": len(f.thinking)}
             for f in forced if f.thinking])
    else:
        asked: list[Any] = [item.turns for item in items]
        if spec.thinking is not None:
            asked, was_opened = thinking_prompts(generator, asked, spec.thinking,
                                                 spec.think_start, spec.think_end)
            opened = [was_opened] * len(items)
        else:
            opened = opened_by_template(generator, asked, spec.think_start)
        generations: list[Generation] = generator.generate(asked, max_new)
        answers = [answer_part(g, generator, spec.think_start, spec.think_end, was)
                   for g, was in zip(generations, opened, strict=True)]
        extras = [{"tokens": g.tokens, "finish_reason": g.finish_reason, **trace,
                   **({"error": g.error} if g.error else {})}
                  for g, (_, trace) in zip(generations, answers, strict=True)]
        run = ModelRun(name, [answer for answer, _ in answers], extras)
        traced = [trace for _, trace in answers if trace]
        if spec.thinking is not None or traced:
            run.reasoning = reasoning_summary(spec.thinking, traced)
    run.seconds = generator.seconds
    run.tokens = generator.tokens_generated
    return run


def opened_by_template(generator: Any, turns: Sequence[list[Message]], start: str) -> list[bool]:
    """Per prompt, whether the chat template opened the trace itself (its generation prompt ends
    with ``start``, as DeepSeek-R1's distills and QwQ's do), for a model without ``thinking:``.
    The text then starts inside the trace, and a trace cut at the token limit holds no closing
    tag: read as an answer, it would be graded on a thought the model never committed to.
    Known only where the prompt is rendered here or by a backend that renders its template in
    process (transformers, llama.cpp, vLLM); a chat server renders its own (its backend's
    ``think_opened`` says so)."""
    renders = isinstance(generator, TransformersGenerator) or bool(
        getattr(getattr(getattr(generator, "client", None), "backend", None),
                "renders_chat_template", False))
    if not renders:
        return [False] * len(turns)
    return [generator.render(turn).rstrip().endswith(start) for turn in turns]


def answer_part(
    generation: Generation, generator: Any, start: str, end: str, opened: bool
) -> tuple[str, dict[str, Any]]:
    """The text a verifier grades (the answer, without the trace) and the trace's record
    (empty when there is none). A trace the backend returned apart is taken as it is; an inline
    one is split at its tags (``opened``: the prompt opened it). A trace that never ended has
    no answer: "" (the verdict then says why, see :func:`_verdicts`). Without ``opened``, only a
    text that begins with ``start`` holds an inline trace."""
    from stillroom.llm.reasoning import estimate_reasoning_tokens, split_think_tags

    tokens: int | None
    if generation.reasoning is not None:
        answer, trace, ended = generation.text, generation.reasoning, generation.reasoning_ended
        tokens = generation.reasoning_tokens
        estimated = generation.reasoning_tokens_estimated
    else:
        # As the verifiers read answers (stillroom.llm.reasoning.final_answer): a trace only where
        # the text begins with the start tag or the prompt opened it; a lone closing tag further
        # in is answer text (code that parses the tags, a sentence about them).
        if not opened and not (start and generation.text.lstrip().startswith(start)):
            return generation.text, {}
        split = split_think_tags(generation.text, start, end, opened=opened)
        if split.reasoning is None:
            return generation.text, {}
        answer, trace, ended = split.answer, split.reasoning, split.ended
        if generation.tokens <= 0:  # answers read from a column: no token count to share out
            tokens, estimated = None, False
        elif not ended:  # the whole text is the trace: the generated count is exact
            tokens, estimated = generation.tokens, False
        elif hasattr(generator, "count_tokens"):
            # This process holds the tokenizer: the trace re-tokenized (a token may differ at
            # the seam with the answer), never more than was generated.
            tokens = min(generator.count_tokens(trace), generation.tokens)
            estimated = False
        else:
            tokens = estimate_reasoning_tokens(trace, answer, generation.tokens)
            estimated = True
    record: dict[str, Any] = {"reasoning": trace, "reasoning_tokens": tokens,
                              "reasoning_chars": len(trace), "reasoning_ended": ended}
    if estimated:
        record["reasoning_tokens_estimated"] = True
    return (answer if ended else ""), record


def reasoning_summary(mode: str | None, traces: list[dict[str, Any]], *,
                      estimated: bool = False) -> dict[str, Any]:
    """Per model: its thinking mode and how long its traces were, over the items with one
    (token figures None where no count is known: answers read from a column)."""
    import statistics

    tokens = [t["reasoning_tokens"] for t in traces if t.get("reasoning_tokens") is not None]
    chars = [t["reasoning_chars"] for t in traces]
    return {
        "thinking": mode,
        "with_trace": len(traces),
        "mean_tokens": statistics.fmean(tokens) if tokens else None,
        "median_tokens": statistics.median(tokens) if tokens else None,
        "mean_chars": statistics.fmean(chars) if chars else None,
        "unended": sum(1 for t in traces if t.get("reasoning_ended") is False),
        "tokens_estimated": estimated or any(t.get("reasoning_tokens_estimated") for t in traces),
    }


def _perplexity(config: EvalConfig, generator: Any, items: Sequence[Item], spec: ModelSpec) -> dict[str, Any]:
    from stillroom.evaluate.metrics import answer_perplexity, summarize_perplexity

    pairs = [(generator.encode_prompt(generator.render(item.turns)), item.completion or "")
             for item in items]
    scored = answer_perplexity(generator.model, generator.tokenizer, pairs,
                               batch_size=spec.batch_size or config.generation.batch_size,
                               max_length=config.perplexity_max_length)
    summary = summarize_perplexity(scored)
    summary["per_item"] = [None if s is None else s.nll / s.tokens for s in scored]
    return summary


# -- the whole evaluation ------------------------------------------------------------------------


def evaluate(
    config: EvalConfig | dict[str, Any] | str | os.PathLike[str],
    *,
    rows: Sequence[dict[str, Any]] | None = None,
    out: str | os.PathLike[str] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Evaluate the configured models on the held-out rows; returns (and with ``out`` writes)
    the result dict described in :mod:`stillroom.evaluate`.

    ``config``: an :class:`EvalConfig`, a mapping with its keys (paths relative to the working
    folder) or a YAML file. ``rows``: held-out rows given directly instead of ``data``.
    """
    config = as_config(config if not isinstance(config, os.PathLike) else str(config))
    log = log or (lambda message: None)
    started = time.perf_counter()
    items = read_items(config, rows)
    verifier = check(config, items)
    runs: dict[str, ModelRun] = {}
    for name in config.models:
        run = run_model(config, name, items, log)
        run.verdicts = _verdicts(verifier, items, run)
        runs[name] = run
    judged = _judge(config, items, runs, log) if config.judge is not None else {}
    result = assemble(config, items, runs, judged, time.perf_counter() - started)
    if out is not None:
        write_json(result, Path(out))
    return result


def _verdicts(verifier: Any, items: Sequence[Item], run: ModelRun) -> list[dict[str, Any]]:
    from stillroom.evaluate.metrics import verify_outputs

    verdicts = verify_outputs(verifier, [item.row for item in items], run.outputs)
    for verdict, extra in zip(verdicts, run.extras, strict=True):
        if extra.get("error"):  # no answer came back: a failure, with the request's reason
            verdict.update(passed=False, reason=f"generation failed: {extra['error']}")
        elif extra.get("reasoning_ended") is False:  # a trace that never ended: no answer
            verdict.update(passed=False, reason="the reasoning never ended (finish reason "
                           f"{extra.get('finish_reason')}): no final answer")
    return verdicts


def _judge(config: EvalConfig, items: Sequence[Item], runs: dict[str, ModelRun], log: Log) -> dict[str, list[dict[str, Any]]]:
    from stillroom.evaluate.metrics import judge_pairs

    judge = config.judge
    assert judge is not None
    against = judge.against or config.roles.baseline
    assert against is not None
    names = judge.models or [name for name in config.models if name != against]
    rows = [{"id": item.id, "prompt": item.prompt, "answer": str(item.answer or "")}
            if len(item.turns) == 1 else
            {"id": item.id, "messages": item.turns, "answer": str(item.answer or "")}
            for item in items]
    show_reference = judge.show_reference and all(item.answer not in (None, "") for item in items)
    out = {}
    for name in names:
        log(f"judge: {name} vs {against}")
        out[name] = judge_pairs(
            judge.backend_config, rows, runs[name].outputs, runs[against].outputs,
            criteria=judge.criteria, reference_column="answer" if show_reference else None,
            max_tokens=judge.max_tokens, temperature=judge.temperature,
            seed=judge.seed if judge.seed is not None else config.generation.seed,
            use_cache=config.cache,
        )
    return out


# -- the result ----------------------------------------------------------------------------------


def assemble(
    config: EvalConfig,
    items: Sequence[Item],
    runs: dict[str, ModelRun],
    judged: dict[str, list[dict[str, Any]]],
    seconds: float,
) -> dict[str, Any]:
    """The result dict (what ``eval.json`` holds)."""
    roles = {role: getattr(config.roles, role) for role in ROLES}
    models = {name: _model_summary(config, name, run, judged.get(name), roles)
              for name, run in runs.items()}
    result: dict[str, Any] = {"metric": config.metric(), "n": len(items)}
    for role, name in roles.items():
        result[role] = models[name]["accuracy"] if name is not None else None
    result["roles"] = roles
    result["heldout_prompts"] = [item.prompt for item in items]
    pairs = config.all_pairs()
    result["paired_test"] = _paired_test(config, runs, pairs[0]) if pairs else None
    result["paired_tests"] = [_paired_test(config, runs, pair) for pair in pairs]
    result["models"] = models
    result["items"] = [_item_record(config, index, item, runs, judged)
                       for index, item in enumerate(items)]
    result["config"] = config.model_dump(mode="json")
    result["seconds"] = round(seconds, 3)
    return result


def _model_summary(config: EvalConfig, name: str, run: ModelRun, judged: list[dict[str, Any]] | None,
                   roles: dict[str, str | None]) -> dict[str, Any]:
    from stillroom.evaluate.metrics import win_rate

    spec = config.models[name]
    passed = [v["passed"] for v in run.verdicts]
    correct = sum(passed)
    low, high = wilson_interval(correct, len(passed), config.confidence)
    perplexity: Any = NOT_APPLICABLE
    if not config.perplexity:
        perplexity = None
    elif run.perplexity is not None:
        perplexity = run.perplexity["perplexity"]
    summary: dict[str, Any] = {
        "role": next((role for role, chosen in roles.items() if chosen == name), None),
        "source": _source(spec),
        "accuracy": correct / len(passed) if passed else None,
        "correct": correct,
        "n": len(passed),
        "ci": [low, high],
        "ci_method": f"Wilson score, {config.confidence:.0%}",
        "failed": sum(1 for e in run.extras if e.get("error")),
        "perplexity": perplexity,
        "perplexity_detail": (None if run.perplexity is None else
                              {k: v for k, v in run.perplexity.items() if k != "per_item"}),
        "win_rate": None,
        "judge": None,
        "seconds": round(run.seconds, 3),
        "load_seconds": round(run.load_seconds, 3),
        "tokens": run.tokens,
        "tokens_per_second": (run.tokens / run.seconds if run.tokens and run.seconds else None),
        "budget_forcing": run.budget,
        "reasoning": run.reasoning,
    }
    if judged is not None:
        summary["judge"] = {"against": config.judge.against or config.roles.baseline,  # type: ignore[union-attr]
                            **win_rate(judged)}
        summary["win_rate"] = summary["judge"]["win_rate"]
    return summary


def _source(spec: ModelSpec) -> str:
    if spec.kind == "transformers":
        return f"transformers: {spec.model}"
    if spec.kind == "column":
        return f"column: {spec.column}"
    backend = spec.backend_config
    return f"backend {backend.kind}: {backend.model or 'default model'}"


def _paired_test(config: EvalConfig, runs: dict[str, ModelRun], pair: tuple[str, str]) -> dict[str, Any]:
    a, b = pair
    first = [v["passed"] for v in runs[a].verdicts]
    second = [v["passed"] for v in runs[b].verdicts]
    only_a, only_b = paired_counts(first, second)
    test = mcnemar_exact(only_a, only_b)
    low, high = paired_bootstrap_interval(first, second, confidence=config.confidence,
                                          seed=config.generation.seed)
    n = len(first)
    return {
        "models": [a, b],
        **test,
        "n": n,
        "meaning": f"b: items only {a} got right; c: items only {b} got right",
        "accuracy_difference": (sum(first) - sum(second)) / n if n else None,
        "difference_ci": [low, high],
        "difference_ci_method": f"paired bootstrap over items, {config.confidence:.0%}",
    }


def _item_record(config: EvalConfig, index: int, item: Item, runs: dict[str, ModelRun],
                 judged: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    outputs = {}
    for name, run in runs.items():
        entry = {"output": run.outputs[index], **run.verdicts[index], **run.extras[index]}
        if run.perplexity is not None:
            entry["answer_nll"] = run.perplexity["per_item"][index]
        outputs[name] = entry
    record: dict[str, Any] = {"id": item.id, "prompt": item.prompt, "answer": item.answer,
                              "reference_completion": item.completion, "outputs": outputs}
    if judged:
        record["judge"] = {}
        for name, verdicts in judged.items():
            verdict = dict(verdicts[index])
            against = config.judge.against or config.roles.baseline  # type: ignore[union-attr]
            winner = verdict.get("winner")
            verdict["winner"] = {"a": name, "b": against}.get(winner, winner) if winner else None
            record["judge"][name] = verdict
    return record


def write_json(result: dict[str, Any], path: Path) -> Path:
    """Write atomically: a half-written eval.json never looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n",
                       encoding="utf-8")
    partial.replace(path)
    return path


def summary_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """One line of text cells per model, for a table (the CLI prints these)."""
    lines = []
    for name, model in result["models"].items():
        accuracy = model["accuracy"]
        low, high = model["ci"]
        ppl = model["perplexity"]
        lines.append({
            "model": name,
            "role": model["role"] or "",
            "accuracy": "-" if accuracy is None else
            f"{accuracy:.3f} [{low:.2f}, {high:.2f}] ({model['correct']}/{model['n']})",
            "perplexity": "-" if ppl is None else (ppl if isinstance(ppl, str) else f"{ppl:.3f}"),
            "win rate": "-" if model["win_rate"] is None else f"{model['win_rate']:.3f}",
            "seconds": f"{model['seconds']:.1f}",
            "tokens": "-" if model["tokens"] is None else str(model["tokens"]),
        })
    models = list(result["models"].values())
    if any(m.get("reasoning") for m in models):  # a column only when some model has traces
        for line, model in zip(lines, models, strict=True):
            line["thinking"] = _thinking_cell(model.get("reasoning"))
    return lines


def _thinking_cell(reasoning: dict[str, Any] | None) -> str:
    if not reasoning:
        return "-"
    mode = reasoning["thinking"] or "as is"
    if reasoning["mean_tokens"] is not None:
        text = f"{mode}: {reasoning['mean_tokens']:.0f} tok"
        if reasoning["tokens_estimated"]:
            text += " (est.)"
    elif reasoning["mean_chars"] is not None:
        text = f"{mode}: {reasoning['mean_chars']:.0f} chars"
    else:
        text = f"{mode}: no trace"
    if reasoning["unended"]:
        text += f", {reasoning['unended']} unended"
    return text


__all__ = [
    "Item",
    "ModelRun",
    "answer_part",
    "assemble",
    "check",
    "evaluate",
    "read_items",
    "run_model",
    "summary_rows",
    "write_json",
]
