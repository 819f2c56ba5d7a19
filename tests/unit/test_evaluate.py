"""stillroom.evaluate without real models: statistics, config checks, budget forcing control flow
(a scripted generator), verification, judge win rates (ScriptedBackend) and evaluate() with
column and backend models."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from stillroom.errors import ConfigError, InputError
from stillroom.evaluate import (
    BudgetForcing,
    Generation,
    binomial_cdf_half,
    budget_force,
    evaluate,
    judge_pairs,
    mcnemar_exact,
    paired_bootstrap_interval,
    paired_counts,
    parse_eval_config,
    verify_outputs,
    wilson_interval,
    win_rate,
)
from stillroom.evaluate.config import backend_from_dict
from stillroom.llm.types import Request
from stillroom.verify.stage import build_verifier
from tests import fakes
from tests.fakes import ScriptedBackend, last_user

# -- statistics ----------------------------------------------------------------------------------


def test_mcnemar_exact_matches_the_binomial_by_hand() -> None:
    # n = 12 discordant, P(X <= 2) = (1 + 12 + 66) / 4096, two-sided doubles it.
    result = mcnemar_exact(10, 2)
    assert result["p_value"] == pytest.approx(2 * 79 / 4096) == pytest.approx(0.0386, abs=1e-4)
    assert (result["b"], result["c"]) == (10, 2)
    assert "McNemar" in result["method"]
    assert mcnemar_exact(2, 10)["p_value"] == result["p_value"]  # symmetric
    assert mcnemar_exact(0, 0)["p_value"] == 1.0
    assert mcnemar_exact(5, 5)["p_value"] == 1.0  # capped at 1
    assert mcnemar_exact(0, 6)["p_value"] == pytest.approx(2 / 64)


def test_binomial_tail_in_log_space_survives_large_n() -> None:
    # Exact for small n against math.comb.
    for n in (1, 7, 30):
        for k in range(n + 1):
            exact = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
            assert binomial_cdf_half(k, n) == pytest.approx(exact, rel=1e-12)
    # 0.5 ** 5000 underflows to 0.0 in floats; the log-space sum still answers: the median
    # has probability just above 1/2, and a far tail is tiny but not NaN.
    assert 0.5**5000 == 0.0
    # Exact rational arithmetic as the reference (float(comb) alone would overflow).
    assert binomial_cdf_half(2500, 5000) == pytest.approx(
        float(Fraction(1, 2) + Fraction(math.comb(5000, 2500), 2**5001)), rel=1e-9)
    exact_tail = Fraction(sum(math.comb(5000, i) for i in range(2400)), 2**5000)
    assert binomial_cdf_half(2399, 5000) == pytest.approx(float(exact_tail), rel=1e-9)
    tiny = mcnemar_exact(3000, 2000)["p_value"]
    assert 0.0 <= tiny < 1e-40 and not math.isnan(tiny)


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    wider = wilson_interval(8, 10, confidence=0.99)
    assert wider[0] < 0.4902 and wider[1] > 0.9433


def test_paired_counts_and_bootstrap() -> None:
    first = [True, True, False, True, False, True]
    second = [False, True, False, False, True, False]
    assert paired_counts(first, second) == (3, 1)
    low, high = paired_bootstrap_interval(first, second, resamples=500, seed=1)
    assert -1.0 <= low <= 2 / 6 <= high <= 1.0
    assert paired_bootstrap_interval([True] * 4, [True] * 4) == (0.0, 0.0)
    with pytest.raises(ValueError):
        paired_counts([True], [True, False])


# -- config --------------------------------------------------------------------------------------

GOOD = """\
data: heldout.jsonl
models:
  baseline: embedded
  student: out/final
  teacher: {backend: {kind: llamacpp}}
generation: {max_new_tokens: 32}
"""


def test_config_defaults_roles_from_names_and_paths_from_the_file(tmp_path: Path) -> None:
    config = parse_eval_config(GOOD, "eval.yaml", tmp_path)
    assert (config.roles.baseline, config.roles.student, config.roles.teacher) == (
        "baseline", "student", "teacher")
    assert config.paired_models() == ("student", "baseline")
    assert config.models["student"].kind == "transformers"
    assert config.models["teacher"].kind == "backend"
    assert config.models["teacher"].backend_config.kind == "llamacpp"
    assert config.path("out/final") == tmp_path / "out/final"
    assert config.metric() == "accuracy (math verifier)"
    assert config.verifier_options_for_run() == {"reference_column": "answer"}


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        (GOOD + "bogus: 1\n", 7, "bogus", "unknown key"),
        (GOOD + "roles: {student: nobody}\n", 7, "roles.student", "no model named 'nobody'"),
        (GOOD.replace("{kind: llamacpp}", "{kind: llamacpp, nope: 1}"), 5, "models.teacher",
         "backend.nope: unknown key"),
        (GOOD.replace("{kind: llamacpp}", "{kind: warp}"), 5, "models.teacher", "unknown backend"),
        (GOOD + "verifier: regex\n", 7, "verifier", "needs option(s) ['pattern']"),
        (GOOD + "budget_forcing: {min_thinking_tokens: 9, max_thinking_tokens: 4}\n", 7,
         "budget_forcing", "min_thinking_tokens (9) is above"),
        (GOOD.replace("student: out/final", "student: {model: a, column: b}"), 4,
         "models.student", "exactly one of"),
        (GOOD.replace("max_new_tokens: 32", "max_new_tokens: 0"), 6,
         "generation.max_new_tokens", "greater than or equal to 1"),
        (GOOD + "judge: {backend: {kind: llamacpp}, against: ghost}\n", 7, "judge.against",
         "no model named 'ghost'"),
        (GOOD + "data: again.jsonl\n", 7, "data", "appears twice"),
    ],
)
def test_config_errors_name_line_and_key(text: str, line: int, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_eval_config(text, "eval.yaml")
    error = caught.value
    assert (error.path, error.line, error.key) == ("eval.yaml", line, key), str(error)
    assert words in str(error)


def test_budget_forcing_per_model_override() -> None:
    config = parse_eval_config(GOOD + "budget_forcing: {max_thinking_tokens: 8}\n", "e.yaml")
    assert config.budget_for("student") == BudgetForcing(max_thinking_tokens=8)
    text = GOOD.replace("baseline: embedded", "baseline: {model: embedded, budget_forcing: false}")
    config = parse_eval_config(text + "budget_forcing: {max_thinking_tokens: 8}\n", "e.yaml")
    assert config.budget_for("baseline") is None
    text = GOOD.replace("baseline: embedded", "baseline: {model: embedded, budget_forcing: true}")
    assert parse_eval_config(text, "e.yaml").budget_for("baseline") == BudgetForcing()
    assert parse_eval_config(text, "e.yaml").budget_for("student") is None


def test_backend_from_dict_needs_a_kind() -> None:
    with pytest.raises(ValueError, match="needs a `kind`"):
        backend_from_dict({"model": "x"})


# -- budget forcing ------------------------------------------------------------------------------


class ScriptedGenerator:
    """A generator whose thinking and answers are scripted; it records every call.

    ``think`` maps a prompt (its call number per prompt) to ``(words, ends)``: how many words
    it writes and whether it then writes the delimiter (else it runs into the budget).
    """

    name = "scripted"

    def __init__(self, think: Any, answer: str = " 42") -> None:
        self.think = think
        self.answer = answer
        self.calls: list[tuple[list[str], list[int], tuple[str, ...]]] = []
        self.seconds = 0.0
        self.tokens_generated = 0

    def render(self, turns: list[dict[str, Any]]) -> str:
        return "<user>" + turns[-1]["content"] + "<assistant>"

    def generate(self, prompts: Sequence[Any], max_new_tokens: Any, stop: Sequence[str] = ()) -> list[Generation]:
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        self.calls.append((list(prompts), budgets, tuple(stop)))
        out = []
        for prompt, budget in zip(prompts, budgets, strict=True):
            if not stop:  # the answer phase
                out.append(Generation(self.answer, 2, "stop"))
                continue
            words, ends = self.think(prompt)
            if words >= budget:
                out.append(Generation("t " * budget, budget, "length"))
            else:
                # A delimiter the model writes is cut from the text (a stop string).
                out.append(Generation("t " * words, words, "stop" if ends else "length"))
        return out

    def close(self) -> None:
        pass


def test_budget_cap_stops_thinking_and_forces_the_answer() -> None:
    generator = ScriptedGenerator(lambda prompt: (1000, True))
    options = BudgetForcing(max_thinking_tokens=16)
    [forced] = budget_force(generator, ["P"], options, max_new_tokens=64)
    assert forced.capped and forced.thinking_tokens == 16 and forced.waits == 0
    think_call, answer_call = generator.calls
    assert think_call == (["P<think>"], [16], ("</think>",))
    [answer_prompt] = answer_call[0]
    assert answer_prompt == "P<think>" + "t " * 16 + "</think>\nFinal Answer:"
    assert answer_call[1] == [64]  # max_answer_tokens defaults to max_new_tokens
    assert forced.answer == "Final Answer: 42" and forced.answer_tokens == 2
    assert forced.tokens == 18


def test_budget_max_waits_alone_appends_exactly_that_many_waits() -> None:
    # s1's thinking_n_ignore: the end is ignored N times whatever the length. Before the fix,
    # max_waits did nothing without a min_thinking_tokens above the length spent.
    generator = ScriptedGenerator(lambda prompt: (3, True))  # always stops after 3 tokens
    options = BudgetForcing(max_thinking_tokens=100, max_waits=2, max_answer_tokens=8)
    [forced] = budget_force(generator, ["P"], options, max_new_tokens=64)
    assert forced.waits == 2 and not forced.capped and forced.thinking_tokens == 9
    budgets = [call[1] for call in generator.calls]
    assert budgets == [[100], [97], [94], [8]]  # what is left of the cap each round; answer 8
    # The delimiter never enters the text; "Wait" continues the thinking on a new line.
    second_prompt = generator.calls[1][0][0]
    assert second_prompt == "P<think>" + "t " * 3 + "Wait"
    assert forced.thinking == "t " * 3 + "Wait" + "t " * 3 + "Wait" + "t " * 3
    assert "</think>" not in forced.thinking


def test_budget_defaults_append_no_wait() -> None:
    generator = ScriptedGenerator(lambda prompt: (3, True))
    [forced] = budget_force(generator, ["P"], BudgetForcing(), max_new_tokens=64)
    assert forced.waits == 0 and forced.thinking_tokens == 3 and len(generator.calls) == 2


def test_budget_floor_alone_extends_until_it_is_reached() -> None:
    generator = ScriptedGenerator(lambda prompt: (3, True))
    options = BudgetForcing(max_thinking_tokens=100, min_thinking_tokens=10)
    [forced] = budget_force(generator, ["P"], options, max_new_tokens=64)
    assert forced.waits == 3 and forced.thinking_tokens == 12 and not forced.capped


def test_budget_max_waits_then_the_floor() -> None:
    # Long rounds: both waits are spent although the floor is passed after the first round.
    long = ScriptedGenerator(lambda prompt: (20, True))
    options = BudgetForcing(max_thinking_tokens=100, min_thinking_tokens=10, max_waits=2)
    [forced] = budget_force(long, ["P"], options, max_new_tokens=64)
    assert forced.waits == 2 and forced.thinking_tokens == 60
    # Short rounds: the floor goes on after the two waits until 10 tokens are spent.
    short = ScriptedGenerator(lambda prompt: (2, True))
    [forced] = budget_force(short, ["P"], options, max_new_tokens=64)
    assert forced.waits == 4 and forced.thinking_tokens == 10


@pytest.mark.parametrize("options", [
    BudgetForcing(max_thinking_tokens=10, max_waits=50),
    BudgetForcing(max_thinking_tokens=10, min_thinking_tokens=10),
    BudgetForcing(max_thinking_tokens=10, min_thinking_tokens=10, max_waits=50),
])
def test_budget_cap_always_wins(options: BudgetForcing) -> None:
    generator = ScriptedGenerator(lambda prompt: (4, True))
    [forced] = budget_force(generator, ["P"], options, max_new_tokens=64)
    assert forced.capped and forced.thinking_tokens == 10 and forced.waits == 2
    assert [call[1] for call in generator.calls[:-1]] == [[10], [6], [2]]


def test_budget_floor_stops_when_the_model_writes_nothing() -> None:
    # No cap could end a floor that never gains a token: one empty round ends the thinking.
    generator = ScriptedGenerator(lambda prompt: (0, True))
    options = BudgetForcing(min_thinking_tokens=10, max_waits=1)
    [forced] = budget_force(generator, ["P"], options, max_new_tokens=64)
    assert forced.waits == 1 and forced.thinking_tokens == 0 and len(generator.calls) == 3


def test_budget_floor_stops_extending_once_reached_and_batches_rounds() -> None:
    # Prompt A stops after 6 tokens each time, B after 30: with a floor of 10, A is extended
    # once (6 + 6 >= 10), B never; both answer in one batch.
    generator = ScriptedGenerator(lambda prompt: (6, True) if prompt.startswith("A") else (30, True))
    options = BudgetForcing(min_thinking_tokens=10, think_start="",
                            answer_prefix="Answer:", wait="\nWait,")
    forced = budget_force(generator, ["A", "B"], options, max_new_tokens=40)
    assert [f.waits for f in forced] == [1, 0]
    assert [f.thinking_tokens for f in forced] == [12, 30]
    assert [len(call[0]) for call in generator.calls] == [2, 1, 2]  # round 2 holds only A
    assert generator.calls[1][0] == ["A" + "t " * 6 + "\nWait,"]  # wait starting with space: as is
    assert generator.calls[0][1] == [40, 40]  # no cap: max_new_tokens bounds thinking
    assert all(f.answer == "Answer: 42" for f in forced)


def test_budget_eos_without_delimiter_counts_as_stopping() -> None:
    # "stop" with no delimiter written (EOS) is the model ending its thinking too.
    generator = ScriptedGenerator(lambda prompt: (2, True))
    [forced] = budget_force(generator, ["P"], BudgetForcing(min_thinking_tokens=0), max_new_tokens=9)
    assert forced.waits == 0 and not forced.capped and len(generator.calls) == 2


def test_budget_failed_request_is_reported_not_answered() -> None:
    class Failing(ScriptedGenerator):
        def generate(self, prompts: Sequence[Any], max_new_tokens: Any, stop: Sequence[str] = ()) -> list[Generation]:
            self.calls.append((list(prompts), [], tuple(stop)))
            return [Generation("", 0, "error", error="server down") for _ in prompts]

    generator = Failing(lambda prompt: (0, True))
    [forced] = budget_force(generator, ["P"], BudgetForcing(), max_new_tokens=9)
    assert forced.finish_reason == "error" and forced.errors == ["server down"]
    assert len(generator.calls) == 2 and generator.calls[1][0] == []  # no answer asked


# -- verification and judging ----------------------------------------------------------------------


def test_verify_outputs_keeps_every_verdict() -> None:
    verifier = build_verifier("math", "completion", {})
    rows = [{"prompt": "2+2?", "answer": "4", "completion": "teacher says 4"}] * 3
    verdicts = verify_outputs(verifier, rows, ["The answer is 4.", "It is 5.", ""])
    assert [v["passed"] for v in verdicts] == [True, False, False]
    assert all(v["reason"] for v in verdicts)
    regex = build_verifier("regex", "completion", {"pattern": r"^\d+$"})
    assert [v["passed"] for v in verify_outputs(regex, rows[:2], ["4", "four"])] == [True, False]


def _verdict(text: str) -> str:
    return json.dumps({"rationale": "compared", "verdict": text})


def test_judge_counts_only_position_consistent_wins() -> None:
    def judge(request: Request, attempt: int) -> str:
        text = last_user(request)
        first = text.split("## Answer A\n")[1].split("\n\n")[0]
        second = text.split("## Answer B\n")[1].split("\n\n")[0]
        if "good" in first and "good" not in second:
            return _verdict("A")
        if "good" in second and "good" not in first:
            return _verdict("B")
        return _verdict("A")  # no preference: position bias towards the first shown

    fakes.CURRENT["judge"] = ScriptedBackend(judge)
    config = backend_from_dict({"kind": "scripted", "slot": "judge"})
    rows = [{"id": str(i), "prompt": f"q{i}", "answer": "4"} for i in range(4)]
    first = ["good one", "meh", "meh too", "same"]
    second = ["meh", "good two", "meh again", "same"]
    judged = judge_pairs(config, rows, first, second, reference_column="answer", use_cache=False)
    assert [j["winner"] for j in judged] == ["a", "b", "tie", "tie"]
    assert judged[2]["position_consistent"] is False  # both orders said "A"
    assert judged[3]["note"] == "identical answers"
    assert [o["shown_first"] for o in judged[0]["orders"]] == ["a", "b"]
    # The reference answer is shown to the judge; identical answers were never sent.
    calls = fakes.CURRENT["judge"].calls
    assert len(calls) == 6 and all("## Reference answer\n4" in last_user(c) for c in calls)
    summary = win_rate(judged)
    assert summary == {"win_rate": (1 + 2 / 2) / 4, "wins": 1, "losses": 1, "ties": 2,
                       "inconsistent": 1, "judged": 4, "failed": 0}


def test_judge_failures_are_counted_not_hidden() -> None:
    fakes.CURRENT["bad-judge"] = ScriptedBackend(lambda request, attempt: "no idea")
    config = backend_from_dict({"kind": "scripted", "slot": "bad-judge"})
    judged = judge_pairs(config, [{"id": "1", "prompt": "q"}], ["x"], ["y"], use_cache=False)
    assert judged[0]["winner"] is None and judged[0]["error"]
    assert win_rate(judged)["failed"] == 1 and win_rate(judged)["win_rate"] is None
    # An empty answer loses without asking.
    assert judge_pairs(config, [{"id": "1", "prompt": "q"}], [""], ["y"], use_cache=False)[0][
        "winner"] == "b"


# -- evaluate() with column and backend models ---------------------------------------------------


def heldout_rows(n: int = 6) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i),
             "completion": f"{i} + {i} = {2 * i}"} for i in range(n)]


def arithmetic_backend(correct: set[int]) -> ScriptedBackend:
    def answer(request: Request, attempt: int) -> str:
        text = last_user(request)
        i = int(text.split()[2])
        return f"The answer is {2 * i if i in correct else 2 * i + 1}."

    return ScriptedBackend(answer)


def test_evaluate_backend_and_column_models_end_to_end(tmp_path: Path) -> None:
    fakes.CURRENT["good"] = arithmetic_backend({0, 1, 2, 3, 4})
    fakes.CURRENT["weak"] = arithmetic_backend({0})
    fakes.CURRENT["judge-e2e"] = ScriptedBackend(lambda r, a: _verdict("tie"))
    config = {
        "models": {
            "before": {"backend": {"kind": "scripted", "slot": "weak"}},
            "after": {"backend": {"kind": "scripted", "slot": "good"}},
            "teacher": {"column": "completion"},
        },
        "roles": {"baseline": "before", "student": "after"},
        "generation": {"max_new_tokens": 12},
        "judge": {"backend": {"kind": "scripted", "slot": "judge-e2e"}},
        "cache": False,
    }
    lines: list[str] = []
    result = evaluate(config, rows=heldout_rows(), out=tmp_path / "eval.json", log=lines.append)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert result["metric"] == "accuracy (math verifier)" and result["n"] == 6
    assert (result["baseline"], result["student"], result["teacher"]) == (1 / 6, 5 / 6, 1.0)
    assert result["heldout_prompts"] == [f"What is {i} + {i}?" for i in range(6)]
    test = result["paired_test"]
    assert test["models"] == ["after", "before"] and (test["b"], test["c"]) == (4, 0)
    assert test["p_value"] == pytest.approx(2 / 16)
    assert test["accuracy_difference"] == pytest.approx(4 / 6)
    after = result["models"]["after"]
    assert after["role"] == "student" and after["correct"] == 5 and after["perplexity"] == "n/a"
    assert after["ci"] == list(wilson_interval(5, 6))
    assert after["judge"]["against"] == "before" and after["win_rate"] == 0.5
    assert result["models"]["teacher"]["win_rate"] == 0.5  # every other model is judged
    assert result["models"]["before"]["judge"] is None
    item = result["items"][5]
    assert item["id"] == "q5" and item["answer"] == "10"
    assert item["outputs"]["before"]["output"] == "The answer is 11."
    assert item["outputs"]["before"]["passed"] is False and item["outputs"]["after"]["passed"] is False
    assert item["judge"]["after"]["winner"] == "tie"
    # Requests: chat messages with the prompt, greedy, max_new_tokens.
    call = fakes.CURRENT["good"].calls[0]
    assert call.messages == [{"role": "user", "content": "What is 0 + 0?"}]
    assert call.params.temperature == 0.0 and call.params.max_tokens == 12
    assert any("judge" in line for line in lines)


def test_evaluate_checks_every_row_before_any_model_runs(tmp_path: Path) -> None:
    fakes.CURRENT["spy"] = backend = ScriptedBackend()
    rows = heldout_rows(3)
    del rows[2]["answer"]
    config = {"models": {"m": {"backend": {"kind": "scripted", "slot": "spy"}}}, "cache": False}
    with pytest.raises(InputError, match="row 2 .*`answer`"):
        evaluate(config, rows=rows)
    with pytest.raises(ConfigError, match="models.x.model"):
        evaluate({"models": {"m": {"backend": {"kind": "scripted", "slot": "spy"}},
                             "x": str(tmp_path / "missing")}}, rows=heldout_rows(2))
    with pytest.raises(InputError, match="models.t.column"):
        evaluate({"models": {"t": {"column": "nope"}}}, rows=heldout_rows(2))
    # Budget forcing needs raw prompts and the chat template: the scripted backend lacks the latter.
    with pytest.raises(ConfigError, match="budget forcing"):
        evaluate({"models": {"m": {"backend": {"kind": "scripted", "slot": "spy"}}},
                  "budget_forcing": {"max_thinking_tokens": 4}}, rows=heldout_rows(2))
    assert backend.calls == []


def test_evaluate_reads_files_and_messages(tmp_path: Path) -> None:
    rows = heldout_rows(2)
    rows[1] = {"id": "m1", "messages": [{"role": "user", "content": "What is 1 + 1?"},
                                        {"role": "assistant", "content": "2"}], "answer": "2",
               "completion": "2"}
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.yaml").write_text("data: held.jsonl\nmodels:\n  teacher: {column: completion}\n")
    result = evaluate(tmp_path / "eval.yaml")
    assert result["n"] == 2 and result["teacher"] == 1.0
    assert result["heldout_prompts"] == ["What is 0 + 0?", "What is 1 + 1?"]
    assert result["paired_test"] is None and result["student"] is None


def test_evaluate_reads_the_answer_in_every_row_shape(tmp_path: Path) -> None:
    """The rows `complete` writes: the answer as the last turn of `messages`, or an assistant
    message list beside a conversational `prompt`; a column model reads it there."""
    rows = [
        {"id": "m", "messages": [{"role": "user", "content": "What is 1 + 1?"},
                                 {"role": "assistant", "content": "2"}], "answer": "2"},
        {"id": "c", "prompt": [{"role": "user", "content": "What is 2 + 2?"}],
         "completion": [{"role": "assistant", "content": "4"}], "answer": "4"},
    ]
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.yaml").write_text("data: held.jsonl\nmodels:\n  teacher: {column: completion}\n")
    result = evaluate(tmp_path / "eval.yaml")
    assert result["n"] == 2 and result["teacher"] == 1.0
    assert result["heldout_prompts"] == ["What is 1 + 1?", "What is 2 + 2?"]
