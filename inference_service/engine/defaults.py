"""Per-device defaults, each decided in one place.

`dtype` "auto" (the default of `MILLM_DTYPE`) becomes bfloat16 on CUDA (half the
bytes per weight read, tensor-core matmuls, and the range of float32) and float32
on the CPU (what the CPU path has always used; a faster CPU choice belongs here).
`int8_dynamic` always runs on a float32 model, so "auto" gives float32 there
whatever the device.
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
