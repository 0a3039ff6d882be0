"""Request bodies of the /api/v1 management API.

Unknown fields are refused (a misspelt `quantisation` should not silently load
an unquantized model); enum-like fields are checked here, other values by the
inference service.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openai_bridge.steering_json import FeatureBody, FeatureIndex

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
PROFILE_NAME_MAX = 64
TEMPLATE_NAME_MAX = 64
TRAINING_ID_MAX = 200

WeightFormatName = Literal["safetensors", "pytorch"]
QuantizationName = Literal["none", "int8_dynamic", "bnb_8bit", "bnb_4bit"]


class ManagementBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DownloadBody(ManagementBody):
    """POST /api/v1/models/download."""

    repo_id: str = Field(min_length=1, max_length=200)
    revision: str | None = Field(default=None, max_length=200)
    # Used for this download only; never logged.
    token: str | None = Field(default=None, repr=False)
    format: WeightFormatName | None = None


class LoadSpecBody(ManagementBody):
    """How to load a model (`millm.v1.LoadSpec`); omitted fields take the server defaults."""

    dtype: str | None = Field(default=None, max_length=32)
    quantization: QuantizationName | None = None
    device: str | None = Field(default=None, max_length=32)
    context_tokens: int | None = Field(default=None, ge=0, le=UINT32_MAX)


class EstimateBody(LoadSpecBody):
    """POST /api/v1/models/{id}/estimate."""

    sae_bytes: int | None = Field(default=None, ge=0, le=UINT64_MAX)


class LoadBody(LoadSpecBody):
    """POST /api/v1/models/{id}/load."""

    allow_overcommit: bool = False


# ---------------------------------------------------------------- SAEs

SaeLayoutName = Literal["saelens", "mistudio"]

HUB_ID_MAX = 200
HOOK_NAME_MAX = 200
REPO_PATH_MAX = 1000


class SaePreviewBody(ManagementBody):
    """POST /api/v1/saes/preview."""

    repo_id: str = Field(min_length=1, max_length=HUB_ID_MAX)
    revision: str | None = Field(default=None, max_length=HUB_ID_MAX)
    # Used for this call only; never logged.
    token: str | None = Field(default=None, repr=False)


class SaeDownloadBody(ManagementBody):
    """POST /api/v1/saes/download: a Hub folder (`repo_id`, `path`, `revision`) or a
    registry entry (`release`, `sae_id`); translation refuses both and neither."""

    repo_id: str | None = Field(default=None, min_length=1, max_length=HUB_ID_MAX)
    path: str | None = Field(default=None, max_length=REPO_PATH_MAX)
    revision: str | None = Field(default=None, max_length=HUB_ID_MAX)
    release: str | None = Field(default=None, min_length=1, max_length=HUB_ID_MAX)
    sae_id: str | None = Field(default=None, min_length=1, max_length=REPO_PATH_MAX)
    # Used for this download only; never logged.
    token: str | None = Field(default=None, repr=False)


class SaeImportBody(ManagementBody):
    """POST /api/v1/saes/import."""

    path: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, max_length=HUB_ID_MAX)


class SaeHookBody(ManagementBody):
    """POST /api/v1/saes/{id}/compatibility, /{id}/attach and /detach."""

    hook_name: str | None = Field(default=None, max_length=HOOK_NAME_MAX)


class SaeUploadBody(ManagementBody):
    """POST /api/v1/saes/{id}/upload."""

    repo_id: str = Field(min_length=1, max_length=HUB_ID_MAX)
    path_in_repo: str | None = Field(default=None, max_length=REPO_PATH_MAX)
    layout: SaeLayoutName | None = None
    # Needs write access; used for this upload only, never logged.
    token: str | None = Field(default=None, repr=False)
    private: bool = False
    commit_message: str | None = Field(default=None, max_length=REPO_PATH_MAX)


# ---------------------------------------------------------------- steering, profiles, monitoring


class SteeringBody(ManagementBody):
    """PUT /api/v1/steering: the live features, replacing the current ones."""

    features: list[FeatureBody]
    # Unset keeps the switch as it is.
    enabled: bool | None = None


class ProfileCreateBody(ManagementBody):
    """POST /api/v1/profiles."""

    name: str = Field(min_length=1, max_length=PROFILE_NAME_MAX)
    description: str = ""
    # Unset saves the live steering's features.
    features: list[FeatureBody] | None = None


class ProfileUpdateBody(ManagementBody):
    """PATCH /api/v1/profiles/{name}: unset fields keep their values."""

    description: str | None = None
    # A list (even empty) replaces the features.
    features: list[FeatureBody] | None = None


class ProfileImportBody(ManagementBody):
    """POST /api/v1/profiles/import, wrapped form (the exported document as a string)."""

    # `json` on the wire; a pydantic model cannot have a field of that name.
    document: str = Field(alias="json", min_length=1)
    overwrite: bool = False
    force: bool = False


class MonitoringConfigBody(ManagementBody):
    """PUT /api/v1/monitoring/config: unset fields keep their current values."""

    record_history: bool | None = None
    top_k: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    features: list[FeatureIndex] | None = None
    history_frames: int | None = Field(default=None, ge=0, le=UINT32_MAX)


class MonitorControl(ManagementBody):
    """A client message on /api/v1/monitoring/stream: unset fields keep their values."""

    features: list[FeatureIndex] | None = None
    top_k: int | None = Field(default=None, ge=0, le=UINT32_MAX)
    paused: bool | None = None


# ---------------------------------------------------------------- training
#
# A training config stays a plain JSON object here: it is checked field by field
# against millm.v1.TrainingConfig (`training_translate.config_message`), so a field
# added to the proto needs no change in the bridge.

TrainingConfigJson = dict[str, Any]


class TrainingRunBody(ManagementBody):
    """POST /api/v1/training/runs."""

    name: str | None = Field(default=None, max_length=TRAINING_ID_MAX)
    template_id: str | None = Field(default=None, max_length=TRAINING_ID_MAX)
    # With `template_id`: only what it changes in the template's config.
    config: TrainingConfigJson | None = None


class TrainingResumeBody(ManagementBody):
    """POST /api/v1/training/runs/{id}/resume."""

    from_scratch: bool = False


class TrainingTemplateBody(ManagementBody):
    """POST /api/v1/training/templates."""

    name: str = Field(min_length=1, max_length=TEMPLATE_NAME_MAX)
    description: str | None = None
    config: TrainingConfigJson | None = None
    favourite: bool = False


class TrainingTemplateUpdateBody(ManagementBody):
    """PATCH /api/v1/training/templates/{id}: unset fields keep their values."""

    name: str | None = Field(default=None, min_length=1, max_length=TEMPLATE_NAME_MAX)
    description: str | None = None
    favourite: bool | None = None
    # Replaces the whole config; fields it leaves out take their defaults.
    config: TrainingConfigJson | None = None


class TrainingTemplateDuplicateBody(ManagementBody):
    """POST /api/v1/training/templates/{id}/duplicate."""

    # Unset: the original's name with " (copy)".
    name: str | None = Field(default=None, max_length=TEMPLATE_NAME_MAX)
