"""The evaluation config: which models, which held-out rows, which metrics.

Every key is checked here, with ``file:line: key:`` errors, before any model is loaded (see the
package docstring, :mod:`stillroom.evaluate`, for the file's keys with an example).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from stillroom.errors import ConfigError

ROLES = ("baseline", "student", "teacher")


class GenerationOptions(BaseModel):
    """How every model answers (a model's own ``batch_size`` may override the batch size)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2, description="0 = greedy.")
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    system: str | None = Field(
        default=None,
        description="A system turn before each prompt. None: the chat template's own default "
        "(what training renders too).",
    )
    batch_size: int = Field(default=8, ge=1, description="Prompts decoded together (transformers).")


class BudgetForcing(BaseModel):
    """s1's budget forcing (Muennighoff et al. 2025) at inference; see :mod:`.budget`."""

    model_config = ConfigDict(extra="forbid")

    think_start: str = Field(default="<think>", description="Appended after the prompt.")
    think_end: str = Field(default="</think>", min_length=1)
    answer_prefix: str = "Final Answer:"
    max_thinking_tokens: int | None = Field(default=None, ge=1)
    min_thinking_tokens: int = Field(
        default=0, ge=0,
        description="Floor: ignore the end of thinking (append `wait`) while fewer tokens were "
        "spent, after max_waits too; bounded by max_thinking_tokens.",
    )
    wait: str = Field(default="Wait", min_length=1)
    max_waits: int = Field(
        default=0, ge=0,
        description="Ignore the end of thinking (append `wait`) this many times, whatever the "
        "length (s1's thinking_n_ignore); 0: only the floor extends.",
    )
    max_answer_tokens: int | None = Field(
        default=None, ge=1, description="Default: generation.max_new_tokens."
    )

    @model_validator(mode="after")
    def _bounds(self) -> BudgetForcing:
        if self.max_thinking_tokens is not None and self.min_thinking_tokens > self.max_thinking_tokens:
            raise ValueError(
                f"min_thinking_tokens ({self.min_thinking_tokens}) is above max_thinking_tokens "
                f"({self.max_thinking_tokens})"
            )
        return self


class ModelSpec(BaseModel):
    """One model to evaluate: exactly one of ``model``, ``backend`` or ``column``.

    * ``model``: ``embedded`` (SmolLM2-135M GGUF via transformers, float32), a transformers
      folder (e.g. a trained student's ``final/``) or a ``.gguf`` file: generation, perplexity;
    * ``backend``: any stillroom backend config (``{kind: llamacpp}``, ``{kind: openai,
      base_url: ...}``): generation only, so no perplexity;
    * ``column``: answers already in the data (e.g. the teacher's ``completion``): scored as they
      are, nothing generated.

    A plain string is ``model``.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    backend: dict[str, Any] | None = None
    column: str | None = None
    device: str = "cpu"
    batch_size: int | None = Field(default=None, ge=1)
    budget_forcing: BudgetForcing | bool | None = Field(
        default=None,
        description="None: the top-level budget_forcing; false: off; true: the defaults.",
    )
    thinking: Literal["on", "off"] | None = Field(
        default=None,
        description="on: the trace opened (or the template's enable_thinking=True); off: closed "
        "empty before the answer (or enable_thinking=False); None: the prompt as rendered, and "
        "when that prompt ends with think_start (an R1-style template opens the trace itself) "
        "the text is read as starting inside the trace, so a trace cut at the token limit is "
        "no answer (known for transformers, llama.cpp and vLLM models; a chat server's backend "
        "says it with think_opened).",
    )
    think_start: str = Field(default="<think>", min_length=1,
                             description="The tags of the model's inline trace.")
    think_end: str = Field(default="</think>", min_length=1)
    _backend_config: Any = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _plain_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"model": data}
        if isinstance(data, dict) and isinstance(data.get("thinking"), bool):
            # YAML 1.1 reads a bare on/off as a boolean.
            data = {**data, "thinking": "on" if data["thinking"] else "off"}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSpec:
        given = [k for k in ("model", "backend", "column") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `model` (embedded, a folder or .gguf), `backend` (a backend "
                f"config) or `column` (answers in the data); got {given or 'none'}"
            )
        if self.model is not None and not self.model.strip():
            raise ValueError("`model` is empty; use `embedded` or a path")
        if self.backend is not None:
            self._backend_config = backend_from_dict(self.backend)
        if self.thinking is not None and self.column is not None:
            raise ValueError("thinking: a `column` model's answers are already written")
        return self

    @property
    def kind(self) -> str:
        """``transformers``, ``backend`` or ``column``."""
        if self.model is not None:
            return "transformers"
        return "backend" if self.backend is not None else "column"

    @property
    def backend_config(self) -> Any:
        """The validated :class:`~stillroom.llm.backend.BackendConfig` (``backend`` models)."""
        return self._backend_config


def backend_from_dict(data: dict[str, Any]) -> Any:
    """A validated BackendConfig from a mapping; ValueError names the bad key."""
    import stillroom.llm  # noqa: F401  (importing registers the built-in backend kinds)
    from stillroom.llm.backend import backends

    kind = data.get("kind")
    if not isinstance(kind, str):
        raise ValueError("`backend` needs a `kind` (llamacpp, openai, transformers, ...)")
    try:
        config_class = backends.get(kind)
    except ConfigError as error:
        raise ValueError(f"backend: {error.reason}") from None
    try:
        return config_class.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != kind)
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"backend.{where}: {message}" if where else f"backend: {message}") from None


class JudgeOptions(BaseModel):
    """Pairwise judging of each model against one model, both orders asked (see .metrics)."""

    model_config = ConfigDict(extra="forbid")

    backend: dict[str, Any]
    against: str | None = Field(default=None, description="Default: the baseline role's model.")
    models: list[str] | None = Field(default=None, description="Default: every other model.")
    criteria: str | None = None
    show_reference: bool = Field(default=True, description="Show the judge the reference answer.")
    max_tokens: int = Field(default=512, ge=16)
    temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int | None = None
    _backend_config: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _backend(self) -> JudgeOptions:
        self._backend_config = backend_from_dict(self.backend)
        return self

    @property
    def backend_config(self) -> Any:
        return self._backend_config


class Roles(BaseModel):
    """Which named model plays which part in the headline numbers."""

    model_config = ConfigDict(extra="forbid")

    baseline: str | None = Field(default=None, description="The student before training.")
    student: str | None = None
    teacher: str | None = None


class PairedTest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: str
    b: str


class EvalConfig(BaseModel):
    """An evaluation. Paths are relative to the config file's folder (``base_dir``)."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(default=None, description="JSONL, Parquet or a stillroom output.")
    limit: int | None = Field(default=None, ge=1, description="Only the first N rows.")
    id_column: str = "id"
    prompt_column: str = Field(default="prompt", description="Rows with `messages` use those.")
    answer_column: str = Field(default="answer", description="The reference answer.")
    completion_column: str = Field(
        default="completion", description="The teacher's answer (for perplexity)."
    )
    models: dict[str, ModelSpec] = Field(min_length=1)
    roles: Roles = Field(default_factory=Roles)
    generation: GenerationOptions = Field(default_factory=GenerationOptions)
    budget_forcing: BudgetForcing | None = None
    verifier: str = "math"
    verifier_options: dict[str, Any] = Field(default_factory=dict)
    perplexity: bool = Field(default=True, description="Of the completion column, given the prompt.")
    perplexity_max_length: int = Field(default=1024, ge=8)
    judge: JudgeOptions | None = None
    paired_test: PairedTest | None = Field(
        default=None, description="Default: student vs baseline (or the first two models)."
    )
    paired_tests: list[PairedTest] = Field(
        default_factory=list,
        description="More pairs to test (e.g. thinking on vs off vs budget-forced).",
    )
    confidence: float = Field(default=0.95, gt=0, lt=1)
    cache: bool = Field(default=True, description="Use the request cache for backends and judge.")
    base_dir: str | None = Field(default=None, exclude=True)

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in models:
            if not str(name).strip():
                raise ValueError("a model name is empty")
        return models

    @model_validator(mode="after")
    def _references(self) -> EvalConfig:
        names = list(self.models)
        for role in ROLES:
            chosen = getattr(self.roles, role)
            if chosen is None and role in self.models:
                setattr(self.roles, role, role)  # a model named like a role plays it
            elif chosen is not None and chosen not in self.models:
                raise ValueError(f"roles.{role}: no model named {chosen!r} (models: {names})")
        if self.paired_test is not None:
            for side in ("a", "b"):
                if getattr(self.paired_test, side) not in self.models:
                    raise ValueError(f"paired_test.{side}: no model named "
                                     f"{getattr(self.paired_test, side)!r} (models: {names})")
        for index, pair in enumerate(self.paired_tests):
            for side in ("a", "b"):
                if getattr(pair, side) not in self.models:
                    raise ValueError(f"paired_tests.{index}.{side}: no model named "
                                     f"{getattr(pair, side)!r} (models: {names})")
        for name, spec in self.models.items():
            if spec.thinking == "off" and self.budget_for(name) is not None:
                raise ValueError(f"models.{name}.thinking: off closes the trace that budget "
                                 "forcing opens; set budget_forcing: false for this model")
        if self.judge is not None:
            against = self.judge.against or self.roles.baseline
            if against is None:
                raise ValueError("judge.against: name the model to judge against (no baseline role)")
            if against not in self.models:
                raise ValueError(f"judge.against: no model named {against!r} (models: {names})")
            for name in self.judge.models or []:
                if name not in self.models:
                    raise ValueError(f"judge.models: no model named {name!r} (models: {names})")
        self._check_verifier()
        return self

    def _check_verifier(self) -> None:
        from stillroom.verify.stage import build_verifier

        try:
            build_verifier(self.verifier, "completion", self.verifier_options_for_run())
        except ConfigError as error:
            raise ValueError(f"verifier: {error.reason}") from None

    def verifier_options_for_run(self) -> dict[str, Any]:
        """``verifier_options``, with ``reference_column`` set to ``answer_column`` when the
        verifier takes one and the options do not say."""
        import inspect

        import stillroom.verify  # noqa: F401  (registers the verifiers)
        from stillroom.verify.base import verifiers

        options = dict(self.verifier_options)
        try:
            parameters = inspect.signature(verifiers.get(self.verifier).__init__).parameters
        except ConfigError:
            return options
        if "reference_column" in parameters and "reference_column" not in options:
            options["reference_column"] = self.answer_column
        return options

    # -- derived ---------------------------------------------------------------------------------

    def path(self, value: str) -> Path:
        resolved = Path(value).expanduser()
        if not resolved.is_absolute() and self.base_dir is not None:
            resolved = Path(self.base_dir) / resolved
        return resolved

    def budget_for(self, name: str) -> BudgetForcing | None:
        """The budget forcing a model runs with: its own, the top-level one, or none."""
        own = self.models[name].budget_forcing
        if own is False:
            return None
        if own is True:
            return self.budget_forcing or BudgetForcing()
        if isinstance(own, BudgetForcing):
            return own
        return self.budget_forcing

    def paired_models(self) -> tuple[str, str] | None:
        """The two models of the paired test: as configured, student vs baseline, or the first
        two models; None with a single model."""
        if self.paired_test is not None:
            return self.paired_test.a, self.paired_test.b
        if self.roles.student is not None and self.roles.baseline is not None:
            return self.roles.student, self.roles.baseline
        names = list(self.models)
        return (names[0], names[1]) if len(names) >= 2 else None

    def all_pairs(self) -> list[tuple[str, str]]:
        """Every pair to test: :meth:`paired_models`, then ``paired_tests`` (each once)."""
        pairs = [] if (first := self.paired_models()) is None else [first]
        for pair in self.paired_tests:
            if (pair.a, pair.b) not in pairs:
                pairs.append((pair.a, pair.b))
        return pairs

    def metric(self) -> str:
        return f"accuracy ({self.verifier} verifier)"


# -- the file ------------------------------------------------------------------------------------

# Union branches and validator wrappers pydantic puts in an error location; YAML has no key for
# them.
_UNION_TAGS = {"BudgetForcing", "bool", "str"}


def _is_tag(part: Any) -> bool:
    return part in _UNION_TAGS or (isinstance(part, str) and part.startswith("function-"))


def parse_eval_config(text: str, path: str = "<eval config>", base_dir: Path | None = None) -> EvalConfig:
    """Validate an eval config's YAML text; errors are ConfigError naming file:line and key."""
    from stillroom.pipeline.config import read_yaml_mapping

    root, data = read_yaml_mapping(text, path, "an eval config must be a mapping with `data:` and `models:`")
    if "base_dir" in data:
        raise ConfigError("unknown key 'base_dir'", path=path, key="base_dir", line=1)
    try:
        config = EvalConfig.model_validate(data)
    except ValidationError as validation:
        raise _config_error(validation, root, path) from None
    config.base_dir = str(base_dir) if base_dir is not None else None
    return config


def _config_error(validation: ValidationError, root: yaml.Node, path: str) -> ConfigError:
    from stillroom.pipeline.config import _line_of

    first = max(validation.errors(), key=lambda error: len(error["loc"]))
    loc = tuple(p for p in first["loc"] if not _is_tag(p))
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown key {str(loc[-1])!r}"
    elif first["type"] == "missing":
        message = "required key is missing"
    key = ".".join(str(p) for p in loc) or None
    # A cross-key problem (`roles.student: no model named ...`) names its key in the message.
    if key is None and ": " in message and message.split(": ", 1)[0].replace(".", "").isidentifier():
        key, message = message.split(": ", 1)
        loc = tuple(key.split("."))
    return ConfigError(message, path=path, line=_line_of(root, loc), key=key)


def load_eval_config(path: str | Path) -> EvalConfig:
    from stillroom.pipeline.config import read_config_file

    file = Path(path)
    return parse_eval_config(read_config_file(file, "eval config"), str(file), file.resolve().parent)


def as_config(config: EvalConfig | dict[str, Any] | str | Path) -> EvalConfig:
    """An EvalConfig from a config, a mapping (paths relative to the working folder) or a file."""
    if isinstance(config, EvalConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_eval_config(config)
    try:
        return EvalConfig.model_validate(config)
    except ValidationError as validation:
        first = max(validation.errors(), key=lambda error: len(error["loc"]))
        loc = [str(p) for p in first["loc"] if not _is_tag(p)]
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}"
        raise ConfigError(message, key=".".join(loc) or None) from None


__all__ = [
    "ROLES",
    "BudgetForcing",
    "EvalConfig",
    "GenerationOptions",
    "JudgeOptions",
    "ModelSpec",
    "PairedTest",
    "Roles",
    "as_config",
    "backend_from_dict",
    "load_eval_config",
    "parse_eval_config",
]
