"""The steering math of docs/steering.md on small SAEs, against direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from inference_service.errors import InvalidArgumentError
from inference_service.sae.architectures import Sae, SaeWeights
from inference_service.sae.spec import SaeSpec
from inference_service.steering.compiled import CompiledSteering
from inference_service.steering.types import SteeringFeature, SteeringSet, validate_features

D_IN, D_SAE = 64, 32


def orthonormal_sae(architecture: str = "standard", k: int | None = None) -> Sae:
    """Tied weights with orthonormal decoder rows: encoding h + c * W_dec[i] moves
    feature i by exactly c, so clamps can be checked by re-encoding."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_SAE))  # [d_in, d_sae], orthonormal columns
    weights = SaeWeights(
        W_enc=q.clone(),
        b_enc=torch.zeros(D_SAE),
        W_dec=q.T.contiguous(),
        b_dec=torch.zeros(D_IN),
        threshold=torch.full((D_SAE,), 0.01) if architecture == "jumprelu" else None,
    )
    spec = SaeSpec("saelens", architecture, D_IN, D_SAE, "blocks.0.hook_resid_post", 0, None, k=k)
    return Sae(spec, weights)


def hidden(sae: Sae) -> torch.Tensor:
    """[1, 5, d_in] states in which every feature is clearly active."""
    torch.manual_seed(1)
    f = torch.rand(1, 5, D_SAE) + 0.5
    return f @ sae.weights.W_dec + 0.01 * torch.randn(1, 5, D_IN)


def steer(sae: Sae, *features: SteeringFeature, enabled: bool = True) -> CompiledSteering:
    return CompiledSteering(SteeringSet(tuple(features), enabled), sae)


def test_add_is_strength_times_the_decoder_row() -> None:
    sae = orthonormal_sae()
    h = hidden(sae)
    out = steer(sae, SteeringFeature(3, "add", 2.5), SteeringFeature(7, "add", -1.0)).apply(h)
    expected = h + 2.5 * sae.weights.W_dec[3] - 1.0 * sae.weights.W_dec[7]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_normalised_add_uses_the_unit_row() -> None:
    sae = orthonormal_sae()
    sae.weights.W_dec[3] *= 4.0  # a row of norm 4
    h = hidden(sae)
    out = steer(sae, SteeringFeature(3, "add", 2.0, normalize=True)).apply(h)
    torch.testing.assert_close(out, h + 2.0 * sae.weights.W_dec[3] / 4.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("architecture", "k"), [("standard", None), ("jumprelu", None), ("topk", 32)]
)
def test_clamp_sets_the_feature_to_its_target(architecture: str, k: int | None) -> None:
    sae = orthonormal_sae(architecture, k)
    h = hidden(sae)
    out = steer(sae, SteeringFeature(5, "clamp", 3.0)).apply(h)
    after = sae.encode(out)
    torch.testing.assert_close(after[..., 5], torch.full((1, 5), 3.0), rtol=0, atol=1e-4)
    # Only feature 5 moved.
    others = [i for i in range(D_SAE) if i != 5]
    torch.testing.assert_close(after[..., others], sae.encode(h)[..., others], rtol=0, atol=1e-4)


def test_multiply_by_zero_removes_the_feature_and_by_two_doubles_it() -> None:
    sae = orthonormal_sae()
    h = hidden(sae)
    before = sae.encode(h)[..., 9]
    removed = sae.encode(steer(sae, SteeringFeature(9, "multiply", 0.0)).apply(h))[..., 9]
    assert torch.all(removed.abs() < 1e-5) and torch.all(before > 0.4)
    doubled = sae.encode(steer(sae, SteeringFeature(9, "multiply", 2.0)).apply(h))[..., 9]
    torch.testing.assert_close(doubled, 2 * before, rtol=0, atol=1e-4)


def test_identity_cases_change_nothing_exactly() -> None:
    sae = orthonormal_sae()
    h = hidden(sae)
    for compiled in (
        steer(sae, SteeringFeature(1, "add", 0.0), SteeringFeature(2, "multiply", 1.0)),
        steer(sae, SteeringFeature(1, "add", 50.0), enabled=False),
        steer(sae),
    ):
        assert compiled.is_identity
    # A zero add next to a real one adds exactly the real one.
    out = steer(sae, SteeringFeature(1, "add", 0.0), SteeringFeature(2, "add", 1.0)).apply(h)
    assert torch.equal(out, h + sae.weights.W_dec[2])


def test_dtype_and_shape_follow_the_hidden_state() -> None:
    sae = orthonormal_sae()
    h = hidden(sae).to(torch.bfloat16)
    out = steer(sae, SteeringFeature(3, "clamp", 1.0), SteeringFeature(4, "add", 1.0)).apply(h)
    assert out.dtype == torch.bfloat16 and out.shape == h.shape


def test_validation_names_the_valid_range_and_the_field() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        validate_features([SteeringFeature(32, "add", 1.0)], D_SAE)
    assert "has 32 features (0 to 31)" in caught.value.message
    assert caught.value.param == "features[0].index"
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(InvalidArgumentError, match="finite"):
            validate_features([SteeringFeature(1, "add", bad)], D_SAE)
    with pytest.raises(InvalidArgumentError, match="appears twice"):
        validate_features([SteeringFeature(1), SteeringFeature(1, "clamp", 2.0)], D_SAE)
    with pytest.raises(InvalidArgumentError, match="mode"):
        validate_features([SteeringFeature(1, "boost", 1.0)], D_SAE)  # type: ignore[arg-type]
