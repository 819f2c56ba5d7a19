"""CI runs exactly the test command a newcomer reads at the top of README.md."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    readme = ROOT.joinpath("README.md").read_text().splitlines()
    marker = next(i for i, line in enumerate(readme) if "<!-- test-command" in line)
    command = next(line for line in readme[marker + 1 :] if line.startswith("python3 "))
    ci_lines = ROOT.joinpath(".ci", "run").read_text().splitlines()
    assert command in ci_lines
    assert "pytest" in command
