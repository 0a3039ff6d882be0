"""What an SAE is, whatever the layout of its files: `SaeSpec`.

Field names follow SAELens v6 (`cfg.json` top-level fields plus `metadata.hook_name`
and `metadata.model_name`); `formats/` turns each on-disk layout into one of these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from inference_service.errors import UnsupportedError

SaeFormat = Literal["saelens", "saelens_legacy", "gemma_scope", "sparsify", "mistudio"]
SAE_FORMATS: tuple[SaeFormat, ...] = get_args(SaeFormat)

DTYPES = ("float32", "float16", "bfloat16")
# Run-time input normalisations SAELens applies (or, for the last one, that it folds
# into the weights when the release says how; at run time it is the identity).
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")

_LAYER_IN_HOOK = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True)
class SaeSpec:
    """Everything about an SAE except its tensors."""

    format: SaeFormat
    architecture: str  # a key of architectures.ARCHITECTURES
    d_in: int | None  # None only when a config alone cannot tell (Gemma Scope paths)
    d_sae: int | None
    hook_name: str | None  # TransformerLens style, e.g. "blocks.9.hook_resid_post"
    layer: int | None
    model_name: str | None
    dtype: str = "float32"
    k: int | None = None  # topk only
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Guards against programming errors; formats/ reports bad files before this.
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations must be one of {NORMALIZATIONS}, "
                f"got {self.normalize_activations!r}"
            )


def normalize_dtype(name: object) -> str:
    """ "torch.float32" / "float32" -> "float32"; anything else is unsupported."""
    text = str(name).removeprefix("torch.")
    if text not in DTYPES:
        raise UnsupportedError(
            f"SAE dtype {name!r} is not supported; supported: {', '.join(DTYPES)}"
        )
    return text


def check_normalization(value: object) -> str:
    if value not in NORMALIZATIONS:
        raise UnsupportedError(
            f"normalize_activations {value!r} is not supported; "
            f"supported: {', '.join(NORMALIZATIONS)}"
        )
    return str(value)


def layer_from_hook(hook_name: str | None) -> int | None:
    """The block index in a TransformerLens hook name ("blocks.9.hook_resid_post" -> 9)."""
    if not hook_name:
        return None
    match = _LAYER_IN_HOOK.search(hook_name)
    return int(match.group(1)) if match else None
