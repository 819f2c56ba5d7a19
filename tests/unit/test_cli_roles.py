"""`stillroom run` prints each stage's result line; `--roles` of `stillroom dedup` and
`stillroom decontaminate` (and ``roles=`` of the API verbs) reach the stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stillroom import api
from stillroom.cli.main import app
from stillroom.cli.options import role_list
from stillroom.data.output import OutputFolder


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def conversation(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "You are terse."},
                         {"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]}


# The same question asked three times, answered three ways; one other question.
CONVERSATIONS = [
    conversation("What is the capital city of France, please?", "Paris, on the Seine."),
    conversation("What is the capital city of France, please?", "It is Paris, of course."),
    conversation("What is the capital city of France, please?", "The answer is Paris."),
    conversation("How many legs does a spider have in total?", "Eight legs."),
]


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    return result


def test_run_prints_every_stage_s_result_line(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "rows.jsonl", [{"text": "same words here"}] * 3 + [{"text": "other"}])
    (tmp_path / "p.yaml").write_text(
        "input: rows.jsonl\nstages:\n  - type: dedup\n    method: exact\n", encoding="utf-8")
    result = invoke("run", tmp_path / "p.yaml", "-o", tmp_path / "out", "--no-progress",
                    "--no-cache")
    assert result.exit_code == 0, result.output
    assert "exact: kept 2 of 4 rows; 2 duplicates dropped" in result.output


def test_roles_as_repeated_options_and_comma_lists() -> None:
    assert role_list(None) is None and role_list([]) is None
    assert role_list(["user"]) == ["user"]
    assert role_list(["user, system", "tool"]) == ["user", "system", "tool"]


def test_dedup_roles_compares_only_those_turns(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", CONVERSATIONS)
    every_turn = invoke("dedup", data, "-o", tmp_path / "all", "--method", "exact",
                        "--no-progress")
    assert every_turn.exit_code == 0, every_turn.output
    assert OutputFolder(tmp_path / "all").count("dropped") == 0  # the answers differ

    for out, flags in (("user", ["--roles", "user"]),
                       ("comma", ["--roles", "system,user"]),
                       ("repeated", ["--roles", "user", "--roles", "system"])):
        result = invoke("dedup", data, "-o", tmp_path / out, "--method", "exact", "--no-progress",
                        *flags)
        assert result.exit_code == 0, result.output
        assert OutputFolder(tmp_path / out).count("dropped") == 2, out
        assert "kept 2 of 4 rows" in result.output

    result = invoke("dedup", data, "-o", tmp_path / "bad", "--method", "exact", "--roles", ",")
    assert result.exit_code == 2 and "--roles" in result.output


def test_api_dedup_takes_roles(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", CONVERSATIONS)
    result = api.dedup(data, tmp_path / "out", method="exact", roles=["user"], progress=False)
    assert len(result.dataset) == 2 and len(result.dropped) == 2
    result = api.dedup(data, tmp_path / "all", method="exact", progress=False)
    assert len(result.dataset) == 4


# A benchmark item that the assistant turns quote but no user turn does.
BENCH_ITEM = ("A train leaves the station at nine in the morning travelling at sixty miles per "
              "hour towards the coast")


def contaminated(tmp_path: Path) -> tuple[Path, Path]:
    bench = write_jsonl(tmp_path / "bench.jsonl", [{"id": "b1", "question": BENCH_ITEM}])
    data = write_jsonl(tmp_path / "chats.jsonl", [
        conversation("Tell me a word problem about trains.", BENCH_ITEM + ". When does it arrive?"),
        conversation("Name a colour of the sky at noon.", "Blue."),
    ])
    return bench, data


def test_decontaminate_roles_checks_only_those_turns(tmp_path: Path) -> None:
    bench, data = contaminated(tmp_path)
    every_turn = invoke("decontaminate", data, "-o", tmp_path / "all", "--against", bench,
                        "--no-progress")
    assert every_turn.exit_code == 0, every_turn.output
    assert OutputFolder(tmp_path / "all").count("dropped") == 1

    users = invoke("decontaminate", data, "-o", tmp_path / "user", "--against", bench,
                   "--roles", "user,system", "--no-progress")
    assert users.exit_code == 0, users.output
    assert OutputFolder(tmp_path / "user").count("dropped") == 0
    assert OutputFolder(tmp_path / "user").count("data") == 2


@pytest.mark.parametrize("roles, dropped", [(None, 1), (["user"], 0), (["assistant"], 1)])
def test_api_decontaminate_takes_roles(tmp_path: Path, roles: list[str] | None,
                                       dropped: int) -> None:
    bench, data = contaminated(tmp_path)
    result = api.decontaminate(data, tmp_path / "out", against=[bench], roles=roles,
                               progress=False)
    assert len(result.dropped) == dropped
