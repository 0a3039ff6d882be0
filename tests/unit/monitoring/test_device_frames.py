"""Frames come out of one copy of the top-k and selected columns, on any device, and
equal what a per-feature read of a CPU tensor gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from inference_service.monitoring.statistics import CaptureSummary
from inference_service.monitoring.types import FeatureValue, Selection, select_tokens
from tests.unit.monitoring.helpers import make_capture, sparse_activations


def _reference(acts: torch.Tensor, unedited: torch.Tensor | None, selection: Selection):
    """The frames read entry by entry from CPU tensors (the pre-device algorithm)."""
    out = []
    for row in range(acts.shape[0]):
        top = ()
        if selection.top_k:
            values, indices = torch.topk(acts[row], min(selection.top_k, acts.shape[1]))
            top = tuple(
                FeatureValue(int(i), float(v))
                for v, i in zip(values, indices, strict=True)
                if float(v) > 0.0
            )
        chosen = tuple(FeatureValue(f, float(acts[row, f])) for f in selection.features)
        before = (
            tuple(FeatureValue(f, float(unedited[row, f])) for f in selection.features)
            if unedited is not None
            else ()
        )
        out.append((top, chosen, before))
    return out


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "selection",
    [Selection(top_k=10), Selection(features=(3, 0, 41)), Selection((7, 2), top_k=64)],
)
@pytest.mark.parametrize("steered", [False, True])
def test_frames_equal_the_per_entry_reference(
    device: str, selection: Selection, steered: bool
) -> None:
    acts = sparse_activations(5, 48, seed=1)
    unedited = sparse_activations(5, 48, seed=2) if steered else None
    capture = make_capture(acts.to(device))
    if unedited is not None:
        capture = dataclasses.replace(capture, unedited_activations=unedited.to(device))
    tokens = select_tokens(capture, selection)
    expected = _reference(acts, unedited, selection)
    assert [(t.top, t.features, t.unedited_features) for t in tokens] == expected
    assert [t.position for t in tokens] == list(range(5))
    assert any(t.top for t in tokens) == bool(selection.top_k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_statistics_of_a_cuda_capture_equal_the_cpu_ones() -> None:
    acts = sparse_activations(9, 64, seed=3)
    on_cpu, on_gpu = CaptureSummary.of(acts), CaptureSummary.of(acts.cuda())
    assert on_gpu.count.device.type == "cpu"
    assert torch.equal(on_cpu.count, on_gpu.count)
    assert torch.equal(on_cpu.max, on_gpu.max) and torch.equal(on_cpu.min, on_gpu.min)
    torch.testing.assert_close(on_cpu.total, on_gpu.total)
