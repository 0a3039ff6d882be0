from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from tests.unit.bridge.fakes import FakeInferenceClient

CREATED = 1_700_000_000


@pytest.fixture
def fake() -> FakeInferenceClient:
    return FakeInferenceClient()


@pytest.fixture
def app(fake):
    return create_app(BridgeSettings(api_key=""), fake, clock=lambda: CREATED)


@pytest.fixture
def http(app) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)
