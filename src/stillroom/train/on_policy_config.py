"""The config of on-policy distillation (``stillroom train kd`` with ``mode: on_policy``); the
method and its outputs are described in :mod:`stillroom.train.on_policy`.

Usage::

    # stillroom train kd on_policy.yaml
    mode: on_policy
    student: embedded                # as for SFT: embedded | path | {init: {teacher: embedded, keep_every: 2}}
    data: quickstart-out/train       # rows with a `prompt` (text or turns) or `messages`
    output_dir: out/student-on-policy
    teacher: {kind: llamacpp}        # ANY backend that scores given token ids:
                                     #   {kind: llamacpp}  the embedded GGUF in process (or model: x.gguf)
                                     #   {kind: openai, base_url: http://127.0.0.1:8080/v1, model: x}
                                     #     a vLLM or SGLang server (not llama-cpp-python's: it cannot score ids)
                                     #   {kind: transformers, model: path}, {kind: vllm, model: path}
    # or several teachers, one per row, picked by a column:
    # teachers:
    #   math: {kind: llamacpp}
    #   code: {kind: openai, base_url: http://127.0.0.1:8080/v1, model: coder}
    # route_column: domain           # each row's value names its teacher
    # default_teacher: math          # for values no teacher is named after (else refused)
    teacher_prompt_column: null      # null: the teacher reads the row's prompt; `teacher_messages`
                                     # (the quickstart's worked examples): context distillation
    teacher_context: null            # turns the teacher reads before the row's prompt (or
                                     # teacher_prompt_column): a system prompt, worked examples;
                                     # the student reads the prompt alone (context distillation)
                                     # e.g. [{role: user, content: "What is 12 + 30?"},
                                     #       {role: assistant, content: "12 + 30 = 42"}]
    sampling_temperature: 1.0        # the student's samples; 1.0 = the student itself (unbiased)
    max_new_tokens: 64               # per sample, up to and including EOS; a row whose rendered
                                     # prompt + max_new_tokens exceeds max_length is refused (not
                                     # cut); teacher_context comes on top for the teacher
    kl_estimate: auto                # auto | sampled | topk (auto: topk where the teacher gave
                                     # alternatives, the sampled-token estimate elsewhere)
    top_logprobs: null               # k alternatives per token asked of the teacher (topk needs it)
    max_ratio: 2.0                   # truncation of the importance weight of a stale sample
    overlap: true                    # sample micro-batch i+1 while the teacher scores i
    cache: true                      # true: output_dir/teacher-cache.sqlite; false; or a path
    torch_threads: null              # null: half the cores beside an in-process llama.cpp teacher
    # and the common keys: epochs, max_steps, learning_rate, batch_size, gradient_accumulation,
    # max_length, seed, save_steps, lora, resume (see train.sft)

Every key is checked before anything is loaded: a teacher is read from its mapping as an eval
``backend:`` is (the backend registry's config class for its ``kind``) and a backend that cannot
score token ids is refused naming ``teacher`` (or ``teachers``) and the line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from stillroom.train.common import RunConfig

CACHE_FILE = "teacher-cache.sqlite"


def teacher_backend(data: Any, where: str) -> Any:
    """A validated BackendConfig from a teacher's mapping; ValueError (naming ``where``) when
    it is not one or when its backend cannot score given token ids."""
    # The registry directly (as an eval `backend:` is read): train may not import evaluate,
    # which imports train.
    from pydantic import ValidationError

    import stillroom.llm  # noqa: F401  (importing registers the built-in backend kinds)
    from stillroom.errors import ConfigError
    from stillroom.llm.backend import backends

    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a backend mapping such as {{kind: llamacpp}}, got "
                         f"{type(data).__name__}")
    kind = data.get("kind")
    if not isinstance(kind, str):
        raise ValueError(f"{where} needs a `kind` (llamacpp, openai, transformers, vllm)")
    try:
        config_class = backends.get(kind)
    except ConfigError as error:
        raise ValueError(f"{where}: {error.reason}") from None
    try:
        config = config_class.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"] if p != kind)
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{where}.{key}: {message}" if key else f"{where}: {message}") from None
    try:
        scores = bool(config.backend_class().supports_token_scoring)
    except NotImplementedError:
        scores = False
    if not scores:
        raise ValueError(f"{where}: the {config.kind} backend cannot score given token ids, which "
                         "on-policy distillation needs (llamacpp, openai, transformers and vllm can)")
    return config


class OnPolicyRunConfig(RunConfig):
    """``mode: on_policy``: the common keys (train.common.RunConfig) and the keys above."""

    mode: Literal["on_policy"]
    output_dir: str = "out/student-on-policy"
    teacher: dict[str, Any] | None = None
    teachers: dict[str, dict[str, Any]] | None = None
    route_column: str | None = Field(default=None, min_length=1)
    default_teacher: str | None = None
    teacher_prompt_column: str | None = Field(default=None, min_length=1)
    teacher_context: list[dict[str, str]] | None = None
    sampling_temperature: float = Field(default=1.0, gt=0)
    max_new_tokens: int = Field(default=64, ge=1)
    kl_estimate: Literal["auto", "sampled", "topk"] = "auto"
    top_logprobs: int | None = Field(default=None, ge=1, le=100, validate_default=True)
    max_ratio: float = Field(default=2.0, ge=1)
    overlap: bool = True
    cache: bool | str = True
    torch_threads: int | None = Field(default=None, ge=1)

    @field_validator("teacher_context")
    @classmethod
    def _context_turns(cls, value: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
        if value is not None:
            from stillroom.train.common import checked_turns

            if not value:
                raise ValueError("`teacher_context` is empty: give turns, or remove it")
            checked_turns(value)
        return value

    @field_validator("teacher")
    @classmethod
    def _one_teacher(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            teacher_backend(value, "teacher")
        return value

    @field_validator("teachers")
    @classmethod
    def _several(cls, value: dict[str, dict[str, Any]] | None,
                 info: ValidationInfo) -> dict[str, dict[str, Any]] | None:
        if value is None:
            return None
        if info.data.get("teacher") is not None:
            raise ValueError("`teacher` (one) and `teachers` (several, routed by `route_column`) "
                             "are exclusive: keep one")
        if not value:
            raise ValueError("`teachers` is empty")
        for name, data in value.items():
            teacher_backend(data, f"teachers.{name}")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _topk_asked(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None and info.data.get("kl_estimate") == "topk":
            raise ValueError("kl_estimate: topk needs the teacher's alternatives: set "
                             "`top_logprobs: k` (or use kl_estimate: auto / sampled)")
        return value

    @model_validator(mode="after")
    def _room(self) -> OnPolicyRunConfig:
        if self.max_new_tokens >= self.max_length:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) leaves no room for a prompt "
                             f"in max_length ({self.max_length}): a row's rendered prompt plus "
                             "max_new_tokens must fit max_length")
        return self

    @model_validator(mode="after")
    def _routing(self) -> OnPolicyRunConfig:
        if self.teacher is None and self.teachers is None:
            raise ValueError("on-policy distillation needs `teacher: {kind: ...}` or `teachers:` "
                             "with `route_column`")
        if self.teachers is not None and self.route_column is None:
            raise ValueError("`teachers` needs `route_column`: the column whose value names each "
                             "row's teacher")
        if self.teachers is None and (self.route_column or self.default_teacher):
            raise ValueError("`route_column` and `default_teacher` route rows among `teachers`; "
                             "with one `teacher` remove them")
        if self.default_teacher is not None and self.default_teacher not in (self.teachers or {}):
            raise ValueError(f"default_teacher {self.default_teacher!r} is not one of the "
                             f"teachers ({', '.join(sorted(self.teachers or {}))})")
        return self

    # -- derived ------------------------------------------------------------------------------

    def teacher_configs(self) -> dict[str, Any]:
        """Each teacher's name and validated BackendConfig (one teacher is named ``teacher``)."""
        named = {"teacher": self.teacher} if self.teacher is not None else dict(self.teachers or {})
        return {name: teacher_backend(data, name) for name, data in named.items()}

    def cache_path(self) -> Path | None:
        if self.cache is False:
            return None
        if self.cache is True:
            return self.path(self.output_dir) / CACHE_FILE
        return self.path(str(self.cache))

    def threads(self, in_process_llamacpp: bool) -> tuple[int | None, int]:
        """``(torch threads or None for torch's default, llama.cpp teacher threads)``: beside an
        in-process llama.cpp teacher the cores are split (torch first, at least one each), since
        both spin every core they are given and oversubscribed they slow each other down."""
        cores = os.cpu_count() or 1
        torch_threads = self.torch_threads
        if torch_threads is None and in_process_llamacpp:
            torch_threads = max(1, cores // 2)
        teacher = max(1, cores - (torch_threads or cores // 2))
        return torch_threads, teacher


__all__ = ["CACHE_FILE", "OnPolicyRunConfig", "teacher_backend"]
