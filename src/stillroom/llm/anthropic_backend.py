"""Anthropic's Messages API through the official ``anthropic`` SDK.

The SDK is imported on first use, not with this module: it takes about two seconds to import, and
most runs never talk to Anthropic. Its own retries and timeouts are switched off (``max_retries=0``,
``timeout=None``) because :class:`stillroom.llm.client.LLMClient` retries and times out every
backend the same way; errors are mapped to the same :class:`BackendError` kinds as an
OpenAI-compatible server's (see ``error_for_status``), so failure reasons read alike everywhere.

What the Messages API cannot do, this backend does not pretend to:

* no ``seed``: the API has no such parameter, so a sampled answer does not reproduce;
* ``temperature`` and ``top_p`` are sent only when a request sets them, and through
  ``extra_body``: SDK 2.x dropped them from ``messages.create`` because API version 2026-10-21
  (which it sends) rejects them with a 400. They are still passed on rather than dropped
  silently, so a server that honours them (an older API version, a compatible proxy) does, and
  one that does not says so in the row's failure reason instead of sampling differently than
  asked;
* no logprobs and no raw prompts (``supports_logprobs`` / ``supports_raw_prompt`` are False);
* a ``json_schema`` is not sent: the text comes back as it is and ``LLMClient`` validates it and
  re-asks with the error.

Tools go as Anthropic's ``{name, description, input_schema}`` and ``tool_choice`` as its
``{"type": "auto" | "any" | "tool" (with ``name``) | "none"}`` ("required" is "any"). In the
conversation an assistant turn's calls become content blocks (its text, then one ``tool_use``
``{id, name, input}`` per call) and tool turns a user message of ``tool_result`` blocks (several
tool turns in a row go into one message, as the API wants every result of a turn together); the
answer's ``tool_use`` blocks come back as ``tool_calls`` in the row shape (``input`` as JSON
text) and its text blocks as the text.

Extended thinking (``thinking_budget``) sends ``thinking={"type": "enabled", "budget_tokens": N}``.
The thinking blocks' text becomes the completion's ``reasoning``; ``redacted_thinking`` blocks
(encrypted by Anthropic) are never kept as text: their tokens are in ``output_tokens`` (and in
``output_tokens_details.thinking_tokens`` when the API reports it; otherwise the client estimates
the trace's share by characters, which cannot see redacted blocks). The API's rules for thinking
(budget at least 1024 and below max_tokens; temperature left at 1; top_p 0.95 to 1) are checked
before any request: the floor in the config; the rest by ``check_params`` for a stage's
parameters (its max_tokens, or max_tokens_default when it sets none: a budget above the default
is fine when every stage sets a larger max_tokens), and again per request, for stages that do
not call ``check_params``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from stillroom import secrets
from stillroom.errors import ConfigError
from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.openai_compat import _is_local, check_base_url
from stillroom.llm.response_fields import (
    described,
    malformed,
    object_field,
    reasoning_token_count,
    text_field,
    token_count,
)
from stillroom.llm.tool_calls import ToolSchemaError, call_arguments, make_call, normalize_tools
from stillroom.llm.tool_emulation import tool_choice_name
from stillroom.llm.types import (
    BackendError,
    Completion,
    GenerationParams,
    Message,
    Request,
    error_for_status,
)

ANTHROPIC_BASE_URL = "https://api.anthropic.com"

# A local test server only checks that a key header is present; the SDK refuses to send a request
# without one. Never used for a remote base_url (``build`` demands a real key there).
_LOCAL_PLACEHOLDER_KEY = "stillroom-local-placeholder"

# Anthropic's stop reasons in the OpenAI vocabulary the rest of stillroom reads.
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}


def _text_of(content: Any) -> str:
    """A system message's text: a string, or the text blocks of a content list."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, str):
            parts.append(block)
    return "".join(parts)


# Anthropic's floor for budget_tokens (see ThinkingConfigEnabledParam in the SDK).
MIN_THINKING_BUDGET = 1024


def thinking_problem(
    budget: int, params: GenerationParams, max_tokens_default: int, model: str = ""
) -> tuple[str, str] | None:
    """(key, what is wrong) when ``params`` cannot go with extended thinking of ``budget``
    tokens under the API's rules, or None. ``max_tokens_default`` stands in for a max_tokens
    the params do not set, as it does in the request. The message names ``thinking_budget``,
    the backend and where max_tokens came from: it is printed on its own, under a key that
    may name only the field."""
    backend = f"the anthropic backend ({model})" if model else "the anthropic backend"
    if params.max_tokens is not None:
        max_tokens, source = params.max_tokens, f"max_tokens {params.max_tokens}"
        fix = f"set max_tokens above {budget}"
    else:
        max_tokens = max_tokens_default
        source = (f"max_tokens_default {max_tokens_default} (sent where no max_tokens is "
                  "set, as here)")
        fix = f"set max_tokens (or the backend's max_tokens_default) above {budget}"
    if max_tokens <= budget:
        return "max_tokens", (
            f"{source} must exceed thinking_budget {budget} of {backend}: with extended "
            f"thinking the trace and the answer share max_tokens, and Anthropic refuses a "
            f"budget that is not below it; {fix}, or lower thinking_budget"
        )
    if params.temperature is not None and params.temperature != 1:
        return "temperature", (
            f"temperature {params.temperature:g} cannot be sent to {backend}, which has "
            f"thinking_budget {budget}: with extended thinking Anthropic allows only the "
            "default, 1; unset temperature"
        )
    if params.tools and params.tool_choice not in (None, "auto", "none"):
        return "tool_choice", (
            f"tool_choice {params.tool_choice!r} cannot be sent to {backend}, which has "
            f"thinking_budget {budget}: with extended thinking Anthropic allows only 'auto' "
            "and 'none'; unset tool_choice or thinking_budget"
        )
    if params.top_p is not None and not 0.95 <= params.top_p <= 1:
        return "top_p", (
            f"top_p {params.top_p:g} cannot be sent to {backend}, which has thinking_budget "
            f"{budget}: with extended thinking Anthropic allows 0.95 to 1"
        )
    return None


def anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI function tools (the row shape) as the Messages API's tool definitions."""
    try:
        normalized = normalize_tools(tools)
    except ToolSchemaError as error:
        raise BackendError(str(error), kind="BadRequestError", status=400) from None
    out = []
    for tool in normalized:
        function = tool["function"]
        definition = {"name": function["name"], "input_schema": function["parameters"]}
        if function["description"]:
            definition["description"] = function["description"]
        out.append(definition)
    return out


def anthropic_tool_choice(tool_choice: Any) -> dict[str, Any] | None:
    """An OpenAI ``tool_choice`` in the Messages API's words; None (the API's default, auto)
    when unset."""
    if tool_choice is None:
        return None
    named = tool_choice_name(tool_choice)
    if named is not None:
        return {"type": "tool", "name": named}
    return {"type": {"auto": "auto", "required": "any", "none": "none"}[tool_choice]}


def anthropic_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation (system turns already taken out) in the Messages API's shape: calls as
    ``tool_use`` blocks, tool turns as ``tool_result`` blocks of one user message per run of
    consecutive tool turns."""
    out: list[dict[str, Any]] = []
    # A call without an id gets one made from its place (unique in the conversation, as the
    # API requires); the tool turns without an id that follow it, in order, answer those
    # calls, so they get the same ids and each tool_result still names its tool_use.
    unnamed: list[str] = []
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "tool":
            answered = message.get("tool_call_id") or (unnamed.pop(0) if unnamed else "")
            result = {"type": "tool_result", "tool_use_id": answered,
                      "content": str(message.get("content") or "")}
            previous = out[-1] if out else None
            if (previous is not None and previous["role"] == "user"
                    and isinstance(previous["content"], list)
                    and all(block.get("type") == "tool_result" for block in previous["content"])):
                previous["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
        elif role == "assistant" and message.get("tool_calls"):
            unnamed = []  # ids left unanswered by an earlier turn's results are not these
            blocks: list[dict[str, Any]] = []
            text = _text_of(message.get("content"))
            if text:
                blocks.append({"type": "text", "text": text})
            for number, call in enumerate(message["tool_calls"]):
                try:
                    arguments = call_arguments(call)
                except ValueError as error:
                    # tool_use.input must be an object: a call whose arguments never parsed
                    # cannot be sent back as one, and dropping it would change the conversation.
                    raise BackendError(
                        f"messages[{index}].tool_calls[{number}]: {error}; Anthropic takes a "
                        "call's input as a JSON object only", kind="BadRequestError", status=400,
                    ) from None
                function = call.get("function") or {}
                call_id = call.get("id")
                if not call_id:
                    call_id = f"call_{index}_{number}"
                    unnamed.append(call_id)
                blocks.append({"type": "tool_use", "id": call_id,
                               "name": function.get("name", ""), "input": arguments})
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": role, "content": message["content"]})
    return out


def messages_body(
    model: str, request: Request, max_tokens_default: int, thinking_budget: int | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``messages.create`` for one request."""
    if request.messages is None:
        raise BackendError(
            "the anthropic backend answers chat messages only, not raw prompts; send `messages` "
            "or use a backend with raw prompt support (openai, llamacpp, transformers)",
            kind="BadRequestError",
        )
    params = request.params
    if params.top_logprobs is not None:
        raise BackendError(
            "the Anthropic API returns no logprobs; remove top_logprobs or use an "
            "OpenAI-compatible, llama.cpp or transformers backend",
            kind="BadRequestError",
        )
    # The API takes the system prompt as a parameter of its own, not as a message.
    system = [_text_of(m["content"]) for m in request.messages if m["role"] == "system"]
    body: dict[str, Any] = {
        "model": model,
        "messages": anthropic_messages([m for m in request.messages if m["role"] != "system"]),
        # Required by the API, unlike OpenAI's.
        "max_tokens": params.max_tokens if params.max_tokens is not None else max_tokens_default,
    }
    if system:
        body["system"] = "\n\n".join(system)
    # Not keyword arguments of messages.create any more (see the module docstring).
    sampling = {
        name: value
        for name, value in (("temperature", params.temperature), ("top_p", params.top_p))
        if value is not None
    }
    if sampling:
        body["extra_body"] = sampling
    if params.presence_penalty or params.frequency_penalty:
        # Sending the request without them would answer a different question than was asked.
        raise BackendError(
            "the Anthropic API has no presence_penalty or frequency_penalty; unset them",
            kind="BadRequestError", status=400, retryable=False,
        )
    if params.stop:
        body["stop_sequences"] = list(params.stop)
    if params.tools:
        body["tools"] = anthropic_tools(params.tools)
        choice = anthropic_tool_choice(params.tool_choice)
        if choice is not None:
            body["tool_choice"] = choice
    if thinking_budget is not None:
        problem = thinking_problem(thinking_budget, params, max_tokens_default, model)
        if problem is not None:
            # Asking again would be refused again: the request, not the server, is at fault.
            raise BackendError(problem[1], kind="BadRequestError", status=400, retryable=False)
        body["thinking"] = {"type": "enabled", "budget_tokens": thinking_budget}
    # params.seed and request.sample are not sent: the API has no seed. They still go into the
    # cache key (LLMClient), so sample 3 is never served sample 1's answer.
    return body


def _block_text(block: dict[str, Any], field: str, index: int) -> str:
    value = block.get(field)
    if not isinstance(value, str):
        raise malformed(f"content[{index}].{field} of a {block.get('type')} block is "
                        f"{described(value)}, not a string")
    return value


def parse_message(message: Any, model: str) -> Completion:
    """Read the fields we keep from a ``Message`` (an SDK object or its dict form).

    Checked field by field like an OpenAI-compatible body (see ``malformed``): a server speaking
    the Messages API (a proxy, a test server) can send anything, and the SDK builds its objects
    from a response without validating them.
    """
    # warnings off: a field of the wrong type is reported below, naming it.
    data = message if isinstance(message, dict) else message.model_dump(warnings=False)
    if not isinstance(data, dict):
        raise malformed("the message is not an object")
    blocks = data.get("content") or []
    if not isinstance(blocks, list):
        raise malformed(f"content is {described(blocks)}, not a list of content blocks")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    redacted = False
    for index, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise malformed(f"content[{index}] is {described(block)}, not a content block")
        kind = block.get("type")
        if kind == "text":
            texts.append(_block_text(block, "text", index))
        elif kind == "thinking":
            thoughts.append(_block_text(block, "thinking", index))
        elif kind == "redacted_thinking":
            # A redacted block's data is encrypted: never text for a row (see the module
            # docstring), but it shows that the model thought.
            redacted = True
        elif kind == "tool_use":
            name = _block_text(block, "name", index)
            arguments = block.get("input")
            if not isinstance(arguments, dict):
                raise malformed(f"content[{index}].input of a tool_use block is "
                                f"{described(arguments)}, not an object")
            call_id = block.get("id")
            calls.append(make_call(name, arguments, call_id if isinstance(call_id, str)
                                   and call_id else f"call_{len(calls)}"))
        # Other blocks (citations, server tools' results) hold no answer text.
    text = "".join(texts)
    reasoning = "\n\n".join(t for t in thoughts if t) if thoughts or redacted else None
    usage = object_field(data.get("usage"), "usage")
    # Prompt-cache reads and writes are prompt tokens too; the API counts them apart.
    prompt_tokens = sum(
        token_count(usage, name, "usage")
        for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    # Thinking tokens are billed as output tokens and are part of this count.
    completion_tokens = token_count(usage, "output_tokens", "usage")
    stop_reason = text_field(data.get("stop_reason"), "stop_reason")
    finish_reason = _FINISH_REASONS.get(stop_reason, stop_reason) if stop_reason else None
    served_model = data.get("model")
    return Completion(
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        model=served_model if isinstance(served_model, str) and served_model else model,
        reasoning=reasoning,
        # Newer API versions count them apart; otherwise (or when the count cannot be true)
        # LLMClient estimates them.
        reasoning_tokens=reasoning_token_count(
            usage.get("output_tokens_details"), "thinking_tokens", completion_tokens
        ) if reasoning is not None else 0,
        # Cut at max_tokens while thinking: a trace and no answer after it.
        reasoning_ended=not (reasoning is not None and finish_reason == "length"
                             and not text.strip() and not calls),
        tool_calls=calls or None,
    )


def map_error(error: Exception) -> BackendError:
    """An SDK exception as a BackendError with the meaning ``error_for_status`` gives statuses.

    Every message is redacted here, where it is made: a server answering a bad key may quote
    it ("invalid x-api-key: sk-ant-..."), and the text becomes a failed row's ``error``.
    """
    import anthropic

    if isinstance(error, anthropic.APIStatusError):
        message = secrets.redact(getattr(error, "api_message", None) or error.message)
        mapped = error_for_status(error.status_code, message, error.response.headers)
        if error.status_code == 529:
            # Anthropic's "overloaded": the whole service is busy, like a 503. error_for_status
            # already retries it (>= 500) unless the server says x-should-retry: false.
            mapped.kind = "OverloadedError"
            mapped.slow_down = True
        return mapped
    # APITimeoutError subclasses APIConnectionError, so it is tested first.
    text = secrets.redact(str(error))
    if isinstance(error, anthropic.APITimeoutError):
        return BackendError(text, kind="APITimeoutError", retryable=True)
    if isinstance(error, anthropic.APIConnectionError):
        return BackendError(text, kind="APIConnectionError", retryable=True)
    if isinstance(error, anthropic.APIResponseValidationError):
        return BackendError(text, kind="APIResponseValidationError", retryable=True)
    return BackendError(f"{type(error).__name__}: {text}", kind=type(error).__name__)


class AnthropicBackend(Backend):
    kind = "anthropic"
    supports_logprobs = False
    supports_json_schema = False
    supports_raw_prompt = False
    supports_tools = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "ANTHROPIC_API_KEY",
        max_tokens_default: int = 1024,
        thinking_budget: int | None = None,
    ):
        super().__init__(model)
        self.thinking_budget = thinking_budget
        # Named explicitly even for the default, so ANTHROPIC_BASE_URL in the environment cannot
        # silently send a run somewhere other than where its config says.
        self.base_url = (base_url or ANTHROPIC_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.max_tokens_default = max_tokens_default
        self._client: Any = None

    def cache_identity(self) -> dict[str, Any]:
        # The default decides the length of every answer that does not set max_tokens.
        identity = {**super().cache_identity(), "max_tokens_default": self.max_tokens_default}
        if self.thinking_budget is not None:  # only when set: older caches keep their keys
            identity["thinking_budget"] = self.thinking_budget
        return identity

    def _open_client(self) -> Any:
        import anthropic

        # Read at call time and handed only to the SDK client: never to a row, cache or log.
        # from_env registers it, so every error text stillroom writes or prints masks it.
        key = secrets.from_env(self.api_key_env) or _LOCAL_PLACEHOLDER_KEY
        options: dict[str, Any] = {}
        if self.base_url != ANTHROPIC_BASE_URL:
            # SDK 2.x sends the key as `Authorization: Bearer` only; other servers speaking the
            # Messages API (proxies, llm-katan) read the x-api-key header older SDKs sent.
            options["default_headers"] = {"x-api-key": key}
        return anthropic.AsyncAnthropic(
            api_key=key,
            base_url=self.base_url,
            max_retries=0,  # LLMClient retries, the same way for every backend
            timeout=None,  # LLMClient applies --timeout per attempt
            **options,
        )

    async def generate(self, request: Request) -> Completion:
        body = messages_body(self.model, request, self.max_tokens_default, self.thinking_budget)
        import anthropic

        if self._client is None:
            self._client = self._open_client()
        try:
            message = await self._client.messages.create(**body)
        except anthropic.APIError as error:
            # Not chained: the SDK's exception holds the server's body unredacted.
            raise map_error(error) from None
        return parse_message(message, self.model)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


@backends.register("anthropic")
class AnthropicConfig(BackendConfig):
    """Anthropic's Messages API, or a server speaking it at ``base_url``."""

    # A refused base_url must not be quoted back in the error (it may hold a key).
    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["anthropic"] = "anthropic"
    model: str  # type: ignore[assignment]
    # Before base_url: its validator names this variable when it refuses credentials in the URL.
    api_key_env: str = Field(
        default="ANTHROPIC_API_KEY",
        description="Environment variable holding the API key; the key itself is never stored.",
    )
    base_url: str | None = Field(
        default=None,
        description="http(s) server root (the SDK appends /v1/messages); none = Anthropic's API. "
        "No credentials: the key goes in the environment variable named by api_key_env.",
    )
    max_tokens_default: int = Field(
        default=1024, ge=1, description="max_tokens when a request sets none (the API needs one)."
    )
    thinking_budget: int | None = Field(
        default=None,
        ge=MIN_THINKING_BUDGET,
        description="Extended thinking: at most this many tokens of thinking per answer "
        "(at least 1024, below each request's max_tokens: a stage's own, else "
        "max_tokens_default); the thinking blocks become the reasoning column. "
        "None = no thinking.",
    )

    _runtime_fields: ClassVar[frozenset[str]] = BackendConfig._runtime_fields | {
        "base_url",
        "api_key_env",
    }

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        return check_base_url(value, info)

    def check_params(self, params: GenerationParams, *, key: str = "params") -> None:
        if self.thinking_budget is None:
            return
        # Per stage, not in the config: a budget above max_tokens_default is fine when every
        # stage sets a larger max_tokens of its own (the default is then never sent).
        problem = thinking_problem(self.thinking_budget, params, self.max_tokens_default, self.model)
        if problem is not None:
            raise ConfigError(problem[1], key=f"{key}.{problem[0]}" if key else problem[0])

    def backend_class(self) -> type[Backend]:
        return AnthropicBackend

    def build(self) -> Backend:
        url = self.base_url or ANTHROPIC_BASE_URL
        if not _is_local(url) and not secrets.from_env(self.api_key_env):
            raise ConfigError(
                f"{secrets.redact(url)} needs an API key: set the environment variable {self.api_key_env} "
                "(or point base_url at a local server)",
                key="api_key_env",
            )
        return AnthropicBackend(
            self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            max_tokens_default=self.max_tokens_default,
            thinking_budget=self.thinking_budget,
        )
