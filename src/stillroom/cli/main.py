"""``stillroom``: the command line. Each verb is a thin wrapper over a function in ``stillroom.api``."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from stillroom.errors import ConfigError, StillroomError
from stillroom.secrets import redact

app = typer.Typer(
    name="stillroom",
    help="Synthetic data and distillation for LLM post-training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(command: F) -> F:
    """No Python exception reaches the user from a verb.

    Known problems (StillroomError) print one clear line and exit with their code (2: bad input,
    found before any request). A pydantic ValidationError from building a stage or backend out
    of the options is a ConfigError naming the option (exit 2). Ctrl-C says how to resume. Any
    other exception is a bug: one line naming it and a file holding the traceback, exit 1.
    Every printed text passes :func:`stillroom.secrets.redact` first.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer.Exit from the verb, and Typer's own usage errors (exit 2)
        except StillroomError as error:
            _print_error(str(error))
            raise typer.Exit(error.exit_code) from None
        except ValidationError as error:
            config_error = option_error(error, command)
            _print_error(str(config_error))
            raise typer.Exit(config_error.exit_code) from None
        except KeyboardInterrupt:
            err.print(
                "[yellow]interrupted.[/] Finished rows are saved and every answer received is in "
                "the request cache: run the same command again to resume.",
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        except Exception as error:  # a bug: one line, the traceback in a file
            where = _write_traceback(error)
            message = " ".join(str(error).split()) or "(no message)"
            if len(message) > 500:
                message = message[:500] + "..."
            _print_error(f"internal error ({type(error).__name__}): {message}"
                         + (f" (traceback in {where})" if where else ""))
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _print_error(message: str) -> None:
    # soft_wrap: a path in the message must not be broken across lines; escape: a key like
    # `stages[0]` is not rich markup; redact: no key or URL credential is ever printed.
    err.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)


def _write_traceback(error: BaseException) -> str | None:
    """The traceback of an unexpected error, redacted, in a new file under the temp folder."""
    import tempfile
    import time
    import traceback

    text = "".join(traceback.format_exception(error))
    try:
        handle, path = tempfile.mkstemp(prefix=f"stillroom-error-{time.strftime('%Y%m%d-%H%M%S')}-",
                                        suffix=".txt")
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(f"stillroom {' '.join(sys.argv[1:2])}: internal error\n\n")
            file.write(redact(text))
    except OSError:
        return None
    return path


def option_error(error: ValidationError, command: Callable[..., Any] | None = None) -> ConfigError:
    """A ValidationError raised while building a stage or backend from a verb's options, as a
    ConfigError naming the option (``--temperature``) or key: pydantic's ``msg`` only, never
    its ``input_value`` (the value may be a key or a URL with credentials)."""
    from stillroom.pipeline.config import pydantic_message

    flags = _option_flags(command) if command is not None else {}
    problems: list[str] = []
    first_key = None
    for problem in error.errors(include_url=False, include_input=False, include_context=False):
        loc = [str(part) for part in problem.get("loc", ())]
        key = None
        if len(loc) == 1 and loc[0] in flags:
            key = flags[loc[0]]
        elif loc:
            key = ".".join(loc)
        message = pydantic_message(str(problem.get("msg", "invalid value")))
        first_key = first_key or key
        problems.append(f"{key}: {message}" if key and problems else message)
    if len(problems) > 1:
        return ConfigError("; ".join(problems), key=first_key)
    return ConfigError(problems[0] if problems else f"invalid {error.title}", key=first_key)


def _option_flags(command: Callable[..., Any]) -> dict[str, str]:
    """``{parameter: "--flag"}`` for a verb's options, read from its annotations."""
    import typing
    from inspect import Parameter, signature

    from typer.models import OptionInfo

    try:
        hints = typing.get_type_hints(command, include_extras=True)
        parameters = signature(command).parameters
    except Exception:  # an annotation that does not resolve: fall back to the field names
        return {}
    flags = {}
    for name, parameter in parameters.items():
        default = "--" + name.replace("_", "-")  # Typer's name for an option it names itself
        infos = [meta for meta in getattr(hints.get(name), "__metadata__", ())
                 if isinstance(meta, OptionInfo)]
        if infos:
            # Typer takes a leading name given positionally (the `default` slot) as a flag.
            given = [infos[0].default, *(infos[0].param_decls or ())]
            long = [decl for decl in given if isinstance(decl, str) and decl.startswith("--")]
            flags[name] = long[0] if long else default
        elif parameter.default is not Parameter.empty and not hasattr(
            hints.get(name), "__metadata__"
        ):
            flags[name] = default
    return flags


# Options shared by every verb that runs a pipeline.
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an earlier run in OUT.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the request cache.")]
CacheDir = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Request cache folder (default: $STILLROOM_CACHE_DIR or ~/.cache/stillroom)."),
]
MaxFailureRate = Annotated[
    float,
    typer.Option("--max-failure-rate", min=0.0, max=1.0, help="Exit 1 when more rows than this share fail."),
]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bar.")]
Limit = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N input rows.")]
FlushRows = Annotated[int, typer.Option("--flush-rows", min=1, help="Commit after this many finished rows.")]
FlushSeconds = Annotated[float, typer.Option("--flush-seconds", min=0.0, help="...or after this many seconds.")]

# Where rows are processed (see docs/scaling.md).
ExecutorOption = Annotated[
    str,
    typer.Option("--executor", help="local (this process) or ray (a pool of Ray workers: a local "
                 "Ray, or the cluster at --address)."),
]
AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster to join (auto, or ray://HOST:10001) "
                 "(default: start a local Ray for this run)."),
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Ray workers (actors), each with its own backends "
                 "(default: one per CPU of the cluster, or per GPU set a local engine needs)."),
]
GpusPerWorker = Annotated[
    float | None,
    typer.Option("--gpus-per-worker", min=0.0, help="GPUs given to each Ray worker "
                 "(default: what the pipeline's local engine needs, e.g. vLLM's tensor_parallel_size)."),
]


def executor_options(
    executor: str, address: str | None, workers: int | None, gpus_per_worker: float | None
) -> dict[str, Any]:
    """The Ray options as RunOptions takes them; a bad combination is refused there, by key."""
    return {"executor": executor, "ray_address": address, "workers": workers,
            "gpus_per_worker": gpus_per_worker}


def run_options(
    overwrite: bool,
    no_cache: bool,
    cache_dir: Path | None,
    max_failure_rate: float,
    no_progress: bool,
    limit: int | None,
    flush_rows: int,
    flush_seconds: float,
) -> dict[str, Any]:
    return {
        "overwrite": overwrite,
        "use_cache": not no_cache,
        "cache_dir": cache_dir,
        "max_failure_rate": max_failure_rate,
        "progress": not no_progress,
        "limit": limit,
        "flush_rows": flush_rows,
        "flush_seconds": flush_seconds,
    }


def check_config_file(path: Path, what: str) -> None:
    """A config file argument that is missing, a folder, unreadable or not UTF-8: a ConfigError
    naming it (exit 2), before anything heavy is imported or loaded."""
    from stillroom.pipeline.config import read_config_file

    read_config_file(path, what)


def print_result(result: Any) -> None:
    from stillroom.cli.show import show_result

    show_result(out, result)
    for warning in (getattr(result, "summary", None) or {}).get("warnings") or []:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    if not result.ok:
        err.print(
            f"[bold red]{result.counts['failed']} rows failed ({result.failure_rate:.2%}), more than "
            f"--max-failure-rate {result.max_failure_rate:.2%}.[/] They are in {result.out}/failed/ "
            "with their reasons. Once the cause is fixed, rerun with --overwrite: every answer "
            "already received comes from the request cache, so only the failed requests are sent.",
            soft_wrap=True,
        )
        raise typer.Exit(1)


# Each verb lives in its own file and registers itself on `app`.
from stillroom.cli import (  # noqa: E402,F401
    complete,
    decontaminate,
    dedup,
    evaluate,
    filter,
    inspect,
    mix,
    quickstart,
    run,
    select,
    train,
    train_dpo,
    train_kd,
    verify,
)


def main() -> None:  # pragma: no cover - the console script calls `app` directly
    app(prog_name="stillroom")
    sys.exit(0)
