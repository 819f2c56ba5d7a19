"""Stages are imported when used: a command or verb imports only its own stage's module, and a
declared stage whose module fails to import is a ConfigError naming the stage and the module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stillroom.errors import ConfigError
from stillroom.registry import Registry
from stillroom.stages import BUILTIN_STAGES

STAGE_MODULES = sorted({module for module, _ in BUILTIN_STAGES.values()})


def _imported_stage_modules(code: str) -> list[str]:
    probe = (f"import sys; {code}; "
             f"print('\\n'.join(m for m in {STAGE_MODULES!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


def test_importing_the_api_and_the_run_command_imports_no_stage() -> None:
    # stillroom.api.verbs imported every stage, so one broken stage broke every `stillroom run`.
    assert _imported_stage_modules("import stillroom.api, stillroom.cli.run") == []


def test_a_verb_imports_only_its_own_stage() -> None:
    # The verb itself, up to the run (which is the pipeline's, shared by every verb).
    code = ("import stillroom.api.verbs as verbs; verbs.run_stage = lambda *a, **k: None; "
            "verbs.dedup('in.jsonl', 'out', method='exact')")
    assert _imported_stage_modules(code) == ["stillroom.curate.dedup"]


def test_a_stage_whose_module_fails_to_import_is_named_with_its_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stillroom_broken_stage.py").write_text("import stillroom_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[type] = Registry("stage type")
    registry.declare("broken", "stillroom_broken_stage")
    with pytest.raises(ConfigError) as caught:
        registry.get("broken")
    message = str(caught.value)
    assert "stage type 'broken'" in message and "stillroom_broken_stage" in message
    assert "No module named 'stillroom_missing_dependency'" in message


def test_a_pipeline_file_imports_only_the_stages_it_names(tmp_path: Path) -> None:
    # The file model was a union of every stage type, so reading any pipeline file imported all
    # stages (and one broken stage broke every pipeline).
    path = tmp_path / "p.yaml"
    path.write_text("stages:\n  - type: complete\n  - type: heuristic_filter\n", encoding="utf-8")
    code = ("from stillroom.pipeline.config import parse_pipeline_text; "
            f"parse_pipeline_text(open({str(path)!r}).read())")
    assert _imported_stage_modules(code) == ["stillroom.curate.heuristics",
                                             "stillroom.stages.complete"]


def test_an_unknown_stage_type_still_names_the_known_ones() -> None:
    from stillroom.pipeline.config import parse_pipeline_text

    with pytest.raises(ConfigError) as caught:
        parse_pipeline_text("stages:\n  - type: dedupe\n")
    assert "dedup" in str(caught.value)
