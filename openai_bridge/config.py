"""Settings of the bridge: one object, built in the CLI, passed down."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BridgeSettings(BaseSettings):
    """Read from `MILLM_*` environment variables; validated at start."""

    model_config = SettingsConfigDict(env_prefix="MILLM_", extra="ignore", protected_namespaces=())

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    # host:port of the inference service's gRPC server.
    inference_address: str = "127.0.0.1:50051"
    # When set, /v1/* and /api/* require `Authorization: Bearer <key>`; the key is
    # also forwarded to the inference service.
    api_key: str = ""
    # Deadline of each unary gRPC call (models, embeddings, tokenize). Generations
    # have none: they last as long as the HTTP client stays connected.
    request_timeout_s: float = Field(default=30.0, gt=0)
    # WebSocket keepalive: a client that answers no ping for this long is disconnected.
    ws_ping_timeout_s: float = Field(default=20.0, gt=0)
    log_level: str = "INFO"
    log_json: bool = False
