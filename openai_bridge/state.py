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
from openai_bridge.services import SERVICE_HEADER, Services


@dataclass(frozen=True)
class BridgeState:
    settings: BridgeSettings
    # Every inference service the bridge fronts; the OpenAI routes pick one by the
    # request's model (`millm.choose_model`), the management routes by a header.
    services: Services
    # Unix time source for `created`; tests pin it to compare exact bytes.
    clock: Callable[[], float]
    # Set when the bridge starts its graceful stop (cli.py); streams end in time.
    draining: Draining = field(default_factory=lambda: Draining(0.0))

    @property
    def client(self) -> InferenceClient:
        """The default (first) service's InferenceService."""
        return self.services.default

    @property
    def calls(self) -> ServiceCalls:
        """The management calls to the default service, for every gRPC service it has."""
        return self.services.management[0]


def bridge_state(request: Request) -> BridgeState:
    state: BridgeState = request.app.state.bridge
    return state


# The route parameter type: `state: State`.
State = Annotated[BridgeState, Depends(bridge_state)]


async def service_calls(connection: HTTPConnection) -> ServiceCalls:
    """The calls to the service the `X-Millm-Service` header names, else the default
    one; HTTPConnection so that WebSocket routes can use it too."""
    state: BridgeState = connection.app.state.bridge
    chosen = connection.headers.get(SERVICE_HEADER)
    if chosen is None:
        return state.calls
    return await state.services.choose(chosen)


# The route parameter type of /api/v1 routes: `management: Management`.
Management = Annotated[ServiceCalls, Depends(service_calls)]
