"""The decode loop: each sequence is prefilled alone, then all of them decode together.

`DecodeBatch` holds the sequences being generated: `join()` prefills a new one
by itself (exactly as if it ran alone) and emits its first token; `step()` runs
one forward pass for every sequence at once (their KV caches are rows of one
`BatchCache`) and emits each one's next token. Per-sequence state lives in
`SequenceState` (sampler, text, stop strings, counters): every row keeps its own
sampling parameters, logprobs and stop, and leaves the batch when it finishes or
is cancelled. Steering and monitoring are per row too (engine.row_edits).
`run_generation` is the one-sequence case, synchronous.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from inference_service.engine.batch_cache import BatchCache, supports_batching
from inference_service.engine.decode_step import LlamaDecodeStep
from inference_service.engine.detokenizer import CompletionText
from inference_service.engine.loader import LoadedModel
from inference_service.engine.prefix_cache import NO_PREFIX_CACHE, PrefixCache, prefix_key
from inference_service.engine.row_edits import install
from inference_service.engine.sampling import (
    apply_penalties,
    draw_token,
    greedy_tokens,
    make_generator,
    read_tokens,
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
        self.cached_tokens = 0  # prompt tokens a kept prefix supplied (engine.prefix_cache)
        # Its own until it joins a batch; the batch then holds it as a row.
        self.cache: DynamicCache | None = DynamicCache(config=self._model.config)
        self._generator = make_generator(self.options.seed, self.device)
        # Completion token counts [V] for the penalties; only kept when they are used,
        # sized from the logits (some models pad the output layer beyond the vocabulary).
        self._penalised = bool(self.options.frequency_penalty or self.options.presence_penalty)
        self._counts: torch.Tensor | None = None
        self._text = CompletionText(self._tokenizer, self.prompt_ids, self.options.stop)
        self._bias = _bias_tensors(self.options.logit_bias, self.device)
        self._mask = request.grammar.new_mask() if request.grammar is not None else None
        assert self.options.max_tokens is not None, "validation fills max_tokens"
        self._max_tokens = self.options.max_tokens

    @property
    def final_length(self) -> int:
        return final_length(len(self.prompt_ids), self._max_tokens, self._max_context)

    def prefill(
        self, prefixes: PrefixCache = NO_PREFIX_CACHE, edit: Any = None
    ) -> torch.Tensor:  # -> [V] logits for the first completion token
        """Runs the prompt through the model, `edit` (the row's RowEdit or None)
        installed at the hook; starts from a kept prefix when one matches."""
        assert self.cache is not None
        key, reusable = prefix_key(edit)
        if prefixes.enabled and key is not None and reusable:
            self.cached_tokens = prefixes.restore(key, self.prompt_ids, self.cache)
        rest = self.prompt_ids[self.cached_tokens :]
        input_ids = torch.tensor([rest], dtype=torch.long, device=self.device)  # [1, P - cached]
        # On the decode's threads, not every core: a prefill is hundreds of parallel
        # kernels, and each waits for a thread the servers preempted (engine/threads.py).
        out = self._model(
            input_ids=input_ids,
            past_key_values=self.cache,
            use_cache=True,
            # Only the last position's logits: the prompt's [P, V] are never needed.
            logits_to_keep=1,
        )
        if prefixes.enabled and key is not None:
            prefixes.store(key, self.prompt_ids, self.cache)
        return out.logits[0, -1].float()  # [1, 1, V] -> [V]

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that shapes the logits or reports them: the batch's
        argmax fast path may pick this row's token."""
        return (
            self.options.temperature == 0.0
            and self._bias is None
            and not self._penalised
            and self._mask is None
            and not self.options.logprobs
        )

    def choose(self, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """Samples the next token from [V] logits and reports its logprobs if asked."""
        adjusted = self.adjust(logits)
        token_id = int(self.draw(adjusted))
        return token_id, self.report(adjusted, token_id)

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:  # [V] -> [V]
        """The logits the token is drawn from. Order: logit_bias, penalties, then the
        grammar's mask (after steering, which already shaped the logits), so every
        choice, greedy or sampled, is allowed."""
        if self._bias is not None:
            ids, values = self._bias
            logits = logits.index_add(0, ids, values)
        if self._penalised:
            if self._counts is None:
                self._counts = torch.zeros(logits.shape[-1], dtype=torch.int32, device=self.device)
            logits = apply_penalties(
                logits, self._counts, self.options.frequency_penalty, self.options.presence_penalty
            )
        if self._mask is not None:
            logits = self._mask.apply(logits)
        return logits

    def draw(self, adjusted: torch.Tensor) -> torch.Tensor:  # [V] -> [] on the device
        return draw_token(adjusted, self.options.temperature, self.options.top_p, self._generator)

    def report(self, adjusted: torch.Tensor, token_id: int) -> TokenLogprob | None:
        """The chosen token's logprob and the top ones, if the request asked."""
        if not self.options.logprobs:
            return None
        chosen, top = token_logprobs(adjusted, token_id, self.options.top_logprobs)
        return TokenLogprob(
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
        if self._mask is not None:
            self._mask.accept(token_id)
        if token_id in self._eos:
            text, reason = self._text.finish(), "stop"
        else:
            text = self._text.push(token_id)
            if self._text.stopped:
                reason = "stop"
            elif self._mask is not None and self._mask.finished:
                # The grammar is complete: nothing but the end could follow.
                text += self._text.finish()
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
        """(id, text, UTF-8 bytes) of one token as OpenAI's logprobs show it: a token
        that holds only part of a character is named by its bytes, `bytes:\\xf0\\x9f`."""
        text = self._tokenizer.decode([token_id], skip_special_tokens=False)
        raw = _token_bytes(self._tokenizer, token_id, text)
        if _REPLACEMENT in text and raw != text.encode("utf-8"):
            text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        return token_id, text, raw


def _bias_tensors(
    bias: tuple[tuple[int, float], ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`logit_bias` as (ids [B], values [B]) built once per request, not per step."""
    if not bias:
        return None
    ids = torch.tensor([i for i, _ in bias], dtype=torch.long, device=device)
    values = torch.tensor([v for _, v in bias], dtype=torch.float32, device=device)
    return ids, values


def final_length(prompt_tokens: int, max_tokens: int, max_context: int) -> int:
    """The most tokens a sequence can reach: prompt plus completion, within the context."""
    return min(prompt_tokens + max_tokens, max_context)


@dataclass(eq=False)
class Row:
    """One sequence in a DecodeBatch, with where its events go."""

    sequence: SequenceState
    emit: Callable[[GenerationEvent], None]
    is_cancelled: Callable[[], bool]
    on_error: Callable[[BaseException], None]
    queue_ns: int = 0
    prefill_ns: int = 0
    decode_started_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def observer(self) -> Any:
        return self.sequence.request.observer


class DecodeBatch:
    """The sequences decoding together on the worker lane. Not thread-safe: the lane
    thread alone calls it."""

    def __init__(self, loaded: LoadedModel, prefixes: PrefixCache = NO_PREFIX_CACHE) -> None:
        self._model = loaded.model
        self._loaded = loaded
        self._prefixes = prefixes
        self._cache = BatchCache()
        # Llama-family models decode without transformers' per-call work (decode_step.py).
        self._fast_step = LlamaDecodeStep.for_model(loaded.model)
        self.rows: list[Row] = []
        self.batchable = True  # False once a model's cache turns out not to merge

    @property
    def final_lengths(self) -> list[int]:
        return [row.sequence.final_length for row in self.rows]

    @property
    def cache_tokens(self) -> int:
        """Token positions the batch's KV cache holds, padding included."""
        return self._cache.rows * self._cache.width

    def join(
        self,
        request: GenerationRequest,
        emit: Callable[[GenerationEvent], None],
        is_cancelled: Callable[[], bool],
        on_error: Callable[[BaseException], None],
        *,
        queue_ns: int = 0,
    ) -> None:
        """Prefills `request` alone and emits its first token; it decodes with the
        others from the next `step()` unless it is already finished."""
        row = Row(SequenceState(self._loaded, request), emit, is_cancelled, on_error, queue_ns)
        if is_cancelled():
            self._finish(row, "cancelled")
            return
        try:
            sequence = row.sequence
            with torch.inference_mode():
                # A plan that captures nothing edits every position alike, so it
                # serves the shorter pass of a reused prefix too (prefix_key).
                plan = _plan(row, sequence.prompt_ids, 0)
                undo = install([plan])
                try:
                    started = time.perf_counter_ns()
                    logits = sequence.prefill(self._prefixes, plan)
                    row.prefill_ns = time.perf_counter_ns() - started
                finally:
                    undo()
                row.decode_started_ns = time.perf_counter_ns()
                if self._advance(row, *sequence.choose(logits)):
                    return
            assert sequence.cache is not None  # prefilled, not yet joined
            if not supports_batching(sequence.cache):
                self.batchable = False
            self._cache.add(sequence.cache)
            sequence.cache = None
            self.rows.append(row)
        except BaseException as exc:
            _done(row)
            on_error(exc)

    def step(self) -> int:
        """One forward pass for every row; emits each row's next token. Returns how
        many rows took part (the tokens generated)."""
        live = [row for row in self.rows if not self._left_cancelled(row)]
        if len(live) != len(self.rows):
            self._keep(live)
        if not live:
            return 0
        try:
            with torch.inference_mode():
                plans = [
                    _plan(row, (row.sequence.generated[-1],), _next_position(row)) for row in live
                ]
                last = [[row.sequence.generated[-1]] for row in live]
                undo = install(plans)
                try:
                    step_logits = self._forward(
                        torch.tensor(last, dtype=torch.long, device=self._loaded.device)
                    )
                finally:
                    undo()
                self._cache.advance()
                logits = step_logits[:, -1].float()  # [rows, V]
                choices = choose_all([row.sequence for row in live], logits)
                staying = [
                    row
                    for row, choice in zip(live, choices, strict=True)
                    if not self._advance(row, *choice)
                ]
        except BaseException as exc:
            self._cache.keep([])
            self.rows = []
            for row in live:
                _done(row)
                row.on_error(exc)
            return 0
        if len(staying) != len(live):
            self._keep(staying)
        return len(live)

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [rows, 1] -> [rows, 1, V]
        """One pass over the batch's new tokens: the model's own forward pass, or the
        same operations without its per-call work where decode_step.py applies."""
        fast = self._fast_step
        if self.batchable and fast is not None and fast.usable():
            # Each row's real columns after this step, when some row has padding.
            lengths = [n + 1 for n in self._cache.lengths] if self._cache.padded else None
            return fast(input_ids, self._cache.cache, lengths, self._cache.positions())
        inputs = self._cache.step_inputs() if self.batchable else {}
        return self._model(
            input_ids=input_ids,
            past_key_values=self._cache.cache,
            use_cache=True,
            logits_to_keep=1,
            **inputs,
        ).logits

    def cancel_all(self) -> None:
        """Ends every row as cancelled (the lane stopped under them)."""
        rows, self.rows = self.rows, []
        self._cache.keep([])
        for row in rows:
            self._finish(row, "cancelled")

    def _keep(self, rows: list[Row]) -> None:
        index = {id(row): r for r, row in enumerate(self.rows)}
        self._cache.keep([index[id(row)] for row in rows])
        self.rows = rows

    def _advance(self, row: Row, token_id: int, logprob: TokenLogprob | None) -> bool:
        """Emits the row's next token; True if the row is finished."""
        step = row.sequence.accept(token_id, logprob)
        event = step.event
        if row.observer is not None:
            event = dataclasses.replace(event, activations=row.observer.take_activations())
        row.emit(event)
        if step.finish_reason is not None:
            self._finish(row, step.finish_reason)
            return True
        return False

    def _left_cancelled(self, row: Row) -> bool:
        # Cooperative cancellation: checked between every two forward passes.
        if row.is_cancelled():
            self._finish(row, "cancelled")
            return True
        return False

    def _finish(self, row: Row, reason: FinishReason) -> None:
        _done(row)
        decode_ns = time.perf_counter_ns() - row.decode_started_ns if row.prefill_ns else 0
        row.emit(
            FinishedEvent(
                finish_reason=reason,
                prompt_tokens=len(row.sequence.prompt_ids),
                completion_tokens=len(row.sequence.generated),
                cached_tokens=row.sequence.cached_tokens,
                queue_ns=row.queue_ns,
                prefill_ns=row.prefill_ns,
                decode_ns=decode_ns,
            )
        )


def choose_all(
    sequences: list[SequenceState], logits: torch.Tensor
) -> list[tuple[int, TokenLogprob | None]]:
    """Every row's next token from [rows, V] logits, read back to the host once for the
    whole batch (a GPU waits once per step, not once per row). Plain greedy rows take
    one argmax together; the others draw on the device with their own generators.
    Rows that report logprobs read those back after the tokens."""
    if all(sequence.plain_greedy for sequence in sequences):
        return [(token_id, None) for token_id in greedy_tokens(logits)]
    adjusted = [sequence.adjust(logits[r]) for r, sequence in enumerate(sequences)]
    token_ids = read_tokens(
        [sequence.draw(row) for sequence, row in zip(sequences, adjusted, strict=True)]
    )
    return [
        (token_id, sequence.report(row, token_id))
        for sequence, row, token_id in zip(sequences, adjusted, token_ids, strict=True)
    ]


def _plan(row: Row, token_ids: Any, start_position: int) -> Any:
    return None if row.observer is None else row.observer.plan(token_ids, start_position)


def _next_position(row: Row) -> int:
    return len(row.sequence.prompt_ids) + len(row.sequence.generated) - 1


def _done(row: Row) -> None:
    if row.observer is not None:
        row.observer.done()


def run_generation(
    loaded: LoadedModel,
    request: GenerationRequest,
    emit: Callable[[GenerationEvent], None],
    is_cancelled: Callable[[], bool],
    *,
    queue_ns: int = 0,
    between_passes: Callable[[], None] = lambda: None,
) -> None:
    """Generates one sequence until a stop, the length limit or cancellation; raises
    what a forward pass raised. `between_passes` runs before every forward pass."""
    failures: list[BaseException] = []
    batch = DecodeBatch(loaded)
    between_passes()
    batch.join(request, emit, is_cancelled, failures.append, queue_ns=queue_ns)
    while batch.rows:
        between_passes()
        batch.step()
    if failures:
        raise failures[0]


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
