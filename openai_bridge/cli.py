"""`millm-bridge` / `python -m openai_bridge`: start the OpenAI bridge."""

from __future__ import annotations

import contextlib
import math
from types import FrameType

import uvicorn

from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from openai_bridge.draining import Draining
from openai_bridge.logs import setup_logging


def main() -> None:
    settings = BridgeSettings()
    setup_logging(settings.log_level, settings.log_json)
    draining = Draining(settings.shutdown_grace_s)
    app = create_app(settings, draining=draining)
    base = f"http://{settings.http_host}:{settings.http_port}"
    print(f"miLLM OpenAI API at {base}/v1, admin UI at {base}/", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        log_level=settings.log_level.lower(),
        ws_ping_interval=settings.ws_ping_timeout_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        # uvicorn waits for open connections without limit by default; a stream whose
        # client never reads would hold a stop open for minutes.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
    )
    _DrainingServer(config, draining).run()


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app when its graceful stop begins."""

    def __init__(self, config: uvicorn.Config, draining: Draining) -> None:
        super().__init__(config)
        self._draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to drain
            self._draining.start()
        super().handle_exit(sig, frame)
