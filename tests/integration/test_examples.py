"""Every example pipeline parses, starts with the command that runs it, and runs: each one is run
from a clean folder exactly as its first line says, through the real CLI, on the embedded model
(with ``--limit 1``, so the whole set stays within a few minutes), and must exit 0 and leave a
complete output folder whose rows hold what the example's stages promise (CHECKS below). This is
the only test that runs each example: a second, in-process run per example only doubled the
model time."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.data.rows import LINEAGE_KEYS
from stillroom.feedback.ultrafeedback_rubric import ASPECTS
from stillroom.generate.completions import Completions
from stillroom.generate.constitutional import Constitutional
from stillroom.generate.evol_instruct import (
    COPIES_EVOLVING_PROMPT,
    EMPTY_ANSWER,
    EMPTY_INSTRUCTION,
    NO_INFORMATION_GAIN,
    OPERATIONS,
    SORRY_SHORT_RESPONSE,
    STOPWORDS_ONLY_RESPONSE,
    TEMPLATES,
    EvolInstruct,
    copied_phrase,
    is_only_stopwords,
    is_sorry_and_short,
)
from stillroom.generate.magpie import TEMPLATE_MARKER, Magpie
from stillroom.generate.personas import PersonaPrompts
from stillroom.generate.principles import PRINCIPLE_PROMPTS
from stillroom.generate.rouge_pool import plain_most_similar
from stillroom.generate.self_instruct import SelfInstruct
from stillroom.report.summary import summarize
from stillroom.verify.math import MathVerifier
from stillroom.verify.rejection import RejectionSample
from stillroom.workflow import Workflow, is_workflow_text

EXAMPLES_DIR = Path(__file__).parents[2] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
STILLROOM = str(Path(sys.executable).with_name("stillroom"))
# Workflows that train and need another run's output first: distill_small reads the quickstart's
# folder and trains (about an hour on 2 cores in full). Even cut down (a 2-prompt quickstart, then
# the workflow with --limit 1) it took 165-250 s on 2 busy cores, more than every other example
# together, so it runs only when STILLROOM_WORKFLOW_EXAMPLES=1 (the last test here). grpo reads
# the quickstart's folder too and trains (60 GRPO steps, about 15 minutes): its recipe runs in
# tests/integration/test_grpo.py. on_policy reads the quickstart's folder too and trains a student
# on-policy: its recipe runs in tests/integration/test_on_policy.py.
NOT_CHEAP = {"distill_small", "grpo", "on_policy"}
PIPELINES = [p for p in EXAMPLES if p.stem not in NOT_CHEAP]
# --limit N reads only the first N input rows. self_instruct reads the 175 seed tasks only to draw
# few-shot demos and generates its 20 instructions either way: with one seed task it took about
# twice as long (61-65 s against 34 s on 2 busy cores), so it runs whole.
LIMITS: dict[str, int | None] = {"self_instruct": None}


def command_of(path: Path) -> list[str]:
    """The command on the example's first line, without the leading ``# ``."""
    return shlex.split(path.read_text().splitlines()[0].removeprefix("#"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_parses_and_says_how_to_run_it(path: Path) -> None:
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith(f"# stillroom run examples/{path.name} -o ")
    assert command_of(path)[:3] == ["stillroom", "run", f"examples/{path.name}"]
    if is_workflow_text(path.read_text()):
        Workflow.from_file(path)  # every step's config checked
    else:
        Pipeline.from_file(path)


def test_every_example_that_is_not_run_says_why() -> None:
    for stem in NOT_CHEAP:
        text = (EXAMPLES_DIR / f"{stem}.yaml").read_text()
        assert is_workflow_text(text) and "train:" in text


# -- what each example's rows must hold, beyond a complete folder ----------------------------------
# Each check gets the finished run: its folder, its rows by kind and the example's own stages (as
# the file configures them, for the numbers the rows must agree with). Every example here reads
# one input row (--limit 1) except self_instruct, which always generates its own instructions.


@dataclass
class Run:
    folder: OutputFolder
    rows: dict[str, list[dict[str, Any]]]
    stages: list[Any]

    @property
    def data(self) -> list[dict[str, Any]]:
        return self.rows["data"]

    @property
    def dropped(self) -> list[dict[str, Any]]:
        return self.rows["dropped"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return self.rows["failed"]


def assert_lineage(row: dict[str, Any], stage: str, method: str) -> dict[str, Any]:
    entry = row["metadata"][stage]
    assert set(LINEAGE_KEYS) <= set(entry), entry
    assert entry["method"] == method
    assert row["id"]
    return entry


def check_complete(run: Run) -> None:
    for row in run.data:
        assert len(row["completions"]) == 2 and len(row["logprobs"]) == 2
        assert all(len(t["top_logprobs"]) == 5 for t in row["logprobs"][0])


def check_ultrafeedback(run: Run) -> None:
    # The judge's answers are grammar-constrained with room for their longest form: none fails.
    assert not run.failed, run.failed[0]["error"]
    for row in run.data + run.dropped:
        assert len(row["ratings"]) == len(row["completions"]) == 4
        for rating in row["ratings"]:
            assert set(rating) == set(ASPECTS)
            assert all(value in {"1", "2", "3", "4", "5", "N/A"} for value in rating.values())
            assert rating["instruction_following"] != "N/A"
        assert all(isinstance(score, float) and 1 <= score <= 5 for score in row["scores"])
        assert all(kinds for kinds in row["hallucination_types"])
        entry = row["metadata"]["ultrafeedback_judge"]
        assert set(LINEAGE_KEYS) <= set(entry) and entry["model"] == "SmolLM2-135M-Instruct"
        assert entry["with_reference"] is True  # the `knowledge` column, for truthfulness
        assert all(sorted(order) == [0, 1, 2, 3] for order in entry["shown_order"].values())
    for row in run.data:
        assert row["chosen"] == row["completions"][row["chosen_index"]]
        assert row["score_chosen"] == max(row["scores"]) > row["score_rejected"]
    for row in run.dropped:
        assert row["drop_reason"]


def check_multi_teacher(run: Run) -> None:
    [stage] = run.stages
    assert isinstance(stage, Completions)
    assert len(run.data) + len(run.failed) == 1 and not run.dropped
    for row in run.data:
        entry = assert_lineage(row, "completions", "completions")
        assert entry["parent_id"] == row["id"]
        texts, sources = row["completions"], row["completion_sources"]
        assert len(texts) == len(sources) == len(row["logprobs"]) == 4
        assert all(text.strip() for text in texts)
        models = [s["model"] for s in sources]
        assert models == ["smollm2-135m-t0.7"] * 2 + ["smollm2-135m-t1.0"] * 2
        for source, logprobs in zip(sources, row["logprobs"], strict=True):
            principle, index = source["system_prompt_id"].split("/")
            assert principle == source["principle"]
            assert int(index) < len(PRINCIPLE_PROMPTS[principle])
            assert logprobs and all(len(token["top_logprobs"]) == 5 for token in logprobs)


def check_constitutional(run: Run) -> None:
    [stage] = run.stages
    assert isinstance(stage, Constitutional)
    assert len(run.data) + len(run.failed) == 1 and not run.dropped
    principle_ids = {p.id for p in stage.constitution().principles}
    for row in run.data:
        entry = assert_lineage(row, "constitutional", "constitutional")
        assert entry["parent_id"] == row["id"] and entry["rounds"] == stage.rounds
        revisions = row["revisions"]
        assert [r["round"] for r in revisions] == list(range(1, stage.rounds + 1))
        for revision in revisions:
            assert revision["principle_id"] in principle_ids
            assert revision["critique"].strip() and revision["revision"].strip()
        assert row["completion"] == revisions[-1]["revision"] and row["original"].strip()
        if entry["preference_pair"]:
            assert (row["chosen"], row["rejected"]) == (row["completion"], row["original"])
        else:
            assert row["chosen"] is None and row["rejected"] is None
    for row in run.failed:
        assert row["error"] and row["stage"] == "constitutional"


EVOL_REASONS = {COPIES_EVOLVING_PROMPT, EMPTY_ANSWER, EMPTY_INSTRUCTION, NO_INFORMATION_GAIN,
                SORRY_SHORT_RESPONSE, STOPWORDS_ONLY_RESPONSE}


def check_evol_instruct(run: Run) -> None:
    [stage] = run.stages
    assert isinstance(stage, EvolInstruct)
    data, dropped = run.data, run.dropped
    # counts add up: the seed's original plus one attempt per epoch, each kept or dropped
    assert run.failed == []
    assert len(data) + len(dropped) == 1 + stage.epochs
    assert data  # the original at least (its answer is rarely empty)
    seeds = {row["id"] for row in data + dropped
             if row["metadata"]["evol_instruct"]["step"] == "seed"}
    assert len(seeds) == 1
    kept_ids = {row["id"] for row in data}
    for row in data + dropped:
        info = row["metadata"]["evol_instruct"]
        assert row["id"]
        assert info["method"] == "evol_instruct"
        assert info["seed_id"] in seeds
        if info["step"] == "seed":
            assert (info["parent_id"], info["depth"], info["path"], info["epoch"]) == (
                None, 0, [], 0)
            continue
        assert info["step"] in OPERATIONS
        assert 1 <= info["epoch"] <= stage.epochs
        assert info["parent_id"] in kept_ids | seeds  # a kept instruction (or a seed)
        assert 1 <= info["depth"] <= info["epoch"]
        assert len(info["path"]) == info["depth"] and info["path"][-1] == info["step"]
        assert info["template"] == TEMPLATES[info["step"]].version
        assert info["model"]
    for row in dropped:
        assert row["drop_reason"] in EVOL_REASONS and row["stage"] == "evol_instruct"
        info = row["metadata"]["evol_instruct"]
        if info["step"] != "seed":
            assert info["elimination"]["rule"] == row["drop_reason"]
    # every kept evolution passed every rule, and nothing in data/ is empty
    for row in data:
        assert row["prompt"].strip() and row["completion"].strip()
        info = row["metadata"]["evol_instruct"]
        if info["step"] == "seed":
            continue
        assert copied_phrase(row["prompt"]) is None
        assert info["judge"]["verdict"] in ("not_equal", "unparsed")
        assert not is_sorry_and_short(row["completion"])
        assert not is_only_stopwords(row["completion"])


def check_magpie(run: Run) -> None:
    [stage] = run.stages
    assert isinstance(stage, Magpie)
    assert not run.failed
    assert len(run.data) + len(run.dropped) == 1  # one instruction per input row, kept or dropped
    for row in run.data:
        assert assert_lineage(row, "magpie", "magpie")["model"] == "SmolLM2-135M-Instruct"
        assert row["metadata"]["magpie"]["step"] == "response"
        assert row["prompt"].strip() and row["completion"].strip()
        assert TEMPLATE_MARKER.search(row["prompt"]) is None
        assert len(row["prompt"].split()) >= stage.min_words
        assert "\n" not in row["prompt"]  # the reference's early stop at the newline
        # An unfinished answer is kept and flagged, never passed off as whole.
        finish = row["metadata"]["magpie"]["response_finish_reason"]
        assert row["response_truncated"] is (finish == "length")
    for row in run.dropped:
        assert assert_lineage(row, "magpie", "magpie")["model"] == "SmolLM2-135M-Instruct"
        assert row["drop_reason"].startswith(
            ("empty", "leaked template", "instruction", "empty response")
        )
    assert len({r["metadata"]["magpie"]["seed"] for r in run.data + run.dropped}) == 1


def check_personas(run: Run) -> None:
    prompts, complete = run.stages
    assert isinstance(prompts, PersonaPrompts) and prompts.per_kind == 1
    assert not run.failed
    assert len(run.data) + len(run.dropped) == len(prompts.kinds)  # every prompt kept or dropped
    for row in run.data + run.dropped:
        lineage = assert_lineage(row, "persona_prompts", "personas")
        assert lineage["model"] == "SmolLM2-135M-Instruct"
        assert lineage["step"] == row["kind"] in prompts.kinds
        assert lineage["parent_id"] == "persona-01"
    for row in run.data:
        assert row["prompt"].strip() and row["completion"].strip()
        assert "complete" in row["metadata"]
        assert len(row["prompt"].split()) >= prompts.min_words


def check_rejection_sampling(run: Run) -> None:
    [stage] = run.stages
    assert isinstance(stage, RejectionSample)
    assert not run.failed and len(run.data) + len(run.dropped) == 1
    checker = MathVerifier()
    for row in run.data + run.dropped:
        entry = assert_lineage(row, "rejection_sample", "rejection_sampling")
        assert entry["verifier"] == "math"
        assert 1 <= row["samples_spent"] <= stage.max_samples
        assert len(entry["samples"]) == row["samples_spent"]
        assert row["passed_count"] == sum(s["passed"] for s in entry["samples"])
    for row in run.data:
        assert 1 <= len(row["completions"]) <= stage.k
        assert row["completion"] == row["completions"][0]
        # A kept completion really passes the verifier, checked again here.
        assert checker.verify({**row, "completion": row["completion"]}).passed
    for row in run.dropped:
        assert row["samples_spent"] == stage.max_samples and row["passed_count"] == 0
        assert row["drop_reason"] == (
            f"no sample passed the verifier after {stage.max_samples} samples")


def check_self_instruct(run: Run) -> None:
    bootstrap, instances = run.stages
    assert bootstrap.type == "self_instruct" and instances.type == "self_instruct_instances"
    data, dropped, failed = run.data, run.dropped, run.failed
    for row in data + dropped:
        stage = row.get("stage", "self_instruct_instances")
        entry = assert_lineage(row, stage, "self_instruct")
        assert entry["model"] == "SmolLM2-135M-Instruct"
    assert len({row["id"] for row in data + dropped}) == len(data) + len(dropped)

    # Stage 1: the kept instructions (what instance rows and dropped tasks point back to) obey
    # every rule; every request is accounted for (kept candidates, dropped ones, failures).
    first = [r for r in dropped if r["stage"] == "self_instruct"]
    failed_requests = [r for r in failed if r["stage"] == "self_instruct"]
    requests = {
        (r["metadata"]["self_instruct"]["round"], r["metadata"]["self_instruct"]["request_index"])
        for r in first + failed_requests + data
    }
    assert len(requests) <= bootstrap.requests_per_round * bootstrap.max_rounds
    kept = {r["instruction"] for r in data}
    kept |= {r["instruction"] for r in dropped if r["stage"] == "self_instruct_instances"}
    assert len(kept) <= bootstrap.num_instructions
    rule = SelfInstruct()
    seeds = [row["instruction"] for _, row in
             iter_rows(resolve_input_path("builtin:self_instruct_seed_tasks"))]
    for text in kept:
        assert rule.filter(text) is None  # length, blacklist, prefix, first character
        assert plain_most_similar(text, seeds) is None  # ROUGE-L <= 0.7 with every seed
    for row in first:
        assert row["drop_reason"]

    # Stage 2: each kept instruction has instance rows or a dropped-task row, never both empty.
    parents = {r["metadata"]["self_instruct_instances"]["parent_id"] for r in data}
    dropped_tasks = {
        r["metadata"]["self_instruct_instances"]["parent_id"]
        for r in dropped
        if r["stage"] == "self_instruct_instances" and r["drop_reason"].startswith("task:")
    }
    assert not parents & dropped_tasks
    stages = summarize(run.folder)["stages"]
    assert stages["self_instruct"]["rows_out"] == stages["self_instruct_instances"]["rows_in"]
    assert len(parents | dropped_tasks) == stages["self_instruct"]["rows_out"] == len(kept)
    for row in data:
        assert row["output"] and row["output"] != row["input"]
        assert not row["output"].endswith(":") and not row["input"].endswith(":")
        assert row["completion"] == row["output"]
        assert row["prompt"].startswith(row["instruction"])
        assert isinstance(row["is_classification"], bool)
        entry = row["metadata"]["self_instruct_instances"]
        assert entry["generation"] == (
            "output_first" if row["is_classification"] else "input_first"
        )
    per_task: dict[str, int] = {}
    for row in data:
        per_task[row["instruction"]] = per_task.get(row["instruction"], 0) + 1
    assert all(count <= 5 for count in per_task.values())


def check_multi_turn(run: Run) -> None:
    """Whole conversations only: the system turn, then user/assistant for every turn asked."""
    stage = run.stages[0]
    assert not run.failed
    for row in run.data:
        roles = [message["role"] for message in row["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * stage.turns
        entry = assert_lineage(row, "conversation", "conversation")
        assert entry["model"] == "SmolLM2-135M-Instruct" and entry["turn_count"] == stage.turns
    for row in run.dropped:
        assert row["drop_reason"].startswith(("turn ", "the user simulator"))


CHECKS: dict[str, Callable[[Run], None]] = {
    "complete": check_complete,
    "constitutional": check_constitutional,
    "evol_instruct": check_evol_instruct,
    "magpie": check_magpie,
    "multi_teacher": check_multi_teacher,
    "multi_turn": check_multi_turn,
    "personas": check_personas,
    "rejection_sampling": check_rejection_sampling,
    "self_instruct": check_self_instruct,
    "ultrafeedback": check_ultrafeedback,
}


@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_example_runs_from_a_clean_folder_through_the_cli(path: Path, tmp_path: Path) -> None:
    """As a new user would: a fresh folder holding only the examples, the command on the first
    line (plus ``--limit 1`` to keep it short), exit 0, and every part of the output folder."""
    shutil.copytree(EXAMPLES_DIR, tmp_path / "examples")
    command = command_of(path)
    limit = LIMITS.get(path.stem, 1)
    started = time.monotonic()
    done = subprocess.run(
        [STILLROOM, *command[1:], *(["--limit", str(limit)] if limit else []), "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=560,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, (
        f"{' '.join(command)} exited {done.returncode} after {seconds:.0f} s:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    out = tmp_path / command[command.index("-o") + 1]
    folder = OutputFolder(out)
    assert folder.is_complete()
    assert (out / "report.html").is_file() and (out / "README.md").is_file()
    rows = {kind: folder.read_rows(kind) for kind in ("data", "dropped", "failed")}
    assert sum(map(len, rows.values())) >= 1
    assert summarize(folder)["counts"] == {kind: len(found) for kind, found in rows.items()}
    CHECKS.get(path.stem, lambda run: None)(Run(folder, rows, Pipeline.from_file(path).stages))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("STILLROOM_WORKFLOW_EXAMPLES") != "1",
                    reason="3-4 minutes: set STILLROOM_WORKFLOW_EXAMPLES=1 to run it")
def test_distill_small_workflow_runs_after_a_small_quickstart(tmp_path: Path) -> None:
    """examples/distill_small.yaml as its header says: the quickstart first (here 2 training and
    2 held-out prompts, one sample each, a sliver of an epoch), then the workflow (--limit 1: one
    recovery text), through the CLI: all four steps (pipeline, KD twice, eval) exit 0."""
    shutil.copytree(EXAMPLES_DIR, tmp_path / "examples")
    quickstart = [STILLROOM, "quickstart", "-o", "quickstart-out", "--train-prompts", "2",
                  "--heldout", "2", "--max-samples", "1", "--epochs", "0.01", "--no-progress"]
    done = subprocess.run(quickstart, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    command = command_of(EXAMPLES_DIR / "distill_small.yaml")
    done = subprocess.run([STILLROOM, *command[1:], "--limit", "1", "--no-progress"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / command[command.index("-o") + 1]
    for step in ("recover/final", "task/final"):
        assert (out / step).is_dir()
    assert (out / "eval" / "eval.json").is_file()
