"""ModelManager over the real built-in model, a real host and a real (SQLite) catalog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from inference_service.config import InferenceSettings
from inference_service.errors import InvalidArgumentError, MillmError, OutOfMemoryError
from inference_service.host import ModelHost, ModelState
from inference_service.models.catalog import BUILTIN_ID, ModelCatalog
from inference_service.models.manager import LoadSpec, ModelManager
from inference_service.operations.manager import MemoryOperationStore, OperationsManager
from inference_service.storage.database import Database, resolve_url

# A KV cache for a billion tokens is terabytes: no machine has that free.
NEVER_FITS = 10**9


@pytest.fixture
def host(settings: InferenceSettings) -> Iterator[ModelHost]:
    host = ModelHost(settings)
    yield host
    host.shutdown()


@pytest.fixture
async def manager(host: ModelHost, tmp_path: Path) -> AsyncIterator[ModelManager]:
    db = Database(resolve_url("", tmp_path))
    db.migrate()
    operations = OperationsManager(MemoryOperationStore(), asyncio.get_running_loop())
    yield ModelManager(host, ModelCatalog(db, tmp_path, operations))
    db.close()


@pytest.mark.parametrize(
    ("spec", "error", "param"),
    [
        (LoadSpec(BUILTIN_ID, context_tokens=NEVER_FITS), OutOfMemoryError, "quantization"),
        (LoadSpec(BUILTIN_ID, dtype="float64"), InvalidArgumentError, "dtype"),
        (
            LoadSpec(BUILTIN_ID, dtype="bfloat16", quantization="int8_dynamic"),
            InvalidArgumentError,
            "dtype",
        ),
    ],
)
async def test_a_refused_load_leaves_the_host_untouched(
    manager: ModelManager, host: ModelHost, spec: LoadSpec, error: type[MillmError], param: str
) -> None:
    with pytest.raises(error) as caught:
        await manager.load(spec)
    assert caught.value.param == param
    assert host.state is ModelState.NOT_LOADED and host.loaded_settings is None


async def test_an_allowed_overcommit_loads_with_its_warning(
    manager: ModelManager, host: ModelHost
) -> None:
    spec = LoadSpec(BUILTIN_ID, context_tokens=NEVER_FITS, allow_overcommit=True)
    estimate = await manager.estimate(spec)
    assert not estimate.fits and estimate.device == "cpu"

    loaded = await manager.load(spec)

    assert loaded.warning is not None and loaded.warning.startswith("Loading needs about")
    assert loaded.model.id == BUILTIN_ID and manager.is_loaded(loaded.model)
    assert host.state is ModelState.READY
    await manager.unload()
    assert not manager.is_loaded(loaded.model) and host.state is ModelState.NOT_LOADED


async def test_an_estimate_plans_for_the_sae_and_the_requested_context(
    manager: ModelManager,
) -> None:
    plain = await manager.estimate(LoadSpec(BUILTIN_ID, context_tokens=512))
    with_sae = await manager.estimate(LoadSpec(BUILTIN_ID, context_tokens=1024), sae_bytes=1000)

    assert plain.fits and plain.memory.context_tokens == 512
    assert with_sae.memory.kv_cache_bytes == 2 * plain.memory.kv_cache_bytes
    assert with_sae.memory.sae_bytes == 1000
    assert with_sae.memory.weights_bytes == plain.memory.weights_bytes
