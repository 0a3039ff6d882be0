"""Per-row steering additions are built once per batch composition."""

from __future__ import annotations

import pytest
import torch

from inference_service.engine import row_edits
from inference_service.engine.row_edits import RowEdit, install
from inference_service.sae.attachments import SiteHook
from inference_service.sae.hook_sites import HookSite


def _pass(hook: SiteHook, edits: list[RowEdit | None], h: torch.Tensor) -> torch.Tensor:
    undo = install(edits)
    try:
        assert hook.edit is not None
        out = hook.edit(h)
    finally:
        undo()
    assert hook.edit is None
    return h if out is None else out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_steady_batch_builds_its_additions_once(dtype: torch.dtype) -> None:
    hook = SiteHook(HookSite(3, "resid_post"))
    d = 8
    a, b = torch.randn(d), torch.randn(d)
    h = torch.randn(3, 1, d, dtype=dtype)
    edits = [RowEdit(hook, add=a), None, RowEdit(hook, add=b)]
    expected = h.clone()
    expected[0] = h[0] + a.to(dtype)
    expected[2] = h[2] + b.to(dtype)

    built = row_edits.adds_built
    for _ in range(5):  # five decode steps, same rows, same steering
        out = _pass(hook, [RowEdit(e.hook, add=e.add) if e else None for e in edits], h)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert row_edits.adds_built == built + 1

    # A row leaving (the batch shrinks) rebuilds, and so does new steering.
    out = _pass(hook, [RowEdit(hook, add=a), None], h[:2])
    torch.testing.assert_close(out, expected[:2], rtol=0, atol=0)
    assert row_edits.adds_built == built + 2
    c = torch.randn(d)
    out = _pass(hook, [RowEdit(hook, add=c), None], h[:2])
    torch.testing.assert_close(out[0], h[0] + c.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(out[1], h[1], rtol=0, atol=0)
    assert row_edits.adds_built == built + 3
    # Same vector object, other row: rebuilt too.
    out = _pass(hook, [None, RowEdit(hook, add=c)], h[:2])
    torch.testing.assert_close(out[0], h[0], rtol=0, atol=0)
    assert row_edits.adds_built == built + 4
