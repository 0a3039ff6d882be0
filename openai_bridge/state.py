"""What the routes share, stored once on `app.state` by `create_app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

import grpc
from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from openai_bridge.config import BridgeSettings
from openai_bridge.draining import Draining
from openai_bridge.errors import InferenceError
from openai_bridge.inference_client import InferenceClient
from openai_bridge.management_client import ManagementClient


@dataclass(frozen=True)
class BridgeState:
    settings: BridgeSettings
    client: InferenceClient
    # Unix time source for `created`; tests pin it to compare exact bytes.
    clock: Callable[[], float]
    # ModelService + OperationsService for /api/v1; None: those routes answer 501.
    management: ManagementClient | None = None
    # Set when the bridge starts its graceful stop (cli.py); streams end in time.
    draining: Draining = field(default_factory=lambda: Draining(0.0))


def bridge_state(request: Request) -> BridgeState:
    state: BridgeState = request.app.state.bridge
    return state


# The route parameter type: `state: State`.
State = Annotated[BridgeState, Depends(bridge_state)]


MANAGEMENT_NOT_CONFIGURED = (
    "The management API is not available: the bridge was started without it."
)


def management_client(connection: HTTPConnection) -> ManagementClient:
    """The management client; HTTPConnection so that WebSocket routes can use it too."""
    state: BridgeState = connection.app.state.bridge
    if state.management is None:
        raise InferenceError(grpc.StatusCode.UNIMPLEMENTED, None, MANAGEMENT_NOT_CONFIGURED)
    return state.management


# The route parameter type: `management: Management`.
Management = Annotated[ManagementClient, Depends(management_client)]
