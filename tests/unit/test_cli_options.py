"""The CLI's surface: every option documented, `--version`, `--verbose`, what `--concurrency`
means on `run`, the JSON of `inspect`, and the cost line."""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from stillroom.cli.main import app
from stillroom.version import __version__


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the app, sub-apps (``train``) included. Typer bundles its own click, so
    a group is told by its ``commands``, not by isinstance."""
    yield path, command
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from commands(sub, (*path, name))


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"stillroom {' '.join(path)} {'/'.join(getattr(param, 'opts', [param.name]))}"
        for path, command in commands(typer.main.get_command(app))
        for param in command.params
        if not (getattr(param, "help", None) or "").strip()
    ]
    assert not missing, f"options without help text: {missing}"


def test_the_walk_sees_every_verb_and_their_options() -> None:
    # The test above must look at something: the verbs, the train sub-app, and the options that
    # had no help before (--temperature, --top-p, --max-tokens on complete).
    found = {path: command for path, command in commands(typer.main.get_command(app))}
    assert {("complete",), ("run",), ("inspect",), ("filter",), ("train",)} <= set(found)
    assert any(len(path) == 2 and path[0] == "train" for path in found)
    options = {name for param in found[("complete",)].params for name in param.opts}
    assert {"--temperature", "--top-p", "--max-tokens", "--concurrency"} <= options


def test_version_prints_the_package_version_and_exits_0() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"stillroom {__version__}"


def test_verbose_leaves_the_libraries_alone_and_quiet_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stillroom.cli import quiet

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # the user's own choice stays
    seen: dict[str, Any] = {}
    real = quiet.quiet_libraries

    def recording() -> Any:
        undo = real()
        seen.update(tqdm=os.environ.get("TQDM_DISABLE"),
                    transformers=os.environ.get("TRANSFORMERS_VERBOSITY"),
                    level=logging.getLogger("transformers").level,
                    filters=list(warnings.filters[:1]))
        return undo

    monkeypatch.setattr(quiet, "quiet_libraries", recording)
    level = logging.getLogger("transformers").level
    missing = str(tmp_path / "missing")
    assert CliRunner().invoke(app, ["inspect", missing]).exit_code == 2
    assert seen["tqdm"] == "1" and seen["transformers"] == "info"
    assert seen["level"] == logging.ERROR
    assert seen["filters"][0][:2] == ("ignore", None)  # every warning, from any module
    # Undone when the command ends.
    assert "TQDM_DISABLE" not in os.environ and logging.getLogger("transformers").level == level
    seen.clear()
    assert CliRunner().invoke(app, ["-v", "inspect", missing]).exit_code == 2
    assert seen == {}


PIPELINE = """\
input: rows.jsonl
backends:
  teacher: {kind: openai, model: m, base_url: "http://127.0.0.1:9/v1", concurrency: 4}
  judge: {kind: openai, model: j, base_url: "http://127.0.0.1:9/v1"}
stages:
  - {type: complete, backend: teacher}
  - {type: complete, backend: judge, output_column: second}
"""


def run_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *flags: str) -> dict[str, Any]:
    """`stillroom run` with ``flags``, stopped where the pipeline would start: its backends and
    run options as the CLI built them."""
    from stillroom.pipeline.pipeline import Pipeline

    (tmp_path / "rows.jsonl").write_text('{"prompt": "p"}\n')
    (tmp_path / "p.yaml").write_text(PIPELINE)
    seen: dict[str, Any] = {}

    def stop(self: Pipeline, out: Any, **options: Any) -> None:
        seen.update(backends=self.backends, options=options)
        raise typer.Exit(0)

    monkeypatch.setattr(Pipeline, "run", stop)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "p.yaml"), "-o", str(tmp_path / "o"),
                                      *flags])
    seen.update(result=result)
    return seen


def test_run_concurrency_sets_requests_in_flight_per_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = run_with(tmp_path, monkeypatch, "--concurrency", "7")
    assert seen["result"].exit_code == 0, seen["result"].output
    assert {name: config.concurrency for name, config in seen["backends"].items()} == {
        "teacher": 7, "judge": 7}
    assert seen["options"]["workers"] is None  # not Ray's workers, as it was before

    seen = run_with(tmp_path, monkeypatch, "-c", "2", "--executor", "ray", "--workers", "3")
    assert seen["options"]["workers"] == 3
    assert {config.concurrency for config in seen["backends"].values()} == {2}
    assert "note:" not in seen["result"].stderr

    # Without it, each backend keeps its own.
    seen = run_with(tmp_path, monkeypatch)
    assert {name: config.concurrency for name, config in seen["backends"].items()} == {
        "teacher": 4, "judge": 16}


def test_run_concurrency_with_ray_and_no_workers_says_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = run_with(tmp_path, monkeypatch, "--executor", "ray", "--concurrency", "8")
    assert seen["options"]["workers"] is None
    assert "--concurrency 8 is requests in flight per backend" in seen["result"].stderr
    assert "--workers" in seen["result"].stderr


def test_run_concurrency_on_a_workflow_is_refused(tmp_path: Path) -> None:
    workflow = tmp_path / "w.yaml"
    workflow.write_text("steps:\n  - name: a\n    pipeline: p.yaml\n")
    result = CliRunner().invoke(app, ["run", str(workflow), "-o", str(tmp_path / "o"),
                                      "--concurrency", "4"])
    assert result.exit_code == 2 and "--concurrency" in result.stderr


def test_concurrency_has_one_meaning_in_help() -> None:
    found = dict(commands(typer.main.get_command(app)))
    for verb in ("run", "complete"):
        (option,) = [p for p in found[(verb,)].params if "--concurrency" in p.opts]
        assert "Requests in flight per backend" in option.help, verb
        (workers,) = [p for p in found[(verb,)].params if "--workers" in p.opts]
        assert workers.opts == ["--workers"]


SUMMARY = {
    "complete": True,
    "counts": {"data": 1, "failed": 1, "dropped": 2},
    "failure_rate": 0.5,
    "seconds": 1.5,
    "stages": {"s": {"rows_in": 4, "rows_out": 1, "dropped": 2, "failed": 1}},
    "backends": {"a": {"model": "m", "prompt_tokens": 10, "completion_tokens": 5},
                 "b": {"model": "n", "prompt_tokens": 1, "completion_tokens": 1}},
    "costs": {"a": 0.25, "b": None},
    "failures_by_reason": {"s: Timeout": 1},
    "failure_ids_by_reason": {"s: Timeout": ["r1"]},
    "drops_by_reason": {"s: short": 2},
    "drop_ids_by_reason": {"s: short": ["r2", "r3"]},
    "diversity": {"s": {"c": {"texts": 1, "distinct_2": float("nan"), "exact_duplicate_share": 0.0}}},
    "warnings": [],
    "stage_results": {},
    "distillation": None,
    "sessions": [],
    "samples": [{"id": "r0"}],
    "failure_examples": [{"id": "r1", "error": "timed out"}],
}


def test_inspection_json_has_the_documented_keys_and_is_strict_json() -> None:
    import json

    from stillroom.cli.inspect import JSON_HELP
    from stillroom.cli.show import INSPECT_JSON_KEYS, inspection_json

    document = inspection_json(Path("out"), SUMMARY)
    assert tuple(document) == INSPECT_JSON_KEYS
    assert all(key in JSON_HELP for key in INSPECT_JSON_KEYS)  # each documented in --help
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert document["diversity"]["s"]["c"]["distinct_2"] is None  # NaN is no JSON
    assert document["cost"] == 0.25 and document["backends"]["b"]["cost"] is None
    assert document["drops_by_reason"] == [
        {"reason": "s: short", "rows": 2, "example_ids": ["r2", "r3"]}]


def printed(summary: dict[str, Any]) -> str:
    from stillroom.cli.show import show_inspection

    buffer = io.StringIO()
    show_inspection(Console(file=buffer, width=200), Path("out"), summary)
    return buffer.getvalue()


def test_cost_line_only_when_a_price_is_set() -> None:
    text = printed(SUMMARY)
    assert "estimated cost: 0.2500" in text and "cost" in text.splitlines()[
        next(i for i, line in enumerate(text.splitlines()) if "backend" in line and "model" in line)]
    unpriced = printed({**SUMMARY, "costs": {"a": None, "b": None}})
    assert "cost" not in unpriced and "$0" not in unpriced


def test_reason_with_markup_is_shown_as_text() -> None:
    text = printed({**SUMMARY, "drops_by_reason": {"s: stages[0] [bold]x[/bold]": 2},
                    "drop_ids_by_reason": {"s: stages[0] [bold]x[/bold]": ["[r2]"]}})
    assert "s: stages[0] [bold]x[/bold]" in text and "[r2]" in text


def test_piped_tables_are_not_cut_at_80_columns(tmp_path: Path) -> None:
    # CliRunner's stdout is no terminal, as when piped to a file.
    import json

    from stillroom.data.output import OutputFolder

    long_reason = "a reason long enough that rich would wrap it at eighty columns, " * 3
    folder = OutputFolder(tmp_path / "out")
    folder.acquire()
    for kind in ("data", "failed", "dropped"):
        (folder.root / kind).mkdir(parents=True, exist_ok=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"id": "x1", "stage": "s", "drop_reason": long_reason}]),
                   folder.root / "dropped" / "part-00000.parquet")
    folder.release()
    result = CliRunner().invoke(app, ["inspect", str(folder.root)])
    assert result.exit_code == 0, result.output
    assert any(f"s: {long_reason.strip()}" in line and "x1" in line
               for line in result.stdout.splitlines()), result.stdout
    document = json.loads(CliRunner().invoke(app, ["inspect", str(folder.root), "--json"]).stdout)
    assert document["drops_by_reason"][0]["example_ids"] == ["x1"]
    assert not math.isnan(document["failure_rate"])


def test_example_ids_per_reason_across_shards_and_grouped_reasons(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stillroom.data.output import OutputFolder
    from stillroom.report.summary import MAX_DISTINCT_REASONS, summarize

    root = tmp_path / "out"
    for kind in ("data", "failed", "dropped"):
        (root / kind).mkdir(parents=True)
    # One shard with ids, one without (its rows are named by shard and position): each shard is
    # read on its own, so the second one's missing column shifts nothing.
    pq.write_table(pa.Table.from_pylist(
        [{"id": f"r{i}", "stage": "dedup", "drop_reason": f"duplicate of k{i}"}
         for i in range(MAX_DISTINCT_REASONS + 5)]), root / "dropped" / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(
        [{"stage": "filter", "drop_reason": "too short"}] * 2 + [{"stage": "filter", "drop_reason": None}]),
        root / "dropped" / "part-00001.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": 7, "stage": "complete", "error_type": "Timeout"}]),
                   root / "failed" / "part-00000.parquet")
    summary = summarize(OutputFolder(root))
    # Over MAX_DISTINCT_REASONS reasons: grouped by kind, with a few of the kind's rows.
    assert summary["drops_by_reason"] == {"dedup: duplicate of ...": MAX_DISTINCT_REASONS + 5,
                                          "filter: too short": 2, "filter: None": 1}
    assert summary["drop_ids_by_reason"] == {
        "dedup: duplicate of ...": ["r0", "r1", "r2"],
        "filter: too short": ["dropped/part-00001.parquet row 0", "dropped/part-00001.parquet row 1"],
        "filter: None": ["dropped/part-00001.parquet row 2"],
    }
    assert summary["failure_ids_by_reason"] == {"complete: Timeout": ["7"]}
    assert summary["costs"] == {}  # no backend, no completion record
