"""Per-device defaults, each decided in one place.

`dtype` "auto" (the default of `MILLM_DTYPE`) becomes bfloat16 on CUDA (half the
bytes per weight read, tensor-core matmuls, and the range of float32) and float32
on the CPU (the measured fastest plain CPU dtype on the development machine,
README "Speed"). `int8_dynamic` always runs on a float32 model, so "auto" gives
float32 there whatever the device.

CUDA graphs for the decode step (`MILLM_CUDA_GRAPHS`, engine/cuda_graphs.py) are on
by default on CUDA and always off on the CPU.
"""

from __future__ import annotations

import os

import torch

AUTO = "auto"


def resolve_dtype(setting: str, device: torch.device | str, quantization: str = "none") -> str:
    """The concrete dtype name for a `dtype` setting on `device`."""
    if setting != AUTO:
        return setting
    if quantization == "int8_dynamic":
        return "float32"
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def cuda_graphs_enabled(device: torch.device | str) -> bool:
    """Whether the decode step may be captured as CUDA graphs on `device`:
    `MILLM_CUDA_GRAPHS` (1/0, default 1) on CUDA, never on the CPU."""
    if torch.device(device).type != "cuda":
        return False
    setting = os.environ.get("MILLM_CUDA_GRAPHS", "1").strip().lower()
    return setting not in {"0", "false", "no", "off"}
