"""Persona-driven prompts with a scripted backend: one prompt per kind (or per_kind), lineage,
cleaning and drop rules, and a clear error when the persona column is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from stillroom import Pipeline
from stillroom.data.output import OutputFolder
from stillroom.data.readers import iter_rows, resolve_input_path
from stillroom.data.rows import LINEAGE_KEYS, PromptTemplate
from stillroom.errors import InputError
from stillroom.generate.personas import TEMPLATES, PersonaPrompts, clean_prompt
from stillroom.llm.types import Request
from tests import fakes
from tests.fakes import ScriptedBackend, ScriptedConfig

PERSONAS = [
    {"id": "p1", "persona": "A beekeeper who sells honey at a market."},
    {"id": "p2", "persona": "A nurse who works night shifts."},
]


def kind_of(request: Request) -> str:
    text = request.messages[-1]["content"]  # type: ignore[index]
    return next(kind for kind, template in TEMPLATES.items() if template[-60:] in text)


def persona_of(request: Request) -> str:
    text = request.messages[-1]["content"]  # type: ignore[index]
    return next(p["persona"] for p in PERSONAS if p["persona"] in text)


def good_script(request: Request, attempt: int) -> str:
    return f"A {kind_of(request)} request from {persona_of(request)[2:12]} number {request.sample}"


def use(script: Any) -> ScriptedBackend:
    fakes.CURRENT.clear()
    backend = fakes.CURRENT["default"] = ScriptedBackend(script)
    return backend


def run(tmp_path: Path, stage: PersonaPrompts, data: Any) -> dict[str, list[dict]]:
    Pipeline([stage], input=data, backends={"default": ScriptedConfig()}).run(
        tmp_path / "out", progress=False
    )
    folder = OutputFolder(tmp_path / "out")
    return {kind: folder.read_rows(kind) for kind in ("data", "dropped", "failed")}


def test_one_prompt_per_kind_per_persona_with_lineage(tmp_path: Path) -> None:
    backend = use(good_script)
    out = run(tmp_path, PersonaPrompts(), PERSONAS)
    assert out["dropped"] == [] and out["failed"] == []
    rows = out["data"]
    assert len(rows) == 6 and len(backend.calls) == 6
    assert sorted((r["persona"], r["kind"]) for r in rows) == sorted(
        (p["persona"], kind) for p in PERSONAS for kind in ("general", "math", "code")
    )
    for row in rows:
        assert row["prompt"].startswith(f"A {row['kind']} request from")
        lineage = row["metadata"]["persona_prompts"]
        assert set(LINEAGE_KEYS) <= set(lineage)
        assert lineage["method"] == "personas" and lineage["step"] == row["kind"]
        parent = next(p for p in PERSONAS if p["persona"] == row["persona"])
        assert lineage["parent_id"] == parent["id"] == lineage["seed_id"]
        assert lineage["model"] == "scripted-model"
        assert lineage["template"] == PromptTemplate(
            f"personas.{row['kind']}", TEMPLATES[row["kind"]]
        ).version
        assert row["id"].startswith("persona-")
    assert len({r["id"] for r in rows}) == 6


def test_the_request_holds_the_persona_and_the_kinds_template(tmp_path: Path) -> None:
    backend = use(good_script)
    run(tmp_path, PersonaPrompts(kinds=["math"]), PERSONAS[:1])
    [call] = backend.calls
    assert call.messages == [
        {"role": "user", "content": TEMPLATES["math"].format(persona=PERSONAS[0]["persona"])}
    ]
    assert call.params.temperature == 0.7


def test_per_kind_asks_distinct_samples(tmp_path: Path) -> None:
    backend = use(good_script)
    rows = run(tmp_path, PersonaPrompts(kinds=["code"], per_kind=3), PERSONAS[:1])["data"]
    assert sorted(c.sample for c in backend.calls) == [0, 1, 2]
    assert sorted(r["metadata"]["persona_prompts"]["sample"] for r in rows) == [0, 1, 2]
    assert len({r["prompt"] for r in rows}) == 3


def test_a_kind_of_your_own_with_its_template(tmp_path: Path) -> None:
    backend = use(lambda request, attempt: "Write a haiku about honey and bees please")
    stage = PersonaPrompts(kinds=["poem"], templates={"poem": "A poem request for {persona}."})
    [row] = run(tmp_path, stage, PERSONAS[:1])["data"]
    [call] = backend.calls
    assert call.messages == [
        {"role": "user", "content": f"A poem request for {PERSONAS[0]['persona']}."}
    ]
    assert row["kind"] == "poem"
    assert row["metadata"]["persona_prompts"]["template"].startswith("personas.poem@")


def test_unknown_kinds_and_bad_templates_are_config_errors() -> None:
    with pytest.raises(pydantic.ValidationError, match="no template"):
        PersonaPrompts(kinds=["poem"])
    with pytest.raises(pydantic.ValidationError, match="persona"):
        PersonaPrompts(kinds=["poem"], templates={"poem": "A poem about {topic}."})
    with pytest.raises(pydantic.ValidationError, match="twice"):
        PersonaPrompts(kinds=["math", "math"])


def test_a_missing_persona_column_is_named_before_any_request(tmp_path: Path) -> None:
    stage = PersonaPrompts()
    problem = stage.check_row({"id": "x", "description": "a chef"})
    assert problem is not None and "`persona`" in problem and "persona_column" in problem
    assert "description" in problem  # says what the row has
    assert stage.check_row({"id": "x", "persona": "  "}) == "`persona` is empty"
    assert stage.check_row(PERSONAS[0]) is None
    backend = use(good_script)
    with pytest.raises(InputError, match="persona_column"):
        run(tmp_path, stage, [{"id": "x", "description": "a chef"}])
    assert backend.calls == []


def test_persona_column_names_another_column(tmp_path: Path) -> None:
    use(lambda request, attempt: "How long should I rest dough before baking bread?")
    stage = PersonaPrompts(persona_column="who", kinds=["general"])
    [row] = run(tmp_path, stage, [{"id": "c1", "who": "A baker."}])["data"]
    assert row["persona"] == "A baker." and row["who"] == "A baker."


@pytest.mark.parametrize(
    ("text", "truncated", "kept", "reason"),
    [
        ("How do I price honey jars for the market?", False, None, None),
        ("  \n", False, "", "empty prompt"),
        (
            "Here is a prompt:\nHow do I price honey jars for the market?",
            False,
            "How do I price honey jars for the market?",
            None,
        ),
        (
            "Sure! Here's a math problem for a beekeeper: A hive makes 3 kg of honey a week.",
            False,
            "A hive makes 3 kg of honey a week.",
            None,
        ),
        ("Here is a prompt:", False, "", "only a preamble"),
        (
            "**Problem:** A jar holds 450 g; how many jars do 9 kg fill?",
            False,
            "A jar holds 450 g; how many jars do 9 kg fill?",
            None,
        ),
        (
            "A jar holds 450 g; how many jars do 9 kg fill?\n\nSolution: 9000 / 450 = 20.",
            False,
            "A jar holds 450 g; how many jars do 9 kg fill?",
            None,
        ),
        ('"How do I price honey jars for the market?"', False, "How do I price honey", None),
        ("How do I price honey jars for the market", True, None, "prompt cut off"),
        ("I'm sorry, I cannot write that.", False, None, "refusal"),
        ("As the persona, I would ask about honey prices.", False, None, "leaked instruction"),
        (
            "Write a programming task that this person might need done quickly",
            False,
            None,
            "leaked instruction",
        ),
        (
            "Please say what the program or function must do for my shop.",
            False,
            None,
            "leaked instruction: repeats",
        ),
        ("Price honey?", False, None, "prompt too short"),
        ("How should I price honey?", False, None, None),
    ],
)
def test_cleaning_and_drop_rules(
    text: str, truncated: bool, kept: str | None, reason: str | None
) -> None:
    fixed = TEMPLATES["code"].replace("{persona}", " ")
    cleaned = clean_prompt(text, fixed, truncated=truncated, min_words=4)
    if kept is not None:
        assert cleaned.prompt.startswith(kept)
    if reason is None:
        assert cleaned.drop_reason is None, cleaned.drop_reason
    else:
        assert cleaned.drop_reason is not None and cleaned.drop_reason.startswith(reason)


def test_dropped_prompts_keep_their_lineage_and_the_rest_stay(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        if kind_of(request) == "math":
            return "Here is a math problem:"
        return good_script(request, attempt)

    use(script)
    out = run(tmp_path, PersonaPrompts(), PERSONAS)
    assert len(out["data"]) == 4 and len(out["dropped"]) == 2
    for row in out["dropped"]:
        assert row["drop_reason"] == "only a preamble, no prompt"
        lineage = row["metadata"]["persona_prompts"]
        assert lineage["method"] == "personas" and lineage["step"] == "math"
        assert lineage["parent_id"] in {"p1", "p2"}
        assert lineage["raw_prompt"] == "Here is a math problem:"
        assert row["id"].startswith("persona-")


def test_a_failed_request_sends_the_persona_to_failed(tmp_path: Path) -> None:
    def script(request: Request, attempt: int) -> str:
        if kind_of(request) == "code":
            raise fakes.server_error(500)
        return good_script(request, attempt)

    use(script)
    Pipeline(
        [PersonaPrompts()], input=PERSONAS[:1], backends={"default": ScriptedConfig(max_retries=1)}
    ).run(tmp_path / "out", progress=False)
    [row] = OutputFolder(tmp_path / "out").read_rows("failed")
    assert row["id"] == "p1" and row["error_type"] == "InternalServerError"
    assert row["error"].startswith("code prompt 0:")


def test_the_builtin_personas_are_readable_and_varied() -> None:
    rows = [row for _, row in iter_rows(resolve_input_path("builtin:personas"))]
    assert 50 <= len(rows) <= 80
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["persona"] for r in rows}) == len(rows)
    assert all(PersonaPrompts().check_row(r) is None for r in rows)
