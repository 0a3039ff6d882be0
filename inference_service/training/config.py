"""A training run's settings: defaults, validation, and the JSON form stored with it.

`TrainingConfig` mirrors the `millm.v1.TrainingConfig` message field for field, so
the servicer converts by name and templates store the same JSON. `resolve()` fills
every default and checks every value against the served model, so a run that
starts has settings that can work; each problem is an InvalidArgumentError that
names the field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from inference_service.errors import InvalidArgumentError
from inference_service.sae.architectures import ARCHITECTURES, TRAINABLE

NORMALIZATIONS = ("none", "constant_norm")
DECODER_NORMS = ("unit", "none")
# SAELens can load transcoders only with these activations.
TRANSCODER_ARCHITECTURES = tuple(
    name for name in TRAINABLE if ARCHITECTURES[name].transcoder_names is not None
)


@dataclass(frozen=True)
class TrainingConfig:
    """Field names and zero-means-default rules follow the proto message."""

    corpus_id: str = ""
    corpus_path: str = ""
    hook_name: str = ""
    hook_name_out: str = ""
    skip: bool = False
    architecture: str = "topk"
    d_sae: int = 0
    expansion_factor: int = 8
    k: int = 32
    l1_coefficient: float = 5.0
    l0_coefficient: float = 1.0
    learning_rate: float = 4e-4
    warmup_steps: int = 0
    decay_steps: int = 0
    batch_size_tokens: int = 4096
    total_tokens: int = 0
    normalize_activations: str = "none"
    decoder_norm: str = ""
    dead_feature_window: int = 1000
    resample_dead: bool = False
    checkpoint_every_steps: int = 500
    seed: int = 0
    context_size: int = 128
    prepend_bos: bool = False
    keep_first_position: bool = False
    text_field: str = "text"
    eval_fraction: float = 0.05
    cache_activations: bool = False
    aux_k_coefficient: float = 1 / 32
    sparsity_warmup_steps: int = 0
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    harvest_batch_windows: int = 8

    @property
    def is_transcoder(self) -> bool:
        return bool(self.hook_name_out) and self.hook_name_out != self.hook_name

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, param: str = "config") -> TrainingConfig:
        """From stored or imported JSON; unknown keys are an error, not silently dropped."""
        defaults = cls().to_json()
        if unknown := sorted(set(data) - set(defaults)):
            raise InvalidArgumentError(
                f"Unknown training setting(s): {', '.join(unknown)}.", param=param
            )
        for name, value in data.items():
            expected = type(defaults[name])
            # JSON has one number type: an int is a fine float, a bool is not an int.
            ok = isinstance(value, expected) and not (
                expected is not bool and isinstance(value, bool)
            )
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise InvalidArgumentError(
                    f"Training setting {name} must be a {expected.__name__}, got {value!r}.",
                    param=f"{param}.{name}",
                )
        values: dict[str, Any] = {
            k: float(v) if type(defaults[k]) is float else v for k, v in data.items()
        }
        return cls(**values)

    def overlay(self, changes: dict[str, Any]) -> TrainingConfig:
        return dataclasses.replace(self, **changes)


# Zero (or empty) in a request means "the default": these fields keep theirs.
ZERO_MEANS_DEFAULT = (
    "architecture",
    "expansion_factor",
    "k",
    "l1_coefficient",
    "l0_coefficient",
    "learning_rate",
    "batch_size_tokens",
    "normalize_activations",
    "dead_feature_window",
    "checkpoint_every_steps",
    "context_size",
    "text_field",
    "eval_fraction",
    "aux_k_coefficient",
    "jumprelu_init_threshold",
    "jumprelu_bandwidth",
    "harvest_batch_windows",
)


def with_defaults(given: dict[str, Any]) -> TrainingConfig:
    """A config from request fields, zero values replaced by their defaults."""
    defaults = TrainingConfig()
    values = {
        name: value
        for name, value in given.items()
        if not (name in ZERO_MEANS_DEFAULT and not value)
    }
    return TrainingConfig.from_json({**defaults.to_json(), **values})


@dataclass(frozen=True)
class ModelFacts:
    """What validation needs to know about the served model."""

    d_in: int
    d_out: int
    max_context: int


def resolve(config: TrainingConfig, facts: ModelFacts) -> TrainingConfig:
    """The config with derived values filled in, or InvalidArgumentError naming the field."""
    _check_choice("architecture", config.architecture, TRAINABLE)
    architecture = ARCHITECTURES[config.architecture]
    _check_choice("normalize_activations", config.normalize_activations, NORMALIZATIONS)
    decoder_norm = config.decoder_norm or architecture.default_decoder_norm
    _check_choice("decoder_norm", decoder_norm, DECODER_NORMS)
    if not config.hook_name:
        raise InvalidArgumentError(
            "hook_name is required, e.g. blocks.9.hook_resid_post.", param="hook_name"
        )
    if not config.corpus_id and not config.corpus_path:
        raise InvalidArgumentError(
            "Name a corpus: corpus_id of an uploaded corpus, or a path under the data root.",
            param="corpus",
        )
    if config.skip and not config.is_transcoder:
        raise InvalidArgumentError(
            "skip needs a transcoder: set hook_name_out to another site than hook_name.",
            param="skip",
        )
    if config.is_transcoder and config.architecture not in TRANSCODER_ARCHITECTURES:
        raise InvalidArgumentError(
            f"Transcoders train as {' or '.join(TRANSCODER_ARCHITECTURES)}; SAELens has no "
            f"{config.architecture} transcoder format.",
            param="architecture",
        )
    d_sae = config.d_sae or config.expansion_factor * facts.d_in
    _check_range("d_sae", d_sae, 1, 1 << 20)
    if architecture.keeps_top_k:
        _check_range("k", config.k, 1, d_sae, why=f"k must be between 1 and the width ({d_sae})")
    _check_positive("learning_rate", config.learning_rate)
    _check_positive("l1_coefficient", config.l1_coefficient)
    _check_positive("l0_coefficient", config.l0_coefficient)
    _check_positive("jumprelu_init_threshold", config.jumprelu_init_threshold)
    _check_positive("jumprelu_bandwidth", config.jumprelu_bandwidth)
    _check_range("batch_size_tokens", config.batch_size_tokens, 1, 1 << 20)
    _check_range("context_size", config.context_size, 2, facts.max_context)
    _check_range("harvest_batch_windows", config.harvest_batch_windows, 1, 4096)
    _check_range("dead_feature_window", config.dead_feature_window, 1, 1 << 30)
    _check_range("checkpoint_every_steps", config.checkpoint_every_steps, 1, 1 << 30)
    for name in ("warmup_steps", "decay_steps", "sparsity_warmup_steps", "total_tokens", "seed"):
        _check_range(name, getattr(config, name), 0, 1 << 62)
    if not 0 < config.eval_fraction < 0.5:
        raise InvalidArgumentError(
            f"eval_fraction must be above 0 and below 0.5, got {config.eval_fraction}.",
            param="eval_fraction",
        )
    if not math.isfinite(config.aux_k_coefficient):
        raise InvalidArgumentError(
            "aux_k_coefficient must be a finite number.", param="aux_k_coefficient"
        )
    return dataclasses.replace(config, d_sae=d_sae, decoder_norm=decoder_norm)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(choices)}; got {value!r}.", param=name
        )


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgumentError(f"{name} must be a positive number, got {value}.", param=name)


def _check_range(name: str, value: int, low: int, high: int, *, why: str = "") -> None:
    if not low <= value <= high:
        message = why or f"{name} must be between {low} and {high}"
        raise InvalidArgumentError(f"{message}; got {value}.", param=name)
