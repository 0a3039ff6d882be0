"""Request bodies of the /api/v1 management API, so that the OpenAPI document describes each.

Unknown fields are refused (a misspelt `quantisation` should not silently load
an unquantized model); enum-like fields are checked here, other values by the
inference service. Field names are the proto's, so `proto_json.message` maps a
body to its request message by name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from openai_bridge.steering_json import FeatureBody, FeatureIndex

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
PROFILE_NAME_MAX = 64
TEMPLATE_NAME_MAX = 64
TRAINING_ID_MAX = 200

WeightFormatName = Literal["safetensors", "pytorch"]
# In the proto's order (tests/unit/bridge/test_proto_json.py).
QuantizationName = Literal[
    "none", "int8_dynamic", "bnb_8bit", "bnb_4bit", "int8_weight", "auto", "int4_weight"
]


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


SaeDtypeName = Literal["float32", "float16", "bfloat16"]


class SaeAttachBody(SaeHookBody):
    """POST /api/v1/saes/{id}/attach."""

    dtype: SaeDtypeName | None = None
    allow_overcommit: StrictBool = False
    replace: StrictBool = False


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


# ---------------------------------------------------------------- features

FEATURE_LABEL_MAX = 200
FEATURE_NOTES_MAX = 10_000
# A model reads each text whole: longer ones belong in a corpus (statistics).
FEATURE_TEXT_MAX = 20_000
CONTRAST_TEXTS_MAX = 256

ContrastMeasureName = Literal["auroc", "firing_rate_gap"]
TextTransformName = Literal["uppercase"]
LabelFormatName = Literal["millm", "neuronpedia"]
FeatureText = Annotated[str, Field(min_length=1, max_length=FEATURE_TEXT_MAX)]


class FeatureStatisticsBody(ManagementBody):
    """POST /api/v1/saes/{id}/features/statistics: unset fields take the service's defaults."""

    # An uploaded corpus (/api/v1/training/corpora); unset: the built-in sample.
    corpus_id: str | None = Field(default=None, max_length=TRAINING_ID_MAX)
    max_tokens: int | None = Field(default=None, ge=1, le=UINT64_MAX)
    context_radius: int | None = Field(default=None, ge=1, le=UINT32_MAX)
    top_contexts: int | None = Field(default=None, ge=1, le=UINT32_MAX)


class FeatureTextSearchBody(ManagementBody):
    """POST /api/v1/saes/{id}/features/search."""

    text: FeatureText
    limit: int | None = Field(default=None, ge=1, le=UINT32_MAX)


class FeatureContrastBody(ManagementBody):
    """POST /api/v1/saes/{id}/features/contrast: `negative_texts`, or a `transform`
    that makes them from the positives; translation refuses both and neither."""

    positive_texts: list[FeatureText] = Field(min_length=1, max_length=CONTRAST_TEXTS_MAX)
    negative_texts: list[FeatureText] | None = Field(
        default=None, min_length=1, max_length=CONTRAST_TEXTS_MAX
    )
    transform: TextTransformName | None = None
    measure: ContrastMeasureName | None = None
    limit: int | None = Field(default=None, ge=1, le=UINT32_MAX)


class FeatureLabelBody(ManagementBody):
    """PUT /api/v1/saes/{id}/features/{index}/label: both empty removes the label."""

    label: str = Field(default="", max_length=FEATURE_LABEL_MAX)
    notes: str = Field(default="", max_length=FEATURE_NOTES_MAX)


# ---------------------------------------------------------------- training

# A float32's largest finite value: the service stores the config's floats as float32.
FLOAT32_MAX = 3.4028234663852886e38


def _no_nul(text: str) -> str:
    # Paths and ids: the OS refuses a NUL byte in a path with a ValueError.
    if "\x00" in text:
        raise PydanticCustomError("nul_byte", "The text holds a NUL byte (\\u0000)")
    return text


# JSON's own types only: "32" for 32, or true for 1, in a hand-written config is
# more likely a mistake than meant.
Text = Annotated[StrictStr, AfterValidator(_no_nul)]
UInt32 = Annotated[StrictInt, Field(ge=0, le=UINT32_MAX)]
UInt64 = Annotated[StrictInt, Field(ge=0, le=UINT64_MAX)]
Float32 = Annotated[float, Field(strict=True, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
TrainingArchitectureName = Literal["standard", "jumprelu", "topk", "batchtopk"]


class CorpusSourceBody(ManagementBody):
    """`millm.v1.CorpusSource`: an uploaded corpus or a path under the data root, not both."""

    corpus_id: Text | None = None
    path: Text | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CorpusSourceBody:
        if self.corpus_id is not None and self.path is not None:
            raise PydanticCustomError("one_source", "Takes `corpus_id` or `path`, not both")
        return self


class TrainingConfigBody(ManagementBody):
    """`millm.v1.TrainingConfig` (docs/training.md): what decides a run. Absent or null
    fields take the service's defaults, so a config names only what it changes."""

    corpus: CorpusSourceBody | None = None
    hook_name: Text | None = None
    hook_name_out: Text | None = None
    skip: StrictBool | None = None
    architecture: TrainingArchitectureName | None = None
    d_sae: UInt32 | None = None
    expansion_factor: UInt32 | None = None
    k: UInt32 | None = None
    l1_coefficient: Float32 | None = None
    l0_coefficient: Float32 | None = None
    learning_rate: Float32 | None = None
    warmup_steps: UInt32 | None = None
    decay_steps: UInt32 | None = None
    batch_size_tokens: UInt32 | None = None
    total_tokens: UInt64 | None = None
    normalize_activations: Text | None = None
    decoder_norm: Text | None = None
    dead_feature_window: UInt32 | None = None
    resample_dead: StrictBool | None = None
    checkpoint_every_steps: UInt32 | None = None
    seed: UInt64 | None = None
    context_size: UInt32 | None = None
    prepend_bos: StrictBool | None = None
    keep_first_position: StrictBool | None = None
    text_field: Text | None = None
    eval_fraction: Float32 | None = None
    cache_activations: StrictBool | None = None
    aux_k_coefficient: Float32 | None = None
    sparsity_warmup_steps: UInt32 | None = None
    jumprelu_init_threshold: Float32 | None = None
    jumprelu_bandwidth: Float32 | None = None
    harvest_batch_windows: UInt32 | None = None


class TrainingRunBody(ManagementBody):
    """POST /api/v1/training/runs."""

    name: str | None = Field(default=None, max_length=TRAINING_ID_MAX)
    template_id: str | None = Field(default=None, max_length=TRAINING_ID_MAX)
    # With `template_id`: only what it changes in the template's config.
    config: TrainingConfigBody | None = None


class TrainingResumeBody(ManagementBody):
    """POST /api/v1/training/runs/{id}/resume."""

    from_scratch: bool = False


class TrainingTemplateBody(ManagementBody):
    """POST /api/v1/training/templates."""

    name: str = Field(min_length=1, max_length=TEMPLATE_NAME_MAX)
    description: str | None = None
    config: TrainingConfigBody | None = None
    favourite: bool = False


class TrainingTemplateUpdateBody(ManagementBody):
    """PATCH /api/v1/training/templates/{id}: unset fields keep their values."""

    name: str | None = Field(default=None, min_length=1, max_length=TEMPLATE_NAME_MAX)
    description: str | None = None
    favourite: bool | None = None
    # Replaces the whole config; fields it leaves out take their defaults.
    config: TrainingConfigBody | None = None


class TrainingTemplateDuplicateBody(ManagementBody):
    """POST /api/v1/training/templates/{id}/duplicate."""

    # Unset: the original's name with " (copy)".
    name: str | None = Field(default=None, max_length=TEMPLATE_NAME_MAX)
