"""Per-device defaults, each decided in one place.

`dtype` "auto" (the default of `MILLM_DTYPE`) becomes bfloat16 on CUDA (half the
bytes per weight read, tensor-core matmuls, and the range of float32) and float32
on the CPU. `int8_dynamic` always runs on a float32 model, so "auto" gives
float32 there whatever the device.

`quantization` "auto" (the default of `MILLM_QUANTIZATION`) becomes `none` on CUDA and,
on the CPU, where decode is bound by the bytes read per token, weight-only layers that
lose nothing against the loaded weights: 4-bit for each layer whose weights already
hold 4-bit values (a 4-bit GGUF, such as the built-in model), int8 for the others
(`quantization.quantize_weight_only`, README "Speed"). Before the weights are read
(validation, memory estimates) it counts as `int8_weight`, the larger of the two.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def resolve_dtype(setting: str, device: torch.device | str, quantization: str = "none") -> str:
    """The concrete dtype name for a `dtype` setting on `device`."""
    if setting != AUTO:
        return setting
    if quantization == "int8_dynamic":
        return "float32"
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def resolve_quantization(setting: str, device: torch.device | str) -> str:
    """The concrete quantization mode for a `quantization` setting on `device`."""
    if setting != AUTO:
        return setting
    return "int8_weight" if torch.device(device).type == "cpu" else "none"
