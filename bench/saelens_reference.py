"""Reference TopK SAE run through sae-lens's own trainer, for benchmarking our trainer.

Trains `sae_lens.saes.topk_sae.TopKTrainingSAE` with `sae_lens.training.sae_trainer.SAETrainer`
on an in-memory activation tensor (no TransformerLens model, no dataset, no wandb, nothing
written to disk), then scores it with sae-lens's inference `TopKSAE`. Every setting not taken
as an argument keeps the sae-lens default, which is what it recommends for TopK: Adam(0.9,
0.999), constant LR (optional linear warm-up), grad-norm clip 1.0, b_dec subtracted from the
input, TopK-AuxK loss (coefficient 1) on features dead for more than 1000 steps, and
`rescale_acts_by_decoder_norm=True` during training. Its own initialisation (decoder rows of
norm 0.1, W_enc = W_dec.T, zero biases) is replaced by `start` when given, so that two
trainers can be compared from the same weights.

The returned weights have the decoder norms folded in exactly as sae-lens does when it saves an
inference SAE (`process_state_dict_for_saving_inference`), so W_dec rows have unit norm and
    acts = TopK_k(ReLU((x - b_dec) @ W_enc + b_enc)),  x_hat = acts @ W_dec + b_dec
reproduces the trained model (topk picks the k largest pre-activations, then ReLU).

Self-check: .venv/bin/python bench/saelens_reference.py
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

_WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")


@dataclass(frozen=True)
class SaeLensResult:
    seconds: float  # wall time of SAETrainer.fit() only
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    W_dec: torch.Tensor  # [d_sae, d_in], unit-norm rows
    b_dec: torch.Tensor  # [d_in]
    steps: int


def _batches(train: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Endless stream of consecutive `batch_size` rows, wrapping round the tensor in order."""
    n, start = train.shape[0], 0
    while True:
        end = start + batch_size
        if end <= n:
            yield train[start:end]
        else:
            yield torch.cat([train[start:], train[: end - n]])
        start = end % n


def train_saelens_topk(
    train: torch.Tensor,
    *,
    d_sae: int,
    k: int,
    lr: float,
    batch_size: int,
    total_tokens: int,
    seed: int,
    lr_warm_up_steps: int = 0,
    start: Mapping[str, torch.Tensor] | None = None,
) -> SaeLensResult:
    """Train for `total_tokens // batch_size` steps over `train` in row order (wrapping).

    `start`: W_enc, b_enc, W_dec and b_dec to begin from instead of sae-lens's own
    initialisation."""
    if train.ndim != 2 or not 0 < batch_size <= train.shape[0]:
        raise ValueError("train must be [N, d_in] with N >= batch_size > 0")
    train = train.detach().to("cpu", torch.float32).contiguous()
    steps = total_tokens // batch_size
    if steps < 1:
        raise ValueError("total_tokens must cover at least one batch")
    sae = _new_sae(train.shape[1], d_sae, k, seed)
    if start is not None:
        with torch.no_grad():
            for name in _WEIGHTS:
                getattr(sae, name).copy_(start[name])
    cfg = SAETrainerConfig(
        # fit() loops while samples < total, so a multiple of batch_size gives exactly `steps`.
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,  # the runner's default; the constant schedule ignores it
        lr_warm_up_steps=lr_warm_up_steps,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=_batches(train, batch_size))
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    if trainer.n_training_steps != steps:
        raise RuntimeError(f"sae-lens ran {trainer.n_training_steps} steps, expected {steps}")
    return _export(sae, seconds, steps)


def _new_sae(d_in: int, d_sae: int, k: int, seed: int) -> TopKTrainingSAE:
    torch.manual_seed(seed)
    return TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu")
    )


def _export(sae: TopKTrainingSAE, seconds: float, steps: int) -> SaeLensResult:
    state = {name: p.detach().clone() for name, p in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(state)  # folds decoder norms into W_enc/b_enc
    weights = {name: state[name].float().contiguous() for name in _WEIGHTS}
    return SaeLensResult(seconds=seconds, steps=steps, **weights)


def _inference_sae(result: SaeLensResult, k: int) -> TopKSAE:
    d_sae, d_in = result.W_dec.shape
    # Weights are already folded, so rescaling by (unit) decoder norms would be a no-op.
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=False)
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's RNG stream
        sae = TopKSAE(cfg)
    sae.load_state_dict({name: getattr(result, name) for name in _WEIGHTS})
    return sae.eval()


@torch.no_grad()
def evaluate(result: SaeLensResult, held_out: torch.Tensor, k: int) -> tuple[float, float]:
    """(FVU, L0) on `held_out`, via sae-lens's TopKSAE encode/decode."""
    sae = _inference_sae(result, k)
    x_all = held_out.detach().to("cpu", torch.float32)
    mean = x_all.double().mean(dim=0)
    err = var = active = 0.0
    for x in x_all.split(4096):
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        err += (x - x_hat).double().pow(2).sum().item()
        var += (x.double() - mean).pow(2).sum().item()
        active += (acts != 0).sum().item()
    return err / var, active / x_all.shape[0]


def _self_check() -> None:
    torch.manual_seed(0)
    d_in, d_sae, k = 64, 256, 8
    # Sparse combinations of random directions plus noise, so an SAE has something to learn.
    dictionary = torch.randn(512, d_in)
    codes = torch.rand(24_000, 512) * (torch.rand(24_000, 512) < 0.01)
    data = codes @ dictionary + 0.05 * torch.randn(24_000, d_in)
    train, held_out = data[:20_000], data[20_000:]
    fvu0, _ = evaluate(_export(_new_sae(d_in, d_sae, k, seed=0), 0.0, 0), held_out, k)
    result = train_saelens_topk(
        train, d_sae=d_sae, k=k, lr=1e-3, batch_size=1024, total_tokens=40_000, seed=0
    )
    fvu, l0 = evaluate(result, held_out, k)
    print(f"steps={result.steps} seconds={result.seconds:.3f} FVU={fvu:.4f} L0={l0:.2f}")
    print(f"untrained SAE (same seed): FVU={fvu0:.4f}")
    assert fvu < fvu0, (fvu, fvu0)
    assert 0 < l0 <= k


if __name__ == "__main__":
    _self_check()
