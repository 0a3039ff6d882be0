"""Cached SAEs: downloads from the Hub, local imports, and their records.

The database is the index, the files are the truth: `reconcile()` runs at start
and marks SAEs whose files vanished as missing and those that no longer parse as
corrupted. Files live under `<data_dir>/saes/`; no path ever leaves the service.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from sqlalchemy.orm import Session

from inference_service.errors import (
    CorruptedFileError,
    InvalidArgumentError,
    MillmError,
    NotFoundError,
    PermissionDeniedError,
    SaeInUseError,
)
from inference_service.hub.snapshot import fetch_verified
from inference_service.hub.upload import upload_folder
from inference_service.operations.manager import OperationContext, OperationsManager
from inference_service.operations.types import OperationKind, OperationSnapshot, OperationState
from inference_service.sae import registry
from inference_service.sae.architectures import Sae
from inference_service.sae.feature_stats import corpus_statistics_path
from inference_service.sae.formats import detect_format, load_sae, read_spec, save_sae
from inference_service.sae.preview import RepoListing, list_repo_saes
from inference_service.sae.repository import SaeRecords
from inference_service.sae.spec import SaeSpec
from inference_service.sae.types import SaeRecord, SaeState
from inference_service.storage.database import Database

log = logging.getLogger(__name__)

Layout = Literal["saelens", "mistudio"]
_CHUNK = 1 << 20


@dataclass(frozen=True)
class CachedSae:
    record: SaeRecord
    spec: SaeSpec | None  # None until a download has finished
    folder: Path  # never shown to clients

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def has_feature_statistics(self) -> bool:
        return (self.folder / "sparsity.safetensors").is_file()


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    path: str
    revision: str = "main"


def spec_to_json(spec: SaeSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def spec_from_json(data: dict[str, Any]) -> SaeSpec | None:
    if not data:
        return None
    fields = {f.name for f in dataclasses.fields(SaeSpec)}
    return SaeSpec(**{k: v for k, v in data.items() if k in fields})


class SaeCatalog:
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
        self._root = data_dir / "saes"
        self._operations = operations
        self._hub_endpoint = hub_endpoint

    # ---- reading -----------------------------------------------------------------

    def list(self) -> list[CachedSae]:
        return [self._cached(r) for r in self._db.run(lambda session: SaeRecords(session).list())]

    def get(self, sae_id: str) -> CachedSae:
        record = self._db.run(lambda session: SaeRecords(session).get(sae_id))
        if record is None:
            raise NotFoundError(
                f"No SAE has the id '{sae_id}'; list them with SaeService.ListSaes.",
                param="id",
            )
        return self._cached(record)

    def usage(self) -> tuple[int, int, int]:
        """(bytes used by the SAE cache, number of SAEs, bytes free on its disk)."""
        self._root.mkdir(parents=True, exist_ok=True)
        used = sum(p.stat().st_size for p in self._root.rglob("*") if p.is_file())
        count = len(self._db.run(lambda session: SaeRecords(session).list()))
        return used, count, shutil.disk_usage(self._root).free

    def load(self, sae_id: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Sae:
        """The SAE's weights on `device` in `dtype`, every tensor shape checked."""
        cached = self.require_ready(sae_id)
        assert cached.spec is not None  # a ready SAE has one
        sae = load_sae(cached.folder, device=device, dtype=dtype).owned()
        if sae.spec.hook_name is None:  # known from the imported folder's path alone
            spec = dataclasses.replace(
                sae.spec, hook_name=cached.spec.hook_name, layer=cached.spec.layer
            )
            sae = Sae(spec, sae.weights, sae.log_sparsity)
        return sae

    def require_ready(self, sae_id: str) -> CachedSae:
        """The SAE, if its files are downloaded and valid; else an error saying what to do."""
        cached = self.get(sae_id)
        state = cached.record.state
        if state is SaeState.DOWNLOADING:
            raise InvalidArgumentError(
                f"SAE '{sae_id}' is still downloading; use it once the download is done.",
                param="id",
            )
        if state is not SaeState.READY or cached.spec is None:
            raise CorruptedFileError(
                f"SAE '{sae_id}' is {state.value}; download or import it again.", param="id"
            )
        return cached

    def _cached(self, record: SaeRecord) -> CachedSae:
        return CachedSae(record, spec_from_json(record.spec), self._data_dir / record.local_dir)

    # ---- import --------------------------------------------------------------------

    def import_folder(self, path: str, name: str = "") -> CachedSae:
        source = Path(path)
        if "\x00" in path:
            raise InvalidArgumentError("path holds a NUL byte (\\u0000).", param="path")
        if not path or not source.is_absolute():
            raise InvalidArgumentError(
                "path must be the absolute path of a folder on the server.", param="path"
            )
        if not source.is_dir():
            # The path is not echoed: answers never show server paths.
            raise NotFoundError("There is no folder at that path on the server.", param="path")
        detect_format(source)
        load_sae(source)  # every tensor read and shape-checked before anything is kept
        spec = read_spec(source)
        sha = _sha256(_weights_file(source))
        existing = self._db.run(lambda session: SaeRecords(session).find_by_source(f"local:{sha}"))
        if existing is not None and existing.state is SaeState.READY:
            return self._cached(existing)
        if existing is not None:
            self._forget(existing)
        sae_id = _new_id()
        target = self._root / "local" / sae_id
        target.mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, target / item.name)
        cached = self._register(
            sae_id,
            target,
            # Read from the source: Gemma Scope and bare miStudio folders name their
            # hook only by their path (layer_N/...), which the copy does not keep.
            spec,
            name=name.strip() or source.name,
            source_key=f"local:{sha}",
            source={"kind": "local", "folder_name": source.name},
            sha=sha,
        )
        log.info("imported SAE %s (%s, %s)", sae_id, cached.record.format, spec.architecture)
        return cached

    def trained_folder(self) -> tuple[str, Path]:
        """A new SAE id and the empty folder a training run writes it into."""
        sae_id = _new_id()
        return sae_id, self._root / "trained" / sae_id

    def register_trained(self, sae_id: str, folder: Path, *, name: str, run_id: str) -> CachedSae:
        """Records an SAE a training run wrote into `trained_folder()`."""
        load_sae(folder)  # the same checks as any import
        return self._register(
            sae_id,
            folder,
            read_spec(folder),
            name=name,
            source_key=f"trained:{run_id}",
            source={"kind": "trained", "run_id": run_id},
            sha=_sha256(_weights_file(folder)),
        )

    def _register(
        self,
        sae_id: str,
        folder: Path,
        spec: SaeSpec,
        *,
        name: str,
        source_key: str,
        source: dict[str, Any],
        sha: str,
    ) -> CachedSae:
        record = self._db.run(
            lambda session: SaeRecords(session).create(
                record_id=sae_id,
                name=name,
                source_key=source_key,
                source=source,
                format=detect_format(folder),
                state=SaeState.READY,
                local_dir=folder.relative_to(self._data_dir).as_posix(),
                spec=spec_to_json(spec),
                size_bytes=_folder_bytes(folder),
                weights_sha256=sha,
            ),
        )
        return self._cached(record)

    # ---- download --------------------------------------------------------------------

    def resolve_release(self, release: str, sae_id: str) -> tuple[HubRef, dict[str, Any]]:
        found, path = registry.resolve(release, sae_id)
        return HubRef(found.repo_id, path), {"release": release, "sae_id": sae_id}

    def listing(self, ref: HubRef, token: str | None, *, with_configs: bool) -> RepoListing:
        return list_repo_saes(
            ref.repo_id, ref.revision, _token(token), self._hub_endpoint, with_configs=with_configs
        )

    def start_download(
        self, ref: HubRef, token: str | None, release: dict[str, Any] | None = None
    ) -> OperationSnapshot:
        """Checks the repository and folder now (so a typo fails at once), then downloads."""
        token = _token(token)
        listing = self.listing(ref, token, with_configs=False)
        candidate = listing.find(ref.path)
        source_key = f"hub:{ref.repo_id}@{ref.revision}:{candidate.path}"
        record = self._db.run(lambda session: SaeRecords(session).find_by_source(source_key))
        source = {
            "kind": "release" if release else "hub",
            "repo_id": ref.repo_id,
            "path": candidate.path,
            "revision": ref.revision,
            "commit_sha": listing.commit_sha,
            **(release or {}),
        }
        repo_root = self._root / "hub" / ref.repo_id.replace("/", "--") / listing.commit_sha
        folder = repo_root / candidate.path
        if record is None:
            sae_id = _new_id()
            name = (
                f"{release['release']}/{release['sae_id']}"
                if release
                else "/".join(p for p in (ref.repo_id, candidate.path) if p)
            )
            record = self._db.run(
                lambda session: SaeRecords(session).create(
                    record_id=sae_id,
                    name=name,
                    source_key=source_key,
                    source=source,
                    format=candidate.format,
                    state=SaeState.DOWNLOADING,
                    local_dir=folder.relative_to(self._data_dir).as_posix(),
                    spec={},
                    size_bytes=candidate.size_bytes,
                ),
            )
        sae_id = record.id
        running = self._operations.find_running(OperationKind.SAE_DOWNLOAD, sae_id)
        if running is not None:
            return running

        def work(context: OperationContext) -> None:
            self._set_state(sae_id, SaeState.DOWNLOADING)
            fetch_verified(
                repo_id=ref.repo_id,
                revision=ref.revision,
                commit=listing.commit_sha,
                files=candidate.files,
                target=repo_root,
                token=token,
                endpoint=self._hub_endpoint,
                progress=context.progress,
                is_cancelled=context.is_cancelled,
                what="SAE",
            )
            self._mark_ready(sae_id, folder, source)

        def on_finished(snapshot: OperationSnapshot) -> None:
            if (
                snapshot.state == OperationState.FAILED
                and snapshot.error_reason == "CORRUPTED_FILE"
            ):
                self._set_state(sae_id, SaeState.CORRUPTED)

        return self._operations.start(OperationKind.SAE_DOWNLOAD, sae_id, work, on_finished)

    def _mark_ready(self, sae_id: str, folder: Path, source: dict[str, Any]) -> None:
        try:
            spec = read_spec(folder)
        except MillmError:
            self._set_state(sae_id, SaeState.CORRUPTED)
            raise
        self._db.run(
            lambda session: SaeRecords(session).mark_ready(
                sae_id,
                format=spec.format,
                size_bytes=_folder_bytes(folder),
                weights_sha256=_sha256(_weights_file(folder)),
                spec=spec_to_json(spec),
                source=source,
            ),
        )

    # ---- export and upload -------------------------------------------------------------

    def export_archive(self, sae_id: str, layout: Layout) -> tuple[str, Path]:
        """A zip of the SAE in `layout`: (suggested file name, temporary file to delete)."""
        cached = self.get(sae_id)
        sae = self.load(sae_id, torch.device("cpu"))
        fd, archive_name = tempfile.mkstemp(suffix=".zip", prefix="millm-sae-")
        os.close(fd)
        archive = Path(archive_name)
        with tempfile.TemporaryDirectory(prefix="millm-sae-") as tmp:
            written = save_sae(sae, Path(tmp), layout)
            statistics = corpus_statistics_path(self._data_dir, cached.record.weights_sha256 or "")
            if cached.record.weights_sha256 and statistics.is_file():
                written = [*written, statistics]  # the corpus statistics travel with the SAE
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in written:
                    zf.write(path, path.name)
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in cached.record.name)
        return f"{stem.strip('-') or sae_id}.{layout}.zip", archive

    def start_upload(
        self,
        sae_id: str,
        *,
        repo_id: str,
        path_in_repo: str,
        layout: Layout,
        token: str | None,
        private: bool,
        commit_message: str,
    ) -> OperationSnapshot:
        cached = self.get(sae_id)
        if not repo_id.strip() or repo_id.count("/") != 1:
            raise InvalidArgumentError("repo_id must look like 'owner/name'.", param="repo_id")
        token = _token(token)
        if token is None:
            raise PermissionDeniedError(
                f"Uploading to '{repo_id}' needs a Hub token with write access: pass one with "
                "the request or set HF_TOKEN for the inference service.",
                param="token",
            )
        path_in_repo = path_in_repo.strip("/") or (
            (cached.spec.hook_name if cached.spec else None) or sae_id
        )
        message = commit_message or f"Upload SAE {cached.record.name} from miLLM"

        def work(context: OperationContext) -> None:
            sae = self.load(sae_id, torch.device("cpu"))
            with tempfile.TemporaryDirectory(prefix="millm-sae-") as tmp:
                save_sae(sae, Path(tmp), layout)
                upload_folder(
                    folder=Path(tmp),
                    repo_id=repo_id,
                    path_in_repo=path_in_repo,
                    token=token,
                    private=private,
                    endpoint=self._hub_endpoint,
                    commit_message=message,
                    progress=context.progress,
                )

        return self._operations.start(
            OperationKind.SAE_UPLOAD, f"{repo_id}/{path_in_repo}", work, lambda snapshot: None
        )

    # ---- deleting and reconciling ------------------------------------------------------------

    def delete(self, sae_id: str, *, attached: bool) -> int:
        cached = self.get(sae_id)
        if attached:
            raise SaeInUseError(
                f"SAE '{sae_id}' is attached; detach it before deleting it.", param="id"
            )
        running = self._operations.find_running(OperationKind.SAE_DOWNLOAD, sae_id)
        if running is not None:
            raise SaeInUseError(
                f"SAE '{sae_id}' is downloading; cancel operation {running.id} first.", param="id"
            )
        freed = _folder_bytes(cached.folder)
        self._forget(cached.record)
        return freed

    def _forget(self, record: SaeRecord) -> None:
        shutil.rmtree(self._data_dir / record.local_dir, ignore_errors=True)
        self._db.run(lambda session: SaeRecords(session).delete(record.id))

    def _set_state(self, sae_id: str, state: SaeState) -> None:
        def write(session: Session) -> None:
            SaeRecords(session).set_state(sae_id, state)

        self._db.run(write)

    def reconcile(self) -> None:
        """Checks every SAE that should be on disk: present and parsable, or not."""
        for record in self._db.run(lambda session: SaeRecords(session).list()):
            if record.state is SaeState.DOWNLOADING:
                continue  # interrupted downloads resume when asked again
            folder = self._data_dir / record.local_dir
            if not folder.is_dir() or not any(folder.iterdir()):
                wanted = SaeState.MISSING
            else:
                try:
                    read_spec(folder)
                    wanted = SaeState.READY
                except MillmError as exc:
                    log.warning("SAE %s failed validation: %s", record.id, exc.message)
                    wanted = SaeState.CORRUPTED
            if wanted is not record.state:
                log.info("SAE %s is %s on disk", record.id, wanted.value)
                self._set_state(record.id, wanted)


def _new_id() -> str:
    return f"sae-{secrets.token_hex(6)}"


def _token(token: str | None) -> str | None:
    # HF_TOKEN is the fallback; a token is only ever held in memory.
    return token or os.environ.get("HF_TOKEN") or None


def _weights_file(folder: Path) -> Path:
    """The SAE's largest file: its weights in every supported format."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.endswith(".part")]
    if not files:
        raise CorruptedFileError("The SAE folder is empty; download or import it again.")
    return max(files, key=lambda p: p.stat().st_size)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
