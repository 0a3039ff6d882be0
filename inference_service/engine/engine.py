"""The engine: admission, the worker lane, and the async faces of generation and embeddings.

Admission counts every request that was accepted and has not finished (running
or waiting, generations and embeddings alike); at `max_queue` a new one is
refused with QUEUE_FULL at once, instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from inference_service.config import InferenceSettings
from inference_service.engine.generation import final_length
from inference_service.engine.grammar import Grammar, GrammarCompiler
from inference_service.engine.lane import Lane, LaneJob, PassBoundary
from inference_service.engine.loader import LoadedModel
from inference_service.engine.memory import available_memory, format_bytes, kv_bytes_per_token
from inference_service.engine.meter import (
    NO_METER,
    REFUSED_KV_BUDGET,
    REFUSED_QUEUE_FULL,
    REFUSED_UNLOADING,
    EngineMeter,
)
from inference_service.engine.prefix_cache import PrefixCache, PrefixCacheStats, budget_bytes
from inference_service.engine.prompts import NO_OPTIONS, decode_tokens, encode_text, render_chat
from inference_service.engine.row_edits import install
from inference_service.engine.scheduler import BatchScheduler, BatchStats
from inference_service.engine.threads import usable_cores
from inference_service.engine.types import (
    ChatOptions,
    ChatTurn,
    FinishedEvent,
    GenerationEvent,
    GenerationRequest,
    ModelDescription,
    OutputConstraint,
    PassObserver,
    ToolSpec,
)
from inference_service.engine.validation import (
    check_prompt_floor,
    fit_context,
    validate_logit_bias,
    validate_prompt,
    validate_sampling,
)
from inference_service.errors import (
    ContextLengthExceededError,
    InvalidArgumentError,
    NoModelLoadedError,
    QueueFullError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Bounds of the Retry-After hint sent with QUEUE_FULL.
_MIN_RETRY_S, _MAX_RETRY_S = 1, 60
# Weight of the newest job in the running average of job duration.
_DURATION_EMA_WEIGHT = 0.2


class GenerationHandle:
    """The caller's side of one generation: its events, and a way to cancel it.

    Create it on the event loop that will read `events()`: the worker thread
    hands events over with `call_soon_threadsafe`.
    """

    def __init__(self, request: GenerationRequest) -> None:
        self.request_id = request.request_id
        self.prompt_tokens = len(request.prompt_token_ids)
        self._loop = asyncio.get_running_loop()
        # At most max_tokens + 1 events per request, so this stays bounded.
        self._events: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()
        self._job: LaneJob | None = None
        self._finished = False

    def cancel(self) -> None:
        """Stops the generation; safe to call any time, from any thread, more than once."""
        if self._job is not None:
            self._job.cancel()

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Token events, then exactly one FinishedEvent. Raises what the job raised.

        Leaving the loop early (break, aclose, task cancelled) cancels the request.
        """
        try:
            while not self._finished:
                item = await self._events.get()
                if isinstance(item, BaseException):
                    self._finished = True
                    raise item
                if isinstance(item, FinishedEvent):
                    self._finished = True
                yield item
        finally:
            if not self._finished:
                self.cancel()

    # Called from the worker thread.
    def _put(self, item: GenerationEvent | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:
            # The event loop is gone: nobody is listening any more.
            self.cancel()


# On a CPU with this many cores or fewer, decoding leaves one core to the gRPC server
# and the bridge: on 2 cores one torch thread decoded 1.5x faster than two while a
# client streamed (README, "Speed").
_SHARE_CORES_UP_TO = 8


def torch_threads(setting: int, device: torch.device) -> int:
    """Intra-op threads to set: `setting` when given; for 0 on a CPU model with few
    cores, one fewer than the cores this process may use; else 0 (torch's default)."""
    if setting or device.type != "cpu":
        return setting
    cores = usable_cores()
    return max(1, cores - 1) if cores <= _SHARE_CORES_UP_TO else 0


class Engine:
    """Serves one loaded model: generation, embeddings and tokenization."""

    def __init__(
        self, loaded: LoadedModel, settings: InferenceSettings, meter: EngineMeter = NO_METER
    ) -> None:
        self._loaded = loaded
        self._settings = settings
        self._meter = meter
        threads = torch_threads(settings.torch_threads, loaded.device)
        if threads:
            torch.set_num_threads(threads)
        # A Rust tokenizer must not be used from two threads at once, so the lane and
        # the tokenizer thread each have a copy; the loaded one is left to callers
        # that copy it for threads of their own (training).
        self._lane_loaded = dataclasses.replace(loaded, tokenizer=copy.deepcopy(loaded.tokenizer))
        # Requests are tokenized and chat-templated (and grammars compiled) on this one
        # thread, never on the event loop: a 10 MB prompt takes seconds and stalled
        # every other stream.
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        self._worker_tokenizer = copy.deepcopy(loaded.tokenizer)
        # Queued first, so it is ready before the first request needs it.
        self._longest_token: Future[int | None] = self._tokenizer_thread.submit(
            longest_token_chars, self._worker_tokenizer
        )
        self._lane = Lane()
        self._boundary = PassBoundary()
        self._lock = threading.Lock()
        self._jobs: set[LaneJob] = set()  # admitted and unfinished
        self._mean_job_s = 2.0
        self._closed = False
        self._grammars: GrammarCompiler | None = None  # built on first use, on that thread
        # Kept apart from the KV budget: the batch may fill that budget while this holds
        # its own share.
        quantization = loaded.description.extra.get("quantization", "none")
        self._prefixes = PrefixCache(budget_bytes(settings.prefix_cache_mb, quantization))
        if settings.prefix_cache_mb and not self._prefixes.enabled:
            log.info("prefix cache off: %s quantization (prefix_cache.budget_bytes)", quantization)
        self._scheduler = BatchScheduler(
            self._lane_loaded,
            self._lane,
            self._boundary.run_pending,
            max_batch_size=settings.max_batch_size,
            kv_bytes_per_token=kv_bytes_per_token(loaded),
            kv_budget_bytes=_kv_budget(settings, loaded),
            on_step=meter.decode_step,
            prefixes=self._prefixes,
        )
        # The most recent generation's end, for operators and tests (set on the lane).
        self.last_finished: FinishedEvent | None = None

    # ---- what callers may know -------------------------------------------------

    @property
    def description(self) -> ModelDescription:
        return self._loaded.description

    @property
    def loaded_model(self) -> LoadedModel:
        """The model this engine serves; `loader.unload` it only after `shutdown()`."""
        return self._loaded

    @property
    def max_queue(self) -> int:
        return self._settings.max_queue

    @property
    def queue_depth(self) -> int:
        """Admitted requests not finished yet: the running one plus those waiting."""
        with self._lock:
            return len(self._jobs)

    @property
    def lane_thread(self) -> threading.Thread:
        return self._lane.thread

    # ---- tokenizer only: no lane needed ------------------------------------------

    # ---- tokenizer, off the event loop ------------------------------------------------

    async def render_chat_async(
        self, turns: Sequence[ChatTurn], options: ChatOptions = NO_OPTIONS
    ) -> list[int]:
        """`prompts.render_chat` on the tokenizer thread."""
        return await self._on_tokenizer_thread(render_chat, turns, options)

    async def encode_text_async(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """`prompts.encode_text` on the tokenizer thread."""
        return await self._on_tokenizer_thread(
            encode_text, text, add_special_tokens=add_special_tokens
        )

    async def encode_texts_async(self, texts: Sequence[str]) -> list[list[int]]:
        """Embedding inputs (no special tokens), all in one trip to the tokenizer thread."""

        def encode_all(tokenizer: Any) -> list[list[int]]:
            return [encode_text(tokenizer, text, add_special_tokens=False) for text in texts]

        return await self._on_tokenizer_thread(encode_all)

    async def token_strings_async(self, token_ids: Sequence[int]) -> list[str]:
        """Each token's own text, for display (a piece of a character shows as U+FFFD),
        on the tokenizer thread (one decode per token adds up)."""
        return await self._on_tokenizer_thread(_token_strings, token_ids)

    async def decode_async(self, token_ids: Sequence[int]) -> str:
        """Text of token ids, special tokens included (the legacy `echo`)."""
        return await self._on_tokenizer_thread(decode_tokens, token_ids)

    async def compile_grammar_async(
        self, constraint: OutputConstraint, tools: Sequence[ToolSpec] = (), *, param: str
    ) -> Grammar:
        """A constraint compiled for this model, on the tokenizer thread: a large schema
        takes a while to check, and the first call also indexes the vocabulary (about
        half a second), from that thread's own tokenizer copy."""
        return await self._on_tokenizer_thread(self._compile_grammar, constraint, tools, param)

    def _compile_grammar(
        self, tokenizer: Any, constraint: OutputConstraint, tools: Sequence[ToolSpec], param: str
    ) -> Grammar:
        # Only the tokenizer thread gets here, so building it once needs no lock.
        if self._grammars is None:
            self._grammars = GrammarCompiler(tokenizer, self.description.vocab_size)
        return self._grammars.compile(constraint, tools, param=param)

    async def check_prompt_chars(self, chars: int, *, param: str) -> None:
        """Refuses a prompt of `chars` characters that cannot fit the context whatever
        it says, before any tokenization (see `validation.check_prompt_floor`)."""
        longest = await self._tokenizer_result(self._longest_token)
        if longest is not None:
            check_prompt_floor(chars, longest, self.description.max_context_tokens, param=param)

    async def _on_tokenizer_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(tokenizer, *args, **kwargs)` on the tokenizer thread, with its own copy."""
        call = functools.partial(fn, self._worker_tokenizer, *args, **kwargs)
        try:
            future = self._tokenizer_thread.submit(call)
        except RuntimeError:  # shut down: the engine is going away
            raise _unloading() from None
        return await self._tokenizer_result(future)

    async def _tokenizer_result(self, future: Future[T]) -> T:
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # `shutdown` dropped the queued job; the caller itself was not cancelled.
            if self._closed and not _current_task_cancelling():
                raise _unloading() from None
            raise

    def lane_token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """`token_strings` for the worker lane, with the lane's own tokenizer copy."""
        return _token_strings(self._lane_loaded.tokenizer, token_ids)

    # ---- generation ----------------------------------------------------------------

    def submit_generation(
        self, request: GenerationRequest, *, prompt_param: str = "messages"
    ) -> GenerationHandle:
        """Validates and admits a generation; call from the event loop that reads it."""
        description = self.description
        validate_sampling(request.sampling)
        validate_logit_bias(request.sampling, description.vocab_size)
        validate_prompt(request.prompt_token_ids, description.vocab_size, param=prompt_param)
        sampling = fit_context(
            request.sampling,
            len(request.prompt_token_ids),
            max_context_tokens=description.max_context_tokens,
            default_max_tokens=self._settings.default_max_tokens,
            prompt_param=prompt_param,
        )
        request = dataclasses.replace(request, sampling=sampling)
        length = final_length(
            len(request.prompt_token_ids), sampling.max_tokens or 0, description.max_context_tokens
        )
        needed = self._scheduler.reserved_bytes([length])
        if needed > self._scheduler.kv_budget_bytes:
            self._meter.refused("generation", REFUSED_KV_BUDGET)
            raise ContextLengthExceededError(
                f"This request's KV cache would need {format_bytes(needed)} (prompt plus "
                f"max_tokens = {length} tokens), more than the server's budget of "
                f"{format_bytes(self._scheduler.kv_budget_bytes)}; lower max_tokens or shorten "
                "the prompt (the operator can raise MILLM_KV_CACHE_MB).",
                param="max_tokens",
            )
        handle = GenerationHandle(request)
        track = self._meter.generation(len(request.prompt_token_ids))

        def emit(event: GenerationEvent) -> None:
            track.event(event)
            if isinstance(event, FinishedEvent):
                self.last_finished = event
            handle._put(event)

        def on_error(exc: BaseException) -> None:
            track.failed()
            handle._put(exc)

        def on_skip() -> None:
            event = FinishedEvent(
                "cancelled", prompt_tokens=handle.prompt_tokens, completion_tokens=0
            )
            track.event(event)
            handle._put(event)

        job = self._new_job(_never_run, on_error=on_error, on_skip=on_skip)
        handle._job = job
        self._reserve(job, "generation")
        self._scheduler.submit(job, request, emit, length)
        return handle

    def batch_stats(self) -> BatchStats:
        return self._scheduler.stats()

    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self._prefixes.stats()

    # ---- embeddings ----------------------------------------------------------------

    async def embed(
        self, token_id_lists: list[list[int]], observer: PassObserver | None = None
    ) -> list[list[float]]:
        """One L2-normalised, mean-pooled vector per input (float32 values)."""
        if not token_id_lists:
            raise InvalidArgumentError("input must not be empty.", param="input")
        description = self.description
        for index, ids in enumerate(token_id_lists):
            if not ids:
                raise InvalidArgumentError(f"input[{index}] is empty.", param="input")
            if len(ids) > description.max_context_tokens:
                raise ContextLengthExceededError(
                    f"This model's maximum context length is {description.max_context_tokens} "
                    f"tokens; input[{index}] has {len(ids)} tokens.",
                    param="input",
                )
            validate_prompt(ids, description.vocab_size, param="input")

        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[list[float]]] = loop.create_future()
        deliver = _deliverer(loop, future)

        def body(job: LaneJob) -> None:
            vectors = _embed(
                self._lane_loaded.model,
                token_id_lists,
                job.is_cancelled,
                self._boundary.run_pending,
                observer,
            )
            job.release()
            deliver(future.set_result, vectors)

        job = self._new_job(
            body,
            on_error=lambda exc: deliver(future.set_exception, exc),
            on_skip=lambda: deliver(
                future.set_exception,
                NoModelLoadedError("The model was unloaded before this request ran; retry."),
            ),
        )
        self._admit(job, "embedding")
        try:
            return await future
        finally:
            job.cancel()  # no-op once done; stops the work if the caller went away

    # ---- other model work ------------------------------------------------------------

    async def call_on_lane(self, fn: Callable[[], T]) -> T:
        """Runs `fn` on the worker lane between two forward passes.

        For work that must not race a forward pass (attaching hooks, swapping
        weights). A running generation picks it up before its next decode step;
        an idle lane runs it at once. Not counted by admission: it is the
        server's own work.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        deliver = _deliverer(loop, future)

        def call() -> None:
            try:
                result = fn()
            except BaseException as exc:
                deliver(future.set_exception, exc)
            else:
                deliver(future.set_result, result)

        self._boundary.post(call)
        # Whichever comes first runs it: the next forward pass of a generation,
        # or this job once the lane reaches it.
        job = LaneJob(
            lambda job: self._boundary.run_pending(),
            on_error=lambda exc: deliver(future.set_exception, exc),
            # A stopping lane runs nothing more; the model goes away with its hooks.
            on_skip=lambda: deliver(
                future.set_exception, NoModelLoadedError("The model is being unloaded.")
            ),
            on_done=lambda: None,
        )
        self._lane.submit(job)
        return await future

    def run_background(self, fn: Callable[[Any], T]) -> T:
        """Runs `fn(model)` on the lane and blocks the calling thread (never the event
        loop) until it is done.

        For the server's own background work, SAE training's activation harvest.
        Not counted by admission, so it never takes a request's slot; its callers
        wait for `queue_depth == 0` before each call, so requests go first.
        """
        finished = threading.Event()
        outcome: dict[str, Any] = {}

        def settle(key: str, value: Any) -> None:
            # Set the outcome before waking the caller; LaneJob runs `on_done`
            # before `on_error`, so `on_done` cannot be the signal.
            outcome[key] = value
            finished.set()

        def body(job: LaneJob) -> None:
            self._boundary.run_pending()  # a pending hook change lands before this pass
            settle("result", fn(self._lane_loaded.model))

        job = LaneJob(
            body,
            on_error=lambda exc: settle("error", exc),
            on_skip=lambda: settle(
                "error", NoModelLoadedError("The model was unloaded while training ran.")
            ),
            on_done=lambda: None,
        )
        self._lane.submit(job)
        finished.wait()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    # ---- lifecycle -----------------------------------------------------------------

    def shutdown(self) -> None:
        """Refuses new work, cancels everything admitted and stops the lane thread."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        self._lane.shutdown()
        self._prefixes.clear()  # the kept keys and values go with the model
        # A tokenization under way finishes on its own; queued ones are dropped.
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    # ---- admission -----------------------------------------------------------------

    def _new_job(
        self,
        body: Callable[[LaneJob], None],
        *,
        on_error: Callable[[BaseException], None],
        on_skip: Callable[[], None],
    ) -> LaneJob:
        def on_failure(exc: BaseException) -> None:
            if type(exc).__name__ == "OutOfMemoryError" and torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the next request the memory back
            on_error(exc)

        def on_done() -> None:
            with self._lock:
                self._jobs.discard(job)
                if job.started_ns:
                    elapsed = (time.perf_counter_ns() - job.started_ns) / 1e9
                    self._mean_job_s += _DURATION_EMA_WEIGHT * (elapsed - self._mean_job_s)

        job = LaneJob(body, on_error=on_failure, on_skip=on_skip, on_done=on_done)
        return job

    def _admit(self, job: LaneJob, kind: str) -> None:
        self._reserve(job, kind)
        self._lane.submit(job)

    def _reserve(self, job: LaneJob, kind: str) -> None:
        """Counts `job` as admitted, or refuses it with QUEUE_FULL."""
        with self._lock:
            if self._closed:
                self._meter.refused(kind, REFUSED_UNLOADING)
                raise NoModelLoadedError("The model is being unloaded; retry shortly.")
            if len(self._jobs) >= self._settings.max_queue:
                self._meter.refused(kind, REFUSED_QUEUE_FULL)
                # Up to max_batch_size jobs progress at once.
                batch = self._scheduler.max_batch_size
                retry = math.ceil(len(self._jobs) * self._mean_job_s / batch)
                retry = min(_MAX_RETRY_S, max(_MIN_RETRY_S, retry))
                log.warning("queue full (%d admitted); refusing a request", len(self._jobs))
                raise QueueFullError(
                    f"The request queue is full ({self._settings.max_queue} requests running "
                    f"or waiting); retry in about {retry} s.",
                    retry_after_s=retry,
                )
            self._jobs.add(job)
        self._meter.admitted(kind)


def _deliverer(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
) -> Callable[[Callable[[Any], object], Any], None]:
    """From the worker thread: settle `future` on its loop unless it is already done
    (its awaiting task may have been cancelled)."""

    def deliver(setter: Callable[[Any], object], value: Any) -> None:
        def set_if_pending() -> None:
            if not future.done():
                setter(value)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(set_if_pending)

    return deliver


def _unloading() -> NoModelLoadedError:
    return NoModelLoadedError("The model is being unloaded; retry shortly.")


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _token_strings(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i], skip_special_tokens=False) for i in token_ids]


def longest_token_chars(tokenizer: Any) -> int | None:
    """The most characters of text one token can stand for, or None when the
    tokenizer normalizes text first (NFC, strip, ...): normalizing can shrink text, so
    a count of the request's characters would no longer bound its tokens.

    Both the decoded text and the vocabulary entry count: a byte-level entry has one
    character per byte, an upper bound on the characters the token covers even
    when it holds only part of one (which decodes alone as a single U+FFFD). About
    0.2 s for a 50k vocabulary, once per engine, on the tokenizer thread.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return None
    ids = list(range(len(tokenizer)))
    decoded = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    entries = tokenizer.convert_ids_to_tokens(ids)
    longest = max(max(map(len, decoded)), max(len(e) for e in entries if e is not None))
    return max(longest, 1)


def _never_run(job: LaneJob) -> None:
    raise AssertionError("a generation's ticket is run by the batch scheduler, not the lane")


def _kv_budget(settings: InferenceSettings, loaded: LoadedModel) -> int:
    if settings.kv_cache_mb:
        return settings.kv_cache_mb * 2**20
    return available_memory(loaded.device) // 4


class _EmbeddingCancelled(Exception):
    """Ends an embedding job whose caller went away; nobody receives it."""


def _embed(
    model: Any,
    token_id_lists: list[list[int]],
    is_cancelled: Callable[[], bool],
    between_passes: Callable[[], None],
    observer: PassObserver | None,
) -> list[list[float]]:
    """Runs each input alone (no padding), so an input's vector never depends on the
    other inputs of the request."""
    device = next(model.parameters()).device
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    vectors: list[list[float]] = []
    try:
        with torch.inference_mode():
            for ids in token_id_lists:
                if is_cancelled():
                    raise _EmbeddingCancelled
                between_passes()
                undo = install([observer.plan(ids, 0) if observer is not None else None])
                input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # [1, T]
                try:
                    hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state
                finally:
                    undo()
                pooled = hidden[0].float().mean(dim=0)  # [1, T, H] -> [H]
                vectors.append(F.normalize(pooled, dim=0).tolist())
    finally:
        if observer is not None:
            observer.done()
    return vectors
