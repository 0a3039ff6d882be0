"""The real built-in model, loaded once per test session (converted copy reused)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inference_service.config import InferenceSettings
from inference_service.engine.engine import Engine
from inference_service.engine.loader import LoadedModel, load_model
from inference_service.engine.types import ChatTurn


@pytest.fixture(scope="session")
def settings(data_dir: Path) -> InferenceSettings:
    return InferenceSettings(data_dir=data_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def loaded(settings: InferenceSettings) -> LoadedModel:
    return load_model(settings)


@pytest.fixture(scope="session")
def tokenizer(loaded: LoadedModel):
    return loaded.tokenizer


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
