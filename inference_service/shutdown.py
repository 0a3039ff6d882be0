"""Graceful shutdown: refuse new calls, give running ones a bounded grace, end the rest.

grpc's own `server.stop(grace)` refuses new calls and cancels the running ones
without a status detail, so the bridge could only guess (it used to tell users
to start a service that was merely stopping). This gate does the same steps
itself, with a `SHUTTING_DOWN` reason on every refusal and every call it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from inference_service.errors import MillmError
from inference_service.interceptors import abort_with, rewrap_handler

log = logging.getLogger(__name__)

SHUTDOWN_MESSAGE = "The server is shutting down; retry on another replica or after it restarts."
# Health checks and reflection keep answering while draining: health says NOT_SERVING.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ShuttingDownError(MillmError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "SHUTTING_DOWN"


class ShutdownGate(grpc.aio.ServerInterceptor):
    """Tracks every running call; `drain` refuses new ones and ends the stragglers.

    Install it first among the interceptors so its wrapper is the outermost one and
    sees the cancellation it causes. Only calls to `awaited_prefixes` (generations)
    hold the grace open: watches of operations or monitoring never end on their own,
    so they are ended as soon as those calls are done.
    """

    def __init__(self, awaited_prefixes: tuple[str, ...]) -> None:
        self._awaited_prefixes = awaited_prefixes
        self._calls: dict[asyncio.Task[Any], str] = {}
        self._draining = False
        self._ending = False

    @property
    def draining(self) -> bool:
        return self._draining

    async def drain(self, grace_s: float) -> None:
        """Refuses new calls, waits up to `grace_s` for generations, then ends every
        call still running with UNAVAILABLE / SHUTTING_DOWN."""
        self._draining = True
        deadline = time.monotonic() + grace_s
        awaited = self._running(awaited_only=True)
        log.info(
            "draining: %d generation(s) running, up to %.1f s to finish", len(awaited), grace_s
        )
        while awaited and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(awaited, timeout=left)
            awaited = self._running(awaited_only=True)
        remaining = self._running(awaited_only=False)
        if not remaining:
            return
        log.warning("shutdown grace over: ending %d call(s) still running", len(remaining))
        self._ending = True
        for task in remaining:
            task.cancel()
        # Each ended call sends its status from its own task; give them a moment to.
        await asyncio.wait(remaining, timeout=2.0)

    def _running(self, *, awaited_only: bool) -> set[asyncio.Task[Any]]:
        return {
            task
            for task, method in self._calls.items()
            if not task.done() and (not awaited_only or method.startswith(self._awaited_prefixes))
        }

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        if self._draining:
            return rewrap_handler(handler, _refuse, _refuse_stream)
        return rewrap_handler(
            handler,
            lambda behavior: self._track_unary(behavior, method),
            lambda behavior: self._track_stream(behavior, method),
        )

    def _track_unary(
        self, behavior: Callable[..., Awaitable[Any]], method: str
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            task = asyncio.current_task()
            assert task is not None  # grpc.aio runs every call in its own task
            self._calls[task] = method
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                if not self._ending:
                    raise  # the client went away
                await abort_with(context, ShuttingDownError(SHUTDOWN_MESSAGE))
            finally:
                self._calls.pop(task, None)

        return wrapper

    def _track_stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            task = asyncio.current_task()
            assert task is not None
            self._calls[task] = method
            try:
                async for response in behavior(request, context):
                    yield response
            except asyncio.CancelledError:
                if not self._ending:
                    raise
                await abort_with(context, ShuttingDownError(SHUTDOWN_MESSAGE))
            finally:
                self._calls.pop(task, None)

        return wrapper


def _refuse(_behavior: Any) -> Callable[..., Awaitable[Any]]:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_with(context, ShuttingDownError(SHUTDOWN_MESSAGE))

    return deny


def _refuse_stream(_behavior: Any) -> Callable[..., AsyncIterator[Any]]:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if hasattr(request, "__anext__"):
            # A bidirectional call refused before its first message was read sometimes
            # reaches the client as "Internal error from Core"; read it, as every
            # handler does before it fails.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(request), timeout=1.0)
        await abort_with(context, ShuttingDownError(SHUTDOWN_MESSAGE))
        yield  # pragma: no cover - makes this an async generator

    return deny
