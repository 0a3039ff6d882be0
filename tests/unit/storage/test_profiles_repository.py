from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from inference_service.profiles.repository import Profiles
from inference_service.profiles.types import Profile, ProfileSae
from inference_service.steering.types import SteeringFeature
from inference_service.storage import Database, RecordExistsError, RecordNotFoundError
from inference_service.storage.tables import ProfileRow

SHA = "ab" * 32
FEATURES = (
    SteeringFeature(7, "add", 8.0, False, "caps"),
    SteeringFeature(3, "clamp", -2.5, False, ""),
)
SAE = ProfileSae("sae-1", "smol-l9", SHA, "blocks.9.hook_resid_post", 16_384)
# Ignored by `save`: the database sets both.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def _save(
    db: Database,
    name: str,
    *,
    overwrite: bool = False,
    description: str = "shouts",
    features: tuple[SteeringFeature, ...] = FEATURES,
) -> Profile:
    profile = Profile(name, description, "smollm2-135m-instruct", SAE, features, LONG_AGO, LONG_AGO)
    with db.session() as session:
        return Profiles(session).save(profile, overwrite=overwrite)


def _active(db: Database) -> str | None:
    return db.run(lambda session: Profiles(session).active_name())


def test_profile_crud(database: Database) -> None:
    created = _save(database, "yelling")
    assert created.name == "yelling"
    assert created.features == FEATURES  # order kept, features round-trip
    assert created.sae == SAE
    assert _active(database) is None
    assert created.created_at.tzinfo is UTC
    assert created.created_at == created.updated_at

    _save(database, "calm")
    listed = database.run(lambda session: Profiles(session).list())
    assert [p.name for p in listed] == ["calm", "yelling"]

    with database.session() as session:
        updated = Profiles(session).update("yelling", description="louder")
    assert updated.description == "louder"
    assert updated.features == FEATURES
    assert updated.updated_at >= created.updated_at
    with database.session() as session:
        updated = Profiles(session).update("yelling", features=FEATURES[:1])
    assert updated.features == FEATURES[:1]
    assert updated.description == "louder"

    assert database.run(lambda session: Profiles(session).delete("yelling")) is True
    assert database.run(lambda session: Profiles(session).delete("yelling")) is False
    assert database.run(lambda session: Profiles(session).get("yelling")) is None


def test_save_refuses_a_duplicate_unless_overwriting(database: Database) -> None:
    first = _save(database, "yelling")
    with database.session() as session:
        Profiles(session).set_active("yelling")
    with pytest.raises(RecordExistsError):
        _save(database, "yelling", description="other")
    assert database.run(lambda session: Profiles(session).get("yelling")).description == "shouts"

    replaced = _save(database, "yelling", overwrite=True, description="other", features=())
    assert replaced.description == "other"
    assert replaced.features == ()
    # Overwriting keeps the identity of the row: creation time and the active flag.
    assert replaced.created_at == first.created_at
    assert _active(database) == "yelling"


def test_update_of_a_missing_profile_raises(database: Database) -> None:
    with pytest.raises(RecordNotFoundError), database.session() as session:
        Profiles(session).update("ghost", description="x")
    with pytest.raises(RecordNotFoundError), database.session() as session:
        Profiles(session).set_active("ghost")


def test_one_active_profile(database: Database) -> None:
    _save(database, "a")
    _save(database, "b")
    assert _active(database) is None

    with database.session() as session:
        Profiles(session).set_active("a")
    assert _active(database) == "a"
    with database.session() as session:
        Profiles(session).set_active("b")
    assert _active(database) == "b"
    with database.session() as session:
        assert session.query(ProfileRow).filter(ProfileRow.active.is_(True)).count() == 1
    with database.session() as session:
        Profiles(session).set_active(None)
    assert _active(database) is None


def test_the_database_refuses_two_active_profiles(database: Database) -> None:
    _save(database, "a")
    _save(database, "b")
    with pytest.raises(IntegrityError), database.session() as session:
        for row in session.query(ProfileRow):
            row.active = True
        session.flush()


def test_failed_set_active_rolls_back(database: Database) -> None:
    _save(database, "a")
    with database.session() as session:
        Profiles(session).set_active("a")
    with pytest.raises(RecordNotFoundError), database.session() as session:
        Profiles(session).set_active("ghost")
    assert _active(database) == "a"
