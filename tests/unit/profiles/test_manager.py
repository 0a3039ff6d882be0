from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from inference_service.errors import (
    IncompatibleSaeError,
    InvalidArgumentError,
    NoSaeAttachedError,
    ProfileNotFoundError,
)
from inference_service.profiles import ProfileExistsError, ProfileManager
from inference_service.steering.state import SteeringState
from inference_service.steering.types import SteeringFeature, SteeringSet
from inference_service.storage import Database
from tests.unit.profiles.conftest import MODEL, SAE_A, SAE_B, Attachment

CAPS = SteeringFeature(7, "add", 8.0, label="caps")
CALM = SteeringFeature(3, "clamp", -2.5)


# ---- CRUD --------------------------------------------------------------------------------


def test_create_binds_the_profile_to_the_attached_sae(manager: ProfileManager) -> None:
    created = manager.create("yelling", "shouts", [CAPS, CALM])
    assert created.model == MODEL
    assert created.sae.sae_id == "sae-a"
    assert created.sae.name == SAE_A.sae_name
    assert created.sae.weights_sha256 == SAE_A.weights_sha256
    assert created.sae.hook_name == SAE_A.hook_name
    assert created.sae.d_sae == SAE_A.d_sae
    assert created.features == (CAPS, CALM)
    assert manager.get("yelling") == created
    assert manager.list() == (created,)


def test_create_without_features_saves_the_live_steering(
    manager: ProfileManager, steering: SteeringState
) -> None:
    steering.set_live([CALM, CAPS])
    assert manager.create("snapshot").features == (CALM, CAPS)
    assert manager.create("explicit", features=[CAPS]).features == (CAPS,)


def test_create_needs_an_attached_sae(manager: ProfileManager, attachment: Attachment) -> None:
    attachment.target = None
    with pytest.raises(NoSaeAttachedError) as caught:
        manager.create("yelling", features=[CAPS])
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert manager.list() == ()


def test_create_checks_features_against_the_sae(manager: ProfileManager) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        manager.create("wide", features=[SteeringFeature(1024)])
    assert "0 to 1023" in caught.value.message
    assert caught.value.param == "features[0].index"


def test_duplicate_name_is_already_exists(manager: ProfileManager) -> None:
    manager.create("yelling", features=[CAPS])
    with pytest.raises(ProfileExistsError) as caught:
        manager.create("yelling", features=[CALM])
    assert caught.value.code is grpc.StatusCode.ALREADY_EXISTS
    assert "'yelling' exists" in caught.value.message
    assert manager.get("yelling").features == (CAPS,)


def test_racing_creates_of_one_name(database: Database, steering: SteeringState) -> None:
    # Separate managers stand for replicas: none sees the others' profile in its cache.
    managers = [ProfileManager(database, steering) for _ in range(6)]

    def create(manager: ProfileManager) -> str:
        try:
            manager.create("yelling", features=[CAPS])
        except ProfileExistsError:
            return "exists"
        return "created"

    with ThreadPoolExecutor(len(managers)) as pool:
        outcomes = sorted(pool.map(create, managers))
    assert outcomes == ["created"] + ["exists"] * (len(managers) - 1)


def test_list_is_by_name(manager: ProfileManager) -> None:
    for name in ("b", "a.2", "C", "a-1"):
        manager.create(name, features=[CAPS])
    assert [p.name for p in manager.list()] == sorted(["b", "a.2", "C", "a-1"])


def test_update(manager: ProfileManager, attachment: Attachment) -> None:
    created = manager.create("yelling", "shouts", [CAPS])
    attachment.target = None  # editing does not need the SAE
    described = manager.update("yelling", description="louder")
    assert (described.description, described.features) == ("louder", (CAPS,))
    changed = manager.update("yelling", features=[CALM])
    assert (changed.description, changed.features) == ("louder", (CALM,))
    assert changed.created_at == created.created_at
    assert changed.updated_at >= created.updated_at
    with pytest.raises(InvalidArgumentError, match="0 to 1023"):
        manager.update("yelling", features=[SteeringFeature(5000)])
    with pytest.raises(ProfileNotFoundError):
        manager.update("ghost", description="x")


def test_delete(manager: ProfileManager) -> None:
    manager.create("yelling", features=[CAPS])
    manager.delete("yelling")
    assert manager.list() == ()
    with pytest.raises(ProfileNotFoundError):
        manager.delete("yelling")


def test_get_unknown_names_the_profile_and_how_to_list(manager: ProfileManager) -> None:
    with pytest.raises(ProfileNotFoundError) as caught:
        manager.get("ghost")
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "PROFILE_NOT_FOUND"
    assert "'ghost'" in caught.value.message
    assert "ProfileService.ListProfiles" in caught.value.message


# ---- names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "yelling", "v1.2_final-B", "x" * 64])
def test_valid_names(manager: ProfileManager, name: str) -> None:
    assert manager.create(name, features=[CAPS]).name == name


def test_colon_is_refused_with_the_model_id_form(manager: ProfileManager) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        manager.create("smollm:yelling", features=[CAPS])
    assert "':'" in caught.value.message
    assert "'<model>:<profile>'" in caught.value.message
    assert caught.value.param == "name"


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "slash/y", "é", "semi;colon"])
def test_invalid_names(manager: ProfileManager, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        manager.create(name, features=[CAPS])
    assert "1 to 64 letters, digits, '-', '_' or '.'" in caught.value.message


def test_long_description_is_refused(manager: ProfileManager) -> None:
    with pytest.raises(InvalidArgumentError, match="at most 2000"):
        manager.create("yelling", "x" * 2001, [CAPS])


# ---- activation --------------------------------------------------------------------------


def test_one_profile_is_active(manager: ProfileManager, steering: SteeringState) -> None:
    manager.create("yelling", features=[CAPS])
    manager.create("calm", features=[CALM])
    assert manager.active_name() is None

    manager.activate("yelling")
    assert manager.active_name() == "yelling"
    assert steering.effective() == SteeringSet((CAPS,), True)

    manager.activate("calm")  # switching replaces, never stacks
    assert manager.active_name() == "calm"
    assert steering.effective() == SteeringSet((CALM,), True)

    assert manager.deactivate() == "calm"
    assert manager.active_name() is None
    assert steering.effective() == steering.live
    assert manager.deactivate() is None


def test_activate_refuses_another_sae(manager: ProfileManager, attachment: Attachment) -> None:
    manager.create("yelling", features=[CAPS])
    attachment.target = SAE_B
    with pytest.raises(IncompatibleSaeError) as caught:
        manager.activate("yelling")
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert SAE_A.weights_sha256 in caught.value.message
    assert SAE_B.weights_sha256 in caught.value.message
    assert manager.active_name() is None


def test_activate_needs_an_sae(manager: ProfileManager, attachment: Attachment) -> None:
    manager.create("yelling", features=[CAPS])
    attachment.target = None
    with pytest.raises(NoSaeAttachedError):
        manager.activate("yelling")
    with pytest.raises(ProfileNotFoundError):
        manager.activate("ghost")


def test_update_of_the_active_profile_steers_at_once(
    manager: ProfileManager, steering: SteeringState
) -> None:
    manager.create("yelling", features=[CAPS])
    manager.activate("yelling")
    manager.update("yelling", features=[CALM])
    assert steering.effective() == SteeringSet((CALM,), True)


def test_delete_deactivates(manager: ProfileManager, steering: SteeringState) -> None:
    manager.create("yelling", features=[CAPS])
    manager.activate("yelling")
    manager.delete("yelling")
    assert steering.active_profile is None
    assert manager.restore_active() is None


# ---- restarts ----------------------------------------------------------------------------


def _restart(database_url: str, attachment: Attachment) -> tuple[Database, ProfileManager]:
    db = Database(database_url)
    db.migrate()
    return db, ProfileManager(db, SteeringState(attachment))


def test_profiles_and_the_active_one_survive_a_restart(
    database_url: str, manager: ProfileManager, attachment: Attachment
) -> None:
    created = manager.create("yelling", "shouts", [CAPS, CALM])
    manager.create("calm", features=[CALM])
    manager.activate("yelling")

    db, after = _restart(database_url, attachment)
    try:
        assert [p.name for p in after.list()] == ["calm", "yelling"]
        assert after.get("yelling") == created
        assert after.active_name() is None  # nothing steers before restore
        assert after.restore_active() == "yelling"
        assert after.active_name() == "yelling"
        assert after.resolve("yelling") == SteeringSet((CAPS, CALM), True)
    finally:
        db.close()


def test_restore_waits_for_the_profiles_sae(
    database_url: str, manager: ProfileManager, attachment: Attachment
) -> None:
    manager.create("yelling", features=[CAPS])
    manager.activate("yelling")

    attachment.target = None
    db, after = _restart(database_url, attachment)
    try:
        assert after.restore_active() is None
        attachment.target = SAE_B  # another SAE: still waits
        assert after.restore_active() is None
        assert after.active_name() is None
        attachment.target = SAE_A
        assert after.restore_active() == "yelling"
        assert after.active_name() == "yelling"
    finally:
        db.close()


def test_deactivate_is_remembered(
    database_url: str, manager: ProfileManager, attachment: Attachment
) -> None:
    manager.create("yelling", features=[CAPS])
    manager.activate("yelling")
    manager.deactivate()
    db, after = _restart(database_url, attachment)
    try:
        assert after.restore_active() is None
    finally:
        db.close()


# ---- per-request resolution --------------------------------------------------------------


def test_resolve(manager: ProfileManager, attachment: Attachment) -> None:
    manager.create("yelling", features=[CAPS])
    assert manager.resolve("yelling") == SteeringSet((CAPS,), True)
    assert manager.active_name() is None  # resolving does not activate

    with pytest.raises(ProfileNotFoundError) as caught:
        manager.resolve("ghost")
    assert caught.value.code is grpc.StatusCode.NOT_FOUND

    attachment.target = SAE_B
    with pytest.raises(IncompatibleSaeError):
        manager.resolve("yelling")
    attachment.target = None
    with pytest.raises(NoSaeAttachedError):
        manager.resolve("yelling")


def test_resolve_sees_writes_at_once(manager: ProfileManager) -> None:
    manager.create("yelling", features=[CAPS])
    assert manager.resolve("yelling").features == (CAPS,)
    manager.update("yelling", features=[CALM])
    assert manager.resolve("yelling").features == (CALM,)
    manager.delete("yelling")
    with pytest.raises(ProfileNotFoundError):
        manager.resolve("yelling")


def test_another_replicas_writes_show_after_the_cache_ttl(
    database: Database, manager: ProfileManager, attachment: Attachment
) -> None:
    other = ProfileManager(database, SteeringState(attachment), cache_ttl_s=0.0)
    cached = ProfileManager(database, SteeringState(attachment), cache_ttl_s=3600.0)
    assert cached.list() == ()  # snapshot taken
    other.create("yelling", features=[CAPS])
    with pytest.raises(ProfileNotFoundError):
        cached.resolve("yelling")  # within the TTL: the snapshot is kept
    assert other.resolve("yelling").features == (CAPS,)  # TTL 0: re-read every time
