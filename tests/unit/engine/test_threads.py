"""Big kernels get every core; the thread count comes back after them."""

from __future__ import annotations

import pytest
import torch

from inference_service.engine.threads import all_cores, usable_cores


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_core_inside_and_the_setting_back_after(one_thread) -> None:
    with all_cores():
        inside = torch.get_num_threads()
    assert inside == usable_cores()
    assert torch.get_num_threads() == 1


def test_the_setting_comes_back_when_the_pass_fails(one_thread) -> None:
    with pytest.raises(RuntimeError), all_cores():
        raise RuntimeError("a pass that failed")
    assert torch.get_num_threads() == 1
