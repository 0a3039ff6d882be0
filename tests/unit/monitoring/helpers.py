"""Captures built from real tensors, as the SAE hook would hand them over."""

from __future__ import annotations

import torch

from inference_service.monitoring.types import Capture


def sparse_activations(tokens: int, d_sae: int, *, seed: int) -> torch.Tensor:
    """[tokens, d_sae] float32, about a fifth active (> 0); the negatives must never count."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, d_sae, generator=generator) - 0.8


def make_capture(
    activations: torch.Tensor,
    request_id: str = "r1",
    *,
    source: str = "generate",
    hook_name: str = "blocks.9.hook_resid_post",
    first_position: int = 0,
    captured_at_unix_ms: int = 1_700_000_000_000,
    tokens: tuple[str, ...] | None = None,
) -> Capture:
    count = activations.shape[0]
    positions = tuple(range(first_position, first_position + count))
    return Capture(
        request_id=request_id,
        source=source,  # type: ignore[arg-type]
        hook_name=hook_name,
        positions=positions,
        token_ids=tuple(1000 + p for p in positions),
        tokens=tokens if tokens is not None else tuple(f"tok{p}" for p in positions),
        activations=activations,
        captured_at_unix_ms=captured_at_unix_ms,
    )
