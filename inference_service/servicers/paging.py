"""Page tokens for List RPCs: an opaque string that is the next offset."""

from __future__ import annotations

from inference_service.errors import InvalidArgumentError

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return limit, 0
    if not page_token.isdigit():
        raise InvalidArgumentError(
            "`page_token` is not one this server issued.", param="page_token"
        )
    return limit, int(page_token)


def next_page_token(offset: int, limit: int, fetched: int) -> str:
    """`fetched` counts items read with limit + 1, so more than `limit` means another page."""
    return str(offset + limit) if fetched > limit else ""
