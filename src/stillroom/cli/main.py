"""``stillroom``: the command line. Each verb lives in its own module, registers itself on
``app`` (see :mod:`stillroom.cli.app`) and runs the library through :mod:`stillroom.api`."""

from __future__ import annotations

import sys

from stillroom.cli import (  # noqa: F401  (importing a verb's module registers it)
    complete,
    decontaminate,
    dedup,
    evaluate,
    export,
    filter,
    inspect,
    mix,
    quickstart,
    run,
    select,
    train,
    train_dpo,
    train_grpo,
    train_kd,
    verify,
)
from stillroom.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - the console script calls `app` directly
    app(prog_name="stillroom")
    sys.exit(0)
