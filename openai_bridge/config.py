"""Settings of the bridge: one object, built in the CLI, passed down."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# What a browser sends as `Origin`: scheme://host[:port], never a path or a slash.
_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s]+$")


class BridgeSettings(BaseSettings):
    """Read from `MILLM_*` environment variables; validated at start."""

    model_config = SettingsConfigDict(env_prefix="MILLM_", extra="ignore", protected_namespaces=())

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    # host:port of the inference service's gRPC server.
    inference_address: str = "127.0.0.1:50051"
    # Several inference services, one per served model, as gRPC targets separated by
    # `;` (docs/scale-out.md). One entry may list replicas of one model as a gRPC
    # multi-address target, `ipv4:10.0.0.1:50051,10.0.0.2:50051`, which gRPC's own
    # round_robin policy balances. Empty: `inference_address` alone. The first entry
    # is the default service of the management API.
    inference_addresses: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Seconds the bridge trusts what it learnt of which service serves which model
    # before asking again; a model id it does not know makes it ask at once.
    model_refresh_s: float = Field(default=10.0, ge=0)
    # When set, /v1/* and /api/* require `Authorization: Bearer <key>`; the key is
    # also forwarded to the inference service.
    api_key: str = ""
    # GET /metrics (Prometheus) asks for the API key like /v1/* whenever one is set,
    # since it names the served model, the attached SAE and the traffic; true serves
    # it without the key (for a scraper on a trusted network). Without a key it is open.
    metrics_public: bool = False
    # Deadline of each unary gRPC call (models, embeddings, tokenize). Generations
    # have none: they last as long as the HTTP client stays connected.
    request_timeout_s: float = Field(default=30.0, gt=0)
    # Largest request body accepted (413 above it); the corpus upload streams and
    # has its own limit in the service.
    max_request_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # WebSocket keepalive: a client that answers no ping for this long is disconnected.
    ws_ping_timeout_s: float = Field(default=20.0, gt=0)
    # On SIGTERM/SIGINT: seconds open requests and streams get to finish before the
    # server closes them, so a stuck client can never hold a stop open.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Origins whose pages may call the API from a browser (CORS), comma-separated,
    # or `*` for any. Empty: no CORS headers, so other origins' pages are refused.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    log_json: bool = False

    @property
    def service_addresses(self) -> list[str]:
        """The gRPC target of every inference service, the default first."""
        return self.inference_addresses or [self.inference_address]

    @field_validator("inference_addresses", mode="before")
    @classmethod
    def _split_addresses(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(";") if part.strip()]
        for target in value:
            # `a:1,b:2` without a scheme is one DNS name to gRPC, which never resolves:
            # almost surely two services written with the wrong separator.
            if "," in target and not target.startswith(("ipv4:", "ipv6:")):
                raise ValueError(
                    f"{target!r}: separate inference services with `;`; a comma joins "
                    "replicas of one model only in an ipv4:/ipv6: target, e.g. "
                    "ipv4:10.0.0.1:50051,10.0.0.2:50051"
                )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for origin in value:
            # A trailing slash or a path never equals a browser's Origin: refuse at
            # start rather than silently matching nothing.
            if origin != "*" and not _ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin; write it as scheme://host[:port],"
                    " e.g. http://localhost:3000, or `*`"
                )
        return value
