"""The `constitutional` stage (Constitutional AI critique -> revision) with a scripted backend."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.errors import ConfigError
from stillroom.generate.constitutional import (
    CRITIQUE,
    EXAMPLE,
    REVISION,
    Constitutional,
    clean_generated,
    load_constitution,
)
from stillroom.llm.types import Request
from stillroom.pipeline.config import parse_pipeline_text
from stillroom.pipeline.stage import StageContext
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig, rows


def content(request: Request) -> str:
    assert request.messages is not None and len(request.messages) == 1
    return str(request.messages[0]["content"])


def kind_of(request: Request) -> str:
    text = content(request)
    if text.startswith(CRITIQUE.text[:90]) and text.endswith("\n\nCritique:"):
        return "critique"
    if text.startswith(CRITIQUE.text[:90]) and text.endswith("\n\nRevision:"):
        return "revision"
    return "response"


def last(text: str, label: str) -> str:
    """The last ``label: ...`` section of a prompt (the few-shot example comes first)."""
    return re.findall(rf"{label}: (.*?)\n\n", text, re.S)[-1]


class Script:
    """Initial answer "orig <prompt>"; critiques "Critique: crit<k> ..."; revisions "rev<k> ..."."""

    def __init__(self, revision: Any = None, critique: Any = None):
        self.rounds: Counter[str] = Counter()
        self.revision = revision
        self.critique = critique

    def __call__(self, request: Request, attempt: int) -> str:
        kind = kind_of(request)
        if kind == "response":
            return f"orig {content(request)}"
        prompt = last(content(request), "Human")
        if kind == "critique":
            self.rounds[prompt] += 1
            if self.critique is not None:
                return str(self.critique(request))
            return f"Critique: crit{self.rounds[prompt]} of {prompt}"
        if self.revision is not None:
            return str(self.revision(request))
        return f"Revision: rev{self.rounds[prompt]} of {prompt}"


@pytest.fixture
def backend() -> ScriptedBackend:
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(Script())
    return fakes.CURRENT["default"]


def run(
    stage: Constitutional, data: list[dict[str, Any]], out: Path, **options: Any
) -> OutputFolder:
    Pipeline([stage], input=data, backends={"default": ScriptedConfig(max_retries=0)}).run(
        out, progress=False, **options
    )
    return OutputFolder(out)


def test_k_rounds_each_with_a_sampled_principle_recorded(tmp_path: Path, backend: Any) -> None:
    stage = Constitutional(rounds=3)
    folder = run(stage, rows(4), tmp_path / "out")
    data = sorted(folder.read_rows("data"), key=lambda r: r["id"])
    assert len(data) == 4
    principles = stage.constitution().principles
    ctx = StageContext("constitutional", seed=0)
    used: set[str] = set()
    for row in data:
        prompt = row["prompt"]
        revisions = row["revisions"]
        assert [r["round"] for r in revisions] == [1, 2, 3]
        expected = [ctx.rng(row["id"], k).choice(principles).id for k in (1, 2, 3)]
        assert [r["principle_id"] for r in revisions] == expected
        used |= set(expected)
        assert [r["critique"] for r in revisions] == [f"crit{k} of {prompt}" for k in (1, 2, 3)]
        assert [r["revision"] for r in revisions] == [f"rev{k} of {prompt}" for k in (1, 2, 3)]
        assert row["original"] == f"orig {prompt}"
        assert row["completion"] == row["chosen"] == f"rev3 of {prompt}"
        assert row["rejected"] == f"orig {prompt}"
        lineage = row["metadata"]["constitutional"]
        assert lineage["method"] == "constitutional" and lineage["step"] == "critique_revision"
        assert lineage["rounds"] == 3 and lineage["principle_ids"] == expected
        assert lineage["parent_id"] == row["id"] and lineage["model"] == "scripted-model"
        assert lineage["principles"] == stage.constitution().version
        assert CRITIQUE.version in lineage["template"] and REVISION.version in lineage["template"]
        assert lineage["original_generated"] is True and lineage["preference_pair"] is True
    assert len(used) > 1  # principles vary across rows and rounds
    assert len(backend.calls) == 4 * (1 + 2 * 3)


def test_critique_and_revision_prompts_hold_what_they_should(tmp_path: Path, backend: Any) -> None:
    stage = Constitutional(rounds=2)
    row = run(stage, rows(1), tmp_path / "out").read_rows("data")[0]
    by_id = {p.id: p for p in stage.constitution().principles}
    calls = [c for c in backend.calls if kind_of(c) != "response"]
    assert [kind_of(c) for c in calls] == ["critique", "revision", "critique", "revision"]
    responses = [row["original"], row["revisions"][0]["revision"]]
    for k, (critique_call, revision_call) in enumerate(zip(calls[::2], calls[1::2], strict=True)):
        principle = by_id[row["revisions"][k]["principle_id"]]
        critique_prompt, revision_prompt = content(critique_call), content(revision_call)
        assert last(critique_prompt, "Human") == "p0"
        assert last(critique_prompt, "Assistant") == responses[k]  # the latest revision
        assert critique_prompt.rstrip().endswith(
            f"Critique Request: {principle.critique_request}\n\nCritique:")
        assert principle.revision_request not in critique_prompt
        assert last(revision_prompt, "Assistant") == responses[k]
        assert last(revision_prompt, "Critique Request") == principle.critique_request
        assert last(revision_prompt, "Critique") == row["revisions"][k]["critique"]
        assert revision_prompt.rstrip().endswith(
            f"Revision Request: {principle.revision_request}\n\nRevision:")
        assert EXAMPLE.text in critique_prompt and EXAMPLE.text in revision_prompt
        # the revision continues the critique's document (one context, as in the paper)
        assert revision_prompt.startswith(critique_prompt)


def test_without_few_shot_the_example_is_left_out(tmp_path: Path, backend: Any) -> None:
    stage = Constitutional(rounds=1, few_shot=False)
    row = run(stage, rows(1), tmp_path / "out").read_rows("data")[0]
    assert all("Here is an example" not in content(c) for c in backend.calls)
    assert EXAMPLE.version not in row["metadata"]["constitutional"]["template"]


def test_an_existing_completion_is_revised_without_a_new_response(
    tmp_path: Path, backend: Any
) -> None:
    data = rows(2, completion="given answer")
    folder = run(Constitutional(rounds=1), data, tmp_path / "out")
    assert all(kind_of(c) != "response" for c in backend.calls)
    for row in folder.read_rows("data"):
        assert row["original"] == row["rejected"] == "given answer"
        assert row["completion"] == row["chosen"] == f"rev1 of {row['prompt']}"
        assert row["metadata"]["constitutional"]["original_generated"] is False


def test_output_sft_and_preference_columns(tmp_path: Path, backend: Any) -> None:
    stage = Constitutional(rounds=1, output="sft")
    sft = run(stage, rows(1), tmp_path / "sft").read_rows("data")[0]
    assert sft["completion"] == "rev1 of p0" and "chosen" not in sft and "rejected" not in sft
    pref = run(Constitutional(rounds=1, output="preference"), rows(1),
               tmp_path / "pref").read_rows("data")[0]
    assert pref["chosen"] == "rev1 of p0" and pref["rejected"] == "orig p0"
    assert "completion" not in pref and pref["prompt"] == "p0"
    assert Constitutional(output="preference").generated_columns() == ["chosen"]
    assert Constitutional().generated_columns() == ["completion"]


def unchanged(request: Request) -> str:
    return "Revision: " + last(content(request), "Assistant")


def test_a_revision_equal_to_the_original_has_no_preference_pair(tmp_path: Path) -> None:
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(Script(revision=unchanged))
    row = run(Constitutional(rounds=2), rows(1), tmp_path / "both").read_rows("data")[0]
    assert row["completion"] == row["original"] == "orig p0"  # still a good SFT row
    assert row["chosen"] is None and row["rejected"] is None
    assert row["metadata"]["constitutional"]["preference_pair"] is False

    folder = run(Constitutional(rounds=2, output="preference"), rows(1), tmp_path / "pref")
    assert not folder.read_rows("data")
    dropped = folder.read_rows("dropped")[0]
    assert dropped["drop_reason"] == "revision identical to the original response"
    assert dropped["metadata"]["constitutional"]["method"] == "constitutional"
    assert dropped["id"] == "r0"


def test_an_empty_revision_fails_the_row_with_the_reason(tmp_path: Path) -> None:
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = backend = ScriptedBackend(
        Script(revision=lambda r: "Revision:  " if "p1" in content(r) else "Revision: fine"))
    folder = run(Constitutional(rounds=2, empty_retries=2), rows(3), tmp_path / "out",
                 max_failure_rate=1.0)
    failed = folder.read_rows("failed")
    assert [r["id"] for r in failed] == ["r1"]
    assert failed[0]["error_type"] == "EmptyRevision" and failed[0]["attempts"] == 3
    assert "round 1 revision" in failed[0]["error"] and "empty" in failed[0]["error"]
    assert "completion" not in failed[0] and "revisions" not in failed[0]
    revision_samples = [c.sample for c in backend.calls
                        if kind_of(c) == "revision" and "p1" in content(c)]
    assert revision_samples == [0, 1, 2]  # asked again as new samples before giving up
    data = folder.read_rows("data")
    assert len(data) == 2 and all(r["completion"] == "fine" for r in data)


def test_an_empty_critique_fails_the_row(tmp_path: Path) -> None:
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(Script(critique=lambda r: "Critique:"))
    folder = run(Constitutional(rounds=1, empty_retries=0), rows(1), tmp_path / "out",
                 max_failure_rate=1.0)
    failed = folder.read_rows("failed")[0]
    assert failed["error_type"] == "EmptyCritique" and "round 1 critique" in failed["error"]


def test_an_empty_initial_response_fails_the_row(tmp_path: Path) -> None:
    fakes.CURRENT.clear()
    fakes.CURRENT["default"] = ScriptedBackend(
        lambda r, a: "" if kind_of(r) == "response" else "Revision: x")
    folder = run(Constitutional(rounds=1, empty_retries=1), rows(1), tmp_path / "out",
                 max_failure_rate=1.0)
    assert folder.read_rows("failed")[0]["error_type"] == "EmptyResponse"


def test_a_second_run_is_reproducible_from_the_cache(tmp_path: Path, backend: Any) -> None:
    first = run(Constitutional(rounds=2), rows(3), tmp_path / "one").read_rows("data")
    calls = len(backend.calls)
    second = run(Constitutional(rounds=2), rows(3), tmp_path / "two").read_rows("data")
    assert len(backend.calls) == calls  # every request was answered from the cache
    key = sorted
    assert key([(r["id"], r["revisions"]) for r in first]) == key(
        [(r["id"], r["revisions"]) for r in second])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Revision: Hello there.", "Hello there."),
        ("**Revised response:** Hello there.", "Hello there."),
        ("Sure! Here is the revised response: Hello there.", "Hello there."),
        ("Here's my revised answer:\n\nHello there.", "Hello there."),
        ('"Hello there."', "Hello there."),
        ("Critique: It is rude.\nRevision Request: be nice", "It is rude."),
        ("Hello there.\n\nCritique Request: more", "Hello there."),
        ("Hello: there, answer is 4.", "Hello: there, answer is 4."),
        ("Revision:", ""),
        ('Human: "Hi?"\n\nAssistant: Hello there.\n\nCritique Request: x', "Hello there."),
        ("Human: only the question echoed", ""),
    ],
)
def test_clean_generated(text: str, expected: str) -> None:
    assert clean_generated(text) == expected


def test_the_builtin_constitution_loads() -> None:
    constitution = load_constitution("builtin:constitution")
    ids = [p.id for p in constitution.principles]
    assert len(ids) >= 12 and len(set(ids)) == len(ids)
    assert all(p.critique_request and p.revision_request for p in constitution.principles)
    assert constitution.version.startswith("constitution@")


GOOD = '{"id": "a", "critique_request": "c", "revision_request": "r"}\n'


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD + "{not json\n", 2, "not valid JSON"),
        (GOOD + "\n[1, 2]\n", 3, "JSON object"),
        (GOOD + '{"id": "b", "critique_request": "c"}\n', 2, "missing key(s) ['revision_request']"),
        (GOOD + GOOD, 2, "used twice (first on line 1)"),
        (GOOD + '{"id": "b", "critique_request": " ", "revision_request": "r"}\n', 2,
         "`critique_request` must be non-empty"),
        (GOOD + '{"id": "b", "critique_request": "c", "revision_request": "r", "x": 1}\n', 2,
         "unknown key(s) ['x']"),
    ],
)
def test_a_bad_principles_file_names_the_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "principles.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        Constitutional(principles=str(path))
    assert error.value.path == str(path) and error.value.line == line
    assert message in str(error.value) and f"{path}:{line}" in str(error.value)


def test_missing_or_empty_principles_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such principles file"):
        Constitutional(principles=str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no principles"):
        Constitutional(principles=str(tmp_path / "empty.jsonl"))
    with pytest.raises(ConfigError, match="unknown built-in"):
        Constitutional(principles="builtin:nope")


def test_a_bad_principles_file_in_a_pipeline_file_is_reported_at_load(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(GOOD + "oops\n")
    text = f"stages:\n  - type: constitutional\n    principles: {path}\n"
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:2: principles: not valid JSON"):
        parse_pipeline_text(text)


def test_a_custom_file_is_used_and_is_part_of_the_identity(tmp_path: Path, backend: Any) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(GOOD + GOOD.replace('"a"', '"b"'))
    stage = Constitutional(principles=str(path), rounds=2)
    identity = stage.identity()
    rows_out = run(stage, rows(6), tmp_path / "out").read_rows("data")
    assert {r["principle_id"] for row in rows_out for r in row["revisions"]} <= {"a", "b"}
    path.write_text(GOOD + GOOD.replace('"a"', '"c"'))
    assert Constitutional(principles=str(path), rounds=2).identity() != identity


def test_check_row() -> None:
    stage = Constitutional()
    assert "needs a `prompt`" in (stage.check_row({"id": 1}) or "")
    assert "empty" in (stage.check_row({"prompt": "  "}) or "")
    assert "must be text" in (stage.check_row({"prompt": "p", "completion": 3}) or "")
    assert stage.check_row({"prompt": "p", "completion": None}) is None
    assert stage.check_row({"prompt": "p", "completion": "c"}) is None


def test_a_relative_principles_path_is_read_from_the_pipeline_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stillroom import Pipeline

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "mine.jsonl").write_text(GOOD)
    pipeline_file = tmp_path / "project" / "p.yaml"
    pipeline_file.write_text("input: in.jsonl\nstages:\n  - type: constitutional\n    principles: mine.jsonl\n")
    monkeypatch.chdir(tmp_path)  # not the pipeline's folder
    stage = Pipeline.from_file(pipeline_file).stages[0]
    assert isinstance(stage, Constitutional)
    assert [p.id for p in stage.constitution().principles] == ["a"]
    with pytest.raises(ConfigError, match="no such principles file"):
        Constitutional(principles="mine.jsonl")  # from Python: the current folder
