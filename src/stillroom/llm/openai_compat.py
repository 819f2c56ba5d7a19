"""Any OpenAI-compatible server: vLLM, SGLang, llama.cpp's server, Ollama, OpenAI itself and more.

The hot path speaks HTTP through aiohttp rather than the openai SDK. Measured on this machine
against a local server, the SDK spends about 2.4 ms of CPU per request (httpx plus pydantic models
for every response) and a bare aiohttp loop about 0.44 ms; at cluster scale one process is then
CPU-bound at a few hundred requests a second with the SDK. The request body, the response fields
we read and the meaning of every error status are the SDK's (see ``error_for_status``), so
``client: sdk`` swaps the SDK back in with identical results; ``bench/client_overhead.py``
measures both.

Scoring given token ids (``score_tokens``: a served teacher scoring a student's own tokens) asks
``/completions`` for one token after a token-id prompt with the prompt's log-probs, in one of
two shapes (``score_api``): ``echo`` (``echo: true`` + ``logprobs: k``, the legacy completions
answer: vLLM, SGLang and others) or ``prompt_logprobs`` (vLLM's own field, which also names the
alternatives by id), or ``text_echo`` for llama-cpp-python's server (0.3.x), whose ``prompt``
takes text only: the ids go as the caller's text of them, checked to tokenize back to the same
ids, under conditions that server's echo imposes (:mod:`stillroom.llm.text_echo_scoring`). A
token-id prompt a text-only server refuses is reported as such rather than retried.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from urllib.parse import urlparse, urlsplit

import orjson
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from stillroom import secrets
from stillroom.errors import ConfigError
from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.openai_scoring import (
    ScoreAPI,
    ids_refused,
    parse_token_scores,
    score_tokens_body,
)
from stillroom.llm.response_fields import (
    described,
    malformed,
    object_field,
    reasoning_token_count,
    text_field,
    token_count,
)
from stillroom.llm.types import BackendError, Completion, Request, error_for_status

OPENAI_BASE_URL = "https://api.openai.com/v1"


def _is_local(url: str) -> bool:
    host = urlparse(url).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.endswith(".local")


def base_url_problem(url: str, api_key_env: str | None) -> str | None:
    """What is wrong with a backend's ``base_url``, or None. The answer never quotes a
    credential: it goes into error messages, and a pipeline file's value would be in the card.

    Credentials in the URL (``http://user:key@host``) are refused rather than used: the URL is
    part of the config that the card, report and run record describe, so the key would be
    written there. A URL without ``http://`` or ``https://`` is refused too, before any request,
    instead of failing every row with a connection error.
    """
    text = url.strip()
    scheme, has_scheme, rest = text.partition("://")
    authority = (rest if has_scheme else text).split("/", 1)[0]
    if "@" in authority or secrets.url_credentials(text):
        where = f"the environment variable {api_key_env}" if api_key_env else "an environment variable"
        return (
            "credentials in the URL (user:key@host) are refused: they would be written into the "
            f"card, report and run record. Remove them from base_url and put the key in {where} "
            "(named by api_key_env) instead"
        )
    if not has_scheme:
        return f"the URL needs http:// or https:// in front, e.g. http://{secrets.redact(text)}"
    if scheme.lower() not in ("http", "https"):
        return f"the URL must start with http:// or https://, not {secrets.redact(scheme)}://"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "not a valid URL (check its host and port)"
    if not parts.hostname:
        return "the URL names no host, e.g. http://127.0.0.1:8000/v1"
    return None


def check_base_url(url: str | None, info: ValidationInfo) -> str | None:
    """A config's ``base_url`` validator (OpenAIConfig, AnthropicConfig): ValueError naming the
    problem. ``api_key_env`` is declared before ``base_url`` so its value is known here."""
    if url is None:
        return None
    api_key_env = info.data.get("api_key_env")
    problem = base_url_problem(url, api_key_env if isinstance(api_key_env, str) else None)
    if problem:
        raise ValueError(problem)
    return url


StructuredMode = Literal["json_schema", "json_object", "prompt"]


def chat_body(model: str, request: Request, structured: StructuredMode = "json_schema") -> dict[str, Any]:
    """The JSON body of a chat or raw completion request, as the openai SDK would send it.

    ``structured`` says how to ask for a JSON-schema answer: OpenAI's ``json_schema`` response
    format (OpenAI, vLLM, SGLang, llama.cpp's C++ server), the older ``json_object`` with a
    ``schema`` (llama-cpp-python's server), or ``prompt`` (send nothing; the answer is still
    validated and re-asked by the client).
    """
    params = request.params
    body: dict[str, Any] = {"model": model}
    if request.messages is not None:
        body["messages"] = [wire_message(message) for message in request.messages]
    else:
        if params.tools:
            raise BackendError(
                "tools need chat `messages`; /completions (a raw `prompt`) takes no tools",
                kind="BadRequestError", status=400,
            )
        body["prompt"] = request.prompt
    if params.tools:
        body["tools"] = params.tools
        # "auto" is OpenAI's default with tools and is said aloud: llama-cpp-python's server
        # reads a missing tool_choice as "offer no tools".
        body["tool_choice"] = params.tool_choice if params.tool_choice is not None else "auto"
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.presence_penalty is not None:
        body["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty is not None:
        body["frequency_penalty"] = params.frequency_penalty
    if params.stop:
        body["stop"] = list(params.stop)
    seed = request.effective_seed()
    if seed is not None:
        body["seed"] = seed
    if params.top_logprobs is not None:
        if request.messages is not None:
            body["logprobs"] = True
            body["top_logprobs"] = params.top_logprobs
        else:
            body["logprobs"] = params.top_logprobs
    if params.json_schema is not None and structured == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": params.json_schema, "strict": True},
        }
    elif params.json_schema is not None and structured == "json_object":
        body["response_format"] = {"type": "json_object", "schema": params.json_schema}
    return body


def wire_message(message: dict[str, Any]) -> dict[str, Any]:
    """A request message as OpenAI's API takes it. The row shape already is OpenAI's; what
    differs: a tool turn's ``name`` (TRL reads it, the API's tool message has no such field and
    strict servers refuse unknown ones) is left out, and arguments a dataset gave as an object
    are sent as the JSON text the API expects."""
    role = message.get("role")
    if role == "tool":
        return {"role": "tool", "tool_call_id": message.get("tool_call_id", ""),
                "content": message.get("content") or ""}
    if role == "assistant" and message.get("tool_calls"):
        calls = []
        for call in message["tool_calls"]:
            function = call.get("function") or {}
            arguments = function.get("arguments")
            if not isinstance(arguments, str):
                arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
            calls.append({"id": call.get("id", ""), "type": "function",
                          "function": {"name": function.get("name", ""), "arguments": arguments}})
        return {**message, "tool_calls": calls}
    return message


def _tool_calls_of(message: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The answer's ``message.tool_calls`` in the row shape (stillroom.llm.tool_calls): a
    missing id becomes ``call_<i>``, object arguments (some servers send them) JSON text.
    None when there are none."""
    raw = message.get("tool_calls")
    if not raw:
        return None
    if not isinstance(raw, list):
        raise malformed(f"message.tool_calls is {described(raw)}, not a list")
    calls = []
    for index, call in enumerate(raw):
        where = f"message.tool_calls[{index}]"
        call = object_field(call, where)
        function = object_field(call.get("function"), f"{where}.function")
        name = text_field(function.get("name"), f"{where}.function.name")
        if not name:
            raise malformed(f"{where}.function.name is missing")
        arguments = function.get("arguments")
        if arguments is None:
            arguments = "{}"
        elif not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        call_id = text_field(call.get("id"), f"{where}.id") or f"call_{index}"
        calls.append({"id": call_id, "type": "function",
                      "function": {"name": name, "arguments": arguments}})
    return calls


def parse_chat_response(data: Any, model: str) -> Completion:
    """Read the fields we keep from a /chat/completions or /completions response body.

    Every field is type-checked as it is read: a server's body is input, and a field of the
    wrong type fails the request as ``APIResponseValidationError`` naming the field (see
    :func:`malformed`) instead of crashing in here.
    """
    if not isinstance(data, dict):
        raise malformed(f"the body is {described(data)}, not an object")
    choices = data.get("choices") or []
    if not isinstance(choices, list):
        raise malformed(f"choices is {described(choices)}, not a list")
    if not choices:
        raise BackendError("response has no choices", kind="APIResponseValidationError")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise malformed(f"choices[0] is {described(choice)}, not an object")
    message = choice.get("message")
    finish_reason = text_field(choice.get("finish_reason"), "finish_reason")
    reasoning = None
    tool_calls = None
    if message is not None:
        message = object_field(message, "message")
        text = text_field(message.get("content"), "message.content")
        reasoning = _reasoning_of(message)
        tool_calls = _tool_calls_of(message)
        refusal = message.get("refusal")
        if text is None and refusal:
            raise BackendError(f"refused: {refusal}", kind="ContentRefusal")
        if text is None and (reasoning is not None or tool_calls):
            # All trace, no answer (yet): see reasoning_ended below. Or calls and no text,
            # which is an answer (the row shape's content is "" then).
            text = ""
    else:
        # A raw prompt: traces come inline only (think_tags).
        text = text_field(choice.get("text"), "choices[0].text")
    if text is None:
        raise BackendError("response has no content", kind="APIResponseValidationError")
    usage = object_field(data.get("usage"), "usage")
    completion_tokens = token_count(usage, "completion_tokens", "usage")
    served_model = data.get("model")
    try:
        logprobs = _parse_logprobs(choice.get("logprobs"))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # Nested lists of dicts of numbers: checking each level by hand would be longer than
        # the parser itself; any of these errors means one of them had the wrong shape.
        raise malformed(f"logprobs do not have the expected shape ({type(error).__name__})") from None
    return Completion(
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=token_count(usage, "prompt_tokens", "usage"),
        completion_tokens=completion_tokens,
        model=served_model if isinstance(served_model, str) and served_model else model,
        logprobs=logprobs,
        reasoning=reasoning,
        # When the server does not count them apart (or gives a count that cannot be true),
        # LLMClient estimates them.
        reasoning_tokens=reasoning_token_count(
            usage.get("completion_tokens_details"), "reasoning_tokens", completion_tokens
        ) if reasoning is not None else 0,
        # A reasoning parser hands over the trace and an empty or missing content when the
        # model was cut off at max_tokens before it closed its trace.
        reasoning_ended=not (reasoning is not None and finish_reason == "length"
                             and not text.strip() and not tool_calls),
        tool_calls=tool_calls,
    )


def _reasoning_of(message: dict[str, Any]) -> str | None:
    """The trace a reasoning parser put beside the answer: ``reasoning`` (vLLM since it renamed
    the field, OpenRouter) or ``reasoning_content`` (older vLLM, SGLang, DeepSeek's API). vLLM
    warns that a client reading only the old name can see it empty while the new one is filled,
    so the first one with text wins."""
    for name in ("reasoning", "reasoning_content"):
        value = text_field(message.get(name), f"message.{name}")
        if value:
            return value
    return None  # absent, null or empty (servers send those for models that do not think)


def _parse_logprobs(logprobs: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    if not logprobs:
        return None
    content = logprobs.get("content")
    if content is not None:  # chat format: a list of {token, logprob, top_logprobs: [...]}
        return [
            {
                "token": entry["token"],
                "logprob": float(entry["logprob"]),
                "top_logprobs": [
                    {"token": alt["token"], "logprob": float(alt["logprob"])}
                    for alt in entry.get("top_logprobs") or []
                ],
            }
            for entry in content
        ]
    tokens = logprobs.get("tokens")
    if tokens is None:
        return None
    # Legacy completions format: parallel lists, top_logprobs as {token: logprob} dicts.
    token_logprobs = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    out = []
    for token, logprob, top in zip(tokens, token_logprobs, tops, strict=False):
        alternatives = sorted((top or {}).items(), key=lambda item: -item[1])
        out.append(
            {
                "token": token,
                "logprob": float(logprob) if logprob is not None else 0.0,
                "top_logprobs": [{"token": t, "logprob": float(lp)} for t, lp in alternatives],
            }
        )
    return out


def _error_message(raw: bytes) -> str:
    try:
        data = orjson.loads(raw)
        error = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    except orjson.JSONDecodeError:
        return raw[:500].decode("utf-8", "replace") or "(empty body)"


class OpenAICompatibleBackend(Backend):
    kind = "openai"
    supports_logprobs = True
    supports_json_schema = True
    supports_raw_prompt = True
    supports_token_scoring = True
    # tools/tool_choice go in the body as OpenAI defines them; a server that cannot take them
    # (llama-cpp-python without a function-calling chat_format) answers in text or refuses.
    supports_tools = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str = OPENAI_BASE_URL,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        extra_body: dict[str, Any] | None = None,
        structured_output: StructuredMode = "json_schema",
        score_api: ScoreAPI = "echo",
    ):
        super().__init__(model)
        self.structured_output = structured_output
        self.score_api = score_api
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.extra_body = extra_body or {}
        self._session: Any = None
        self._chat_url = f"{self.base_url}/chat/completions"
        self._completions_url = f"{self.base_url}/completions"

    def cache_identity(self) -> dict[str, Any]:
        """``extra_body`` goes into every request (``chat_template_kwargs``, a thinking switch,
        sampling fields of the server's own), so it decides the answer: it is part of the cache
        key. So is how a JSON schema is asked for. Both only when set, so caches made without
        them keep their keys."""
        identity = super().cache_identity()
        if self.extra_body:
            identity["extra_body"] = self.extra_body
        if self.structured_output != "json_schema":
            identity["structured_output"] = self.structured_output
        if self.score_api != "echo":  # alternatives come with ids, or not
            identity["score_api"] = self.score_api
        return identity

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        # Read at call time and kept only in the session's headers: never in a row, cache or log.
        # from_env registers it, so every error text stillroom writes or prints masks it.
        key = secrets.from_env(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _open_session(self) -> Any:
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=max(self.concurrency * 2, 100), ttl_dns_cache=300, keepalive_timeout=60
        )
        return aiohttp.ClientSession(
            connector=connector,
            headers=self._headers(),
            timeout=aiohttp.ClientTimeout(total=None),  # LLMClient applies --timeout per attempt
            skip_auto_headers=("User-Agent",),
        )

    async def generate(self, request: Request) -> Completion:
        body = chat_body(self.model, request, self.structured_output)
        if self.extra_body:
            body.update(self.extra_body)
        url = self._chat_url if request.messages is not None else self._completions_url
        return parse_chat_response(await self._post(url, body), self.model)

    async def score_tokens(
        self, token_ids: list[int], start: int, top_logprobs: int | None = None,
        *, text: str | None = None,
    ) -> list[dict[str, Any]]:
        """Teacher-forced log-probs of ``token_ids[start:]`` (see ``Backend.score_tokens``) from
        the server's /completions with the ids as the prompt (see the module doc)."""
        ids = [int(token) for token in token_ids]
        if self.score_api == "text_echo":
            return await self._score_text(ids, start, top_logprobs, text)
        body = score_tokens_body(self.model, ids, top_logprobs, self.score_api, self.extra_body)
        data = await self._post(self._completions_url, body, scoring=True)
        return parse_token_scores(data, ids, start, top_logprobs, self.score_api)

    @property
    def score_tokens_needs_text(self) -> bool:
        return self.score_api == "text_echo"

    async def _score_text(self, ids: list[int], start: int, top_logprobs: int | None,
                          text: str | None) -> list[dict[str, Any]]:
        """``score_api: text_echo`` (llama-cpp-python's server): see text_echo_scoring."""
        from stillroom.llm.text_echo_scoring import (
            check_retokenized,
            check_sequence,
            parse_text_echo,
        )

        if text is None:
            raise BackendError("score_api: text_echo needs the text of the ids to score",
                               kind="BadRequestError")
        check_sequence(ids, start)
        root = self.base_url.removesuffix("/v1")  # the server's extras live beside /v1
        check_retokenized(ids, await self._post(f"{root}/extras/tokenize",
                                                {"model": self.model, "input": text}))
        body = {**self.extra_body, "model": self.model, "prompt": text, "max_tokens": 1,
                "temperature": 0, "echo": True, "logprobs": max(1, top_logprobs or 0)}
        data = await self._post(self._completions_url, body, scoring=True)
        return parse_text_echo(data, ids, start, top_logprobs, text)

    async def _post(self, url: str, body: dict[str, Any], *, scoring: bool = False) -> Any:
        """POST ``body`` as JSON; the decoded answer, or the BackendError its failure means."""
        import aiohttp

        if self._session is None:
            self._session = self._open_session()
        try:
            async with self._session.post(url, data=orjson.dumps(body)) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except aiohttp.ClientError as error:
            raise BackendError(
                secrets.redact(f"{type(error).__name__}: {error}"),
                kind="APIConnectionError",
                retryable=True,
            ) from error
        if status != 200:
            # Servers quote what they were sent ("Incorrect API key provided: sk-..."): the text
            # is redacted here, where it is made, and again where it becomes a row or a line.
            message = secrets.redact(_error_message(raw))
            refused = ids_refused(status, message) if scoring else None
            raise refused or error_for_status(status, message, headers)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            raise BackendError(
                secrets.redact(f"response is not JSON: {raw[:200]!r}"),
                kind="APIResponseValidationError",
                retryable=True,
            ) from error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OpenAISDKBackend(OpenAICompatibleBackend):
    """The same backend through the official openai SDK (heavier per request; see module doc)."""

    def _client(self) -> Any:
        import openai

        if self._session is None:
            self._session = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=secrets.from_env(self.api_key_env) or "unused",
                max_retries=0,  # LLMClient retries, the same way for every backend
                timeout=None,
            )
        return self._session

    async def generate(self, request: Request) -> Completion:
        body = chat_body(self.model, request, self.structured_output)
        body.update(self.extra_body)
        client = self._client()
        create = (client.chat.completions.create if request.messages is not None
                  else client.completions.create)
        response = await self._call(create, body)
        # warnings off: a field of the wrong type is reported by the parser, naming it.
        return parse_chat_response(response.model_dump(warnings=False), self.model)

    async def score_tokens(
        self, token_ids: list[int], start: int, top_logprobs: int | None = None,
        *, text: str | None = None,
    ) -> list[dict[str, Any]]:
        ids = [int(token) for token in token_ids]
        body = score_tokens_body(self.model, ids, top_logprobs, self.score_api, self.extra_body)
        # Fields the SDK does not know (prompt_logprobs, the server's own) go as its extra_body.
        known = {"model", "prompt", "max_tokens", "temperature", "echo", "logprobs"}
        extra = {name: body.pop(name) for name in list(body) if name not in known}
        response = await self._call(self._client().completions.create, body, extra_body=extra,
                                    scoring=True)
        # The SDK's models keep fields they do not declare (prompt_logprobs) in the dump.
        data = response.model_dump(warnings=False)
        return parse_token_scores(data, ids, start, top_logprobs, self.score_api)

    async def _call(
        self, create: Any, body: dict[str, Any], *, scoring: bool = False, **options: Any
    ) -> Any:
        """``create(**body)`` with the SDK's errors turned into BackendErrors."""
        import openai

        try:
            return await create(**body, **options)
        except openai.APIStatusError as error:
            # Not chained: the SDK's exception holds the server's body unredacted.
            message = secrets.redact(error.message)
            refused = ids_refused(error.status_code, message) if scoring else None
            raise (refused or error_for_status(error.status_code, message,
                                               error.response.headers)) from None
        except openai.APITimeoutError as error:
            raise BackendError(
                secrets.redact(str(error)), kind="APITimeoutError", retryable=True
            ) from error
        except openai.APIConnectionError as error:
            raise BackendError(
                secrets.redact(str(error)), kind="APIConnectionError", retryable=True
            ) from error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@backends.register("openai")
class OpenAIConfig(BackendConfig):
    """An OpenAI-compatible HTTP server (``base_url``), or OpenAI itself when none is given."""

    # A refused base_url must not be quoted back in the error (it may hold a key).
    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["openai"] = "openai"
    model: str  # type: ignore[assignment]
    # Before base_url: its validator names this variable when it refuses credentials in the URL.
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="Environment variable holding the API key; the key itself is never stored.",
    )
    base_url: str = Field(
        default=OPENAI_BASE_URL,
        description="http(s) URL of the server's API root; no credentials (the key goes in "
        "the environment variable named by api_key_env).",
    )
    client: Literal["aiohttp", "sdk"] = "aiohttp"
    structured_output: StructuredMode = Field(
        default="json_schema",
        description="How to ask for JSON: json_schema, json_object (llama-cpp-python's server) or prompt.",
    )
    extra_body: dict[str, Any] = Field(default_factory=dict)
    score_api: ScoreAPI = Field(
        default="echo",
        description="How score_tokens (on-policy distillation's teacher) asks /completions for "
        "the log-probs of given token ids: echo (echo + logprobs: vLLM, SGLang) or "
        "prompt_logprobs (vLLM's field; alternatives come with their ids), or text_echo "
        "(llama-cpp-python's server, which takes text only: the ids' text is sent and checked "
        "to tokenize back to them; the context must start with the model's BOS).",
    )

    _runtime_fields: ClassVar[frozenset[str]] = BackendConfig._runtime_fields | {
        "base_url",
        "api_key_env",
        "client",
    }

    @field_validator("score_api")
    @classmethod
    def _text_echo_over_aiohttp(cls, value: str, info: ValidationInfo) -> str:
        if value == "text_echo" and info.data.get("client") == "sdk":
            raise ValueError("score_api: text_echo asks the server's /extras/tokenize, which the "
                             "openai SDK does not know: use client: aiohttp (the default)")
        return value

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str, info: ValidationInfo) -> str:
        return check_base_url(value, info) or value

    def backend_class(self) -> type[Backend]:
        return OpenAISDKBackend if self.client == "sdk" else OpenAICompatibleBackend

    def identity(self) -> dict[str, Any]:
        out = super().identity()
        if self.score_api == "echo":
            # The default: left out so fingerprints of runs made before it existed stay the same.
            out.pop("score_api", None)
        return out

    def build(self) -> Backend:
        if not _is_local(self.base_url) and not secrets.from_env(self.api_key_env):
            raise ConfigError(
                f"{secrets.redact(self.base_url)} needs an API key: set the environment variable "
                f"{self.api_key_env} (or point base_url at a local server)",
                key="api_key_env",
            )
        cls: type[OpenAICompatibleBackend] = (
            OpenAISDKBackend if self.client == "sdk" else OpenAICompatibleBackend
        )
        return cls(
            self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            concurrency=self.concurrency,
            extra_body=self.extra_body,
            structured_output=self.structured_output,
            score_api=self.score_api,
        )
