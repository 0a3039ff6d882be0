"""Cached models: the built-in one plus Hub downloads recorded in the database.

The database is the index; the files are the truth. `reconcile()` runs at start
and whenever a listing is asked for, so a folder deleted by hand shows as
missing and a download cut short by a crash shows as interrupted.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from inference_service.errors import ModelInUseError, NotFoundError
from inference_service.hub.files import WeightFormat
from inference_service.hub.model_download import DownloadedModel, download_model
from inference_service.models.repository import ModelRecords
from inference_service.models.types import (
    CachedModel,
    CachedModelState,
    ModelFile,
    ModelFormat,
    cached_model_id,
)
from inference_service.operations.manager import OperationContext, OperationsManager
from inference_service.operations.types import OperationKind, OperationSnapshot, OperationState
from inference_service.storage.database import Database

log = logging.getLogger(__name__)

BUILTIN_ID = "builtin"

T = TypeVar("T")


class ModelCatalog:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        operations: OperationsManager,
        *,
        hub_endpoint: str | None = None,
    ) -> None:
        self._db = db
        self._data_dir = data_dir
        self._hub_root = data_dir / "models" / "hub"
        self._operations = operations
        self._hub_endpoint = hub_endpoint

    # ---- reading -----------------------------------------------------------------

    def list(self) -> list[CachedModel]:
        self.reconcile()
        return [self._builtin(), *self._run(lambda models: models.list())]

    def get(self, model_id: str) -> CachedModel:
        if model_id == BUILTIN_ID:
            return self._builtin()
        model = self._run(lambda models: models.get(model_id))
        if model is None:
            raise NotFoundError(
                f"No cached model has the id '{model_id}'; list them with ListModels.", param="id"
            )
        return model

    def _builtin(self) -> CachedModel:
        return CachedModel(
            BUILTIN_ID, "", "", "", ModelFormat.GGUF, 0, 0, CachedModelState.READY, None
        )

    def _run(self, work: Callable[[ModelRecords], T]) -> T:
        """`work` on the model records in one transaction."""
        return self._db.run(lambda session: work(ModelRecords(session, self._data_dir)))

    # ---- downloading ---------------------------------------------------------------

    def start_download(
        self, repo_id: str, revision: str, token: str | None, wanted: WeightFormat | None
    ) -> OperationSnapshot:
        record_id = cached_model_id(repo_id, revision)
        running = self._operations.find_running(OperationKind.MODEL_DOWNLOAD, record_id)
        if running is not None:
            return running  # one download per model; clients watch the same operation
        # HF_TOKEN is the fallback; the token itself is only ever held in memory.
        token = token or os.environ.get("HF_TOKEN") or None

        def work(context: OperationContext) -> None:
            recorded = False

            def progress(stage: str, done: int, total: int) -> None:
                nonlocal recorded
                # The record appears once the Hub has confirmed the repository exists.
                if stage == "downloading" and not recorded:
                    self._record_downloading(repo_id, revision)
                    recorded = True
                context.progress(stage, done, total)

            downloaded = download_model(
                repo_id=repo_id,
                revision=revision,
                token=token,
                wanted_format=wanted,
                cache_root=self._hub_root,
                endpoint=self._hub_endpoint,
                progress=progress,
                is_cancelled=context.is_cancelled,
            )
            self._record_ready(record_id, downloaded)

        def on_finished(snapshot: OperationSnapshot) -> None:
            if (
                snapshot.state == OperationState.FAILED
                and snapshot.error_reason == "CORRUPTED_FILE"
            ):
                self._run(lambda models: models.set_state(record_id, CachedModelState.CORRUPTED))

        return self._operations.start(OperationKind.MODEL_DOWNLOAD, record_id, work, on_finished)

    def _known(self, record_id: str) -> bool:
        return self._run(lambda models: models.get(record_id)) is not None

    def _record_downloading(self, repo_id: str, revision: str) -> None:
        record_id = cached_model_id(repo_id, revision)
        if self._known(record_id):
            self._run(lambda models: models.set_state(record_id, CachedModelState.DOWNLOADING))
            return
        self._run(
            lambda models: models.upsert(
                repo_id=repo_id,
                revision=revision,
                format=ModelFormat.SAFETENSORS,
                local_dir=None,
                state=CachedModelState.DOWNLOADING,
            )
        )

    def _record_ready(self, record_id: str, downloaded: DownloadedModel) -> None:
        files = [ModelFile(f.path, f.size, f.sha256, verified=True) for f in downloaded.files]

        def write(models: ModelRecords) -> None:
            models.upsert(
                repo_id=downloaded.repo_id,
                revision=downloaded.revision,
                commit_sha=downloaded.commit_sha,
                format=ModelFormat(downloaded.format),
                parameter_count=_parameter_count(downloaded.local_dir),
                size_bytes=downloaded.size_bytes,
                state=CachedModelState.READY,
                local_dir=downloaded.local_dir,
            )
            models.replace_files(record_id, files)

        self._run(write)

    # ---- deleting and reconciling ----------------------------------------------------

    def delete(self, model_id: str, loaded_source: str | None) -> int:
        model = self.get(model_id)
        if model_id == BUILTIN_ID:
            raise ModelInUseError("The built-in model ships with miLLM and cannot be deleted.")
        if model.local_dir is not None and loaded_source == str(model.local_dir):
            raise ModelInUseError(
                f"'{model_id}' is being served; load another model or unload it first.", param="id"
            )
        freed = _folder_bytes(model.local_dir) if model.local_dir else 0
        if model.local_dir is not None:
            shutil.rmtree(model.local_dir, ignore_errors=True)
        self._run(lambda models: models.delete(model_id))
        return freed

    def reconcile(self) -> None:
        """Marks models whose files vanished as missing (and found again as ready)."""
        for listed in self._run(lambda models: models.list()):
            kept = (CachedModelState.READY, CachedModelState.MISSING)
            if listed.state not in kept or listed.local_dir is None:
                continue
            model = self._run(functools.partial(ModelRecords.get, model_id=listed.id))
            if model is None or model.local_dir is None:
                continue
            folder = model.local_dir
            present = all((folder / f.path).is_file() for f in model.files) and folder.is_dir()
            wanted = CachedModelState.READY if present else CachedModelState.MISSING
            if wanted != model.state:
                log.info("model %s is %s on disk", model.id, wanted)
                self._run(
                    functools.partial(ModelRecords.set_state, model_id=model.id, state=wanted)
                )


def _parameter_count(folder: Path) -> int | None:
    """Counts parameters from safetensors headers without loading any weights."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with path.open("rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            if header_len > min(path.stat().st_size, 100 << 20):
                return None  # not a safetensors file after all
            try:
                header = json.loads(fh.read(header_len))
            except ValueError:
                return None
        for name, meta in header.items():
            if name != "__metadata__":
                count = 1
                for dim in meta["shape"]:
                    count *= dim
                total += count
    return total or None


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
