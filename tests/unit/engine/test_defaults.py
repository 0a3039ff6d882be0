"""Per-device defaults: dtype "auto"."""

from __future__ import annotations

import pytest
import torch

from inference_service.config import InferenceSettings
from inference_service.engine.defaults import resolve_dtype
from inference_service.engine.quantization import LoadOptions


def test_auto_dtype_is_bfloat16_on_cuda_and_float32_on_cpu() -> None:
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"
    assert resolve_dtype("auto", "cuda", "int8_dynamic") == "float32"
    assert resolve_dtype("float16", "cpu") == "float16"  # an explicit choice stays


def test_settings_default_to_auto_and_options_hold_a_concrete_dtype(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MILLM_DTYPE", raising=False)  # the suite sets float32
    settings = InferenceSettings(device="cpu")
    assert settings.dtype == "auto"
    options = LoadOptions.from_settings(settings)
    assert options.dtype == "float32"
    assert options.torch_dtype is torch.float32
    assert LoadOptions.from_settings(settings, dtype="bfloat16").dtype == "bfloat16"
