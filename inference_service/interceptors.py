"""The one place where exceptions become gRPC statuses, for every handler kind.

Domain errors keep their code and reason; an out-of-memory error becomes
RESOURCE_EXHAUSTED and the service keeps serving; anything else becomes
INTERNAL with a safe message and the stack in the log. Each call also gets a
request id (from the `x-request-id` metadata, or a fresh one) stamped on every
log line it causes.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from inference_service.errors import (
    ERROR_DOMAIN,
    MillmError,
    OutOfMemoryError,
    UnauthenticatedError,
    UnimplementedError,
)
from inference_service.logs import request_id_var

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _as_domain_error(exc: BaseException) -> MillmError:
    if isinstance(exc, MillmError):
        return exc
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        # torch.OutOfMemoryError is matched by name: this module must not import torch.
        log.error("out of memory while serving a request", exc_info=exc)
        return OutOfMemoryError(
            "The server ran out of memory for this request; "
            "retry with a shorter input or fewer tokens."
        )
    if isinstance(exc, NotImplementedError):
        return UnimplementedError("This RPC is not implemented by this server version.")
    log.error("unexpected error", exc_info=exc)
    return MillmError("Internal server error; the details are in the inference service log.")


def status_details(error: MillmError) -> bytes:
    """Serialises `error` as a google.rpc.Status with one ErrorInfo detail."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata()
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=[detail])
    return status.SerializeToString()


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Ends the call with the status `exc` maps to. Always raises."""
    error = _as_domain_error(exc)
    await context.abort(
        error.code, error.message, trailing_metadata=((STATUS_DETAILS_KEY, status_details(error)),)
    )


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and value:
            return str(value)[:64]
    return uuid.uuid4().hex[:16]


_HEALTH_PREFIX = "/grpc.health.v1.Health/"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Applies the error table and the request id to unary and streaming handlers."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        # grpcio-health-checking's Watch is a coroutine that answers with
        # `context.write`, not an async generator: wrapped, every Watch failed with
        # INTERNAL, and with it gRPC's client-side health checking (docs/scale-out.md).
        # The health servicer raises no domain errors to map.
        if handler is None or (handler_call_details.method or "").startswith(_HEALTH_PREFIX):
            return handler
        return rewrap_handler(handler, _wrap_unary, _wrap_stream)


def rewrap_handler(
    handler: grpc.RpcMethodHandler,
    wrap_unary: Callable[[Any], Callable[..., Awaitable[Any]]],
    wrap_stream: Callable[[Any], Callable[..., AsyncIterator[Any]]],
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped, whatever its kind (unary or streaming
    responses; the request side does not change the wrapper's shape)."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), **kwargs)
    return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), **kwargs)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = request_id_var.set(_request_id(context))
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)
        finally:
            _reset_request_id(token)

    return wrapper


def _reset_request_id(token: Any) -> None:
    # A stream closed by grpc (GeneratorExit) may finalise in another context, where
    # the token is foreign; each call runs in its own task, so nothing leaks then.
    with contextlib.suppress(ValueError):
        request_id_var.reset(token)


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        token = request_id_var.set(_request_id(context))
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort_with(context, exc)
        finally:
            _reset_request_id(token)

    return wrapper


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <key>` on every call but health checks."""

    _OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, api_key: str) -> None:
        self._expected = f"Bearer {api_key}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method or ""
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization") or ""
        if isinstance(given, str):
            given = given.encode()
        # Constant time: `==` stops at the first differing byte, which leaks how much
        # of a guess was right to anyone who can time the answers.
        if method.startswith(self._OPEN_PREFIXES) or hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)
        return _unauthenticated_handler(await continuation(handler_call_details))


def _unauthenticated_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort_with(
            context,
            UnauthenticatedError("Missing or wrong API key: send `authorization: Bearer <key>`."),
        )

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort_with(
            context,
            UnauthenticatedError("Missing or wrong API key: send `authorization: Bearer <key>`."),
        )
        yield  # pragma: no cover - makes this an async generator

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)
