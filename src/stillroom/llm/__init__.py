"""LLM backends behind one small protocol, and the client that adds caching, retries and limits."""

from stillroom.llm.anthropic_backend import AnthropicBackend, AnthropicConfig
from stillroom.llm.backend import Backend, BackendConfig, backends
from stillroom.llm.cache import RequestCache
from stillroom.llm.client import LLMClient
from stillroom.llm.llamacpp import LlamaCppBackend, LlamaCppConfig
from stillroom.llm.openai_compat import OpenAICompatibleBackend, OpenAIConfig
from stillroom.llm.transformers_backend import TransformersBackend, TransformersConfig
from stillroom.llm.types import BackendError, Completion, GenerationParams, Request, RequestFailed
from stillroom.llm.vllm_backend import VLLMBackend, VLLMConfig  # noqa: F401 - registers kind: vllm

__all__ = [
    "AnthropicBackend",
    "AnthropicConfig",
    "Backend",
    "BackendConfig",
    "BackendError",
    "Completion",
    "GenerationParams",
    "LLMClient",
    "LlamaCppBackend",
    "LlamaCppConfig",
    "OpenAICompatibleBackend",
    "OpenAIConfig",
    "Request",
    "RequestCache",
    "RequestFailed",
    "TransformersBackend",
    "TransformersConfig",
    "backends",
]
