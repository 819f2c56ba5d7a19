"""Evaluation: did distillation help? Held-out accuracy with a verifier, perplexity of held-out
teacher answers, judge win rate against a baseline, a paired significance test, and s1's budget
forcing at inference.

Usage (``stillroom eval eval.yaml -o eval.json``; Python: ``evaluate("eval.yaml", out=...)`` or
``evaluate({...dict...}, rows=[...])``)::

    data: out/heldout.jsonl          # JSONL, Parquet or a stillroom output folder (its data/)
    limit: null                      # only the first N rows
    prompt_column: prompt            # rows with `messages` (and no prompt) use those
    answer_column: answer            # the reference answer (given to the verifier)
    completion_column: completion    # the teacher's answer: its perplexity under each model
    models:
      baseline: embedded             # SmolLM2-135M GGUF through transformers (float32)
      student: out/student-sft/final # a transformers folder, or a .gguf file
      teacher: {backend: {kind: llamacpp}}   # any stillroom backend: generation only
      teacher_data: {column: completion}     # answers already in the data, scored as they are
    roles: {baseline: baseline, student: student, teacher: teacher}  # default: same names
    generation: {max_new_tokens: 256, temperature: 0, top_p: 1, seed: 0, system: null,
                 batch_size: 8}
    verifier: math                   # any registered verifier: math, regex, json_schema, ...
    verifier_options: {}             # e.g. {pattern: '^\\d+$'} for regex
    perplexity: true
    perplexity_max_length: 1024
    judge:                           # optional: pairwise win rate against one model
      backend: {kind: llamacpp}
      against: baseline              # default: the baseline role
      models: null                   # default: every other model
      show_reference: true
    paired_test: {a: student, b: baseline}   # default: student vs baseline
    paired_tests: []                 # more pairs, e.g. [{a: think, b: no_think}]
    budget_forcing: null             # {max_thinking_tokens, min_thinking_tokens, ...}: see .budget
    confidence: 0.95
    cache: true                      # request cache for backend models and the judge

A model entry may also set ``device``, ``batch_size``, ``budget_forcing`` (``false`` turns
the top-level one off for it) and ``thinking`` (below), with ``think_start``/``think_end``
(``<think>``/``</think>``), the tags of its inline trace. Every key, model path, backend and every row (the verifier's
``check_row``) is checked before any model loads; errors name ``file:line`` and the key.

The methods:

* **Generation** (:mod:`.generation`): a transformers model renders prompts with
  :func:`stillroom.train.common.render_prompt`, the text SFT trains on, and decodes greedily in
  left-padded batches until EOS or ``max_new_tokens``. A backend model gets chat messages.
* **Thinking** (reasoning models and students trained on traces): the verifier grades the
  final answer, never the trace. A trace the backend returned apart (a server's reasoning
  parser) is kept apart; an inline ``<think>...</think>`` one is split off the text
  (:func:`stillroom.llm.reasoning.split_think_tags`); a trace that never ended (the token
  budget ran out while thinking) is a failed verdict with that reason. A model entry's
  ``thinking: on`` opens the trace after the prompt, ``off`` closes it empty before the answer
  (``<think>\n\n</think>\n\n``, as Qwen3's template does for ``enable_thinking=False``); a
  transformers model whose chat template has an ``enable_thinking`` switch is rendered with the
  switch instead. Backend models need a backend that takes raw prompts and renders its
  template (llama.cpp, transformers); for an OpenAI-compatible server put the switch in the
  backend's ``extra_body`` (``{chat_template_kwargs: {enable_thinking: false}}``). ``off`` and
  budget forcing cannot be combined (budget forcing opens the trace). With no ``thinking`` key,
  a prompt the model's template already ends with ``think_start`` (R1-style) is read as opened,
  so a trace cut at the token limit is not graded as an answer; a chat server's template is out
  of sight, so such a backend needs ``think_opened: true``. List one model under several names
  to compare::

      models:
        think: {model: out/student-sft/final, thinking: on}
        no_think: {model: out/student-sft/final, thinking: off}
        forced: {model: out/student-sft/final, budget_forcing: {max_thinking_tokens: 256}}
      paired_tests: [{a: think, b: no_think}, {a: forced, b: think}]

  Each model's ``reasoning`` (below) gives its trace lengths; the table gets a ``thinking``
  column.
* **Accuracy**: each answer goes through the verifier with the row as reference; every verdict
  and its reason is kept. The interval is Wilson's score interval.
* **Perplexity** (transformers models): ``exp`` of the mean negative log-likelihood of the
  teacher's held-out answers (``completion``, with EOS) given the rendered prompt, the loss on
  answer tokens only, token-weighted over the set: the held-out value of the SFT loss. A backend
  or column model has no weights here, so its perplexity is ``"n/a"``.
* **Win rate**: :class:`stillroom.feedback.pairwise.PairwiseJudge`'s prompt, asked in both
  orders; a win counts only when the two orders agree, otherwise it is a tie;
  ``win_rate = (wins + ties/2) / judged``.
* **Paired test** (:mod:`.stats`): exact McNemar on the items both models answered: ``b`` items
  only the first got right, ``c`` only the second; two-sided binomial p-value; plus a paired
  bootstrap interval of the accuracy difference.

Output (``eval.json``):

* ``metric`` (e.g. ``"accuracy (math verifier)"``), ``n``, ``baseline``, ``student``,
  ``teacher`` (each role's accuracy, null when no model plays it), ``roles``,
  ``heldout_prompts`` (the prompt texts);
* ``paired_test``: ``{models: [a, b], b, c, p_value, method, n, meaning, accuracy_difference,
  difference_ci, difference_ci_method}``; ``paired_tests``: that one first, then each of
  ``paired_tests``, in the same form;
* ``models``: per model ``{role, source, accuracy, correct, n, ci, ci_method, failed,
  perplexity, perplexity_detail, win_rate, judge, seconds, load_seconds, tokens,
  tokens_per_second, budget_forcing, reasoning}``; ``reasoning`` (null for a model that
  wrote no trace and has no ``thinking`` mode): ``{thinking, with_trace, mean_tokens,
  median_tokens, mean_chars, unended, tokens_estimated}`` over the items with a trace (token
  figures null for answers read from a column);
* ``items``: per item ``{id, prompt, answer, reference_completion, outputs: {model: {output,
  passed, reason, tokens, finish_reason, [answer_nll], [thinking, ...], [reasoning,
  reasoning_tokens, reasoning_chars, reasoning_ended, reasoning_tokens_estimated]}}, [judge]}``; ``output`` is
  the answer the verifier graded (the trace cut off);
* ``config`` and ``seconds``.

Importing this package is light (no torch); models load inside :func:`evaluate`.
"""

from stillroom.evaluate.budget import Forced, budget_force
from stillroom.evaluate.config import (
    BudgetForcing,
    EvalConfig,
    GenerationOptions,
    JudgeOptions,
    ModelSpec,
    load_eval_config,
    parse_eval_config,
)
from stillroom.evaluate.generation import (
    BackendGenerator,
    Generation,
    Generator,
    Sampling,
    TransformersGenerator,
)
from stillroom.evaluate.metrics import (
    answer_perplexity,
    judge_pairs,
    summarize_perplexity,
    verify_outputs,
    win_rate,
)
from stillroom.evaluate.run import evaluate, read_items, summary_rows, write_json
from stillroom.evaluate.stats import (
    binomial_cdf_half,
    mcnemar_exact,
    paired_bootstrap_interval,
    paired_counts,
    wilson_interval,
)

__all__ = [
    "BackendGenerator",
    "BudgetForcing",
    "EvalConfig",
    "Forced",
    "GenerationOptions",
    "Generation",
    "Generator",
    "JudgeOptions",
    "ModelSpec",
    "Sampling",
    "TransformersGenerator",
    "answer_perplexity",
    "binomial_cdf_half",
    "budget_force",
    "evaluate",
    "judge_pairs",
    "load_eval_config",
    "mcnemar_exact",
    "paired_bootstrap_interval",
    "paired_counts",
    "parse_eval_config",
    "read_items",
    "summarize_perplexity",
    "summary_rows",
    "verify_outputs",
    "win_rate",
    "wilson_interval",
    "write_json",
]
