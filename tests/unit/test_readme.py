"""README.md says what is true: CI runs exactly the test command a newcomer reads at its top, and
its lists of kinds are those the registries hold."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    readme = ROOT.joinpath("README.md").read_text().splitlines()
    marker = next(i for i, line in enumerate(readme) if "<!-- test-command" in line)
    command = next(line for line in readme[marker + 1 :] if line.startswith("python3 "))
    ci_lines = ROOT.joinpath(".ci", "run").read_text().splitlines()
    assert command in ci_lines
    assert "pytest" in command


def _section(readme: str, title: str) -> str:
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def test_the_readme_lists_every_verifier_and_backend_kind() -> None:
    import stillroom  # noqa: F401  (registers the built-in backends and verifiers)
    from stillroom.llm.backend import backends
    from stillroom.verify.base import verifiers

    readme = ROOT.joinpath("README.md").read_text()
    listed = re.search(r"`stillroom verify INPUT -o OUT --kind ([\w|]+)`", readme)
    assert listed is not None, "README.md no longer shows `stillroom verify ... --kind a|b|...`"
    # Tests register fakes of their own (tests/fakes.py): only stillroom's own kinds count.
    def builtin(registry: dict[str, type]) -> list[str]:
        return sorted(name for name, cls in registry.items()
                      if cls.__module__.startswith("stillroom."))

    assert sorted(listed.group(1).split("|")) == builtin(verifiers.items())
    table = re.findall(r"^\| `(\w+)` \|", _section(readme, "Backends"), flags=re.MULTILINE)
    assert sorted(table) == builtin(backends.items())
