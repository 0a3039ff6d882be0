"""The decode loop: prefill once, then one token per forward pass, on the worker lane.

Per-sequence state lives in `SequenceState` (its KV cache, sampler, text, counters)
so that a later scheduler can run the forward passes of several sequences in
one batch and call the same `choose()`/`accept()` per sequence; today one
sequence runs at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from inference_service.engine.detokenizer import CompletionText
from inference_service.engine.loader import LoadedModel
from inference_service.engine.sampling import (
    apply_penalties,
    choose_token,
    make_generator,
    token_logprobs,
)
from inference_service.engine.types import (
    FinishedEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
)


@dataclass(frozen=True)
class Step:
    """What one generated token produced."""

    event: TokenEvent
    finish_reason: FinishReason | None


class SequenceState:
    """One request's decoding state: prefill(), then choose() / accept() / step()."""

    def __init__(self, loaded: LoadedModel, request: GenerationRequest) -> None:
        self._model = loaded.model
        self._tokenizer = loaded.tokenizer
        self._eos = loaded.eos_token_ids
        self._max_context = loaded.description.max_context_tokens
        self.request = request
        self.options = request.sampling
        self.device = loaded.device
        self.prompt_ids = list(request.prompt_token_ids)
        self.generated: list[int] = []
        self._cache = DynamicCache(config=self._model.config)
        self._generator = make_generator(self.options.seed, self.device)
        # Completion token counts [V] for the penalties; only kept when they are used,
        # sized from the logits (some models pad the output layer beyond the vocabulary).
        self._penalised = bool(self.options.frequency_penalty or self.options.presence_penalty)
        self._counts: torch.Tensor | None = None
        self._text = CompletionText(self._tokenizer, self.prompt_ids, self.options.stop)
        assert self.options.max_tokens is not None, "validation fills max_tokens"
        self._max_tokens = self.options.max_tokens

    def prefill(self) -> torch.Tensor:  # -> [V] logits for the first completion token
        input_ids = torch.tensor([self.prompt_ids], dtype=torch.long, device=self.device)  # [1, P]
        return self._forward(input_ids)

    def step(self) -> torch.Tensor:  # -> [V] logits for the next token
        input_ids = torch.tensor([[self.generated[-1]]], dtype=torch.long, device=self.device)
        return self._forward(input_ids)  # [1, 1] in

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self._model(
            input_ids=input_ids,
            past_key_values=self._cache,
            use_cache=True,
            # Only the last position's logits: the prompt's [P, V] are never needed.
            logits_to_keep=1,
        )
        return out.logits[0, -1].float()  # [1, 1, V] -> [V]

    def choose(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """Samples the next token from [V] logits and reports its logprobs if asked."""
        if self._penalised:
            if self._counts is None:
                self._counts = torch.zeros(logits.shape[-1], dtype=torch.int32, device=self.device)
            logits = apply_penalties(
                logits, self._counts, self.options.frequency_penalty, self.options.presence_penalty
            )
        token_id = choose_token(
            logits, self.options.temperature, self.options.top_p, self._generator
        )
        if not self.options.logprobs:
            return token_id, None
        chosen, top = token_logprobs(logits, token_id, self.options.top_logprobs)
        return token_id, TokenLogprob(
            *self._token_text(token_id),
            logprob=chosen,
            top_logprobs=tuple(TopLogprob(*self._token_text(i), logprob=lp) for i, lp in top),
        )

    def accept(self, token_id: int, logprob: TokenLogprob | None) -> Step:
        """Appends a sampled token, releases its text and decides whether to stop."""
        self.generated.append(token_id)
        if self._counts is not None:
            self._counts[token_id] += 1
        reason: FinishReason | None = None
        if token_id in self._eos:
            text, reason = self._text.finish(), "stop"
        else:
            text = self._text.push(token_id)
            if self._text.stopped:
                reason = "stop"
            elif (
                len(self.generated) >= self._max_tokens
                or len(self.prompt_ids) + len(self.generated) >= self._max_context
            ):
                text += self._text.finish()
                reason = "stop" if self._text.stopped else "length"
        logprobs = (logprob,) if logprob is not None else ()
        return Step(TokenEvent(text=text, token_ids=(token_id,), logprobs=logprobs), reason)

    def _token_text(self, token_id: int) -> tuple[int, str, bytes]:
        """(id, text, UTF-8 bytes) of one token as OpenAI's logprobs show it."""
        text = self._tokenizer.decode([token_id], skip_special_tokens=False)
        return token_id, text, _token_bytes(self._tokenizer, token_id, text)


def run_generation(
    loaded: LoadedModel,
    request: GenerationRequest,
    emit: Callable[[GenerationEvent], None],
    is_cancelled: Callable[[], bool],
    *,
    queue_ns: int = 0,
    between_passes: Callable[[], None] = lambda: None,
) -> None:
    """Generates until a stop, the length limit or cancellation. Runs on the worker lane.

    `between_passes` runs before every forward pass: hook changes posted while
    this generation runs take effect at its next step.
    """
    sequence = SequenceState(loaded, request)
    prompt_tokens = len(sequence.prompt_ids)
    prefill_ns = decode_ns = 0

    def finish(reason: FinishReason) -> None:
        emit(
            FinishedEvent(
                finish_reason=reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(sequence.generated),
                queue_ns=queue_ns,
                prefill_ns=prefill_ns,
                decode_ns=decode_ns,
            )
        )

    if is_cancelled():
        finish("cancelled")
        return
    observer = request.observer
    try:
        with torch.inference_mode():
            between_passes()
            if observer is not None:
                observer.before_pass(sequence.prompt_ids, 0)
            started = time.perf_counter_ns()
            logits = sequence.prefill()
            prefill_ns = time.perf_counter_ns() - started
            started = time.perf_counter_ns()
            while True:
                token_id, logprob = sequence.choose(logits)
                step = sequence.accept(token_id, logprob)
                event = step.event
                if observer is not None:
                    event = dataclasses.replace(event, activations=observer.take_activations())
                emit(event)
                if step.finish_reason is not None:
                    decode_ns = time.perf_counter_ns() - started
                    finish(step.finish_reason)
                    return
                # Cooperative cancellation: checked between every two forward passes.
                if is_cancelled():
                    decode_ns = time.perf_counter_ns() - started
                    finish("cancelled")
                    return
                between_passes()
                if observer is not None:
                    position = len(sequence.prompt_ids) + len(sequence.generated) - 1
                    observer.before_pass((sequence.generated[-1],), position)
                logits = sequence.step()
    finally:
        if observer is not None:
            observer.done()


def _token_bytes(tokenizer: Any, token_id: int, text: str) -> bytes:
    """UTF-8 bytes of one token. A token holding part of a multi-byte character
    decodes to U+FFFD; its raw bytes are recovered from the vocabulary piece."""
    if _REPLACEMENT not in text:
        return text.encode("utf-8")
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str):
        if match := _BYTE_FALLBACK.fullmatch(piece):  # SentencePiece byte tokens: <0xE2>
            return bytes([int(match.group(1), 16)])
        table = _byte_level_decoder()  # GPT-2 style byte-level BPE
        if all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
    return text.encode("utf-8")


_REPLACEMENT = "\ufffd"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's table from printable stand-in characters back to bytes."""
    byte_values = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    code_points = byte_values[:]
    unprintable = 0
    for b in range(256):
        if b not in byte_values:
            # Unprintable bytes map to code points from 256 upwards, in order.
            byte_values.append(b)
            code_points.append(256 + unprintable)
            unprintable += 1
    return {chr(c): b for b, c in zip(byte_values, code_points, strict=True)}
