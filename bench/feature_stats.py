"""Feature statistics throughput: a random TopK SAE of 16,384 features at layer 9 of the
built-in model, over the model's own kind of text, through the real code path
(FeatureManager's reading and accumulator on the engine's lane).

    PYTHONPATH=.:gen/python .venv/bin/python bench/feature_stats.py [--tokens 8192]

Prints tokens/s for the whole path (model forward to the site, encode, accumulate),
the accumulator's share, and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from pathlib import Path

import torch

from inference_service.config import InferenceSettings
from inference_service.engine.engine import Engine
from inference_service.engine.loader import load_model
from inference_service.features.reading import SaeReader, corpus_windows
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
    engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
