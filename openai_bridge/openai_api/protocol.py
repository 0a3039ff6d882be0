"""OpenAI request bodies as pydantic models: shape and types only.

Unknown fields are accepted (`extra="allow"`): clients send `cache_control`,
`chat_id`, `reasoning` and the like. Range checks (temperature, top_p, ...)
are left to the inference service so every such error comes from one place;
capabilities the bridge does not offer are refused in `build.py`.

miLLM's own `millm` field is typed here too, so it is validated with the rest of
the body and a bad value's `param` is its path (`millm.steering[0].strength`);
see docs/steering.md for what it means.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from openai_bridge.steering_json import ActivationsBody, FeatureBody

# A model id, or `model:profile`; longer ones would only come back in an error
# message too large for gRPC's metadata.
MODEL_ID_MAX = 512
PROFILE_NAME_MAX = 64


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=(), populate_by_name=True)


class ContentPart(OpenAIBody):
    """One part of a message's content list: `{"type": "text", "text": ...}` and others."""

    type: str
    text: str | None = None


class FunctionCall(OpenAIBody):
    """A call as an assistant message records it: arguments are JSON text."""

    name: str
    arguments: str | dict[str, Any] = ""


class ToolCall(OpenAIBody):
    id: str = ""
    type: str = "function"
    function: FunctionCall


class ChatMessage(OpenAIBody):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # The legacy single call of `functions`.
    function_call: FunctionCall | None = None


class FunctionDefinition(OpenAIBody):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIBody):
    type: str
    function: FunctionDefinition | None = None


class NamedFunction(OpenAIBody):
    name: str


class NamedToolChoice(OpenAIBody):
    type: str = "function"
    function: NamedFunction


class JsonSchemaFormat(OpenAIBody):
    name: str | None = None
    description: str | None = None
    # `schema` shadows a pydantic BaseModel attribute, hence the alias.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class StreamOptions(OpenAIBody):
    include_usage: bool | None = False


class ResponseFormat(OpenAIBody):
    type: str
    json_schema: JsonSchemaFormat | None = None


class MillmExtension(BaseModel):
    """The `millm` object. Unlike the OpenAI fields around it, unknown keys are refused:
    a misspelt `steerng` must not silently leave a request unsteered. Which keys go
    together is `millm.py`'s to judge."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(default=None, min_length=1, max_length=PROFILE_NAME_MAX)
    steering: list[FeatureBody] | Literal["off"] | None = None
    steering_enabled: bool | None = None
    activations: ActivationsBody | None = None
    compare: bool = False

    @field_validator("steering", mode="before")
    @classmethod
    def _features_or_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "off":
            raise PydanticCustomError(
                "features_or_off", '`steering` is a list of features or the string "off"'
            )
        return value


class SamplingFields(OpenAIBody):
    """Fields shared by chat and legacy completions."""

    model: str | None = Field(default=None, max_length=MODEL_ID_MAX)
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
    millm: MillmExtension | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with the usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # The legacy spelling of tools and tool_choice.
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    # vLLM's chat-template options: an assistant prefill continued in place.
    continue_final_message: bool | None = False
    add_generation_prompt: bool | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    # Legacy completions take the number of alternatives here, not a bool.
    logprobs: int | None = None
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None


class EmbeddingRequest(OpenAIBody):
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = Field(default=None, max_length=MODEL_ID_MAX)
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: int | None = None
    user: str | None = None
    # Steering only, here.
    millm: MillmExtension | None = None
