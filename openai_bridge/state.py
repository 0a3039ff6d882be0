"""What the routes share, stored once on `app.state` by `create_app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from openai_bridge.config import BridgeSettings
from openai_bridge.draining import Draining
from openai_bridge.grpc_calls import ServiceCalls
from openai_bridge.inference_client import InferenceClient


@dataclass(frozen=True)
class BridgeState:
    settings: BridgeSettings
    # InferenceService for the OpenAI routes; its `calls` serve every other service.
    client: InferenceClient
    # Unix time source for `created`; tests pin it to compare exact bytes.
    clock: Callable[[], float]
    # Set when the bridge starts its graceful stop (cli.py); streams end in time.
    draining: Draining = field(default_factory=lambda: Draining(0.0))

    @property
    def calls(self) -> ServiceCalls:
        return self.client.calls


def bridge_state(request: Request) -> BridgeState:
    state: BridgeState = request.app.state.bridge
    return state


# The route parameter type: `state: State`.
State = Annotated[BridgeState, Depends(bridge_state)]


def service_calls(connection: HTTPConnection) -> ServiceCalls:
    """The calls to the service; HTTPConnection so that WebSocket routes can use it too."""
    state: BridgeState = connection.app.state.bridge
    return state.calls


# The route parameter type of /api/v1 routes: `management: Management`.
Management = Annotated[ServiceCalls, Depends(service_calls)]
