"""Resumable transfer of one file: HTTP Range into a `.part` file that survives restarts.

huggingface_hub (1.18 and later) deletes its partial files when a download
fails, so resuming after a crash or restart needs a partial file of our own
with a name that does not change between processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
_RETRIES = 5


class TransferCancelled(Exception):
    """The caller asked the transfer to stop; the partial file is kept for a resume."""


def fetch_file(
    client: httpx.Client,
    url: str,
    part: Path,
    size: int,
    headers: dict[str, str],
    on_bytes: Callable[[int], None],
    is_cancelled: Callable[[], bool],
) -> None:
    """Downloads `url` into `part` until it holds `size` bytes, resuming what is there.

    Calls `on_bytes(n)` for every n bytes received. Connection failures are retried
    with backoff from the current offset; a server that ignores Range restarts the file.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:  # a stale partial of a different file
            part.unlink()
            offset = 0
        if offset == size:
            return
        request_headers = {**headers, "Range": f"bytes={offset}-"} if offset else dict(headers)
        try:
            with client.stream("GET", url, headers=request_headers) as response:
                if response.status_code == 416:  # nothing left to send
                    return
                response.raise_for_status()
                mode = "ab" if response.status_code == 206 else "wb"
                if mode == "wb" and offset:
                    log.info("server ignored the range request; restarting %s", part.name)
                    on_bytes(-offset)
                with part.open(mode) as fh:
                    for chunk in response.iter_bytes(_CHUNK):
                        if is_cancelled():
                            raise TransferCancelled()
                        fh.write(chunk)
                        on_bytes(len(chunk))
            if part.stat().st_size >= size:
                return
            raise httpx.RemoteProtocolError("the connection closed before the end of the file")
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            attempt += 1
            if attempt > _RETRIES:
                raise
            delay = min(0.25 * 2**attempt, 8.0)
            log.warning("transfer of %s broke (%s); resuming in %.1f s", part.name, exc, delay)
            time.sleep(delay)
