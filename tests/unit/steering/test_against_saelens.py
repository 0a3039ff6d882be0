"""Clamp and multiply against SAELens: steering must move h exactly as SAELens'
decode of the edited latent moves its reconstruction, for every architecture."""

from __future__ import annotations

import pytest
import torch

from inference_service.steering.compiled import CompiledSteering
from inference_service.steering.types import SteeringFeature, SteeringSet
from tests.fixtures.saelens_pairs import SAELENS_CLASSES, inputs, saelens_pair

TOLERANCE = 1e-4
# BatchTopK SAEs are saved, and so steered, as JumpReLU with one threshold for all.
CASES = [*sorted(SAELENS_CLASSES), "batchtopk"]


def _pair(case: str, normalize: str = "none"):
    if case != "batchtopk":
        return saelens_pair(case, normalize=normalize)
    reference, ours = saelens_pair("jumprelu", normalize=normalize)
    with torch.no_grad():
        reference.threshold.fill_(0.2)
        ours.weights.threshold.fill_(0.2)
    return reference, ours


def _edits(f: torch.Tensor) -> list[SteeringFeature]:
    """A clamp of a feature active somewhere, a clamp of one active nowhere, a multiply."""
    active = (f != 0).flatten(0, -2).any(dim=0)  # [d_sae]
    on = int(active.nonzero()[0])
    on_too = int(active.nonzero()[1])
    off = int((~active).nonzero()[0]) if not active.all() else int(active.nonzero()[2])
    return [
        SteeringFeature(on, "clamp", 3.0),
        SteeringFeature(off, "clamp", 5.0),
        SteeringFeature(on_too, "multiply", 2.5),
    ]


def _saelens_steered(reference, h: torch.Tensor, edits: list[SteeringFeature]) -> torch.Tensor:
    """h moved by SAELens' decode of the edited latent minus its decode of the latent."""
    # SAELens keeps encode's run-time normalisation for one decode only: encode twice.
    f = reference.encode(h)
    unedited = reference.decode(f)
    edited = f.clone()
    for e in edits:
        if e.mode == "clamp":
            edited[..., e.index] = e.strength
        else:
            edited[..., e.index] = f[..., e.index] * e.strength
    reference.encode(h)
    return h + reference.decode(edited) - unedited


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("normalize", ["none", "constant_norm_rescale", "layer_norm"])
def test_clamp_and_multiply_decode_the_edited_latent_as_saelens_does(
    case: str, normalize: str
) -> None:
    reference, ours = _pair(case, normalize)
    h = inputs() * (7 if normalize != "none" else 1)
    with torch.no_grad():
        edits = _edits(ours.encode(h))
        expected = _saelens_steered(reference, h, edits)
        steered = CompiledSteering(SteeringSet(tuple(edits)), ours).apply(h)
    assert (steered - h).abs().max() > 0.1  # the edit did something
    torch.testing.assert_close(steered, expected, rtol=0, atol=TOLERANCE)


def test_clamp_on_rescaled_topk_with_uneven_row_norms_matches_saelens() -> None:
    """The reported bug: TopK with rescale_acts_by_decoder_norm, where the raw row
    moved the feature by ||W_dec[i]||^2 times too much. Scaled rows make it visible."""
    reference, ours = saelens_pair("topk_rescaled")
    with torch.no_grad():
        ours.weights.W_dec.mul_(torch.linspace(0.2, 3.0, ours.d_sae)[:, None])
        reference.W_dec.copy_(ours.weights.W_dec)
        h = inputs()
        f = ours.encode(h)
        index = int(f.flatten(0, -2).sum(dim=0).argmax())  # the most active feature
        steered = CompiledSteering(SteeringSet((SteeringFeature(index, "clamp", 4.0),)), ours)
        out = steered.apply(h)
        expected = _saelens_steered(reference, h, [SteeringFeature(index, "clamp", 4.0)])
    torch.testing.assert_close(out, expected, rtol=0, atol=TOLERANCE)
