"""SAE training on the built-in model: our trainer against sae-lens's, side by side in one run.

Activations are harvested once at a residual site (default blocks.6.hook_resid_post),
position 0 of each 128-token window dropped, rows shuffled with a fixed seed and split
into training and held-out rows. Both trainers then train a TopK SAE (same width, k,
learning rate, batch and token budget, no normalisation) on exactly the same training
rows from exactly the same weights: ours through `Trainer` over an in-memory
ActivationSource, sae-lens through its own `SAETrainer` (bench/saelens_reference.py)
with its recommended (default) settings, starting from our Trainer's initial weights
(unit-norm decoder rows, W_enc = W_dec.T, b_dec at the data mean), so that the
comparison shows the training loops and not their initialisations. The default budget,
256 steps of 1,024 tokens, is one where both converge. Only the training loop is timed;
tokens/s is the budget over that time. Both are scored on the same held-out rows: FVU
and L0 as defined in inference_service/training/metrics.py. Repetitions rotate the order.

The corpus is written by the model itself (inference_service.training.self_corpus; the
fixture corpus with --synthetic) and cached with the activations under <data dir>/bench/.

Run: make bench-training   (or .venv/bin/python bench/training.py --help for the options:
budget --tokens, --layer, --d-sae, --k, --batch, --lr, --held-out, --repeats, corpus size)
"""

# ruff: noqa: E402  (the environment and sys.path are set before the imports they affect)
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # sae-lens's progress bar would flood the output

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from saelens_reference import SaeLensResult, evaluate, train_saelens_topk

from inference_service.config import InferenceSettings
from inference_service.engine.loader import load_model
from inference_service.training.activations import BatchStream, Cursor
from inference_service.training.config import ModelFacts, TrainingConfig, resolve
from inference_service.training.corpus import read_documents, tokenize_windows
from inference_service.training.metrics import fraction_of_variance_unexplained
from inference_service.training.sites import capture, capture_site
from inference_service.training.trainer import Trainer, TrainerHooks

CONTEXT = 128
HARVEST_WINDOWS = 8  # windows per forward pass, the trainer's default slice


def corpus(loaded: Any, folder: Path, prompts: int, seed: int, synthetic: bool) -> tuple[Path, str]:
    """A cached JSONL corpus: model-written when self_corpus imports, else the synthetic one."""
    why = "asked for"
    try:
        from inference_service.training import self_corpus
    except ImportError as exc:
        synthetic, why = True, f"self_corpus not importable: {exc}"
    if synthetic:
        from tests.fixtures.corpus import write_jsonl

        path = folder / f"synthetic_corpus_{prompts * 4}_{seed}.jsonl"
        if not path.exists():
            write_jsonl(path, count=prompts * 4, seed=seed)
        return path, f"synthetic (tests/fixtures/corpus.py, {prompts * 4} documents; {why})"
    path = folder / f"self_corpus_{prompts}x128_{seed}.jsonl"
    if not path.exists():
        print(f"writing a corpus: {prompts} prompts answered by the model ...", flush=True)
        docs = self_corpus.generate_corpus(
            loaded.model,
            loaded.tokenizer,
            n_prompts=prompts,
            max_new_tokens=128,
            batch_size=self_corpus.DEFAULT_BATCH_SIZE,
            seed=seed,
            upper_fraction=0.25,
            progress=lambda done, total: print(f"  {done}/{total} prompts", flush=True),
        )
        self_corpus.write_jsonl(docs, path)
    return path, "model-written (inference_service.training.self_corpus)"


def harvest(loaded: Any, path: Path, hook: str, folder: Path, seed: int) -> Tensor:
    """Every window's activations at `hook`, position 0 dropped: [rows, d_model], cached."""
    split = tokenize_windows(
        read_documents([path], "text"),
        loaded.tokenizer,
        context_size=CONTEXT,
        prepend_bos=False,
        eval_fraction=0.01,
        seed=seed,
    )
    windows = torch.cat([split.train, split.eval])  # the split is redone on rows below
    key = hashlib.sha256(f"{loaded.description.id}|{hook}|{split.fingerprint}".encode())
    cached = folder / f"activations_{key.hexdigest()[:16]}.pt"
    if cached.exists():
        print(f"activations from {cached}")
        return torch.load(cached, weights_only=True)
    site = [capture_site(loaded.model, hook, "hook")]
    parts = []
    started = time.perf_counter()
    for start in range(0, len(windows), HARVEST_WINDOWS):
        (acts,) = capture(loaded.model, site, windows[start : start + HARVEST_WINDOWS])
        parts.append(acts[:, 1:].reshape(-1, acts.shape[-1]))
    rows, seconds = torch.cat(parts), time.perf_counter() - started
    print(f"harvested {len(windows)} windows in {seconds:.1f} s ({rows.shape[0] / seconds:.0f}/s)")
    torch.save(rows, cached)
    return rows


class RowSource:
    """Each training row is a one-row "window", so BatchStream shuffles rows directly."""

    def __init__(self, rows: Tensor) -> None:
        self._rows = rows

    def rows(self, windows: Tensor) -> tuple[Tensor, Tensor]:
        x = self._rows[windows]
        return x, x


def our_trainer(
    train: Tensor, held: Tensor, args: argparse.Namespace, checkpoints: Path
) -> Trainer:
    """Our Trainer for the benchmark's run, before its first step."""
    d_in, steps = train.shape[1], args.tokens // args.batch
    config = TrainingConfig(
        corpus_path="in-memory",
        hook_name=args.hook,
        architecture="topk",
        d_sae=args.d_sae,
        k=args.k,
        learning_rate=args.lr,
        batch_size_tokens=args.batch,
        total_tokens=args.tokens,
        normalize_activations="none",
        checkpoint_every_steps=1 << 30,
        seed=args.seed,
    )
    config = resolve(config, ModelFacts(d_in=d_in, d_out=d_in, max_context=CONTEXT))
    stream = BatchStream(
        RowSource(train),
        train.shape[0],
        batch_size=args.batch,
        chunk_windows=16 * args.batch,  # the service's shuffling chunk: 16 batches
        seed=args.seed,
        start=Cursor(),
    )
    # b_dec starts at the eval rows' mean (the service passes its held-out windows);
    # training rows here, so nothing held out reaches either trainer.
    start_rows = train[: held.shape[0]]
    return Trainer(
        config,
        d_in=d_in,
        d_out=d_in,
        stream=stream,
        eval_rows=(start_rows, start_rows),
        steps=steps,
        checkpoint_dir=checkpoints,
    )


def start_weights(train: Tensor, held: Tensor, args: argparse.Namespace) -> dict[str, Tensor]:
    """The weights our Trainer starts from, for sae-lens to start from too."""
    with tempfile.TemporaryDirectory() as checkpoints:
        sae = our_trainer(train, held, args, Path(checkpoints)).sae
        return {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}


def run_ours(train: Tensor, held: Tensor, args: argparse.Namespace) -> tuple[float, float, float]:
    """(seconds of the training loop, held-out FVU, L0) for our Trainer."""
    steps = args.tokens // args.batch
    last_step_at = [0.0]

    def on_metrics(metrics: list[dict[str, Any]]) -> None:
        if any(not m["eval"] and m["step"] == steps for m in metrics):
            last_step_at[0] = time.perf_counter()  # the final held-out eval is not timed

    with tempfile.TemporaryDirectory() as checkpoints:
        trainer = our_trainer(train, held, args, Path(checkpoints))
        products = "sparse" if trainer.sae.sparse_products else "dense"
        print(f"  ours trains through {products} products")
        started = time.perf_counter()
        trainer.run(TrainerHooks(on_metrics=on_metrics))
    sae = trainer.sae
    fvu, l0 = score(sae.encode, sae.decode, held)
    # The same SAE through sae-lens's scoring: the two definitions must agree.
    weights = {n: getattr(sae, n).detach() for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
    check = evaluate(SaeLensResult(seconds=0.0, steps=steps, **weights), held, args.k)
    print(f"  cross-check on ours: FVU {fvu:.6f} vs {check[0]:.6f}, L0 {l0:.3f} vs {check[1]:.3f}")
    assert abs(check[0] - fvu) < 1e-4 and abs(check[1] - l0) < 1e-3, (fvu, l0, check)
    return last_step_at[0] - started, fvu, l0


def run_saelens(
    train: Tensor, held: Tensor, args: argparse.Namespace
) -> tuple[float, float, float]:
    """The same for sae-lens's SAETrainer, from our Trainer's initial weights."""
    settings = dict(d_sae=args.d_sae, k=args.k, lr=args.lr, batch_size=args.batch, seed=args.seed)
    result = train_saelens_topk(
        train, total_tokens=args.tokens, start=start_weights(train, held, args), **settings
    )
    return (result.seconds, *evaluate(result, held, args.k))


@torch.no_grad()
def score(
    encode: Callable[[Tensor], Tensor], decode: Callable[[Tensor, Tensor], Tensor], x: Tensor
) -> tuple[float, float]:
    """(FVU, L0) on held-out rows x: decode(encode(x), x) against x, for any SAE."""
    parts, active = [], 0
    for batch in x.split(4096):
        f = encode(batch)
        parts.append(decode(f, batch))
        active += int((f != 0).sum())
    return fraction_of_variance_unexplained(x, torch.cat(parts)), active / x.shape[0]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=int, default=6, help="residual after this block")
    parser.add_argument("--tokens", type=int, default=256 * 1024, help="training token budget")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-4, help="sae-lens's default")
    parser.add_argument("--held-out", type=int, default=8192, help="held-out rows")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, order rotating")
    parser.add_argument("--prompts", type=int, default=200, help="corpus size (prompts)")
    parser.add_argument("--synthetic", action="store_true", help="the fixture corpus instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "millm")
    args = parser.parse_args()
    args.hook = f"blocks.{args.layer}.hook_resid_post"
    return args


def main() -> None:
    args = parse()
    print("command:", " ".join(sys.orig_argv))
    folder = args.data_dir / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_model(InferenceSettings(data_dir=args.data_dir))
    path, kind = corpus(loaded, folder, args.prompts, args.seed, args.synthetic)
    rows = harvest(loaded, path, args.hook, folder, args.seed)
    del loaded
    rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(args.seed))]
    held, train = rows[: args.held_out], rows[args.held_out :].contiguous()
    print(f"corpus: {kind}, {path}")
    print(
        f"{args.hook}: {train.shape[0]} training rows, {held.shape[0]} held-out rows;"
        f" budget {args.tokens} tokens = {args.tokens // args.batch} steps of {args.batch}"
        f" ({args.tokens / train.shape[0]:.1f} epochs); d_sae={args.d_sae} k={args.k}"
        f" lr={args.lr} threads={torch.get_num_threads()}"
    )
    trainers = {"ours": run_ours, "sae-lens": run_saelens}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trainers}
    for rep in range(args.repeats):
        for name in list(trainers)[rep % 2 :] + list(trainers)[: rep % 2]:
            seconds, fvu, l0 = trainers[name](train, held, args)
            results[name].append((seconds, fvu, l0))
            print(f"  rep {rep + 1} {name:<9} {seconds:7.1f} s  FVU {fvu:.4f}  L0 {l0:.2f}")

    print(f"\n{'trainer':<9} {'seconds':>8} {'tokens/s':>9} {'held-out FVU':>13} {'L0':>6}")
    medians = {}
    for name, runs in results.items():
        seconds, fvu, l0 = (statistics.median(column) for column in zip(*runs, strict=True))
        medians[name] = (seconds, fvu)
        print(f"{name:<9} {seconds:8.1f} {args.tokens / seconds:9.0f} {fvu:13.4f} {l0:6.2f}")
    ours_s, ours_fvu = medians["ours"]
    ref_s, ref_fvu = medians["sae-lens"]
    print(f"ours/sae-lens: time {ours_s / ref_s:.3f}x, FVU {ours_fvu / ref_fvu:.3f}x at equal L0")


if __name__ == "__main__":
    main()
