"""The row-batched linear layout computes what nn.Linear computes, for every row count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from inference_service.engine.cpu_linear import use_row_batched_linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (4, 2), (3, 40), (1, 33), (2, 1)])
def test_same_product_as_the_stock_layer(bias: bool, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    stock = nn.Linear(24, 40, bias=bias)
    fast = nn.Linear(24, 40, bias=bias)
    fast.load_state_dict(stock.state_dict())
    holder = nn.Sequential(fast)
    assert use_row_batched_linear(holder) == 1
    x = torch.randn(*shape, 24)
    out = fast(x)
    assert out.shape == (*shape, 40) and out.is_contiguous()
    torch.testing.assert_close(out, stock(x), rtol=1e-5, atol=1e-5)


def test_the_loaded_model_uses_it(loaded) -> None:
    layers = [m for m in loaded.model.modules() if type(m) is nn.Linear]
    assert layers and all("forward" in vars(m) for m in layers)  # the loader switched them
    assert use_row_batched_linear(nn.Sequential(nn.Embedding(3, 2))) == 0
