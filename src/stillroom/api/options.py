"""Options in, a validated stage (or backend) out; a bad option is a ConfigError naming it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from stillroom.errors import ConfigError
from stillroom.llm.backend import BackendConfig, backends
from stillroom.pipeline.config import pydantic_message

Model = TypeVar("Model", bound=BaseModel)

# In ``flags``, the name for a problem of the options together (pydantic gives it no key).
WHOLE = ""


def build_stage(
    stage_class: type[Model], *, flags: Mapping[str, str] | None = None, **options: Any
) -> Model:
    """``stage_class`` from keyword options, None meaning "its default".

    A stage (or another options model, such as a mix's input) refuses bad options with a
    pydantic ValidationError; here it becomes one ConfigError (exit 2) naming the option, by its
    key (``length.min_completion``) or, where ``flags`` maps the key, by the flag that set it
    (see :func:`config_error`).
    """
    given = {key: value for key, value in options.items() if value is not None}
    try:
        return stage_class.model_validate(given)
    except ValidationError as error:
        raise config_error(error, flags) from None


def config_error(error: ValidationError, flags: Mapping[str, str] | None = None) -> ConfigError:
    """``error`` as a ConfigError that names each problem's option and says what is wrong.

    An option is named by its key (the dotted location, or the ``option`` a stage's own check
    names in its context), or by ``flags[key]`` when the caller has a name of its own for it, a
    CLI flag such as ``{"rows": "--rows-per-band"}``; ``flags[""]`` names a problem of the
    options together. Only pydantic's message is kept, never the value given: the value may be
    an API key or a URL with credentials.
    """
    flags = flags or {}
    named: list[tuple[str | None, str]] = []
    for problem in error.errors(include_url=False, include_input=False):
        key = _key_of(problem)
        named.append((flags.get(key or WHOLE, key), pydantic_message(str(problem.get("msg", "")))))
    if not named:
        return ConfigError(f"invalid {error.title}")
    (first_key, first_message), rest = named[0], named[1:]
    # The first problem's key heads the error (ConfigError prints it); the others name theirs.
    message = "; ".join([first_message, *(f"{key}: {text}" if key else text for key, text in rest)])
    return ConfigError(message or "invalid value", key=first_key)


def _key_of(problem: Any) -> str | None:
    location = ".".join(str(part) for part in problem.get("loc", ()))
    return location or (problem.get("ctx") or {}).get("option") or None


def backend_config(
    model: str | None = None,
    *,
    base_url: str | None = None,
    kind: str | None = None,
    **options: Any,
) -> BackendConfig:
    """Pick a backend from what the user gave, the way a user would guess.

    A base URL means an OpenAI-compatible server; no model means the embedded model; a ``.gguf``
    file runs in-process through llama.cpp; a folder is a transformers model; ``claude-*`` is
    Anthropic; any other name is a model on OpenAI's API.
    """
    if base_url is not None and model is None:
        # A server serves models by name; without one every request would be refused.
        raise ConfigError(
            "a server at a base URL needs the name of the model it serves: add --model NAME",
            key="--model",
        )
    if kind is None:
        if base_url is not None:
            kind = "openai"
        elif model is None or model.endswith(".gguf"):
            kind = "llamacpp"
        elif model.startswith("claude"):
            kind = "anthropic"
        elif Path(model).expanduser().is_dir():
            kind = "transformers"
        else:
            kind = "openai"
    config_class = backends.get(kind)
    fields: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if model is not None:
        fields["model"] = model
    if base_url is not None:
        if "base_url" not in config_class.model_fields:
            raise ConfigError(f"backend {kind!r} takes no base URL", key="base_url")
        fields["base_url"] = base_url
    unknown = set(fields) - set(config_class.model_fields)
    if unknown:
        raise ConfigError(f"backend {kind!r} has no option(s) {sorted(unknown)}", key=sorted(unknown)[0])
    # A bad value stays a ValidationError: the CLI names the flag that gave it (friendly_errors).
    return config_class(kind=kind, **fields)


def with_concurrency(
    backends: Mapping[str, BackendConfig], concurrency: int | None
) -> dict[str, BackendConfig]:
    """Every backend with ``concurrency`` requests in flight (None: each keeps its own).

    What ``--concurrency`` means on every verb. It is left out of a backend's identity (see
    :class:`BackendConfig`), so a run resumed with another value still resumes.
    """
    if concurrency is None:
        return dict(backends)
    if concurrency < 1:
        raise ConfigError("must be at least 1", key="concurrency")
    return {name: config.model_copy(update={"concurrency": concurrency})
            for name, config in backends.items()}
