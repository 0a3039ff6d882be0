from __future__ import annotations

from datetime import UTC

import pytest
from sqlalchemy.exc import IntegrityError

from inference_service.storage import Database, RecordNotFoundError, run, transaction
from inference_service.storage.repositories import RecordExistsError
from inference_service.storage.tables import ProfileRow

SHA = "ab" * 32
FEATURES = [
    {"index": 7, "label": "caps", "mode": "add", "normalize": False, "strength": 8.0},
    {"index": 3, "label": "", "mode": "clamp", "normalize": False, "strength": -2.5},
]


def _save(db: Database, name: str, *, overwrite: bool = False, **overrides: object):
    values: dict[str, object] = {
        "name": name,
        "description": "shouts",
        "model_name": "smollm2-135m-instruct",
        "sae_id": "sae-1",
        "sae_name": "smol-l9",
        "weights_sha256": SHA,
        "hook_name": "blocks.9.hook_resid_post",
        "d_sae": 16_384,
        "features": FEATURES,
        "overwrite": overwrite,
    }
    with transaction(db) as tx:
        return tx.profiles.save(**{**values, **overrides})  # type: ignore[arg-type]


def test_profile_crud(database: Database) -> None:
    created = _save(database, "yelling")
    assert created.name == "yelling"
    assert created.features == tuple(FEATURES)  # order kept, dicts round-trip
    assert created.d_sae == 16_384
    assert created.active is False
    assert created.created_at.tzinfo is UTC
    assert created.created_at == created.updated_at

    _save(database, "calm")
    listed = run(database, lambda tx: tx.profiles.list())
    assert [p.name for p in listed] == ["calm", "yelling"]

    with transaction(database) as tx:
        updated = tx.profiles.update("yelling", description="louder")
    assert updated.description == "louder"
    assert updated.features == tuple(FEATURES)
    assert updated.updated_at >= created.updated_at
    with transaction(database) as tx:
        updated = tx.profiles.update("yelling", features=FEATURES[:1])
    assert updated.features == tuple(FEATURES[:1])
    assert updated.description == "louder"

    assert run(database, lambda tx: tx.profiles.delete("yelling")) is True
    assert run(database, lambda tx: tx.profiles.delete("yelling")) is False
    assert run(database, lambda tx: tx.profiles.get("yelling")) is None


def test_save_refuses_a_duplicate_unless_overwriting(database: Database) -> None:
    first = _save(database, "yelling")
    with transaction(database) as tx:
        tx.profiles.set_active("yelling")
    with pytest.raises(RecordExistsError):
        _save(database, "yelling", description="other")
    assert run(database, lambda tx: tx.profiles.get("yelling")).description == "shouts"

    replaced = _save(database, "yelling", overwrite=True, description="other", features=[])
    assert replaced.description == "other"
    assert replaced.features == ()
    # Overwriting keeps the identity of the row: creation time and the active flag.
    assert replaced.created_at == first.created_at
    assert replaced.active is True


def test_update_of_a_missing_profile_raises(database: Database) -> None:
    with pytest.raises(RecordNotFoundError), transaction(database) as tx:
        tx.profiles.update("ghost", description="x")
    with pytest.raises(RecordNotFoundError), transaction(database) as tx:
        tx.profiles.set_active("ghost")


def test_one_active_profile(database: Database) -> None:
    _save(database, "a")
    _save(database, "b")
    assert run(database, lambda tx: tx.profiles.active()) is None

    with transaction(database) as tx:
        tx.profiles.set_active("a")
    assert run(database, lambda tx: tx.profiles.active()).name == "a"
    with transaction(database) as tx:
        tx.profiles.set_active("b")
    assert [p.name for p in run(database, lambda tx: tx.profiles.list()) if p.active] == ["b"]
    with transaction(database) as tx:
        tx.profiles.set_active(None)
    assert run(database, lambda tx: tx.profiles.active()) is None


def test_the_database_refuses_two_active_profiles(database: Database) -> None:
    _save(database, "a")
    _save(database, "b")
    with pytest.raises(IntegrityError), database.session() as session:
        for row in session.query(ProfileRow):
            row.active = True
        session.flush()


def test_failed_set_active_rolls_back(database: Database) -> None:
    _save(database, "a")
    with transaction(database) as tx:
        tx.profiles.set_active("a")
    with pytest.raises(RecordNotFoundError), transaction(database) as tx:
        tx.profiles.set_active("ghost")
    assert run(database, lambda tx: tx.profiles.active()).name == "a"
