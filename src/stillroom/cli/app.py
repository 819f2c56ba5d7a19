"""The ``stillroom`` Typer app and what every verb shares: the consoles, how errors reach the user,
and how a run's result is printed. Each verb lives in its own module and registers on ``app``;
``stillroom.cli.main`` imports them all."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from stillroom.errors import ConfigError, StillroomError
from stillroom.secrets import redact

if TYPE_CHECKING:
    from stillroom.pipeline.stage import Stage

app = typer.Typer(
    name="stillroom",
    help="Synthetic data and distillation for LLM post-training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

# A table piped to a file (or read by a program) is not cut to rich's default of 80 columns when
# stdout is no terminal: long reasons and model names stay whole, one row a line. Tables size
# their columns to their content, so a wide limit adds no padding.
PIPED_WIDTH = 100_000

F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    if value:
        from stillroom.version import __version__

        typer.echo(f"stillroom {__version__}")
        raise typer.Exit()


@app.callback()
def _start(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version,
                     help="Print the version and exit."),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v",
                     help="Also show the progress bars, logs and warnings of transformers, torch, "
                          "datasets, sentence-transformers and vLLM (hidden by default). Give it "
                          "before the verb: stillroom -v run ..."),
    ] = False,
) -> None:
    """Synthetic data and distillation for LLM post-training."""
    # Before any verb imports those libraries (every verb imports them lazily).
    if not verbose:
        from stillroom.cli.quiet import quiet_libraries

        ctx.call_on_close(quiet_libraries())
    for console in (out, err):
        if not console.is_terminal:
            console.width = PIPED_WIDTH


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
    ConfigError naming the option by its flag (``--temperature``) where the verb has one."""
    from stillroom.api import config_error

    return config_error(error, option_flags(command) if command is not None else None)


def option_flags(command: Callable[..., Any], **renamed: str) -> dict[str, str]:
    """``{parameter: "--flag"}`` for a verb's options, read from its annotations, plus
    ``renamed`` (a stage option the verb sets from a flag of another name, such as dedup's
    ``rows=--rows-per-band``)."""
    import typing
    from inspect import Parameter, signature

    from typer.models import OptionInfo

    try:
        hints = typing.get_type_hints(command, include_extras=True)
        parameters = signature(command).parameters
    except Exception:  # an annotation that does not resolve: fall back to the field names
        return dict(renamed)
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
    return {**flags, **renamed}


def check_config_file(path: Path, what: str) -> None:
    """A config file argument that is missing, a folder, unreadable or not UTF-8: a ConfigError
    naming it (exit 2), before anything heavy is imported or loaded."""
    from stillroom.pipeline.config import read_config_file

    read_config_file(path, what)


def print_result(result: Any, stages: Sequence[Stage] = ()) -> None:
    """The run's tables and warnings, then one line per stage from its own figures (see
    :meth:`Stage.result_line`); exit 1 when more rows failed than the run allows."""
    from stillroom.cli.show import show_result
    from stillroom.pipeline.pipeline import stage_names

    show_result(out, result)
    summary = getattr(result, "summary", None) or {}
    for warning in summary.get("warnings") or []:
        err.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    figures = summary.get("stage_results") or {}
    for stage, name in zip(stages, stage_names(stages), strict=True):
        line = stage.result_line(figures[name]) if name in figures else None
        if line:
            out.print(redact(line), highlight=False, markup=False, soft_wrap=True)
    if not result.ok:
        err.print(
            f"[bold red]{result.counts['failed']} rows failed ({result.failure_rate:.2%}), more than "
            f"--max-failure-rate {result.max_failure_rate:.2%}.[/] They are in {result.out}/failed/ "
            "with their reasons. Once the cause is fixed, rerun with --overwrite: every answer "
            "already received comes from the request cache, so only the failed requests are sent.",
            soft_wrap=True,
        )
        raise typer.Exit(1)
