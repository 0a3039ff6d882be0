"""The architectures by name, as SAELens' `architecture` field spells them."""

from __future__ import annotations

from inference_service.errors import UnsupportedError
from inference_service.sae.architectures import batchtopk, gated, jumprelu, standard, topk
from inference_service.sae.architectures.base import Architecture

ARCHITECTURES: dict[str, Architecture] = {
    module.ARCHITECTURE.name: module.ARCHITECTURE
    for module in (standard, jumprelu, topk, batchtopk, gated)
}
# The ones an SAE file can name, and the ones miLLM can train.
LOADABLE = tuple(name for name, arch in ARCHITECTURES.items() if arch.loadable)
TRAINABLE = tuple(name for name, arch in ARCHITECTURES.items() if arch.trainable)


def get_architecture(name: str) -> Architecture:
    """The architecture of a loadable SAE; UnsupportedError for any other name."""
    if name not in LOADABLE:
        raise UnsupportedError(
            f"SAE architecture {name!r} is not supported; supported: {', '.join(LOADABLE)}"
        )
    return ARCHITECTURES[name]


def expected_shapes(architecture: str, d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """SaeWeights field -> shape, for the tensors `architecture` uses."""
    shapes: dict[str, tuple[int, ...]] = {
        "W_enc": (d_in, d_sae),
        "b_enc": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    for name in get_architecture(architecture).extra_tensors:
        shapes[name] = (d_sae,)
    return shapes
