"""`millm-bridge` / `python -m openai_bridge`: start the OpenAI bridge."""

from __future__ import annotations

import uvicorn

from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from openai_bridge.inference_client import GrpcInferenceClient
from openai_bridge.logs import setup_logging
from openai_bridge.management_client import GrpcManagementClient


def main() -> None:
    settings = BridgeSettings()
    setup_logging(settings.log_level, settings.log_json)
    client = GrpcInferenceClient(
        settings.inference_address,
        api_key=settings.api_key,
        timeout_s=settings.request_timeout_s,
    )
    # Shares the inference client's channel: one connection to the service.
    app = create_app(settings, client, management=GrpcManagementClient(client))
    base = f"http://{settings.http_host}:{settings.http_port}"
    print(f"miLLM OpenAI API at {base}/v1, admin UI at {base}/", flush=True)
    uvicorn.run(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        log_level=settings.log_level.lower(),
        ws_ping_interval=settings.ws_ping_timeout_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        # uvicorn waits for open connections without limit by default; a stream whose
        # client never reads would hold a stop open for minutes.
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
