"""The compatibility check: each problem with its reason, status and message."""

from __future__ import annotations

import grpc
import pytest

from inference_service.errors import IncompatibleSaeError, LayerOutOfRangeError
from inference_service.sae.compatibility import (
    ModelFacts,
    check_compatibility,
    sae_memory_bytes,
)
from inference_service.sae.hook_sites import HookSite
from inference_service.sae.spec import SaeSpec

SMOL = ModelFacts("HuggingFaceTB/SmolLM2-135M-Instruct", 30, 576, "model.layers")
PLENTY = 1 << 40


def spec(**overrides) -> SaeSpec:
    fields = {
        "format": "saelens",
        "architecture": "standard",
        "d_in": 576,
        "d_sae": 2304,
        "hook_name": "blocks.9.hook_resid_post",
        "layer": 9,
        "model_name": "smollm2-135m-instruct",
    }
    return SaeSpec(**{**fields, **overrides})


def test_a_matching_sae_is_compatible_at_its_trained_site() -> None:
    result = check_compatibility(spec(), None, SMOL, available_bytes=PLENTY)
    assert result.compatible and not result.warnings
    assert result.site == HookSite(9, "resid_post")
    assert result.module_name == "model.layers.9"
    assert result.sae_bytes == sae_memory_bytes(spec()) == (2 * 576 * 2304 + 2 * 2304 + 576) * 4


def test_width_mismatch_is_incompatible() -> None:
    result = check_compatibility(spec(d_in=768), None, SMOL, available_bytes=PLENTY)
    assert not result.compatible
    [issue] = result.errors
    assert issue.reason == "INCOMPATIBLE_SAE"
    assert issue.error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "width 768" in issue.message and "hidden size at blocks.9.hook_resid_post is 576" in (
        issue.message
    )
    with pytest.raises(IncompatibleSaeError):
        result.raise_first_error()


def test_layer_out_of_range_names_the_valid_layers() -> None:
    result = check_compatibility(spec(), HookSite(50, "resid_post"), SMOL, available_bytes=PLENTY)
    [issue] = result.errors
    assert issue.message == "Layer 50 does not exist. Model has 30 layers (0-29)."
    assert issue.error.code is grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(LayerOutOfRangeError):
        result.raise_first_error()


def test_warnings_do_not_stop_an_attach() -> None:
    result = check_compatibility(
        spec(model_name="gpt2-small"), HookSite(3, "resid_pre"), SMOL, available_bytes=PLENTY
    )
    assert result.compatible
    messages = [w.message for w in result.warnings]
    assert any(
        "trained at blocks.9.hook_resid_post, not at blocks.3.hook_resid_pre" in m for m in messages
    )
    assert any("trained on 'gpt2-small'" in m for m in messages)


def test_model_names_match_loosely() -> None:
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct", "SmolLM2_135M"):
        assert not check_compatibility(
            spec(model_name=name), None, SMOL, available_bytes=PLENTY
        ).warnings


def test_no_hook_and_no_site_asks_for_one() -> None:
    result = check_compatibility(
        spec(hook_name=None, layer=None), None, SMOL, available_bytes=PLENTY
    )
    assert [e.reason for e in result.errors] == ["INVALID_ARGUMENT"]
    assert "pass hook_name" in result.errors[0].message


def test_unsupported_trained_site_is_an_error() -> None:
    result = check_compatibility(
        spec(hook_name="blocks.9.hook_mlp_out"), None, SMOL, available_bytes=PLENTY
    )
    assert [e.reason for e in result.errors] == ["UNSUPPORTED"]


def test_not_enough_memory() -> None:
    result = check_compatibility(spec(), None, SMOL, available_bytes=1000)
    [issue] = result.errors
    assert issue.reason == "OUT_OF_MEMORY"
    assert issue.error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "allow_overcommit" in issue.message


def test_overcommit_turns_the_memory_error_into_a_warning() -> None:
    result = check_compatibility(spec(), None, SMOL, available_bytes=1000, allow_overcommit=True)
    assert result.compatible
    [warning] = [w for w in result.warnings if w.reason == "OUT_OF_MEMORY"]
    assert "Attaching anyway" in warning.message


def test_half_precision_needs_half_the_bytes() -> None:
    full = check_compatibility(spec(), None, SMOL, available_bytes=PLENTY)
    half = check_compatibility(spec(), None, SMOL, available_bytes=PLENTY, bytes_per_value=2)
    assert half.sae_bytes * 2 == full.sae_bytes
