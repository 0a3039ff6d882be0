"""Feature statistics throughput: a random TopK SAE of 16,384 features at layer 9 of the
built-in model, over the model's own kind of text, through the real code path
(FeatureManager's reading and accumulator on the engine's lane).

    PYTHONPATH=.:gen/python .venv/bin/python bench/feature_stats.py [--tokens 8192]

Prints tokens/s for the whole path (model forward to the site, encode, accumulate),
the accumulator's share, and the peak RSS of the process; then the latency of the two
searches on the same SAE (median of 5): features firing on one ~100-token text, and a
contrast of 16 texts with their upper-case copies (groups of 8 a pass, as the service
reads them). Both are the domain path without gRPC or HTTP in front.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from inference_service.config import InferenceSettings
from inference_service.engine.engine import Engine
from inference_service.engine.loader import load_model
from inference_service.features.reading import SaeReader, corpus_windows
from inference_service.features.search import ContrastMeasure, contrast, text_hits
from inference_service.features.statistics import StatisticsAccumulator
from inference_service.training.self_corpus import prompt_pool
from inference_service.training.sites import capture_site
from tests.fixtures.saes import random_sae

D_SAE = 16_384
HOOK = "blocks.9.hook_resid_post"


def _documents(n: int) -> list[str]:
    # Prompt text repeated in varied order: the throughput does not depend on the words.
    pool = prompt_pool()
    return [" ".join(pool[i % len(pool) : i % len(pool) + 40]) for i in range(n)]


def _median_ms(work: Callable[[], object], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _activations(reader: SaeReader, rows: list[list[int]]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for start in range(0, len(rows), 8):
        group = rows[start : start + 8]
        width = max(len(r) for r in group)
        acts = reader.activations(torch.tensor([r + [r[-1]] * (width - len(r)) for r in group]))
        out.extend(acts[i, : len(r)] for i, r in enumerate(group))
    return out


def search_latency(reader: SaeReader, tokenizer: Any) -> None:
    pool = prompt_pool()
    text_ids = tokenizer(" ".join(pool[:12]))["input_ids"][:100]
    texts = [" ".join(pool[i : i + 3]) for i in range(0, 48, 3)]
    lower = [tokenizer(t)["input_ids"] for t in texts]
    upper = [tokenizer(t.upper())["input_ids"] for t in texts]

    def by_text() -> None:
        text_hits(reader.activations(torch.tensor([text_ids]))[0], 20)

    def by_contrast() -> None:
        contrast(
            _activations(reader, upper), _activations(reader, lower), ContrastMeasure.AUROC, 20
        )

    tokens = sum(len(r) for r in lower) + sum(len(r) for r in upper)
    print(f"search by text ({len(text_ids)} tokens): {_median_ms(by_text):.0f} ms")
    print(f"contrast (16 + 16 texts, {tokens} tokens): {_median_ms(by_contrast):.0f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--data-dir", type=Path, default=Path(".cache/millm"))
    args = parser.parse_args()
    settings = InferenceSettings(data_dir=args.data_dir)
    engine = Engine(load_model(settings), settings)
    model = engine.loaded_model.model
    sae = random_sae(d_sae=D_SAE, architecture="topk", k=64, hook_name=HOOK)
    reader = SaeReader(engine, capture_site(model, HOOK, "hook"), sae)
    accumulator = StatisticsAccumulator(D_SAE, top_k=10, radius=8)
    tokenizer = engine.loaded_model.tokenizer
    batches = list(corpus_windows(iter(_documents(400)), tokenizer, args.tokens))
    reader_s = accumulate_s = 0.0

    def run() -> None:
        nonlocal reader_s, accumulate_s
        for windows in batches:
            started = time.perf_counter()
            acts = reader.activations(windows)
            reader_s += time.perf_counter() - started
            started = time.perf_counter()
            accumulator.add(windows[:, 1:], acts[:, 1:])
            accumulate_s += time.perf_counter() - started

    started = time.perf_counter()
    await asyncio.to_thread(run)
    total_s = time.perf_counter() - started
    tokens = accumulator.tokens
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"threads: {torch.get_num_threads()}, SAE: topk k=64, d_sae={D_SAE}, site {HOOK}")
    print(f"tokens: {tokens} in {total_s:.1f} s -> {tokens / total_s:.0f} tokens/s")
    print(f"  model + encode: {reader_s:.1f} s, accumulate: {accumulate_s:.1f} s")
    print(f"  accumulator alone: {tokens / accumulate_s:.0f} tokens/s")
    print(f"peak RSS: {peak_mib:.0f} MiB")
    await asyncio.to_thread(search_latency, reader, tokenizer)
    engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
