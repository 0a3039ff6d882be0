"""SAE architectures: one module each (standard, jumprelu, topk, batchtopk, gated),
the interface they fill in (base), the registry by name, and `Sae`, an SAE ready
to run. What other packages use is importable from here."""

from inference_service.sae.architectures.base import (
    TORCH_DTYPES,
    Architecture,
    SaeWeights,
    dtype_name,
)
from inference_service.sae.architectures.registry import (
    ARCHITECTURES,
    LOADABLE,
    TRAINABLE,
    expected_shapes,
    get_architecture,
)
from inference_service.sae.architectures.sae import InputNorm, Sae, weight_problems

__all__ = [
    "ARCHITECTURES",
    "LOADABLE",
    "TORCH_DTYPES",
    "TRAINABLE",
    "Architecture",
    "InputNorm",
    "Sae",
    "SaeWeights",
    "dtype_name",
    "expected_shapes",
    "get_architecture",
    "weight_problems",
]
