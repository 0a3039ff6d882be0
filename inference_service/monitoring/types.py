"""Activation captures and frames as plain values.

A `Capture` is what the hook hands over from the worker lane: the full feature
activations of one forward pass of one request. Frames are what subscribers,
the history and Generate callers see: per token, selected features and the top-k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from inference_service.errors import InvalidArgumentError

Source = Literal["generate", "embed"]
# Per-token limits that keep frames small (gRPC messages, WebSocket frames).
MAX_SELECTED_FEATURES = 64
MAX_TOP_K = 64


@dataclass(frozen=True)
class FeatureValue:
    index: int
    value: float


@dataclass(frozen=True)
class TokenActivations:
    position: int
    token_id: int
    token: str
    features: tuple[FeatureValue, ...]  # the selected features, in the order asked
    top: tuple[FeatureValue, ...]  # most active first
    # The selected features before steering edited the hidden state; empty when
    # steering left it unchanged (then `features` are the unedited values).
    unedited_features: tuple[FeatureValue, ...] = ()


@dataclass(frozen=True)
class ActivationFrame:
    request_id: str
    source: Source
    hook_name: str
    tokens: tuple[TokenActivations, ...]
    captured_at_unix_ms: int


@dataclass(frozen=True)
class Selection:
    """Which activations someone wants per token."""

    features: tuple[int, ...] = ()
    top_k: int = 0

    @property
    def empty(self) -> bool:
        return not self.features and self.top_k == 0

    def union(self, other: Selection) -> Selection:
        merged = tuple(dict.fromkeys((*self.features, *other.features)))
        return Selection(merged, max(self.top_k, other.top_k))


def validate_selection(selection: Selection, d_sae: int | None) -> Selection:
    if len(selection.features) > MAX_SELECTED_FEATURES:
        raise InvalidArgumentError(
            f"At most {MAX_SELECTED_FEATURES} features can be selected; "
            f"got {len(selection.features)}.",
            param="features",
        )
    if not 0 <= selection.top_k <= MAX_TOP_K:
        raise InvalidArgumentError(
            f"top_k must be between 0 and {MAX_TOP_K}; got {selection.top_k}.", param="top_k"
        )
    for index in selection.features:
        if index < 0 or (d_sae is not None and index >= d_sae):
            raise InvalidArgumentError(
                f"Feature {index} is out of range: the attached SAE has {d_sae} features "
                f"(0 to {(d_sae or 1) - 1}).",
                param="features",
            )
    return selection


@dataclass(frozen=True)
class Capture:
    """One forward pass of one request, as the hook saw it: the SAE's encoding of
    the hidden state after the request's steering, and of the state before it."""

    request_id: str
    source: Source
    hook_name: str
    positions: tuple[int, ...]  # sequence positions of the rows of `activations`
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]  # display text per position
    # [positions, d_sae], float32, on the model's device (frames copy out only the
    # numbers they show), after steering.
    activations: Tensor
    captured_at_unix_ms: int
    # The same before steering; None when steering left the hidden state unchanged.
    unedited_activations: Tensor | None = None

    @property
    def unedited(self) -> Tensor:
        """[positions, d_sae]: what the model's own state activates, steering or not."""
        return self.activations if self.unedited_activations is None else self.unedited_activations

    def frame(self, selection: Selection) -> ActivationFrame:
        return ActivationFrame(
            self.request_id,
            self.source,
            self.hook_name,
            select_tokens(self, selection),
            self.captured_at_unix_ms,
        )


def select_tokens(capture: Capture, selection: Selection) -> tuple[TokenActivations, ...]:
    """Per position: the selected features' values (after the edit and, when steering
    edited the state, before it) and the top-k active features.

    The top-k and the selected columns are taken where the activations are (the
    model's device) and leave it in one copy of [T, 2k + 2n] numbers: float64
    holds float32 values and feature indices exactly, so the frames are the same
    as from a CPU tensor."""
    acts = capture.activations  # [T, d_sae]
    features = list(selection.features)
    parts: list[Tensor] = []
    k = min(selection.top_k, acts.shape[-1]) if selection.top_k else 0
    if k:
        values, indices = torch.topk(acts, k, dim=-1)  # [T, k]
        parts += [values.double(), indices.double()]
    unedited_acts = capture.unedited_activations if features else None
    if features:
        columns = torch.tensor(features, device=acts.device)
        parts.append(acts.index_select(-1, columns).double())
        if unedited_acts is not None:
            parts.append(unedited_acts.index_select(-1, columns).double())
    rows: list[list[float]] = (
        torch.cat(parts, dim=-1).tolist() if parts else [[] for _ in capture.positions]
    )
    n = len(features)
    out = []
    for row, position in enumerate(capture.positions):
        numbers = rows[row]
        top: tuple[FeatureValue, ...] = ()
        if k:
            top = tuple(
                FeatureValue(int(i), v)
                for v, i in zip(numbers[:k], numbers[k : 2 * k], strict=True)
                if v > 0.0  # an inactive feature is not among the most active
            )
        chosen = numbers[2 * k : 2 * k + n]
        before: tuple[FeatureValue, ...] = ()
        if unedited_acts is not None:
            values_before = numbers[2 * k + n :]
            before = tuple(FeatureValue(i, v) for i, v in zip(features, values_before, strict=True))
        out.append(
            TokenActivations(
                position,
                capture.token_ids[row],
                capture.tokens[row],
                tuple(FeatureValue(i, v) for i, v in zip(features, chosen, strict=True)),
                top,
                before,
            )
        )
    return tuple(out)
