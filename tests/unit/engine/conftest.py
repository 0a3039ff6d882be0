"""Engines over the session's real built-in model (`tests/fixtures/model.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from inference_service.config import InferenceSettings
from inference_service.engine.engine import Engine
from inference_service.engine.loader import LoadedModel
from inference_service.engine.types import ChatTurn


@pytest.fixture
def make_engine(
    loaded: LoadedModel, settings: InferenceSettings
) -> Iterator[Callable[..., Engine]]:
    """Engines with setting overrides; each is shut down after the test."""
    engines: list[Engine] = []

    def make(**overrides: object) -> Engine:
        engine = Engine(loaded, settings.model_copy(update=overrides))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


@pytest.fixture
def chat_ids(loaded: LoadedModel) -> Callable[[str], tuple[int, ...]]:
    from inference_service.engine.prompts import render_chat

    return lambda text: tuple(render_chat(loaded.tokenizer, [ChatTurn("user", text)]))
