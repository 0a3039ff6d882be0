"""Checks on a request that no field's schema expresses.

A lone UTF-16 surrogate (`"\\ud800"` as a JSON escape) is valid JSON and a valid
Python `str`, so pydantic takes it; protobuf then refuses to encode it, deep in a
route. Found here first, it is a 400 that names the field on every route. Nesting
is bounded where a route parses JSON by hand: the parser and every walk over the
value recurse, and a deep enough document ends in `RecursionError` (a 500).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import HTTPConnection, Request

from openai_bridge.errors import InferenceError, brackets_for, field_path, invalid_request

# Deeper than any document miLLM reads or writes (a profile is 4 levels deep).
MAX_JSON_DEPTH = 64
# Longer than any id or name a route takes in its path (Hub ids are at most 96).
PATH_PARAM_MAX = 1024

# A JSON escape that could decode to a surrogate; most bodies have none, so the
# body is parsed a second time only when this matches.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_path(value: Any) -> tuple[str | int, ...] | None:
    """The path of the first string (or key) holding a lone surrogate, () for the top
    level, None when there is none. Iterative: the value may be deep."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _SURROGATE.search(key):
                    return path
                stack.append((child, (*path, str(key))))
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
    return None


def lone_surrogate_error(param: str | None) -> InferenceError:
    where = f"`{param}`" if param else "The request body"
    return invalid_request(
        f"{where} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its "
        "pair), which is not text; send valid Unicode.",
        param or None,
    )


def check_text(value: Any, param: str | None = None, *, brackets: bool = False) -> None:
    """Raises the 400 when `value` (parsed JSON or a plain string) has a lone surrogate."""
    path = lone_surrogate_path(value)
    if path is not None:
        parts = (param, *path) if param else path
        raise lone_surrogate_error(field_path(parts, brackets=brackets))


def json_depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (a scalar is 0). Iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


def loads_bounded(text: str | bytes, what: str, param: str | None = None) -> Any:
    """`json.loads` for a body a route parses by hand: a 400 for text that is not
    JSON, nests deeper than `MAX_JSON_DEPTH` (both naming `param`), or holds a lone
    surrogate (naming the field in the document)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(what, param) from None
    except ValueError:
        raise invalid_request(f"{what} is not valid JSON.", param) from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise _too_deep(what, param)
    check_text(value)
    return value


def _too_deep(what: str, param: str | None) -> InferenceError:
    return invalid_request(f"{what} nests deeper than {MAX_JSON_DEPTH} levels.", param)


async def check_request(connection: HTTPConnection) -> None:
    """A dependency of every route: path parameters of a sane length, and no lone
    surrogate in a JSON body.

    Ids and names in the path end up in the service's error messages, which travel
    back as gRPC metadata; one of kilobytes overflows its limit and the status
    turns into gRPC's own RESOURCE_EXHAUSTED. Only routes with a body model have
    their body looked at: FastAPI has read it already (`body()` returns its copy),
    so streaming routes such as corpus uploads are never buffered here. Routes that
    read the body by hand use `loads_bounded`; WebSocket messages are checked
    where they are parsed.
    """
    for name, value in connection.path_params.items():
        if isinstance(value, str) and len(value) > PATH_PARAM_MAX:
            raise invalid_request(
                f"`{name}` is {len(value)} characters long; no id or name is longer than "
                f"{PATH_PARAM_MAX}.",
                name,
            )
        check_text(value, name)
    if not isinstance(connection, Request):
        return
    route = connection.scope.get("route")
    if getattr(route, "body_field", None) is None:
        return
    body = await connection.body()
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return  # not JSON: FastAPI's own parse answers that
    check_text(value, brackets=brackets_for(connection.scope))
