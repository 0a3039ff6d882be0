"""Plain domain types of the engine. No protobuf here: servicers translate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class ToolCallRecord:
    """A call an assistant turn made; arguments as JSON text."""

    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True)
class ChatTurn:
    role: str
    content: str
    tool_calls: tuple[ToolCallRecord, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; `index` is its place in the request's `tools`."""

    index: int
    name: str
    description: str = ""
    parameters_json: str = ""


@dataclass(frozen=True)
class ChatOptions:
    """How a conversation is rendered: tools offered, and whether the last turn is
    continued (an assistant prefill) or the assistant's cue is appended."""

    tools: tuple[ToolSpec, ...] = ()
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None  # None: True unless continuing


@dataclass(frozen=True)
class JsonObject:
    """Any JSON object."""


@dataclass(frozen=True)
class JsonSchema:
    """JSON valid against a schema (JSON text)."""

    schema_json: str


@dataclass(frozen=True)
class ToolCalls:
    """Only calls of the offered tools (one named tool, or any); several if parallel."""

    name: str = ""
    parallel: bool = True


OutputConstraint = JsonObject | JsonSchema | ToolCalls


@dataclass(frozen=True)
class SamplingOptions:
    """Validated sampling parameters (see `SamplingOptions.validate`)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # (token id, bias) pairs added to the logits before sampling.
    logit_bias: tuple[tuple[int, float], ...] = ()


class PassObserver(Protocol):
    """What a request does around its forward passes (steering, activation capture);
    called on the worker lane."""

    def plan(self, token_ids: Sequence[int], start_position: int) -> Any:
        """What the request does at its hook in the next pass, which reads `token_ids`
        from `start_position` on: an engine.row_edits.RowEdit, or None for nothing."""

    def take_activations(self) -> tuple[Any, ...]:
        """Activations captured since the last call (monitoring.types.TokenActivations)."""

    def done(self) -> None:
        """The request is over, however it ended."""


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingOptions
    observer: PassObserver | None = None
    # A compiled engine.grammar.Grammar that every token must follow, or None.
    grammar: Any = None


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    token_bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    token_bytes: bytes
    logprob: float
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """Tokens produced since the last event and the text they release."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()
    # Activations of the positions read since the previous event, when asked for
    # (monitoring.types.TokenActivations).
    activations: tuple[Any, ...] = ()


@dataclass(frozen=True)
class FinishedEvent:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens whose keys and values came from the prefix cache, not a prefill.
    cached_tokens: int = 0
    queue_ns: int = 0
    prefill_ns: int = 0
    decode_ns: int = 0


GenerationEvent = TokenEvent | FinishedEvent


@dataclass(frozen=True)
class ModelDescription:
    """What callers may know about the served model (never a server path)."""

    id: str
    source: str
    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_context_tokens: int
    dtype: str
    device: str
    parameter_count: int
    loaded_at_unix_s: int
    extra: dict[str, str] = field(default_factory=dict)
