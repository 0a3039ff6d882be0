"""Profiles over a real database (SQLite and PostgreSQL) and a real SteeringState.

The attached SAE is the one faked part: attaching a real one needs the model, and
the profile code only reads its identity (a small random `ActiveSae` stands in).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from inference_service.profiles import ProfileManager
from inference_service.sae.active import ActiveSae
from inference_service.steering.state import SteeringState
from inference_service.storage import Database, resolve_url
from tests.fixtures.saes import active_sae

MODEL = "smollm2-135m-instruct"
SAE_A = active_sae(
    sae_id="sae-a",
    sae_name="smol-l9",
    weights_sha256="a" * 64,
    hook_name="blocks.9.hook_resid_post",
    d_sae=1024,
    model_name=MODEL,
)
SAE_B = active_sae(
    sae_id="sae-b",
    sae_name="smol-l3-topk",
    weights_sha256="b" * 64,
    hook_name="blocks.3.hook_resid_pre",
    d_sae=512,
    model_name=MODEL,
)


def narrower(active: ActiveSae, d_sae: int) -> ActiveSae:
    """`active` with another width, as a forced import can meet."""
    return replace(active, sae=active_sae(d_sae=d_sae).sae)


class Attachment:
    """What `ActiveSaeSlot.get` would return: settable by the test."""

    def __init__(self, target: ActiveSae | None = SAE_A) -> None:
        self.target = target

    def __call__(self) -> ActiveSae | None:
        return self.target


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return resolve_url("", tmp_path)
    return request.getfixturevalue("fresh_postgres_url")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def attachment() -> Attachment:
    return Attachment()


@pytest.fixture
def steering(attachment: Attachment) -> SteeringState:
    return SteeringState(attachment)


@pytest.fixture
def manager(database: Database, steering: SteeringState) -> ProfileManager:
    return ProfileManager(database, steering)
