"""The SAE math against SAELens' own classes, on random weights with non-zero biases."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from inference_service.errors import UnsupportedError
from inference_service.sae.architectures import (
    ARCHITECTURES,
    LOADABLE,
    TRAINABLE,
    Sae,
    get_architecture,
    weight_problems,
)
from tests.fixtures.saelens_pairs import D_IN, D_SAE, SAELENS_CLASSES, K, inputs, saelens_pair

TOLERANCE = 1e-5


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("case", sorted(SAELENS_CLASSES))
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_and_decode_match_saelens(case: str, apply_b_dec: bool) -> None:
    reference, ours = saelens_pair(case, apply_b_dec=apply_b_dec)
    x = inputs()
    with torch.no_grad():
        expected = reference.encode(x)
        features = ours.encode(x)
        assert _max_diff(features, expected) < TOLERANCE
        # The comparison means something only if features are sparse but not all zero.
        assert 0 < (features != 0).float().mean() < 1
        assert _max_diff(ours.decode(features), reference.decode(expected)) < TOLERANCE
        assert _max_diff(ours.forward(x), reference(x)) < TOLERANCE


@pytest.mark.parametrize("case", sorted(SAELENS_CLASSES))
@pytest.mark.parametrize("normalize", ["constant_norm_rescale", "layer_norm"])
def test_run_time_normalisation_matches_saelens(case: str, normalize: str) -> None:
    reference, ours = saelens_pair(case, normalize=normalize, seed=2)
    x = inputs(3) * 7  # far from the normalised scale, so a missed step shows
    with torch.no_grad():
        assert _max_diff(ours.encode(x), reference.encode(x)) < TOLERANCE
        assert _max_diff(ours.forward(x), reference(x)) < TOLERANCE
        features, norm = ours.encode_with_norm(x)
        assert _max_diff(ours.decode(features, norm), reference(x)) < TOLERANCE


def test_expected_average_only_in_is_the_identity_at_run_time() -> None:
    reference, ours = saelens_pair("standard", normalize="expected_average_only_in")
    x = inputs()
    with torch.no_grad():
        assert _max_diff(ours.encode(x), reference.encode(x)) < TOLERANCE
        assert _max_diff(ours.decode(ours.encode(x)), reference(x)) < TOLERANCE


def test_decode_without_the_input_norm_is_refused_when_the_input_was_normalised() -> None:
    _, ours = saelens_pair("standard", normalize="layer_norm")
    features, norm = ours.encode_with_norm(inputs())
    assert norm is not None
    with pytest.raises(ValueError, match="InputNorm"):
        ours.decode(features)


def test_topk_keeps_k_features_per_vector() -> None:
    _, ours = saelens_pair("topk")
    features = ours.encode(inputs())
    active = (features != 0).sum(dim=-1)
    assert active.max().item() == K
    assert (features >= 0).all()


def test_topk_rescaling_changes_which_features_win() -> None:
    _, plain = saelens_pair("topk")
    rescaled = Sae(
        dataclasses.replace(plain.spec, rescale_acts_by_decoder_norm=True),
        dataclasses.replace(
            plain.weights, W_dec=plain.weights.W_dec * torch.linspace(0.1, 3, D_SAE)[:, None]
        ),
    )
    x = inputs()
    assert not torch.equal(plain.encode(x) != 0, rescaled.encode(x) != 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights_encode_to_float32_features(dtype: torch.dtype) -> None:
    _, ours = saelens_pair("standard")
    half = ours.to("cpu", dtype)
    assert half.spec.dtype == str(dtype).removeprefix("torch.")
    assert half.weights.nbytes * 2 == ours.weights.nbytes
    x = inputs()
    features = half.encode(x)  # float32 input, float32 features
    assert features.dtype == torch.float32
    # Within the weights' own precision of what float32 weights give.
    reference = ours.encode(x)
    tolerance = 1e-2 if dtype is torch.float16 else 5e-2
    assert (features - reference).abs().max() <= tolerance * reference.abs().max()


def test_registry_entries() -> None:
    assert LOADABLE == ("standard", "jumprelu", "topk", "gated")
    assert TRAINABLE == ("standard", "jumprelu", "topk", "batchtopk")
    assert ARCHITECTURES["batchtopk"].saved_as == "jumprelu"
    assert [name for name, arch in ARCHITECTURES.items() if arch.columnwise] == [
        "standard",
        "jumprelu",
    ]
    assert ARCHITECTURES["gated"].saelens_keys() == {
        "W_enc": "W_enc",
        "b_enc": "b_gate",
        "W_dec": "W_dec",
        "b_dec": "b_dec",
        "b_mag": "b_mag",
        "r_mag": "r_mag",
    }
    assert "threshold" in ARCHITECTURES["jumprelu"].saelens_keys()
    with pytest.raises(UnsupportedError, match="standard, jumprelu, topk, gated"):
        get_architecture("batchtopk")


def test_wrong_shapes_and_missing_tensors_are_named() -> None:
    _, ours = saelens_pair("jumprelu")
    bad = dataclasses.replace(ours.weights, W_dec=ours.weights.W_dec.T, threshold=None)
    problems = weight_problems(ours.spec, bad)
    assert "W_dec has shape [32, 128], expected [128, 32]" in problems
    assert "threshold is missing" in problems
    with pytest.raises(ValueError, match="W_dec has shape"):
        Sae(ours.spec, bad)


def test_topk_needs_a_k_within_d_sae() -> None:
    _, ours = saelens_pair("topk")
    with pytest.raises(ValueError, match="k must be between 1 and d_sae=128"):
        Sae(dataclasses.replace(ours.spec, k=D_SAE + 1), ours.weights)


def test_nbytes_counts_every_tensor() -> None:
    _, ours = saelens_pair("gated")
    expected = (2 * D_IN * D_SAE + 3 * D_SAE + D_IN) * 4
    assert ours.weights.nbytes == ours.nbytes == expected
    with_sparsity = Sae(ours.spec, ours.weights, torch.zeros(D_SAE))
    assert with_sparsity.nbytes == expected + D_SAE * 4
