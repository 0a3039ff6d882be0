"""Start-up sweep of folders that work cut short by a kill left behind, owned by no record.

An SAE import copies into `saes/local/<id>` before its record exists, a training run
writes `saes/trained/<id>` before registering it, and a Hub download may fetch into
`models/hub/<repo>` or `saes/hub/<repo>` before (or after losing) its record. A
`kill -9` in between leaves a folder nothing lists or deletes that still counts as
used space. A folder any record names (in whatever state: a failed download keeps
its `.part` files for a resume) is never touched, nor is anything outside these
four places (the converted built-in model, the Transformers cache).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from sqlalchemy import select

from inference_service.storage.database import Database
from inference_service.storage.tables import ModelRecordRow, SaeRecordRow

log = logging.getLogger(__name__)


def sweep_orphans(db: Database, data_dir: Path) -> list[Path]:
    """Deletes the unowned folders under `data_dir`, logging each; returns them.
    Run it before anything can start a download or an import."""
    with db.session() as session:
        model_repos = list(session.scalars(select(ModelRecordRow.repo_id)))
        sae_dirs = list(session.scalars(select(SaeRecordRow.local_dir)))
    return remove_unowned(data_dir, model_repos, sae_dirs)


def remove_unowned(
    data_dir: Path, model_repo_ids: Iterable[str], sae_local_dirs: Iterable[str]
) -> list[Path]:
    """The sweep itself, given what the records own: model records own their whole
    repository folder (the download resumes there), SAE records their folder and
    every folder above it up to the area root."""
    owned_repos = {repo_id.replace("/", "--") for repo_id in model_repo_ids}
    owned_sae = {PurePosixPath(local).parts[:3] for local in sae_local_dirs if local}
    removed: list[Path] = []
    candidates = [
        (data_dir / "models" / "hub", lambda name: name in owned_repos),
        *(
            (data_dir / "saes" / area, lambda name, a=area: ("saes", a, name) in owned_sae)
            for area in ("local", "trained", "hub")
        ),
    ]
    for root, is_owned in candidates:
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_symlink() or not child.is_dir() or is_owned(child.name):
                continue
            size = sum(p.stat().st_size for p in child.rglob("*") if p.is_file())
            shutil.rmtree(child, ignore_errors=True)
            log.warning(
                "removed %s (%d bytes): left by an import or download that was cut short, "
                "and no record owns it",
                child,
                size,
            )
            removed.append(child)
    return removed
