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
    budget_forcing: null             # {max_thinking_tokens, min_thinking_tokens, ...}: see .budget
    confidence: 0.95
    cache: true                      # request cache for backend models and the judge

A model entry may also set ``device``, ``batch_size`` and ``budget_forcing`` (``false`` turns
the top-level one off for it). Every key, model path, backend and every row (the verifier's
``check_row``) is checked before any model loads; errors name ``file:line`` and the key.

The methods:

* **Generation** (:mod:`.generation`): a transformers model renders prompts with
  :func:`stillroom.train.common.render_prompt`, the text SFT trains on, and decodes greedily in
  left-padded batches until EOS or ``max_new_tokens``. A backend model gets chat messages.
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
  difference_ci, difference_ci_method}``;
* ``models``: per model ``{role, source, accuracy, correct, n, ci, ci_method, failed,
  perplexity, perplexity_detail, win_rate, judge, seconds, load_seconds, tokens,
  tokens_per_second, budget_forcing}``;
* ``items``: per item ``{id, prompt, answer, reference_completion, outputs: {model: {output,
  passed, reason, tokens, finish_reason, [answer_nll], [thinking, ...]}}, [judge]}``;
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
