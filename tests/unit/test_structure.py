"""The shape of the house, kept: cli -> api -> pipeline -> stages -> llm/data, read from the code's
own imports (lazy ones inside functions too): no circle between folders, the stage folders import
no runner, no module over 700 lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "stillroom"
STAGE_FOLDERS = ("curate", "verify", "generate", "feedback")
RUNNERS = ("stillroom.pipeline.executor", "stillroom.pipeline.ray_executor",
           "stillroom.pipeline.pipeline", "stillroom.pipeline.finish", "stillroom.report",
           "stillroom.cli", "stillroom.api")
MAX_LINES = 700


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def imported(path: Path) -> set[str]:
    """Every stillroom module ``path`` imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stillroom"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("stillroom"))
    return names


def folder_of(module: str) -> str | None:
    """The top-level folder (or file) of ``stillroom.x.y``: ``x``; None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def own_folder(path: Path) -> str | None:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py") if relative.parts[0] != "__init__.py" else None


def test_no_import_circle_between_folders() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in modules():
        source = own_folder(path)
        if source is None:
            continue
        for module in imported(path):
            target = folder_of(module)
            if target and target != source and (PACKAGE / target).exists():
                edges[source].add(target)
    # A folder that reaches itself through others is in a circle.
    for start in list(edges):
        seen, stack = set(), list(edges[start])
        while stack:
            folder = stack.pop()
            assert folder != start, f"import circle through the folder {start!r}: {dict(edges)}"
            if folder not in seen:
                seen.add(folder)
                stack.extend(edges.get(folder, ()))


def test_stage_folders_import_no_runner() -> None:
    offending = []
    for folder in STAGE_FOLDERS:
        for path in (PACKAGE / folder).rglob("*.py"):
            for module in imported(path):
                if module.startswith(RUNNERS):
                    offending.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not offending, offending


def test_no_module_over_700_lines() -> None:
    long = {str(path.relative_to(PACKAGE)): lines for path in modules()
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_every_registered_stage_is_declared_where_it_is_defined() -> None:
    """The built-in stages are imported only when used (stillroom.stages.BUILTIN_STAGES): every
    class the source registers with ``@register_stage`` must be in that table, under its module,
    or a pipeline file naming it would not find it."""
    from stillroom.stages import BUILTIN_STAGES

    registered: dict[str, str] = {}
    for path in modules():
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(d, ast.Name) and d.id == "register_stage" for d in node.decorator_list):
                registered[node.name] = module
    assert len(registered) >= 20  # the scan itself found the stages
    assert registered == {cls: module for module, cls in BUILTIN_STAGES.values()}


def test_a_declared_stage_is_imported_on_first_use() -> None:
    import subprocess
    import sys

    code = ("import sys, stillroom\n"
            "assert 'stillroom.curate.dedup' not in sys.modules\n"
            "from stillroom.pipeline.stage import stages\n"
            "assert stages.get('dedup').__module__ == 'stillroom.curate.dedup'\n"
            "from stillroom.stages import Verify\n"
            "assert 'verify' in stages.items() and len(stages.items()) >= 20\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_plugin_cannot_take_the_name_of_a_declared_stage() -> None:
    import subprocess
    import sys

    code = ("import stillroom\n"
            "from typing import Literal\n"
            "from stillroom.pipeline.stage import RowStage, register_stage, stages\n"
            "try:\n"
            "    @register_stage\n"
            "    class Mine(RowStage):\n"
            "        type: Literal['dedup'] = 'dedup'\n"
            "except ValueError as e:\n"
            "    assert 'stillroom.curate.dedup' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('a plugin replaced the built-in dedup')\n"
            "from stillroom.stages import Dedup\n"
            "assert stages.get('dedup') is Dedup\n"
            "assert list(stages.items()) == sorted(stages.items())\n")
    subprocess.run([sys.executable, "-c", code], check=True)
