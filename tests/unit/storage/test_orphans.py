"""The start-up sweep removes folders a killed import or download left, and only those."""

from __future__ import annotations

import logging
from pathlib import Path

from inference_service.models.repository import ModelRecords
from inference_service.models.types import CachedModelState, ModelFormat
from inference_service.sae.repository import SaeRecords
from inference_service.sae.types import SaeState
from inference_service.storage import Database
from inference_service.storage.orphans import sweep_orphans


def _folder(path: Path, size: int = 10) -> Path:
    path.mkdir(parents=True)
    (path / "weights.safetensors.part").write_bytes(b"x" * size)
    return path


def test_sweep_removes_unowned_partial_folders_and_keeps_owned_ones(
    database: Database, tmp_path: Path, caplog
) -> None:
    data = tmp_path / "data"
    with database.session() as session:
        SaeRecords(session).create(
            record_id="owned-import",
            name="owned",
            source_key="local:abc",
            source={"kind": "local"},
            format="saelens",
            state=SaeState.READY,
            local_dir="saes/local/owned-import",
            spec={},
        )
        SaeRecords(session).create(
            record_id="owned-download",
            name="dl",
            source_key="hub:acme/saes",
            source={"kind": "hub"},
            format="saelens",
            state=SaeState.DOWNLOADING,  # a resumable download keeps its .part files
            local_dir="saes/hub/acme--saes/0123abc/blocks.0",
            spec={},
        )
        ModelRecords(session, data).upsert(
            repo_id="acme/tiny",
            revision="main",
            format=ModelFormat.SAFETENSORS,
            local_dir=None,  # a download not finished yet has no folder on record
            state=CachedModelState.DOWNLOADING,
        )
    owned = [
        _folder(data / "saes" / "local" / "owned-import"),
        _folder(data / "saes" / "hub" / "acme--saes" / "0123abc" / "blocks.0"),
        _folder(data / "models" / "hub" / "acme--tiny" / "f00d"),
        _folder(data / "models" / "converted" / "builtin"),  # never a candidate
    ]
    orphans = [
        _folder(data / "saes" / "local" / "killed-import", size=1000),
        _folder(data / "saes" / "trained" / "killed-run"),
        _folder(data / "saes" / "hub" / "other--saes" / "beef"),
        _folder(data / "models" / "hub" / "other--model" / "cafe"),
    ]
    with caplog.at_level(logging.WARNING, logger="inference_service.storage.orphans"):
        removed = sweep_orphans(database, data)

    assert sorted(removed) == sorted([orphans[0], orphans[1], orphans[2].parent, orphans[3].parent])
    assert all(not path.exists() for path in removed)
    assert all(path.is_dir() for path in owned)
    assert "killed-import (1000 bytes)" in caplog.text
    assert sweep_orphans(database, data) == []  # nothing left to remove


def test_sweep_of_a_fresh_data_dir_does_nothing(database: Database, tmp_path: Path) -> None:
    assert sweep_orphans(database, tmp_path / "absent") == []
