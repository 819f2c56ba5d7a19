"""The small protocol every LLM backend implements, and the registry that names them.

A backend turns one :class:`Request` into one :class:`Completion` or raises :class:`BackendError`.
It knows nothing of caching, retries or concurrency limits: :class:`stillroom.llm.client.LLMClient`
adds those the same way for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from stillroom.llm.reasoning import THINK_END, THINK_START, ThinkTags
from stillroom.llm.types import Completion, GenerationParams, Message, Request
from stillroom.registry import Registry


class Backend(ABC):
    kind: ClassVar[str]
    supports_logprobs: ClassVar[bool] = False
    supports_json_schema: ClassVar[bool] = False
    supports_raw_prompt: ClassVar[bool] = False
    # A native tool API: the request's ``tools``/``tool_choice`` and tool turns are sent as such
    # and the answer's calls come back in Completion.tool_calls. Without one, LLMClient asks in
    # plain turns and parses the calls out of the text (stillroom.llm.tool_emulation).
    supports_tools: ClassVar[bool] = False
    # Whether render_chat_template works: the model's chat template is known here. A server
    # (OpenAI-compatible) applies its template out of our sight, so it cannot.
    renders_chat_template: ClassVar[bool] = False
    # Whether score() works: teacher-forced log-probs of a given completion (vllm and
    # transformers; the teacher_logprobs stage checks it before any request).
    supports_scoring: ClassVar[bool] = False
    # Scoring given token ids (on-policy distillation: the teacher scores the student's own
    # tokens, which re-tokenizing their text could split differently).
    supports_token_scoring: ClassVar[bool] = False

    def __init__(self, model: str):
        self.model = model

    @abstractmethod
    async def generate(self, request: Request) -> Completion:
        """Produce one completion, or raise BackendError."""

    async def render_chat_template(
        self, messages: list[Message], *, add_generation_prompt: bool
    ) -> str:
        """The text the model's own chat template makes of ``messages`` (what a chat request
        sends, for backends that apply the template themselves). Magpie cuts it at the user's
        text to find the template's pre-query prefix."""
        raise NotImplementedError(f"the {self.kind} backend cannot render its chat template")

    async def score(
        self,
        prompt: list[Message] | str | None,
        completion: str,
        top_logprobs: int | None = None,
        *,
        max_length: int | None = None,
        max_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``completion``'s tokens after ``prompt`` (chat messages;
        raw text, read with the tokenizer's default leading special tokens, so ``""`` is only
        those; or None: after the BOS token): one ``{"token", "id", "logprob"}`` entry per
        completion token, with ``top_logprobs`` also ``"top_logprobs": [{"token", "id",
        "logprob"}]``, best first. A first token with nothing before it is left out.
        ``max_tokens`` scores only the completion's first tokens; ``max_length`` cuts the
        completion so prompt and completion fit in that many tokens (and in the model); when
        either cut it, the last entry has ``"truncated": True``. Only backends with
        ``supports_scoring`` implement it; callers pass the two limits only when set."""
        raise NotImplementedError(f"the {self.kind} backend cannot score a given completion")

    @property
    def score_tokens_needs_text(self) -> bool:
        """True where score_tokens needs the ids' text too (a server that takes text only)."""
        return False

    async def score_tokens(
        self,
        token_ids: list[int],
        start: int,
        top_logprobs: int | None = None,
        *,
        text: str | None = None,
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``token_ids[start:]``, each given the ids before it.

        The ids are the whole context in this backend's vocabulary: no chat template is applied
        and no BOS is added (the caller renders and tokenizes with a tokenizer it has checked to
        be the same). ``1 <= start < len(token_ids)``. Returns one entry per scored token, in
        order, ``{"id": int, "token": str, "logprob": float}``, with ``top_logprobs`` also
        ``"top_logprobs": [{"id": int | None, "token": str, "logprob": float}]``, best first
        (``id`` None where the server names alternatives by text only). ``id`` of an entry is
        always ``token_ids[start + i]``. ``text``: the ids' text (special tokens written out),
        passed only to backends whose ``score_tokens_needs_text`` is true (a server that takes
        text only, which checks that it tokenizes back to the ids). Only backends with
        ``supports_token_scoring`` implement it."""
        raise NotImplementedError(f"the {self.kind} backend cannot score given token ids")

    def count_tokens(self, text: str) -> int | None:
        """How many tokens ``text`` is in this backend's tokenizer, or None when it has none at
        hand (a server). The client counts an inline trace's tokens with it, so engines that
        hold their tokenizer report an exact count instead of an estimate."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional: most backends have nothing to free
        """Release connections, threads or model memory."""

    def cache_identity(self) -> dict[str, Any]:
        """What, besides the request, decides the answer: part of every cache key."""
        return {"backend": self.kind, "model": self.model}


class BackendConfig(BaseModel):
    """Options common to every backend. Subclasses add their own and implement ``build``.

    The retry and concurrency options change how a run goes, not what it produces, so they are
    left out of :meth:`identity` (a rerun with another ``concurrency`` still resumes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    model: str | None = None
    concurrency: int = Field(default=16, ge=1, description="Requests in flight at once.")
    timeout: float | None = Field(default=300.0, gt=0, description="Seconds per request attempt.")
    max_retries: int = Field(default=6, ge=0, description="Retries after the first attempt.")
    retry_base_delay: float = Field(default=1.0, ge=0, description="First backoff, seconds.")
    retry_max_delay: float = Field(default=60.0, ge=0, description="Longest backoff, seconds.")
    # Prices only feed the cost estimate in the card and report.
    input_price: float | None = Field(
        default=None, ge=0, description="Price per million prompt tokens (for the cost estimate)."
    )
    output_price: float | None = Field(
        default=None, ge=0, description="Price per million completion tokens."
    )

    # Inline reasoning traces. They change what a row holds, so they stay in identity(); they are
    # not part of the request cache key (the cache keeps the backend's text as it came, and the
    # client splits it on the way out, cached or fresh).
    think_tags: bool = Field(
        default=False,
        description="The model writes its reasoning inline (think_start ... think_end) in its "
        "text: split it off into the reasoning column; the text after it is the answer.",
    )
    think_start: str = Field(
        default=THINK_START, min_length=1, description="Tag that opens an inline trace."
    )
    think_end: str = Field(
        default=THINK_END, min_length=1, description="Tag that closes an inline trace."
    )
    think_opened: bool = Field(
        default=False,
        description="The chat template or prompt already opened the trace, so the text starts "
        "inside it (everything before think_end is the trace; no think_end = an unfinished "
        "trace, not an answer).",
    )

    _runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {"concurrency", "timeout", "max_retries", "retry_base_delay", "retry_max_delay",
         "input_price", "output_price"}
    )

    def build(self) -> Backend:
        raise NotImplementedError

    def think(self) -> ThinkTags | None:
        """How to split inline traces off this backend's answers; None when think_tags is off."""
        if not self.think_tags:
            return None
        return ThinkTags(self.think_start, self.think_end, self.think_opened)

    def check_params(self, params: GenerationParams, *, key: str = "params") -> None:
        """ConfigError (naming ``key``) when a stage's sampling ``params`` cannot be sent to
        this backend as configured; stages call it from ``check_backends``, before any request.
        Most backends take any."""

    def identity(self) -> dict[str, Any]:
        exclude = set(self._runtime_fields)
        if not self.think_tags:
            # Off, the tag options decide nothing; left out so fingerprints of runs made before
            # they existed stay the same.
            exclude |= _THINK_FIELDS
        return self.model_dump(exclude=exclude, exclude_none=True)

    # Capabilities, answered before anything is built so a bad pipeline fails early.
    def backend_class(self) -> type[Backend]:
        raise NotImplementedError

    def gpus_per_replica(self) -> float:
        """GPUs one built backend occupies (the Ray executor reserves them per worker)."""
        return 0


_THINK_FIELDS = frozenset({"think_tags", "think_start", "think_end", "think_opened"})

backends: Registry[type[BackendConfig]] = Registry("backend kind")
