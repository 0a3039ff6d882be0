"""Cached models: the built-in one plus Hub downloads recorded in the database.

The database is the index; the files are the truth. `reconcile()` runs at start
and whenever a listing is asked for, so a folder deleted by hand shows as
missing and a download cut short by a crash shows as interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from inference_service.errors import ModelInUseError, NotFoundError
from inference_service.hub.files import WeightFormat
from inference_service.hub.model_download import DownloadedModel, download_model
from inference_service.operations.manager import OperationContext, OperationsManager
from inference_service.operations.types import OperationSnapshot
from inference_service.storage.database import Database
from inference_service.storage.records import (
    ModelFile,
    ModelFormat,
    ModelRecord,
    ModelState,
    OperationKind,
    model_record_id,
)
from inference_service.storage.repositories import run

log = logging.getLogger(__name__)

BUILTIN_ID = "builtin"


@dataclass(frozen=True)
class CachedModel:
    id: str
    repo_id: str
    revision: str
    commit_sha: str
    format: str
    parameter_count: int
    size_bytes: int
    state: str
    local_dir: Path | None  # never shown to clients


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
        records = run(self._db, lambda repos: repos.model_records.list())
        return [self._builtin(), *(self._cached(r) for r in records)]

    def get(self, model_id: str) -> CachedModel:
        if model_id == BUILTIN_ID:
            return self._builtin()
        record = run(self._db, lambda repos: repos.model_records.get(model_id))
        if record is None:
            raise NotFoundError(
                f"No cached model has the id '{model_id}'; list them with ListModels.", param="id"
            )
        return self._cached(record)

    def _builtin(self) -> CachedModel:
        return CachedModel(BUILTIN_ID, "", "", "", "gguf", 0, 0, "ready", None)

    def _cached(self, record: ModelRecord) -> CachedModel:
        return CachedModel(
            id=record.id,
            repo_id=record.repo_id,
            revision=record.revision,
            commit_sha=record.commit_sha or "",
            format=str(record.format),
            parameter_count=record.parameter_count or 0,
            size_bytes=record.size_bytes,
            state=str(record.state),
            local_dir=self._data_dir / record.local_dir if record.local_dir else None,
        )

    # ---- downloading ---------------------------------------------------------------

    def start_download(
        self, repo_id: str, revision: str, token: str | None, wanted: WeightFormat | None
    ) -> OperationSnapshot:
        record_id = model_record_id(repo_id, revision)
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
            if snapshot.state == "failed" and snapshot.error_reason == "CORRUPTED_FILE":
                run(
                    self._db,
                    lambda repos: repos.model_records.set_state(record_id, ModelState.CORRUPTED),
                )

        return self._operations.start(OperationKind.MODEL_DOWNLOAD, record_id, work, on_finished)

    def _known(self, record_id: str) -> bool:
        return run(self._db, lambda repos: repos.model_records.get(record_id)) is not None

    def _record_downloading(self, repo_id: str, revision: str) -> None:
        record_id = model_record_id(repo_id, revision)
        if self._known(record_id):
            run(
                self._db,
                lambda repos: repos.model_records.set_state(record_id, ModelState.DOWNLOADING),
            )
            return
        run(
            self._db,
            lambda repos: repos.model_records.upsert(
                repo_id=repo_id,
                revision=revision,
                commit_sha=None,
                format=ModelFormat.SAFETENSORS,
                parameter_count=None,
                size_bytes=0,
                state=ModelState.DOWNLOADING,
                local_dir="",
            ),
        )

    def _record_ready(self, record_id: str, downloaded: DownloadedModel) -> None:
        local_dir = downloaded.local_dir.relative_to(self._data_dir).as_posix()
        files = [ModelFile(f.path, f.size, f.sha256, verified=True) for f in downloaded.files]

        def write(repos) -> None:
            repos.model_records.upsert(
                repo_id=downloaded.repo_id,
                revision=downloaded.revision,
                commit_sha=downloaded.commit_sha,
                format=ModelFormat(downloaded.format),
                parameter_count=_parameter_count(downloaded.local_dir),
                size_bytes=downloaded.size_bytes,
                state=ModelState.READY,
                local_dir=local_dir,
            )
            repos.model_records.replace_files(record_id, files)

        run(self._db, write)

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
        run(self._db, lambda repos: repos.model_records.delete(model_id))
        return freed

    def reconcile(self) -> None:
        """Marks records whose files vanished as missing (and found again as ready)."""
        for listed in run(self._db, lambda repos: repos.model_records.list()):
            if listed.state not in (ModelState.READY, ModelState.MISSING) or not listed.local_dir:
                continue
            record = run(self._db, lambda repos, i=listed.id: repos.model_records.get(i))
            if record is None:
                continue
            folder = self._data_dir / record.local_dir
            present = all((folder / f.path).is_file() for f in record.files) and folder.is_dir()
            wanted = ModelState.READY if present else ModelState.MISSING
            if wanted != record.state:
                log.info("model %s is %s on disk", record.id, wanted)
                run(
                    self._db,
                    lambda repos, r=record, w=wanted: repos.model_records.set_state(r.id, w),
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
