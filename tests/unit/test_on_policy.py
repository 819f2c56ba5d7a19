"""On-policy distillation (train kd, mode: on_policy): config and routing errors before any
request, the tokenizer checks' messages, the overlap of sampling and scoring, and the rule that
a sample without a teacher score never enters the loss."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stillroom.errors import ConfigError
from stillroom.llm.backend import Backend
from stillroom.llm.client import LLMClient
from stillroom.llm.types import BackendError
from stillroom.train.kd import parse_kd_config
from stillroom.train.kd_alignment import check_same_vocabulary
from stillroom.train.on_policy_config import OnPolicyRunConfig
from stillroom.train.on_policy_teachers import (
    TeacherPool,
    probe_mismatch,
    route_rows,
)
from stillroom.train.on_policy_trainer import (
    Prefetcher,
    Sample,
    TeacherFailed,
    accept_entries,
    loss_tensors,
    schedule,
)

BASE = "mode: on_policy\ndata: rows.jsonl\n"


def refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_kd_config(BASE + text, "op.yaml")
    return caught.value


# -- config --------------------------------------------------------------------------------------


def test_mode_on_policy_has_its_own_config() -> None:
    config = parse_kd_config(BASE + "teacher: {kind: llamacpp}\n", "op.yaml")
    assert isinstance(config, OnPolicyRunConfig)
    assert config.sampling_temperature == 1.0 and config.overlap and config.kl_estimate == "auto"
    assert list(config.teacher_configs()) == ["teacher"]
    assert type(parse_kd_config("mode: offline\ndata: x\n")).__name__ == "KDRunConfig"


def test_config_errors_name_the_key_and_line() -> None:
    error = refused("teacher: {kind: anthropic, model: claude}\n")
    assert (error.key, error.line) == ("teacher", 3) and "cannot score given token ids" in str(error)
    error = refused("teacher: {kind: llamacpp}\nteachers: {a: {kind: llamacpp}}\nroute_column: d\n")
    assert (error.key, error.line) == ("teachers", 4) and "exclusive" in str(error)
    error = refused("teachers:\n  a: {kind: llamacpp}\n  b: {kind: llamacpp, bogus: 1}\n"
                    "route_column: d\n")
    assert error.key == "teachers" and "teachers.b" in str(error) and "bogus" in str(error)
    assert "route_column" in str(refused("teachers: {a: {kind: llamacpp}}\n"))
    assert "not one of the teachers" in str(refused(
        "teachers: {a: {kind: llamacpp}}\nroute_column: d\ndefault_teacher: b\n"))
    error = refused("teacher: {kind: llamacpp}\nkl_estimate: topk\n")
    assert error.key == "top_logprobs" and "top_logprobs: k" in str(error)
    assert refused("teacher: {kind: llamacpp}\nroute_column: d\n").key is None
    assert "needs `teacher" in str(refused("max_new_tokens: 4\n"))


def test_rows_are_routed_by_their_column_and_an_unknown_value_is_refused() -> None:
    rows = [{"id": "a", "domain": "math"}, {"id": "b", "domain": "code"}, {"domain": "math"}]
    assert route_rows(rows, ["math", "code"], "domain", None) == ["math", "code", "math"]
    assert route_rows(rows, ["math"], "domain", "math") == ["math", "math", "math"]
    assert route_rows(rows, ["only"], None, None) == ["only"] * 3
    with pytest.raises(ConfigError) as caught:
        route_rows(rows, ["math"], "domain", None)
    assert caught.value.key == "route_column"
    assert "row 1 (id 'b')" in str(caught.value) and "'code'" in str(caught.value)
    with pytest.raises(ConfigError, match="row 0 .* no value"):
        route_rows([{"id": "x"}], ["math"], "domain", None)


# -- tokenizers ------------------------------------------------------------------------------------


class Vocabulary:
    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def test_a_different_vocabulary_names_the_first_mismatching_token() -> None:
    student = Vocabulary({"a": 0, "b": 1, "c": 2, "d": 3})
    check_same_vocabulary(student, Vocabulary(student.vocab), "teacher")
    with pytest.raises(ConfigError) as caught:
        check_same_vocabulary(student, Vocabulary({"a": 0, "b": 1, "x": 2, "d": 3, "e": 4}),
                              "teachers.math")
    message = str(caught.value)
    assert caught.value.key == "teachers.math"
    assert "id 2: 'c' for the student, 'x' for the teacher" in message


def test_the_server_probe_names_the_first_mismatching_token() -> None:
    from tests.tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer(bos=True)
    ids = tokenizer("hé, ok", add_special_tokens=True).input_ids  # <bos> h Ã © , space o k

    def entries(texts: list[str]) -> list[dict[str, Any]]:
        return [{"id": i, "token": t, "logprob": -1.0} for i, t in zip(ids[1:], texts, strict=True)]

    same = [tokenizer.decode([i]) for i in ids[1:]]
    assert probe_mismatch(entries(same), ids, 1, tokenizer) is None
    # The two bytes of "é" are no whole UTF-8 alone: however a server writes them, skipped.
    odd_bytes = [same[0], "bytes:\\xc3", "?", *same[3:]]
    assert probe_mismatch(entries(odd_bytes), ids, 1, tokenizer) is None
    other = [*same[:4], " x", *same[5:]]
    message = probe_mismatch(entries(other), ids, 1, tokenizer)
    assert message == (f"token 5 (id {ids[5]}) is ' x' for the teacher but ' ' for the student: "
                       "the tokenizers differ")


# -- overlap ---------------------------------------------------------------------------------------


class SlowTeacher(Backend):
    """Scores every token -1 after ``latency`` seconds; ids in ``fail`` fail (retryable)."""

    kind = "slow_teacher"
    supports_token_scoring: ClassVar[bool] = True
    latency = 0.2
    fail: ClassVar[set[int]] = set()

    def __init__(self) -> None:
        super().__init__("slow")
        self.log: list[tuple[str, int, float]] = []

    async def generate(self, request: Any) -> Any:
        raise NotImplementedError

    async def score_tokens(self, token_ids: list[int], start: int,
                           top_logprobs: int | None = None) -> list[dict[str, Any]]:
        self.log.append(("start", token_ids[0], time.perf_counter()))
        await asyncio.sleep(self.latency)
        self.log.append(("end", token_ids[0], time.perf_counter()))
        if token_ids[0] in self.fail:
            raise BackendError("overloaded", kind="Overloaded", retryable=True)
        return [{"id": t, "token": str(t), "logprob": -1.0} for t in token_ids[start:]]


def pool(backend: Backend) -> TeacherPool:
    client = LLMClient(backend, max_retries=1, retry_base_delay=0.0, retry_max_delay=0.0)
    return TeacherPool({"slow": client})


def prefetcher(teachers: TeacherPool, overlap: bool) -> tuple[Prefetcher, list[tuple[int, float]]]:
    sampled: list[tuple[int, float]] = []

    def sample(g: int, rows: list[int]) -> list[Sample]:
        sampled.append((g, time.perf_counter()))
        time.sleep(0.05)  # the student's generation
        return [Sample(row, [g], [5, 6], [-0.5, -0.5]) for row in rows]

    def send(s: Sample) -> tuple[str, Any]:
        return "slow", teachers.submit("slow", s.prompt + s.completion, 1)

    return Prefetcher(sample, send, lambda g: [2 * g, 2 * g + 1], total=3,
                      overlap=overlap), sampled


def test_the_next_micro_batch_is_sampled_while_the_teacher_scores() -> None:
    backend = SlowTeacher()
    teachers = pool(backend)
    try:
        fetch, sampled = prefetcher(teachers, overlap=True)
        ready = fetch.take(0)
        assert [s.row for s in ready.samples] == [0, 1] and all(s.entries for s in ready.scores)
        # Micro-batch 1 was sampled before micro-batch 0's scores came back...
        first_score_end = max(t for what, g, t in backend.log if what == "end" and g == 0)
        assert dict(sampled)[1] < first_score_end
        assert fetch.events[:3] == [("sample", 0), ("sample", 1), ("scored", 0)]
        assert ready.waited > 0.05
        fetch.take(1)
        fetch.take(2)  # the last: nothing beyond the run is sampled
        assert [g for g, _ in sampled] == [0, 1, 2]
    finally:
        teachers.close()


def test_lock_step_samples_after_the_scores() -> None:
    backend = SlowTeacher()
    teachers = pool(backend)
    try:
        fetch, sampled = prefetcher(teachers, overlap=False)
        fetch.take(0)
        fetch.take(1)
        assert fetch.events == [("sample", 0), ("scored", 0), ("sample", 1), ("scored", 1)]
        first_score_end = max(t for what, g, t in backend.log if what == "end" and g == 0)
        assert dict(sampled)[1] > first_score_end
    finally:
        teachers.close()


# -- a failed score never enters the loss ----------------------------------------------------------


def test_a_failed_or_foreign_score_is_never_trained_on(tmp_path: Path, monkeypatch: Any) -> None:
    from stillroom.train.on_policy import FAILURES_FILE, SCORES_FILE, OnPolicyRun
    from tests.tiny_models import byte_tokenizer

    monkeypatch.setattr(SlowTeacher, "fail", {7})
    monkeypatch.setattr(SlowTeacher, "latency", 0.0)
    tokenizer = byte_tokenizer(bos=True)
    config = parse_kd_config(BASE + f"teacher: {{kind: llamacpp}}\noutput_dir: {tmp_path}\n"
                             "batch_size: 3\n", "op.yaml")
    rows = [{"id": f"r{i}", "prompt": "x"} for i in range(3)]
    teachers = pool(SlowTeacher())
    try:
        run = OnPolicyRun(config, rows, ["slow"] * 3, [[1, 2]] * 3, [[7], [8], [9]], tokenizer,
                          teachers, total=2)
        run.order = [0, 1, 2, 0, 1, 2]

        def sample(g: int, picked: list[int]) -> list[Sample]:
            return [Sample(r, [1, 2], [10 + r, 20 + r], [-1.0, -1.0]) for r in picked]

        run.prefetch.sample = sample
        run.prefetch.overlap = False  # micro-batch 1 is sent after the contexts change below
        import torch

        batch, _ = run.micro_batch(None, {"positions": torch.tensor([0, 1, 2])}, step=1)
        # Row 0's teacher context starts with id 7, which fails: only rows 1 and 2 are trained.
        assert batch["tokens"].tolist() == [[11, 21], [12, 22]]
        assert batch["mask"].all()
        run.record([0.5, 0.25])
        failures = [json.loads(line) for line in (tmp_path / FAILURES_FILE).read_text().splitlines()]
        assert [(f["step"], f["row"], f["id"], f["teacher"]) for f in failures] == [
            (1, 0, "r0", "slow")]
        assert "overloaded" in failures[0]["reason"]
        scored = [json.loads(line) for line in (tmp_path / SCORES_FILE).read_text().splitlines()]
        assert [(s["row"], s["tokens"], s["kd"]) for s in scored] == [(1, 2, 0.5), (2, 2, 0.25)]

        # A micro-batch with no scored sample stops the run, naming the teacher and reason.
        run.teacher_prompts = [[7], [7], [7]]
        with pytest.raises(TeacherFailed, match="teacher 'slow': .*overloaded"):
            run.micro_batch(None, {"positions": torch.tensor([3, 4, 5])}, step=2)
    finally:
        teachers.close()


def test_scores_of_other_tokens_or_minus_infinity_are_masked() -> None:
    from stillroom.train.on_policy_teachers import Score

    sample = Sample(0, [1], [5, 6], [-1.0, -1.0])
    assert accept_entries(sample, Score(None, reason="boom")) == "boom"
    wrong = [{"id": 5, "logprob": -1.0}, {"id": 9, "logprob": -1.0}]
    assert "other tokens" in str(accept_entries(sample, Score(wrong)))
    entries = [{"id": 5, "logprob": -1.0}, {"id": 6, "logprob": float("-inf")}]
    assert accept_entries(sample, Score(entries)) is None
    batch = loss_tensors([sample, Sample(1, [1, 2], [7], [-0.1])],
                         [entries, [{"id": 7, "logprob": -2.0}]], 0, lambda t: None, 10, False)
    assert batch["mask"].tolist() == [[True, False], [True, False]]
    assert batch["positions"].tolist() == [[0, 1], [1, 0]]
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 2, 7]]


def test_schedule_is_whole_epochs_from_the_seed() -> None:
    order = schedule(5, micro_batches=4, batch_size=2, seed=3)
    assert len(order) == 8 and sorted(order[:5]) == list(range(5))
    assert order == schedule(5, 4, 2, 3) and order != schedule(5, 4, 2, 4)


def test_the_pool_runs_on_its_own_thread() -> None:
    teachers = pool(SlowTeacher())
    try:
        assert teachers.thread.is_alive() and teachers.thread is not threading.current_thread()
    finally:
        teachers.close()
    assert not teachers.thread.is_alive()


def test_auto_uses_the_topk_form_where_alternatives_were_given() -> None:
    import torch

    from stillroom.train.on_policy_losses import sampled_reverse_kl, topk_reverse_kl
    from stillroom.train.on_policy_trainer import estimate_loss

    torch.manual_seed(0)
    samples = [Sample(0, [1, 2], [3, 4, 5], [-2.0, -1.5, -1.0])]
    entries = [[{"id": 3, "logprob": -1.0, "top_logprobs": [{"id": 6, "logprob": -0.5}]},
                {"id": 4, "logprob": -2.0},
                {"id": 5, "logprob": -0.7, "top_logprobs": [{"id": None, "token": "x",
                                                             "logprob": -0.2}]}]]
    batch = loss_tensors(samples, entries, 0, lambda text: 7 if text == "x" else None, 8, True)
    assert batch["has_alternatives"].tolist() == [[True, False, True]]
    assert batch["teacher_ids"][0, 2].tolist() == [5, 7]  # placed by its text
    logits = torch.randn(1, 5, 8, requires_grad=True)
    gathered = logits[:, 1:4]
    student_lp = torch.log_softmax(gathered, -1).gather(-1, batch["tokens"].unsqueeze(-1)).squeeze(-1)
    topk_mask = batch["has_alternatives"]
    sampled_mask = batch["mask"] & ~topk_mask
    want_topk, _ = topk_reverse_kl(gathered, batch["teacher_ids"], batch["teacher_topk"], topk_mask)
    want_sampled, _ = sampled_reverse_kl(student_lp, batch["sample_logprobs"],
                                         batch["teacher_logprobs"], sampled_mask)
    loss, _, per_sample = estimate_loss(logits, batch, "auto", 2.0)
    assert torch.allclose(loss, (2 * want_topk + want_sampled) / 3)
    sampled, _, _ = estimate_loss(logits, batch, "sampled", 2.0)
    everything, _ = sampled_reverse_kl(student_lp, batch["sample_logprobs"],
                                       batch["teacher_logprobs"], batch["mask"])
    assert torch.allclose(sampled, everything)
    k = student_lp.detach() - batch["teacher_logprobs"]
    assert torch.allclose(per_sample, k.mean(-1))


def test_teacher_context_comes_before_the_prompt_for_the_teacher_only() -> None:
    from stillroom.train.on_policy import contexts
    from tests.tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer(bos=False)
    tokenizer.chat_template = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}[assistant]{% endif %}")
    config = parse_kd_config(
        BASE + "teacher: {kind: llamacpp}\nteacher_context:\n"
        "  - {role: user, content: 'What is 1 + 2?'}\n  - {role: assistant, content: 1 + 2 = 3}\n",
        "op.yaml")
    rows = [{"id": "a", "prompt": "What is 4 + 5?"},
            {"id": "b", "prompt": "ignored", "teacher_messages": "What is 6 + 7?"}]
    students, teachers = contexts(config, rows[:1], tokenizer, "rows.jsonl")
    assert tokenizer.decode(students[0]) == "[user]What is 4 + 5?[assistant]"
    assert tokenizer.decode(teachers[0]) == (
        "[user]What is 1 + 2?[assistant]1 + 2 = 3[user]What is 4 + 5?[assistant]")
    # With teacher_prompt_column, the context goes before that column's turns.
    both = config.model_copy(update={"teacher_prompt_column": "teacher_messages"})
    _, teachers = contexts(both, rows[1:], tokenizer, "rows.jsonl")
    assert tokenizer.decode(teachers[0]).endswith("1 + 2 = 3[user]What is 6 + 7?[assistant]")
    error = refused("teacher: {kind: llamacpp}\nteacher_context: [{role: user}]\n")
    assert error.key == "teacher_context" and error.line == 4


# -- red-team fixes (R18) -------------------------------------------------------------------------


def test_sampling_ignores_the_students_own_generation_config() -> None:
    import torch

    from stillroom.train.on_policy import draw
    from tests.tiny_models import byte_tokenizer, tiny_llama

    torch.set_num_threads(1)
    tokenizer = byte_tokenizer(bos=True)
    model = tiny_llama(tokenizer, 64)
    prompts = [tokenizer("hi").input_ids, tokenizer("a longer one").input_ids]
    plain = draw(model, prompts, 0, None, 1.0, 8, seed=5)
    # A checkpoint whose generation_config.json shapes sampling (as many instruct models' do).
    own = model.generation_config
    own.repetition_penalty = 1.5
    own.min_p = 0.5
    own.top_k = 3
    own.suppress_tokens = list(range(2, len(tokenizer)))
    shaped = draw(model, prompts, 0, None, 1.0, 8, seed=5)
    assert shaped == plain
    assert all(len(tokens) == 8 for tokens, _ in plain)
    assert model.generation_config is own and own.min_p == 0.5  # left as it was


class SpellingTeacher(Backend):
    """Scores every token -1 and spells it as ``tokenizer`` does, except the ids in
    ``spelled`` (id -> text)."""

    kind = "spelling_teacher"
    supports_token_scoring: ClassVar[bool] = True

    def __init__(self, tokenizer: Any, spelled: dict[int, str] | None = None) -> None:
        super().__init__("speller")
        self.tokenizer = tokenizer
        self.spelled = spelled or {}
        self.calls = 0

    async def generate(self, request: Any) -> Any:
        raise NotImplementedError

    async def score_tokens(self, token_ids: list[int], start: int,
                           top_logprobs: int | None = None) -> list[dict[str, Any]]:
        self.calls += 1
        return [{"id": t, "token": self.spelled.get(t, self.tokenizer.decode([t])),
                 "logprob": -1.0} for t in token_ids[start:]]


def special_tokenizer() -> Any:
    from tests.tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer(bos=True)
    tokenizer.add_special_tokens({"eos_token": "<eos>", "additional_special_tokens": ["<sep>"]})
    return tokenizer


def probe_of(tokenizer: Any) -> tuple[list[int], int]:
    from stillroom.train.on_policy_teachers import probe_sequence

    asked = [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<sep>"),
             *tokenizer("Q:", add_special_tokens=False).input_ids]
    return probe_sequence(tokenizer, asked, tokenizer("ok", add_special_tokens=False).input_ids), \
        len(asked)


def check(tokenizer: Any, backend: Backend, cache: Any = None) -> None:
    from types import SimpleNamespace

    from stillroom.train.on_policy_teachers import check_tokenizers

    teachers = TeacherPool({"teacher": LLMClient(backend, cache=cache, max_retries=0)})
    try:
        probe, start = probe_of(tokenizer)
        check_tokenizers({"teacher": SimpleNamespace(kind="openai")}, teachers, tokenizer, probe,
                         start, "teacher")
    finally:
        teachers.close()


def test_the_probe_compares_eos_and_special_tokens_a_server_writes_out() -> None:
    tokenizer = special_tokenizer()
    eos, sep, bos = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<sep>"),
                     tokenizer.bos_token_id)
    probe, start = probe_of(tokenizer)
    # The text, then the EOS and the special tokens the prompt holds after its first token.
    assert bos == probe[0]
    assert probe[start:] == [*tokenizer("ok", add_special_tokens=False).input_ids, eos, sep]
    check(tokenizer, SpellingTeacher(tokenizer))
    # A server that writes special tokens as "" (llama-cpp-python's) cannot be checked on them.
    check(tokenizer, SpellingTeacher(tokenizer, {eos: "", sep: "", bos: ""}))
    # One that names the EOS id with another special token's text has another EOS: refused.
    with pytest.raises(ConfigError) as caught:
        check(tokenizer, SpellingTeacher(tokenizer, {eos: "<sep>"}))
    assert caught.value.key == "teacher"
    assert f"the EOS token {start + 2} (id {eos}) is '<sep>' for the teacher but '<eos>'" \
        in str(caught.value)
    with pytest.raises(ConfigError, match=f"a special token .* \\(id {sep}\\) is '<\\|im_end"):
        check(tokenizer, SpellingTeacher(tokenizer, {sep: "<|im_end|>"}))


def test_the_probe_is_never_answered_from_the_request_cache(tmp_path: Path) -> None:
    from stillroom.llm.cache import RequestCache

    tokenizer = special_tokenizer()
    cache = RequestCache(tmp_path / "cache.sqlite")
    try:
        good = SpellingTeacher(tokenizer)
        teachers = TeacherPool({"teacher": LLMClient(good, cache=cache, max_retries=0)})
        try:  # an earlier run's scores of the probe's ids are in the cache
            probe, start = probe_of(tokenizer)
            assert teachers.score_now("teacher", probe, start).entries
            assert teachers.score_now("teacher", probe, start).cached
        finally:
            teachers.close()
        check(tokenizer, good, cache)
        assert good.calls == 2  # asked again, though cached
        # The server behind the same name and model changed its tokenizer: it is asked, refused.
        changed = SpellingTeacher(tokenizer, {tokenizer("o").input_ids[-1]: "0"})
        with pytest.raises(ConfigError, match="tokenizer probe"):
            check(tokenizer, changed, cache)
        assert changed.calls == 1
    finally:
        cache.close()


def test_closing_the_pool_cancels_requests_in_flight(monkeypatch: Any) -> None:
    monkeypatch.setattr(SlowTeacher, "latency", 30.0)
    teachers = pool(SlowTeacher())
    future = teachers.submit("slow", [1, 2, 3], 1)
    time.sleep(0.05)
    started = time.perf_counter()
    teachers.close()
    assert time.perf_counter() - started < 5
    assert future.done() and future.cancelled()  # not left pending in a stopped loop
    assert not teachers.thread.is_alive()


def short_config(tmp_path: Path, extra: str = "") -> OnPolicyRunConfig:
    config = parse_kd_config(BASE + "teacher: {kind: llamacpp}\nmax_length: 40\n"
                             f"max_new_tokens: 10\n{extra}", "op.yaml")
    assert isinstance(config, OnPolicyRunConfig)
    return config


def chat_tokenizer() -> Any:
    from tests.tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer(bos=False)
    tokenizer.chat_template = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                               "{% if add_generation_prompt %}[assistant]{% endif %}")
    return tokenizer


def test_a_row_too_long_for_max_length_is_refused_never_cut(tmp_path: Path) -> None:
    from stillroom.errors import InputError
    from stillroom.train.on_policy import contexts

    tokenizer = chat_tokenizer()
    config = short_config(tmp_path)
    fits = {"id": "a", "prompt": "x" * 13}  # [user] + 13 + [assistant] = 30 = 40 - 10
    students, teachers = contexts(config, [fits], tokenizer, "rows.jsonl")
    assert len(students[0]) == 30 and teachers[0] == students[0]
    with pytest.raises(InputError) as caught:
        contexts(config, [fits, {"id": "b", "prompt": "x" * 14}], tokenizer, "rows.jsonl")
    assert str(caught.value) == (
        "rows.jsonl: row 1 (id 'b'): its prompt is 31 tokens; with max_new_tokens 10 it does not "
        "fit max_length 40 (rows are refused, never cut): shorten it or raise max_length")
    # The teacher's own prompt is held to the same rule; teacher_context comes on top of it.
    column = short_config(tmp_path, "teacher_prompt_column: teacher\n"
                          "teacher_context: [{role: system, content: a long worked example}]\n")
    row = {"id": "c", "prompt": "x", "teacher": "y" * 13}
    _, teachers = contexts(column, [row], tokenizer, "rows.jsonl")
    assert len(teachers[0]) > 40
    with pytest.raises(InputError, match="row 0 .*teacher's prompt is 31 tokens"):
        contexts(column, [{**row, "teacher": "y" * 14}], tokenizer, "rows.jsonl")
    error = refused("teacher: {kind: llamacpp}\nmax_length: 64\nmax_new_tokens: 64\n")
    assert "leaves no room for a prompt" in str(error)


def test_teacher_prompt_column_errors_name_the_column(tmp_path: Path) -> None:
    from stillroom.errors import InputError
    from stillroom.train.on_policy import contexts

    config = short_config(tmp_path, "teacher_prompt_column: teacher_messages\n")
    for value, wording in (([], "must be text or a non-empty list"),
                           ([{"role": "user"}], "turns must be {role, content} objects"),
                           ([{"role": "user", "content": " "}], "is empty"), ("  ", "is empty")):
        row = {"id": "a", "prompt": "x", "teacher_messages": value}
        with pytest.raises(InputError) as caught:
            contexts(config, [row], chat_tokenizer(), "rows.jsonl")
        assert f"row 0 (id 'a'): `teacher_messages` (teacher_prompt_column) {wording}" \
            in str(caught.value)
        assert "`prompt`" not in str(caught.value)


def test_a_torn_last_record_line_is_dropped_a_damaged_middle_one_refused(tmp_path: Path) -> None:
    from stillroom.errors import InputError
    from stillroom.train.on_policy import keep_lines, read_lines

    path = tmp_path / "teacher_scores.jsonl"
    whole = [json.dumps({"step": s, "row": s}) for s in (1, 2, 3)]
    path.write_text("\n".join(whole) + '\n{"step": 3, "ro')  # a write cut by a kill
    assert [line["step"] for line in read_lines(path)] == [1, 2, 3]
    keep_lines(path, 2)
    assert [line["step"] for line in read_lines(path)] == [1, 2]
    assert path.read_text().endswith("}\n")
    path.write_text(whole[0] + '\n{"step": 2, "ro\n' + whole[2] + "\n")
    with pytest.raises(InputError) as caught:
        keep_lines(path, 2)
    assert (caught.value.path, caught.value.line) == (str(path), 2)
    assert "damaged line" in str(caught.value)
