"""gRPC adapter for millm.v1.InferenceService: validates the envelope, calls the engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from inference_service import __version__
from inference_service.engine.engine import Engine, GenerationHandle
from inference_service.engine.memory import memory_usage
from inference_service.engine.types import GenerationRequest, ToolCalls, ToolSpec
from inference_service.engine.validation import chat_chars, validate_tools
from inference_service.errors import InvalidArgumentError, MillmError, ModelNotFoundError
from inference_service.host import LOADING_RETRY_AFTER_S, ModelHost, ModelState
from inference_service.logs import request_id_var
from inference_service.monitoring.types import Selection, Source
from inference_service.servicers import inference_convert, steering_convert
from inference_service.steering.runtime import PassContext, SteeringRuntime
from millm.v1 import inference_service_pb2 as pb
from millm.v1 import inference_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

NO_ACTIVATIONS = Selection()

_MODEL_STATES = inference_convert.MODEL_STATES


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, host: ModelHost, steering: SteeringRuntime | None = None) -> None:
        self._host = host
        self._steering = steering

    def _context(
        self,
        engine: Engine,
        source: Source,
        steering: pb.GenerateStart | pb.EmbedRequest,
        activations: Selection = NO_ACTIVATIONS,
    ) -> PassContext | None:
        """The request's steering and capture, checked before it is admitted."""
        if self._steering is None:
            return None
        choice = steering_convert.choice(steering.steering)
        return self._steering.context(
            request_id_var.get(), source, choice, activations, engine.lane_token_strings
        )

    def _engine_for(self, model: str) -> Engine:
        engine = self._host.require_engine()
        served = engine.description.id
        if model and model != served:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist; this server serves '{served}'.", param="model"
            )
        return engine

    async def _prompt_ids(self, engine: Engine, start: pb.GenerateStart) -> tuple[int, ...]:
        """Tokenized on the engine's tokenizer thread: a large prompt takes seconds,
        which on the event loop would stall every other stream and health check."""
        which = start.WhichOneof("input")
        if which == "chat":
            turns = inference_convert.chat_turns(start.chat)
            options = inference_convert.chat_options(start.chat)
            await engine.check_prompt_chars(chat_chars(turns, options.tools), param="messages")
            return tuple(await engine.render_chat_async(turns, options))
        if which == "prompt":
            await engine.check_prompt_chars(len(start.prompt), param="prompt")
            return tuple(await engine.encode_text_async(start.prompt, add_special_tokens=True))
        if which == "prompt_token_ids":
            return tuple(start.prompt_token_ids.ids)
        raise InvalidArgumentError(
            "The request has no input: send chat messages or a prompt.", param="messages"
        )

    async def Generate(
        self, request_iterator: AsyncIterator[pb.GenerateRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "start":
            raise InvalidArgumentError(
                "The first message on Generate must be `start`.", param="start"
            )
        start = first.start
        engine = self._engine_for(start.model)
        tools = inference_convert.tools(start.chat)
        validate_tools(tools)
        prompt_ids = await self._prompt_ids(engine, start)
        grammar = await _grammar(engine, start, tools)
        prompt_text = await engine.decode_async(prompt_ids) if start.echo_prompt else ""
        # A thread: resolving a profile may read the database.
        observer = await asyncio.to_thread(
            self._context, engine, "generate", start, steering_convert.selection(start.activations)
        )
        request = GenerationRequest(
            request_id=request_id_var.get(),
            prompt_token_ids=prompt_ids,
            sampling=inference_convert.sampling_options(start.sampling),
            observer=observer,
            grammar=grammar,
        )
        prompt_param = "prompt" if start.WhichOneof("input") != "chat" else "messages"
        handle = engine.submit_generation(request, prompt_param=prompt_param)
        # Later client messages (cancel, new steering) are read beside the token stream.
        watcher = asyncio.create_task(_watch_client(request_iterator, handle, observer))
        try:
            yield pb.GenerateResponse(
                accepted=pb.GenerateAccepted(
                    request_id=request.request_id,
                    prompt_tokens=len(request.prompt_token_ids),
                    model=engine.description.id,
                    prompt_text=prompt_text,
                )
            )
            async for event in handle.events():
                yield inference_convert.generate_response(event)
        finally:
            # Runs on normal end, on error and when the client cancels the call.
            handle.cancel()
            watcher.cancel()

    async def Embed(
        self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedResponse:
        engine = self._engine_for(request.model)
        if not request.inputs:
            raise InvalidArgumentError("`input` must not be empty.", param="input")
        hidden = engine.description.hidden_size
        if request.HasField("dimensions") and request.dimensions != hidden:
            raise InvalidArgumentError(
                f"`dimensions` must be {hidden} for this model (embeddings are not truncated).",
                param="dimensions",
            )
        texts = [item.text for item in request.inputs if item.WhichOneof("input") != "token_ids"]
        for text in texts:
            await engine.check_prompt_chars(len(text), param="input")
        encoded = iter(await engine.encode_texts_async(texts))
        token_lists = [
            list(item.token_ids.ids) if item.WhichOneof("input") == "token_ids" else next(encoded)
            for item in request.inputs
        ]
        observer = await asyncio.to_thread(self._context, engine, "embed", request)
        vectors = await engine.embed(token_lists, observer)
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=v) for v in vectors],
            prompt_tokens=sum(len(t) for t in token_lists),
            model=engine.description.id,
        )

    async def Tokenize(
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        engine = self._engine_for(request.model)
        if request.WhichOneof("input") == "chat":
            ids = await engine.render_chat_async(inference_convert.chat_turns(request.chat))
        else:
            ids = await engine.encode_text_async(
                request.text, add_special_tokens=request.add_special_tokens
            )
        return pb.TokenizeResponse(
            token_ids=ids,
            tokens=await engine.token_strings_async(ids),
            max_context_tokens=engine.description.max_context_tokens,
        )

    async def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetServerInfoResponse:
        engine = self._host.engine
        response = pb.GetServerInfoResponse(
            version=__version__,
            model_state=_MODEL_STATES[self._host.state],
            retry_after_s=LOADING_RETRY_AFTER_S if self._host.state is ModelState.LOADING else 0,
        )
        if engine is not None:
            response.queue_depth = engine.queue_depth
            response.max_queue = engine.max_queue
            response.batch.CopyFrom(inference_convert.batch_status(engine.batch_stats()))
            if self._host.state is ModelState.READY:
                response.model.CopyFrom(inference_convert.model_info(engine.description))
        device = engine.loaded_model.device if engine is not None else None
        response.memory.CopyFrom(inference_convert.memory_status(memory_usage(device)))
        return response


async def _grammar(engine: Engine, start: pb.GenerateStart, tools: tuple[ToolSpec, ...]) -> Any:
    """The request's compiled constraint, or None."""
    constraint = inference_convert.output_constraint(start.constraint)
    if constraint is None:
        return None
    if isinstance(constraint, ToolCalls) and not tools:
        raise InvalidArgumentError(
            "A tool-call constraint needs `tools` to choose from.", param="tool_choice"
        )
    param = "tool_choice" if isinstance(constraint, ToolCalls) else "response_format"
    return await engine.compile_grammar_async(constraint, tools, param=param)


async def _watch_client(
    request_iterator: AsyncIterator[pb.GenerateRequest],
    handle: GenerationHandle,
    observer: PassContext | None,
) -> None:
    """Cancels on `cancel`; swaps the generation's steering on `steering`. A steering
    update that fails validation is ignored with a log line: the stream of tokens
    has no place for an error short of ending the generation."""
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, StopAsyncIteration):
        async for message in request_iterator:
            kind = message.WhichOneof("kind")
            if kind == "cancel":
                handle.cancel()
                return
            if kind == "steering" and observer is not None:
                try:
                    observer.update(steering_convert.choice(message.steering))
                except MillmError as exc:
                    log.warning("steering update refused: %s", exc.message)
