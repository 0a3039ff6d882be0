"""OpenAI request bodies as pydantic models: shape and types only.

Unknown fields are accepted (`extra="allow"`): clients send `cache_control`,
`chat_id`, `reasoning` and the like. Range checks (temperature, top_p, ...)
are left to the inference service so every such error comes from one place;
capabilities the bridge does not offer are refused in `translate.py`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class ContentPart(OpenAIBody):
    """One part of a message's content list: `{"type": "text", "text": ...}` and others."""

    type: str
    text: str | None = None


class ChatMessage(OpenAIBody):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(OpenAIBody):
    include_usage: bool | None = False


class ResponseFormat(OpenAIBody):
    type: str


class SamplingFields(OpenAIBody):
    """Fields shared by chat and legacy completions."""

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # miLLM's own extension (steering, activations, compare); checked in `millm.py`.
    millm: dict[str, Any] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    # Legacy completions take the number of alternatives here, not a bool.
    logprobs: int | None = None
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None


class EmbeddingRequest(OpenAIBody):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = None
    user: str | None = None
    # miLLM's own extension (steering only, here); checked in `millm.py`.
    millm: dict[str, Any] | None = None
