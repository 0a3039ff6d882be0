"""The training loop: steps, metrics, dead features, checkpoints, exact resume.

Everything that decides the next step lives in the checkpoint: parameters, Adam's
moments, the data cursor, the dead-feature counters, the activation scale and
BatchTopK's threshold. Data order and initialisation come from the seed alone,
so resuming from a checkpoint replays exactly the steps an uninterrupted run
would take (on the same machine, with the same thread count).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inference_service.training.activations import BatchStream, Cursor
from inference_service.training.config import TrainingConfig
from inference_service.training.metrics import FeatureStatistics, reconstruction
from inference_service.training.trainable import TrainableSae

log = logging.getLogger(__name__)

_CHECKPOINTS_KEPT = 2
_GRAD_CLIP_NORM = 1.0
_EVAL_BATCH_ROWS = 4096
# A resampled feature's encoder norm, relative to the mean of the live ones
# (Anthropic's "Towards Monosemanticity" recipe).
_RESAMPLE_ENCODER_SCALE = 0.2

Metrics = dict[str, Any]


class StopRequested(Exception):
    """Raised by a data source that was told to stop while it harvested: the run
    stops at the step boundary it had reached, without waiting for the chunk."""


@dataclass
class TrainerHooks:
    """How the loop talks to whoever runs it (the manager, or a test)."""

    should_stop: Callable[[], bool] = lambda: False
    wait_for_turn: Callable[[], None] = lambda: None  # blocks while inference has priority
    on_metrics: Callable[[list[Metrics]], None] = lambda metrics: None
    on_checkpoint: Callable[[int], None] = lambda step: None


@dataclass
class TrainingOutcome:
    stopped: bool
    step: int
    sae: TrainableSae
    scale_in: float
    scale_out: float
    final_eval: Metrics | None = None
    statistics: FeatureStatistics | None = None


def total_steps(config: TrainingConfig, train_rows: int) -> int:
    tokens = config.total_tokens or train_rows
    return tokens // config.batch_size_tokens


def learning_rate(config: TrainingConfig, step: int, steps: int) -> float:
    """Linear warm-up from 0, constant, then linear decay to 0 over the last steps."""
    factor = 1.0
    if config.warmup_steps:
        factor = min(factor, (step + 1) / config.warmup_steps)
    if config.decay_steps and step >= steps - config.decay_steps:
        factor = min(factor, (steps - step) / config.decay_steps)
    return config.learning_rate * factor


class Trainer:
    def __init__(
        self,
        config: TrainingConfig,
        *,
        d_in: int,
        d_out: int,
        stream: BatchStream,
        eval_rows: tuple[Tensor, Tensor],
        steps: int,
        checkpoint_dir: Path,
        device: torch.device | str = "cpu",
    ) -> None:
        """Trains on `device`: the SAE, Adam's moments, the dead-feature counters and
        the held-out rows live there (batches arrive there from `stream`)."""
        self.config = config
        self.steps = steps
        self.device = torch.device(device)
        self._stream = stream
        eval_x, eval_y = eval_rows
        self._eval_x = eval_x.to(self.device)
        self._eval_y = self._eval_x if eval_y is eval_x else eval_y.to(self.device)
        self._dir = checkpoint_dir
        # Initialised on the CPU from the seed (the same weights on every device),
        # then moved; the optimizer is made after the move, so its state is there too.
        sae = TrainableSae(config, d_in, d_out, torch.Generator().manual_seed(config.seed))
        self.sae = sae.to(self.device)
        self._optimizer = torch.optim.Adam(self.sae.parameters(), lr=config.learning_rate)
        self._since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=self.device)
        self.step = 0
        self.scale_in = self.scale_out = 1.0
        self._start_fresh()

    # ---- state ------------------------------------------------------------------------

    def _start_fresh(self) -> None:
        if self.config.normalize_activations == "constant_norm":
            # Mean input norm sqrt(d), measured on the held-out rows before any step.
            self.scale_in = _constant_norm_scale(self._eval_x)
            self.scale_out = (
                _constant_norm_scale(self._eval_y)
                if self._eval_y is not self._eval_x
                else self.scale_in
            )
        self._stream.set_scales(self.scale_in, self.scale_out)
        with torch.no_grad():  # the decoder bias starts at the target's mean
            self.sae.b_dec.copy_(self._eval_y.mean(dim=0) * self.scale_out)

    def resume_from_latest(self) -> bool:
        """Loads the newest readable checkpoint; False when there is none."""
        for path in sorted(self._dir.glob("step_*.pt"), reverse=True):
            try:
                state = torch.load(path, weights_only=True, map_location=self.device)
            except Exception:  # a torn file; atomic writes make this rare
                log.warning("skipping unreadable checkpoint %s", path.name)
                continue
            self.sae.load_state_dict(state["sae"])
            self._optimizer.load_state_dict(state["optimizer"])
            self._since_fired = state["since_fired"].to(self.device)
            self.step = int(state["step"])
            self.scale_in, self.scale_out = float(state["scale_in"]), float(state["scale_out"])
            self._stream.set_scales(self.scale_in, self.scale_out)
            self._stream.seek(Cursor(*[int(v) for v in state["cursor"]]))
            return True
        return False

    def checkpoint(self) -> int:
        self._dir.mkdir(parents=True, exist_ok=True)
        cursor = self._stream.cursor
        state = {
            "sae": self.sae.state_dict(),
            "optimizer": self._optimizer.state_dict(),
            "since_fired": self._since_fired,
            "step": self.step,
            "scale_in": self.scale_in,
            "scale_out": self.scale_out,
            "cursor": [cursor.epoch, cursor.chunk, cursor.offset],
        }
        path = self._dir / f"step_{self.step:09d}.pt"
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, path)  # a crash mid-write leaves the previous checkpoint intact
        for old in sorted(self._dir.glob("step_*.pt"))[:-_CHECKPOINTS_KEPT]:
            old.unlink(missing_ok=True)
        return self.step

    # ---- the loop ------------------------------------------------------------------------

    def run(self, hooks: TrainerHooks) -> TrainingOutcome:
        config = self.config
        while self.step < self.steps:
            hooks.wait_for_turn()
            if hooks.should_stop():
                hooks.on_checkpoint(self.checkpoint())
                return self._outcome(stopped=True)
            started = time.perf_counter()
            try:
                metrics = self._train_step()
            except StopRequested:
                hooks.on_checkpoint(self.checkpoint())
                return self._outcome(stopped=True)
            ended = time.perf_counter()
            # Throughput counts this step's own time (data included), not pauses.
            metrics["tokens_per_s"] = config.batch_size_tokens / max(ended - started, 1e-9)
            hooks.on_metrics([metrics])
            if self.step % config.checkpoint_every_steps == 0 and self.step < self.steps:
                hooks.on_metrics([self.evaluate()])
                hooks.on_checkpoint(self.checkpoint())
        statistics = FeatureStatistics(config.d_sae)
        final = self.evaluate(statistics)
        hooks.on_metrics([final])
        return self._outcome(stopped=False, final_eval=final, statistics=statistics)

    def _outcome(self, **kwargs: Any) -> TrainingOutcome:
        return TrainingOutcome(
            step=self.step, sae=self.sae, scale_in=self.scale_in, scale_out=self.scale_out, **kwargs
        )

    def _train_step(self) -> Metrics:
        config = self.config
        before = self._stream.cursor
        try:
            x, y = self._stream.next_batch()
        except StopRequested:
            self._stream.seek(before)  # the checkpoint must point at this step's data
            raise
        lr = learning_rate(config, self.step, self.steps)
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        sparsity_scale = (
            min(1.0, (self.step + 1) / config.sparsity_warmup_steps)
            if config.sparsity_warmup_steps
            else 1.0
        )
        dead = self._since_fired >= config.dead_feature_window
        out = self.sae.forward_batch(x, y, sparsity_scale=sparsity_scale, dead=dead)
        self._optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), _GRAD_CLIP_NORM)
        self._optimizer.step()
        if config.decoder_norm == "unit":
            self.sae.normalize_decoder()
        fired = (out.f > 0).any(dim=0)
        self._since_fired += 1
        self._since_fired[fired] = 0
        self.step += 1
        if config.resample_dead and self.step % config.dead_feature_window == 0:
            self._resample(x, y, out.y_hat.detach())
        measured = reconstruction(y, out.y_hat.detach(), out.f.detach())
        return {
            "step": self.step,
            "tokens": self.step * config.batch_size_tokens,
            "loss": out.loss.item(),
            "mse": measured.mse,
            "l0": measured.l0,
            "l1": measured.l1,
            "fvu": measured.fvu,
            "dead_features": int((self._since_fired >= config.dead_feature_window).sum()),
            "tokens_per_s": 0.0,
            "learning_rate": lr,
            "time_unix_ms": int(time.time() * 1000),
            "eval": False,
        }

    @torch.no_grad()
    def _resample(self, x: Tensor, y: Tensor, y_hat: Tensor) -> None:
        """Points each dead feature at one of the batch's worst-reconstructed inputs."""
        dead = (self._since_fired >= self.config.dead_feature_window).nonzero().flatten()
        if dead.numel() == 0:
            return
        errors = (y - y_hat).pow(2).sum(dim=-1)
        worst = errors.topk(min(dead.numel(), errors.numel())).indices
        dead = dead[: worst.numel()]
        sae = self.sae
        direction = y[worst] - y_hat[worst]
        sae.W_dec[dead] = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = torch.ones(sae.d_sae, dtype=torch.bool, device=self.device)
        alive[dead] = False
        enc_norm = (
            sae.W_enc[:, alive].norm(dim=0).mean()
            if alive.any()
            else torch.tensor(1.0, device=self.device)
        )
        inputs = x[worst] - (sae.b_dec if sae.apply_b_dec_to_input else 0)
        inputs = inputs / inputs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sae.W_enc[:, dead] = (inputs * enc_norm * _RESAMPLE_ENCODER_SCALE).T
        sae.b_enc[dead] = 0.0
        rows_of: list[tuple[Tensor, Any]] = [
            (sae.W_dec, dead),
            (sae.W_enc, (slice(None), dead)),
            (sae.b_enc, dead),
        ]
        for parameter, index in rows_of:
            state = self._optimizer.state.get(parameter, {})
            for moment in ("exp_avg", "exp_avg_sq"):
                if moment in state:
                    state[moment][index] = 0.0
        self._since_fired[dead] = 0
        log.info("resampled %d dead features at step %d", dead.numel(), self.step)

    @torch.no_grad()
    def evaluate(self, statistics: FeatureStatistics | None = None) -> Metrics:
        """Held-out metrics in the inference form (BatchTopK as its threshold);
        per-feature counts go into `statistics` when given."""
        sq_error = 0.0
        count = 0
        l0 = l1 = 0.0
        y_all = self._eval_y * self.scale_out
        variance = float((y_all - y_all.mean(dim=0)).double().pow(2).sum())
        for start in range(0, self._eval_x.shape[0], _EVAL_BATCH_ROWS):
            x = self._eval_x[start : start + _EVAL_BATCH_ROWS] * self.scale_in
            y = y_all[start : start + _EVAL_BATCH_ROWS]
            f = self.sae.encode(x)
            y_hat = self.sae.decode(f, x)
            sq_error += float((y - y_hat).double().pow(2).sum())
            l0 += float((f != 0).sum())
            l1 += float(f.sum())
            count += x.shape[0]
            if statistics is not None:
                statistics.add(f)
        metrics: Metrics = {
            "step": self.step,
            "tokens": self.step * self.config.batch_size_tokens,
            "loss": float("nan"),
            "mse": sq_error / count,
            "l0": l0 / count,
            "l1": l1 / count,
            "fvu": sq_error / variance if variance > 0 else float("nan"),
            "dead_features": int((self._since_fired >= self.config.dead_feature_window).sum()),
            "tokens_per_s": 0.0,
            "learning_rate": learning_rate(self.config, max(self.step - 1, 0), self.steps),
            "time_unix_ms": int(time.time() * 1000),
            "eval": True,
        }
        metrics["loss"] = metrics["mse"]
        return metrics


def _constant_norm_scale(rows: Tensor) -> float:
    mean_norm = float(rows.norm(dim=1).mean())
    return math.sqrt(rows.shape[1]) / mean_norm if mean_norm > 0 else 1.0
