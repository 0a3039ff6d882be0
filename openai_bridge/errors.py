"""The bridge half of the one error table: gRPC status (+ reason) -> HTTP + OpenAI error JSON.

The inference service reports every failure as a gRPC code plus a
`google.rpc.ErrorInfo` reason (see `inference_service/errors.py`). This module
maps that pair to the HTTP status, the OpenAI error `type` and `code`, and the
retry headers the official SDK honours (`Retry-After`, `x-should-retry`). The
bridge's own request checks raise the same `InferenceError`, so every error a
client sees comes out of `ERROR_TABLE`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

log = logging.getLogger(__name__)

Code = grpc.StatusCode


class InferenceError(Exception):
    """A failed call, as a gRPC code and machine-readable reason (`QUEUE_FULL`, ...)."""

    def __init__(
        self,
        grpc_code: grpc.StatusCode,
        reason: str | None,
        message: str,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code
        self.reason = reason
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


def invalid_request(
    message: str, param: str | None = None, reason: str = "INVALID_ARGUMENT"
) -> InferenceError:
    """An error in the request itself, found by the bridge before any gRPC call."""
    return InferenceError(Code.INVALID_ARGUMENT, reason, message, param=param)


def unsupported(message: str, param: str | None = None) -> InferenceError:
    return invalid_request(message, param, reason="UNSUPPORTED")


@dataclass(frozen=True)
class HttpError:
    """How one (gRPC code, reason) row looks to an OpenAI client."""

    status: int
    type: str
    # OpenAI `code`; None means: the reason in lower case, or null without one.
    code: str | None = None
    # Seconds for `Retry-After` when the service did not say; None: no header.
    retry_after_s: int | None = None
    # Value of `x-should-retry`; None: no header, the SDK's defaults apply.
    should_retry: bool | None = None


# Rows keyed by (code, reason); (code, None) is the row for any other reason.
ERROR_TABLE: dict[tuple[grpc.StatusCode, str | None], HttpError] = {
    (Code.INVALID_ARGUMENT, None): HttpError(400, "invalid_request_error"),
    (Code.INVALID_ARGUMENT, "INVALID_ARGUMENT"): HttpError(
        400, "invalid_request_error", "invalid_value"
    ),
    (Code.OUT_OF_RANGE, None): HttpError(400, "invalid_request_error", "invalid_value"),
    (Code.NOT_FOUND, None): HttpError(404, "not_found_error"),
    (Code.NOT_FOUND, "MODEL_NOT_FOUND"): HttpError(404, "invalid_request_error", "model_not_found"),
    # The SDK retries 409; a duplicate stays a duplicate.
    (Code.ALREADY_EXISTS, None): HttpError(409, "conflict_error", should_retry=False),
    (Code.FAILED_PRECONDITION, None): HttpError(400, "invalid_request_error"),
    # Deleting the model being served: a conflict with server state that lasts
    # until an operator unloads it, so no automatic retries.
    (Code.FAILED_PRECONDITION, "MODEL_IN_USE"): HttpError(
        409, "conflict_error", should_retry=False
    ),
    # Deleting an attached SAE or attaching a second one: the state conflict
    # lasts until someone detaches, so no automatic retries.
    (Code.FAILED_PRECONDITION, "SAE_IN_USE"): HttpError(409, "conflict_error", should_retry=False),
    (Code.FAILED_PRECONDITION, "SAE_ALREADY_ATTACHED"): HttpError(
        409, "conflict_error", should_retry=False
    ),
    # One run trains at a time; the conflict lasts until it finishes or is stopped.
    (Code.FAILED_PRECONDITION, "TRAINING_BUSY"): HttpError(
        409, "conflict_error", should_retry=False
    ),
    # Nothing is loading, so retrying cannot help until an operator loads a model.
    (Code.FAILED_PRECONDITION, "NO_MODEL_LOADED"): HttpError(
        503, "service_unavailable_error", should_retry=False
    ),
    # The service says QUEUE_FULL when it is busy; RESOURCE_EXHAUSTED without a
    # reason comes from gRPC itself: a message or metadata over its size limits (an
    # oversized id echoed back, say). The same request fails the same way again, so
    # a 400 without retries, not a 429 the SDK would retry with no Retry-After.
    (Code.RESOURCE_EXHAUSTED, None): HttpError(
        400, "invalid_request_error", "request_too_large", should_retry=False
    ),
    (Code.RESOURCE_EXHAUSTED, "QUEUE_FULL"): HttpError(429, "rate_limit_error", retry_after_s=1),
    # A request that ran the device out of memory will do so again: 503 without
    # retries, not 429 (which invites the SDK to triple the load).
    (Code.RESOURCE_EXHAUSTED, "OUT_OF_MEMORY"): HttpError(503, "server_error", should_retry=False),
    (Code.UNAVAILABLE, None): HttpError(503, "service_unavailable_error", retry_after_s=1),
    (Code.UNAVAILABLE, "MODEL_LOADING"): HttpError(
        503, "service_unavailable_error", retry_after_s=5
    ),
    (Code.UNAUTHENTICATED, None): HttpError(401, "authentication_error", "invalid_api_key"),
    (Code.PERMISSION_DENIED, None): HttpError(403, "permission_error"),
    (Code.CANCELLED, None): HttpError(499, "request_cancelled", "cancelled"),
    (Code.DEADLINE_EXCEEDED, None): HttpError(504, "timeout_error", "timeout"),
    (Code.UNIMPLEMENTED, None): HttpError(501, "not_supported_error", should_retry=False),
    (Code.INTERNAL, None): HttpError(500, "server_error"),
    (Code.UNKNOWN, None): HttpError(500, "server_error"),
}
_FALLBACK = HttpError(500, "server_error")


def lookup(grpc_code: grpc.StatusCode, reason: str | None) -> HttpError:
    return ERROR_TABLE.get((grpc_code, reason)) or ERROR_TABLE.get((grpc_code, None), _FALLBACK)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope, exactly `{"error": {message, type, param, code}}`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def describe(error: InferenceError) -> tuple[HttpError, dict[str, Any]]:
    """The table row and the JSON body for `error`."""
    row = lookup(error.grpc_code, error.reason)
    code = row.code
    if code is None and error.reason:
        code = error.reason.lower()
    return row, error_body(error.message, row.type, error.param, code)


def error_headers(error: InferenceError, row: HttpError) -> dict[str, str]:
    headers: dict[str, str] = {}
    retry_after = error.retry_after_s if error.retry_after_s is not None else row.retry_after_s
    if retry_after is not None and row.status in (429, 503):
        headers["Retry-After"] = str(retry_after)
    if row.should_retry is not None:
        headers["x-should-retry"] = "true" if row.should_retry else "false"
    return headers


def error_response(error: InferenceError, scope: Scope) -> JSONResponse:
    """The HTTP answer to `error` on the request of `scope`."""
    row, body = describe(error)
    return error_answer(scope, row.status, body, error_headers(error, row))


def error_answer(
    scope: Scope, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """Every error answer leaves through here, so each 4xx is logged once, whichever
    route, handler or middleware refused the request."""
    if 400 <= status < 500:
        # INFO, not WARNING: the client's mistake, but the reason must be findable
        # when a client only reports "it says 400". The path only (a WebSocket may
        # carry `?api_key=`), and never the body: it holds the prompt.
        error = body["error"]
        log.info(
            "%s %s answered %d, code=%s param=%s: %s",
            scope.get("method", "WEBSOCKET"),
            scope["path"],
            status,
            error["code"],
            error["param"],
            error["message"],
        )
    return JSONResponse(body, status_code=status, headers=headers)


def _http_type(status: int) -> str:
    if status == 404:
        return "not_found_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


# The OpenAI routes name a list item as OpenAI does, `messages[0].content`; the
# management API keeps pydantic's `features.0.index`, as docs/management-api.md shows.
OPENAI_PREFIX = "/v1/"


def brackets_for(scope: Scope) -> bool:
    """Whether `param`s on this request name list items in brackets."""
    return str(scope.get("path", "")).startswith(OPENAI_PREFIX)


def field_path(parts: Iterable[str | int], *, brackets: bool) -> str:
    """('messages', 0, 'content') -> 'messages[0].content', or with `brackets` False
    'messages.0.content'."""
    path = ""
    for part in parts:
        if brackets and isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _param_from_loc(loc: tuple[Any, ...], brackets: bool) -> str | None:
    """('body', 'messages', 0, 'content', 'list[...]', 1) -> 'messages[0].content[1]';
    ('path', 'id') -> 'id' (a path parameter has no other name to clash with)."""
    if loc[:1] in (("body",), ("path",)):
        loc = loc[1:]
    return field_path((p for p in loc if not _is_type_tag(p)), brackets=brackets) or None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def _is_type_tag(part: Any) -> bool:
    # Pydantic puts the union member in `loc` ("str", "list[ContentPart]", ...).
    return isinstance(part, str) and (
        part in _TYPE_TAGS or "[" in part or part.startswith("function-")
    )


async def _on_inference_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InferenceError)
    if lookup(exc.grpc_code, exc.reason).status >= 500:
        log.warning(
            "%s %s failed: %s %s", request.method, request.url.path, exc.grpc_code.name, exc.message
        )
    return error_response(exc, request.scope)


def validation_failure(errors: Sequence[Any], *, brackets: bool = False) -> InferenceError:
    """The 400 for pydantic's `errors()`: the first one, with its `loc` as `param`."""
    first = errors[0] if errors else {"loc": (), "msg": "Invalid request body."}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return invalid_request("The request body is not valid JSON.")
    param = _param_from_loc(loc, brackets)
    message = str(first.get("msg", "Invalid request body."))
    message = f"{message} (at `{param}`)" if param else f"{message} (the request body)"
    return invalid_request(message, param)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI answers 422 by default; OpenAI clients expect 400 with `param`.
    assert isinstance(exc, RequestValidationError)
    failure = validation_failure(list(exc.errors()), brackets=brackets_for(request.scope))
    return error_response(failure, request.scope)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"Unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers["Allow"] = ", ".join(allowed)
    body = error_body(message, _http_type(exc.status_code), None, None)
    return error_answer(request.scope, exc.status_code, body, headers)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path. Starlette's 405 names the first
    matching route's only, and a path may have one route per method; asking the
    router per method also sees into FastAPI's nested routers."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


async def _on_unencodable_text(request: Request, exc: Exception) -> JSONResponse:
    # The net under `request_checks`: text that reached protobuf with a lone
    # surrogate (from a path or query, or a route that builds strings itself).
    from openai_bridge.request_checks import lone_surrogate_error

    assert isinstance(exc, UnicodeEncodeError)
    log.info("unencodable text on %s %s: %s", request.method, request.url.path, exc.reason)
    return error_response(lone_surrogate_error(None), request.scope)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    body = error_body("Internal server error; the details are in the bridge log.", "server_error")
    return error_answer(request.scope, 500, body)


def install_exception_handlers(app: FastAPI) -> None:
    """The handlers, and `request_checks.check_request` as a dependency of every route.
    FastAPI copies the app's dependencies into each route when it is included, so
    this runs before the routers are included (`create_app` does; a test checks)."""
    # Imported here: request_checks builds its errors with this module.
    from openai_bridge.request_checks import check_request

    app.router.dependencies.append(Depends(check_request))
    app.add_exception_handler(UnicodeEncodeError, _on_unencodable_text)
    app.add_exception_handler(InferenceError, _on_inference_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
