"""What the routes share, stored once on `app.state` by `create_app`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from openai_bridge.config import BridgeSettings
from openai_bridge.inference_client import InferenceClient


@dataclass(frozen=True)
class BridgeState:
    settings: BridgeSettings
    client: InferenceClient
    # Unix time source for `created`; tests pin it to compare exact bytes.
    clock: Callable[[], float]


def bridge_state(request: Request) -> BridgeState:
    state: BridgeState = request.app.state.bridge
    return state


# The route parameter type: `state: State`.
State = Annotated[BridgeState, Depends(bridge_state)]
