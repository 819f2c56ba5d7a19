"""The three measures of :mod:`stillroom.evaluate`, each usable on its own.

* :func:`verify_outputs`: held-out accuracy with any registered verifier (``math``, ``regex``,
  ...), one verdict per item kept;
* :func:`answer_perplexity`: perplexity of reference answers (the teacher's held-out
  completions) given their prompts, loss on the answer tokens only, batched;
* :func:`judge_win_rates`: pairwise judging of a model against another with
  :class:`stillroom.feedback.pairwise.PairwiseJudge` (its prompt, both orders asked, a verdict
  only when the two orders agree).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stillroom.verify.base import Verifier

# -- accuracy ------------------------------------------------------------------------------------


def verify_outputs(verifier: Verifier, rows: Sequence[dict[str, Any]], outputs: Sequence[str]) -> list[dict[str, Any]]:
    """``{"passed", "reason"}`` for each output, checked against its row (reference answer...).

    The output goes in the verifier's answer column; the row's other columns (``answer``,
    ``tests``) are the reference. An output the verifier cannot read fails with its reason.
    """
    verdicts = []
    for row, output in zip(rows, outputs, strict=True):
        verdict = verifier.verify({**row, verifier.answer_column: output})
        verdicts.append({"passed": bool(verdict.passed), "reason": verdict.reason})
    return verdicts


# -- perplexity ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Scored:
    """Summed negative log-likelihood of one answer and how many tokens it covers."""

    nll: float
    tokens: int
    truncated: bool = False


def answer_perplexity(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[list[int], str]],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    add_eos: bool = True,
) -> list[Scored | None]:
    """Teacher-forced NLL of each answer given its prompt ids; None for a pair that cannot be
    scored (its prompt alone fills ``max_length``, or the answer is empty).

    The answer is tokenized on its own, without special tokens, with the tokenizer's EOS after it
    when ``add_eos`` (as TRL's SFT appends it to every completion, so this is the held-out value
    of the SFT training loss). Prompt tokens are context only. An answer longer than the room
    left is cut at the end (``truncated``). Rows are right-padded; padding is masked and never
    scored.
    """
    import torch

    eos = tokenizer.eos_token_id
    encoded: list[tuple[list[int], list[int], bool] | None] = []
    for prompt_ids, answer in pairs:
        target = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if add_eos and eos is not None:
            target.append(int(eos))
        room = max_length - len(prompt_ids)
        if not answer or not prompt_ids or room < 1:
            encoded.append(None)
            continue
        encoded.append((list(prompt_ids), target[:room], len(target) > room))
    results: list[Scored | None] = [None] * len(pairs)
    order = sorted((i for i, e in enumerate(encoded) if e is not None),
                   key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))  # type: ignore[index]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = [encoded[i] for i in chunk]
            sums = _batch_nll(model, rows, int(pad), device)  # type: ignore[arg-type]
            for index, row, total in zip(chunk, rows, sums, strict=True):
                assert row is not None
                results[index] = Scored(nll=total, tokens=len(row[1]), truncated=row[2])
    return results


def _batch_nll(model: Any, rows: list[tuple[list[int], list[int], bool]], pad: int, device: Any) -> list[float]:
    import torch

    width = max(len(p) + len(t) for p, t, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for r, (prompt, target, _) in enumerate(rows):
        full = prompt + target
        ids[r, : len(full)] = torch.tensor(full)
        mask[r, : len(full)] = 1
        labels[r, len(prompt) : len(full)] = torch.tensor(target)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    # Position t predicts token t + 1.
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1).to(device),
        ignore_index=-100, reduction="none",
    ).view(len(rows), width - 1)
    return [float(v) for v in losses.sum(dim=1).tolist()]


def summarize_perplexity(scored: Sequence[Scored | None]) -> dict[str, Any]:
    """Corpus perplexity ``exp(total NLL / total answer tokens)`` (token-weighted, as a held-out
    training loss would be) and its parts."""
    kept = [s for s in scored if s is not None]
    tokens = sum(s.tokens for s in kept)
    if not tokens:
        return {"perplexity": None, "mean_nll": None, "tokens": 0, "scored": 0,
                "skipped": len(scored), "truncated": 0}
    mean_nll = sum(s.nll for s in kept) / tokens
    return {"perplexity": math.exp(mean_nll), "mean_nll": mean_nll, "tokens": tokens,
            "scored": len(kept), "skipped": len(scored) - len(kept),
            "truncated": sum(1 for s in kept if s.truncated)}


# -- judge ---------------------------------------------------------------------------------------


def judge_pairs(
    judge_config: Any,
    rows: Sequence[dict[str, Any]],
    first: Sequence[str],
    second: Sequence[str],
    *,
    criteria: str | None = None,
    reference_column: str | None = None,
    max_tokens: int = 512,
    temperature: float = 0.0,
    seed: int = 0,
    use_cache: bool = True,
) -> list[dict[str, Any]]:
    """Judge ``first[i]`` against ``second[i]`` for each row: ``{"winner": "a"|"b"|"tie",
    "position_consistent", "orders"}``, or ``{"winner": None, "error"}`` when the judge failed.

    Identical answers are a tie and an empty answer loses to a non-empty one, without asking.
    """
    return asyncio.run(_judge_all(judge_config, rows, first, second, criteria=criteria,
                                  reference_column=reference_column, max_tokens=max_tokens,
                                  temperature=temperature, seed=seed, use_cache=use_cache))


async def _judge_all(judge_config: Any, rows: Sequence[dict[str, Any]], first: Sequence[str],
                     second: Sequence[str], *, criteria: str | None, reference_column: str | None,
                     max_tokens: int, temperature: float, seed: int, use_cache: bool) -> list[dict[str, Any]]:
    from stillroom.feedback.pairwise import PairwiseJudge
    from stillroom.llm.cache import RequestCache
    from stillroom.llm.client import LLMClient
    from stillroom.pipeline.stage import StageContext

    stage = PairwiseJudge(candidates=["__first", "__second"], backend="judge",
                          reference_column=reference_column, criteria=criteria,
                          max_tokens=max_tokens, temperature=temperature, seed=seed)
    cache = RequestCache.in_dir() if use_cache else None
    client = LLMClient.from_config(judge_config, cache=cache)
    ctx = StageContext(stage_name="eval_judge", seed=seed, clients={"judge": client})
    try:
        return list(await asyncio.gather(*(
            _judge_one(stage, ctx, row, a, b) for row, a, b in zip(rows, first, second, strict=True)
        )))
    finally:
        await client.aclose()
        if cache is not None:
            cache.close()


async def _judge_one(stage: Any, ctx: Any, row: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    from stillroom.llm.types import RequestFailed
    from stillroom.pipeline.stage import RowFailure

    if a.strip() == b.strip():
        return {"winner": "tie", "position_consistent": True, "note": "identical answers"}
    if not a.strip() or not b.strip():
        return {"winner": "b" if not a.strip() else "a", "position_consistent": True,
                "note": "an empty answer loses"}
    try:
        out = await stage.process({**row, "__first": a, "__second": b}, ctx)
    except (RowFailure, RequestFailed) as error:
        return {"winner": None, "error": str(error)}
    record = out["pairwise"]
    return {"winner": out["winner"], "position_consistent": record["position_consistent"],
            "orders": [{k: order[k] for k in ("shown_first", "verdict", "prefers", "rationale")}
                       for order in record["orders"]]}


def win_rate(judged: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Wins of the first answer, losses, ties (an inconsistent pair counts as a tie, as in
    MT-Bench) and ``win_rate = (wins + ties / 2) / judged`` over the pairs the judge answered."""
    answered = [j for j in judged if j.get("winner") is not None]
    wins = sum(1 for j in answered if j["winner"] == "a")
    losses = sum(1 for j in answered if j["winner"] == "b")
    ties = len(answered) - wins - losses
    return {
        "win_rate": (wins + ties / 2) / len(answered) if answered else None,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "inconsistent": sum(1 for j in answered if not j.get("position_consistent", True)),
        "judged": len(answered),
        "failed": len(judged) - len(answered),
    }


__all__ = [
    "Scored",
    "answer_perplexity",
    "judge_pairs",
    "summarize_perplexity",
    "verify_outputs",
    "win_rate",
]
