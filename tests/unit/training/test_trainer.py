"""The training loop on synthetic activations: every architecture learns, the
reported numbers are what their definitions say, and a stopped run resumes exactly."""

from __future__ import annotations

import pytest
import torch

from inference_service.training.config import ModelFacts, TrainingConfig, resolve, with_defaults
from inference_service.training.trainer import StopRequested, TrainerHooks, learning_rate
from tests.unit.training.synthetic import D_IN, MemorySource, make_trainer, sparse_mixture

ROWS = 16 * 300
TRAIN = sparse_mixture(ROWS, seed=1)
HELD_OUT = sparse_mixture(1024, seed=2)
# A transcoder's target: a fixed non-linear map of its input, like an MLP.
_MLP = torch.randn(D_IN, D_IN, generator=torch.Generator().manual_seed(3)) / D_IN**0.5


def mlp(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ _MLP)


def config(**changes) -> TrainingConfig:
    values = dict(
        hook_name="blocks.1.hook_resid_post",
        corpus_id="synthetic",
        d_sae=128,
        k=4,
        batch_size_tokens=256,
        learning_rate=3e-3,
        l1_coefficient=0.3,
        l0_coefficient=0.02,
        checkpoint_every_steps=1000,
    )
    values.update(changes)
    return resolve(with_defaults(values), ModelFacts(D_IN, D_IN, 4096))


def train(cfg: TrainingConfig, steps: int, tmp_path, *, transcoder: bool = False, hooks=None):
    source = MemorySource(TRAIN, mlp(TRAIN) if transcoder else None)
    eval_rows = (HELD_OUT, mlp(HELD_OUT) if transcoder else HELD_OUT)
    trainer = make_trainer(cfg, source, eval_rows, steps, tmp_path)
    metrics: list[dict] = []
    hooks = hooks or TrainerHooks()
    hooks.on_metrics = metrics.extend
    outcome = trainer.run(hooks)
    return trainer, outcome, metrics


CASES = {
    "standard": dict(architecture="standard"),
    "jumprelu": dict(architecture="jumprelu"),
    "topk": dict(architecture="topk"),
    "batchtopk": dict(architecture="batchtopk"),
    "transcoder": dict(architecture="standard", hook_name_out="blocks.1.hook_mlp_out"),
    "skip-transcoder": dict(
        architecture="jumprelu", hook_name_out="blocks.1.hook_mlp_out", skip=True
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_architecture_learns(case, tmp_path):
    cfg = config(**CASES[case])
    _, outcome, metrics = train(cfg, 80, tmp_path, transcoder=cfg.is_transcoder)
    steps = [m for m in metrics if not m["eval"]]
    assert len(steps) == 80
    first = sum(m["loss"] for m in steps[:5]) / 5
    last = sum(m["loss"] for m in steps[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert outcome.final_eval is not None
    assert outcome.final_eval["fvu"] < 0.92 * steps[0]["fvu"], (steps[0]["fvu"], outcome.final_eval)


@pytest.mark.parametrize("case", ["topk", "batchtopk", "jumprelu", "skip-transcoder"])
def test_reported_fvu_and_l0_match_a_direct_computation(case, tmp_path):
    cfg = config(**CASES[case])
    trainer, outcome, _ = train(cfg, 30, tmp_path, transcoder=cfg.is_transcoder)
    x = HELD_OUT
    y = mlp(x) if cfg.is_transcoder else x
    with torch.no_grad():
        f = trainer.sae.encode(x)
        y_hat = trainer.sae.decode(f, x)
    residual = ((y - y_hat) ** 2).sum().item()
    variance = ((y - y.mean(dim=0)) ** 2).sum().item()
    assert outcome.final_eval["fvu"] == pytest.approx(residual / variance, rel=1e-5)
    assert outcome.final_eval["l0"] == pytest.approx((f != 0).float().sum(dim=1).mean().item())
    if case == "topk":
        assert outcome.final_eval["l0"] <= cfg.k


def test_training_metrics_are_those_of_the_step_batch(tmp_path):
    """A step's FVU and L0 are those of its own batch, recomputed here from the
    weights the step used (captured before the update)."""
    cfg = config(architecture="topk")
    trainer = make_trainer(cfg, MemorySource(TRAIN), (HELD_OUT, HELD_OUT), 3, tmp_path)
    seen: list[tuple] = []
    original = trainer.sae.forward_batch

    def spy(x, y, **kwargs):
        out = original(x, y, **kwargs)
        seen.append((y.clone(), out.y_hat.detach().clone(), out.f.detach().clone()))
        return out

    trainer.sae.forward_batch = spy
    metrics: list[dict] = []
    trainer.run(TrainerHooks(on_metrics=metrics.extend))
    y, y_hat, f = seen[-1]
    last = [m for m in metrics if not m["eval"]][-1]
    direct_fvu = ((y - y_hat) ** 2).sum() / ((y - y.mean(dim=0)) ** 2).sum()
    assert last["fvu"] == pytest.approx(direct_fvu.item(), rel=1e-5)
    assert last["l0"] == pytest.approx((f > 0).sum(dim=1).float().mean().item())
    assert last["mse"] == pytest.approx(((y - y_hat) ** 2).sum(dim=1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("case", ["topk", "jumprelu", "batchtopk", "standard"])
def test_stop_then_resume_ends_with_the_weights_of_an_uninterrupted_run(case, tmp_path):
    cfg = config(
        **CASES[case],
        checkpoint_every_steps=7,
        dead_feature_window=5,
        resample_dead=True,
        warmup_steps=4,
        decay_steps=6,
        normalize_activations="constant_norm",
    )
    steps = 40
    whole, _, _ = train(cfg, steps, tmp_path / "whole")

    stop_at = 17  # not a checkpoint step: the stop itself writes one
    interrupted = make_trainer(
        cfg, MemorySource(TRAIN), (HELD_OUT, HELD_OUT), steps, tmp_path / "b"
    )
    first = interrupted.run(TrainerHooks(should_stop=lambda: interrupted.step >= stop_at))
    assert first.stopped and first.step == stop_at

    resumed = make_trainer(cfg, MemorySource(TRAIN), (HELD_OUT, HELD_OUT), steps, tmp_path / "b")
    assert resumed.resume_from_latest() and resumed.step == stop_at
    outcome = resumed.run(TrainerHooks())
    assert not outcome.stopped and outcome.step == steps
    expected = whole.sae.state_dict()
    for name, tensor in resumed.sae.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


class StoppingSource(MemorySource):
    """Raises StopRequested on its `stop_on`-th harvest, as the manager's harvest does
    when a stop arrives mid-chunk."""

    def __init__(self, x, stop_on: int) -> None:
        super().__init__(x)
        self.stop_on = stop_on

    def rows(self, windows):
        if self.calls + 1 == self.stop_on:
            self.calls += 1
            raise StopRequested
        return super().rows(windows)


def test_a_stop_mid_harvest_ends_at_the_step_reached_and_resumes_exactly(tmp_path):
    # 384-row batches straddle the 1,024-row chunks: the stop lands mid-batch.
    cfg = config(architecture="topk", checkpoint_every_steps=1000, batch_size_tokens=384)
    steps = 20
    whole, _, _ = train(cfg, steps, tmp_path / "whole")
    source = StoppingSource(TRAIN, stop_on=2)  # the second chunk's harvest
    interrupted = make_trainer(cfg, source, (HELD_OUT, HELD_OUT), steps, tmp_path / "b")
    first = interrupted.run(TrainerHooks())
    assert first.stopped and 0 < first.step < steps
    resumed = make_trainer(cfg, MemorySource(TRAIN), (HELD_OUT, HELD_OUT), steps, tmp_path / "b")
    assert resumed.resume_from_latest() and resumed.step == first.step
    assert not resumed.run(TrainerHooks()).stopped
    expected = whole.sae.state_dict()
    for name, tensor in resumed.sae.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_torn_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    cfg = config(architecture="topk", checkpoint_every_steps=5)
    train(cfg, 12, tmp_path)
    checkpoints = sorted(tmp_path.glob("step_*.pt"))
    assert [p.name for p in checkpoints] == ["step_000000005.pt", "step_000000010.pt"]
    checkpoints[-1].write_bytes(b"torn")
    again = make_trainer(cfg, MemorySource(TRAIN), (HELD_OUT, HELD_OUT), 12, tmp_path)
    assert again.resume_from_latest() and again.step == 5


def test_dead_features_are_counted_and_resampled(tmp_path):
    # Far more features than the data needs, a short window: many die, then come back.
    cfg = config(architecture="topk", d_sae=512, k=2, dead_feature_window=10, aux_k_coefficient=-1)
    _, _, plain = train(cfg, 40, tmp_path / "plain")
    dead_plain = [m["dead_features"] for m in plain if not m["eval"]]
    assert dead_plain[-1] > 0
    resampled_cfg = config(
        architecture="topk",
        d_sae=512,
        k=2,
        dead_feature_window=10,
        aux_k_coefficient=-1,
        resample_dead=True,
    )
    _, _, resampled = train(resampled_cfg, 40, tmp_path / "resampled")
    at_resample = [m["dead_features"] for m in resampled if not m["eval"] and m["step"] == 10]
    assert at_resample == [0]  # every dead feature was re-initialised at step 10


def test_learning_rate_warms_up_and_decays():
    cfg = config(warmup_steps=4, decay_steps=4, learning_rate=1.0)
    rates = [learning_rate(cfg, step, 12) for step in range(12)]
    assert rates[:4] == [0.25, 0.5, 0.75, 1.0]
    assert rates[4:8] == [1.0] * 4
    assert rates[8:] == [1.0, 0.75, 0.5, 0.25]
