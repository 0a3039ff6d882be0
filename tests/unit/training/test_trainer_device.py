"""Training runs where the model runs: the SAE, Adam's state and the batches live on
the suite's device (MILLM_TEST_DEVICE), whether the activation chunk is kept on the
device or in (pinned) host memory."""

from __future__ import annotations

import pytest
import torch

from inference_service.training.activations import store_device
from inference_service.training.trainer import TrainerHooks
from tests.unit.training.synthetic import MemorySource, make_trainer, sparse_mixture
from tests.unit.training.test_trainer import HELD_OUT, TRAIN, config


def _on(tensor: torch.Tensor, device: str) -> bool:
    return tensor.device.type == device


@pytest.mark.parametrize("store", ["device", "host"])
def test_sae_optimizer_and_batches_live_on_the_device(test_device, store, tmp_path):
    cfg = config(architecture="topk", checkpoint_every_steps=4)
    trainer = make_trainer(
        cfg,
        MemorySource(TRAIN),
        (HELD_OUT, HELD_OUT),
        6,
        tmp_path,
        device=test_device,
        store=test_device if store == "device" else "cpu",
    )
    seen: list[torch.Tensor] = []
    original = trainer.sae.forward_batch

    def spy(x, y, **kwargs):
        seen.append(x)
        return original(x, y, **kwargs)

    trainer.sae.forward_batch = spy
    outcome = trainer.run(TrainerHooks())
    assert outcome.step == 6 and outcome.final_eval is not None
    assert seen and all(_on(x, test_device) for x in seen)
    assert all(_on(p, test_device) for p in trainer.sae.parameters())
    state = trainer._optimizer.state
    assert len(state) == len(list(trainer.sae.parameters()))
    for moments in state.values():
        assert _on(moments["exp_avg"], test_device) and _on(moments["exp_avg_sq"], test_device)
    assert _on(trainer._since_fired, test_device)
    # A checkpoint written there loads back there.
    again = make_trainer(
        cfg, MemorySource(TRAIN), (HELD_OUT, HELD_OUT), 6, tmp_path, device=test_device
    )
    assert again.resume_from_latest()
    assert all(_on(p, test_device) for p in again.sae.parameters())
    assert _on(next(iter(again._optimizer.state.values()))["exp_avg"], test_device)


def test_the_chunk_stays_on_a_gpu_only_within_its_budget():
    assert store_device("cpu", 1 << 40) == torch.device("cpu")
    assert store_device("cuda", 100, budget=100) == torch.device("cuda")
    assert store_device("cuda", 101, budget=100) == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_host_chunk_is_pinned_for_asynchronous_copies(tmp_path):
    cfg = config(architecture="topk")
    trainer = make_trainer(
        cfg,
        MemorySource(sparse_mixture(16 * 64, seed=5)),
        (HELD_OUT, HELD_OUT),
        2,
        tmp_path,
        device="cuda",
        store="cpu",
    )
    x, _ = trainer._stream.next_batch()
    assert x.device.type == "cuda"
    kept, _ = trainer._stream._rows
    assert kept.device.type == "cpu" and kept.is_pinned()
