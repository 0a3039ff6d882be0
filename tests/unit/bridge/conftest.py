from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from openai_bridge.app import create_app
from openai_bridge.config import BridgeSettings
from tests.fixtures.grpc_server import serving
from tests.unit.bridge.fakes import FakeInferenceService
from tests.unit.bridge.management_fakes import FakeManagementService

CREATED = 1_700_000_000


@pytest.fixture
def fake() -> FakeInferenceService:
    return FakeInferenceService()


@pytest.fixture
def management() -> FakeManagementService:
    return FakeManagementService()


@pytest.fixture
def settings_for(fake, management) -> Iterator[Callable[..., BridgeSettings]]:
    """Bridge settings pointing at `fake` and `management`, served for this test."""
    with serving(fake, management) as address:

        def settings(**overrides) -> BridgeSettings:
            return BridgeSettings(**{"inference_address": address, "api_key": "", **overrides})

        yield settings


@pytest.fixture
def app(settings_for):
    return create_app(settings_for(), clock=lambda: CREATED)


@pytest.fixture
def http(app) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
