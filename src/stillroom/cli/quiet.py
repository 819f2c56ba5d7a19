"""Keep other libraries' progress bars, logs and warnings out of stillroom's output.

transformers, torch, datasets, sentence-transformers, huggingface_hub and vLLM each print their
own bars ("Loading checkpoint shards", "Loading weights", "Converting and de-quantizing GGUF
tensors") and warnings (``generation flags are not valid``, tokenizer notes) to stderr, in the
middle of our progress bar and tables. The CLI turns them off once, at its start (the app's
callback, before any verb imports those libraries), unless the user passes ``--verbose``; no
backend has to do it on its own.

Most of these switches are read when a library is first imported (tqdm reads ``TQDM_*`` when it
is imported, transformers its verbosity when its logger is first made), so they are set as
environment variables; a value the user set stays theirs. Python warnings are ignored (stillroom
issues none: it reports through logging, which stays on). Everything is undone when the command
ends, so a program (or a test) that runs several commands in one process gets its settings back.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable

# Environment switches, each documented by its library.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' logger: only errors
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",  # its advisory warnings (logger.warning_advice)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, which transformers' follow
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' map/filter/load bars
    "TQDM_DISABLE": "1",  # any other tqdm bar (the GGUF conversion, sentence-transformers)
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM's engine start-up log
}
# Python loggers of those libraries, raised to ERROR (transformers keeps its own handler).
QUIET_LOGGERS = ("transformers", "torch", "datasets", "sentence_transformers", "huggingface_hub",
                 "accelerate", "trl", "vllm", "filelock", "urllib3")


def quiet_libraries() -> Callable[[], None]:
    """Silence the libraries above; returns a function that undoes it."""
    saved_env = {name: os.environ.get(name) for name in QUIET_ENV}
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    saved_levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # catch_warnings saves the filters and restores them on __exit__. All Python warnings are
    # ignored: stillroom says what it has to say through logging and its own messages, and a
    # library's warning often points (stacklevel) at the stillroom line that called it, so a
    # filter by module could not tell ours from theirs.
    caught = warnings.catch_warnings()
    caught.__enter__()
    warnings.filterwarnings("ignore")
    undo_imported = _quiet_imported()

    def restore() -> None:
        undo_imported()
        caught.__exit__(None, None, None)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore


def _quiet_imported() -> Callable[[], None]:
    """The same for transformers and huggingface_hub when already imported (by a program that
    runs the CLI in its own process): their switches were read at import."""
    undo: list[Callable[[], None]] = []
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        undo.append(lambda: hf_logging.set_verbosity(verbosity))
        if bars:
            undo.append(hf_logging.enable_progress_bar)
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and not hub.are_progress_bars_disabled():
        hub.disable_progress_bars()
        undo.append(hub.enable_progress_bars)

    def restore() -> None:
        for step in undo:
            step()

    return restore
