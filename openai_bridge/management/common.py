"""What every /api/v1 resource shares: paging parameters and the 201/202 and download answers."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from millm.v1 import operation_pb2 as opb
from openai_bridge import proto_json
from openai_bridge.errors import invalid_request

MAX_PAGE_SIZE = 200

PageSize = Annotated[int | None, Query()]
PageToken = Annotated[str | None, Query(max_length=1024)]


def page_size(value: int | None) -> int:
    """0 lets the service choose (50)."""
    if value is None:
        return 0
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise invalid_request(f"`page_size` must be 1 to {MAX_PAGE_SIZE}.", "page_size")
    return value


def paging(size: int | None, token: str | None) -> dict[str, Any]:
    """The `page_size` and `page_token` fields of a List request."""
    return {"page_size": page_size(size), "page_token": token or ""}


def given(body: BaseModel | None) -> dict[str, Any]:
    """The fields a request body sets (null and absent ones left out, so they take defaults)."""
    return body.model_dump(exclude_none=True) if body is not None else {}


def created(location: str, payload: Any) -> JSONResponse:
    return JSONResponse(payload, status_code=201, headers={"Location": location})


def operation_accepted(operation: opb.Operation) -> JSONResponse:
    """202 with the operation that does the work, and where to watch it."""
    location = f"/api/v1/operations/{operation.id}"
    return JSONResponse(
        proto_json.to_json(operation), status_code=202, headers={"Location": location}
    )


_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str) -> str:
    return _UNSAFE_FILENAME.sub("_", name).strip("._")


def attachment(filename: str, fallback: str) -> dict[str, str]:
    """The `Content-Disposition` header of a download, with `filename` made header-safe."""
    safe = safe_filename(filename or fallback) or "download"
    return {"Content-Disposition": f'attachment; filename="{safe}"'}
