"""``stillroom eval CONFIG.yaml -o eval.json``: evaluate models on held-out prompts.

(The module is ``evaluate``, not ``eval``, so as not to shadow the builtin.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from stillroom.cli.app import app, check_config_file, err, friendly_errors
from stillroom.cli.app import out as console


@app.command("eval")
@friendly_errors
def eval_command(
    config: Annotated[Path, typer.Argument(help="Eval config YAML (data, models, verifier, ...).")],
    out_file: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the result JSON.")
    ] = Path("eval.json"),
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Only the first N held-out rows.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Held-out accuracy (a verifier), perplexity of teacher answers, judge win rate and
    paired tests; writes the JSON and prints a table. Verdicts grade each answer without its
    reasoning trace; list one model several times with `thinking: on` / `thinking: off` /
    `budget_forcing` to compare thinking modes (and `paired_tests` for their pairs)."""
    check_config_file(config, "eval config")
    from stillroom.evaluate import evaluate, load_eval_config

    loaded = load_eval_config(config)  # every key checked before any model loads
    if limit is not None:
        loaded.limit = limit

    def log(message: str) -> None:
        if not quiet:
            err.print(f"[dim]{message}[/]", highlight=False, soft_wrap=True)

    result = evaluate(loaded, out=out_file, log=log)
    print_summary(result)
    console.print(f"wrote {out_file}", highlight=False, markup=False)


def print_summary(result: dict[str, Any]) -> None:
    from stillroom.evaluate import summary_rows

    table = Table(title=f"{result['metric']} on {result['n']} held-out items")
    rows = summary_rows(result)
    for column in rows[0] if rows else []:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    # Every configured pair (student vs baseline first; then e.g. thinking on vs off); an older
    # result has only `paired_test`.
    tests = result.get("paired_tests") or ([result["paired_test"]] if result.get("paired_test") else [])
    for test in tests:
        a, b = test["models"]
        console.print(
            f"paired test ({test['method']}): {a} vs {b}: b={test['b']}, c={test['c']}, "
            f"p={test['p_value']:.4g}", highlight=False, markup=False,
        )
