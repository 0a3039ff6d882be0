"""Decode speed of the engine's loop beside `model.generate` (greedy), same prompt.

Not a test (pytest does not collect it); run:
    .venv/bin/python bench/decode_loop.py \
        [float32|bfloat16] [new tokens] [repetitions]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from inference_service.config import InferenceSettings
from inference_service.engine.generation import run_generation
from inference_service.engine.loader import LoadedModel, load_model
from inference_service.engine.prompts import render_chat
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationEvent,
    GenerationRequest,
    SamplingOptions,
)

DATA_DIR = Path(__file__).resolve().parents[3] / ".cache" / "millm"


def ours(loaded: LoadedModel, prompt: list[int], tokens: int) -> tuple[list[int], float]:
    events: list[GenerationEvent] = []
    request = GenerationRequest("bench", tuple(prompt), SamplingOptions(0.0, max_tokens=tokens))
    started = time.perf_counter()
    run_generation(loaded, request, events.append, lambda: False)
    elapsed = time.perf_counter() - started
    assert isinstance(events[-1], FinishedEvent)
    return [i for e in events[:-1] for i in e.token_ids], elapsed  # type: ignore[union-attr]


def reference(loaded: LoadedModel, prompt: list[int], tokens: int) -> tuple[list[int], float]:
    input_ids = torch.tensor([prompt])
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=tokens,
        )
    return out[0, len(prompt) :].tolist(), time.perf_counter() - started


def main() -> None:
    dtype = sys.argv[1] if len(sys.argv) > 1 else "float32"
    tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    loaded = load_model(InferenceSettings(data_dir=DATA_DIR, dtype=dtype))  # type: ignore[arg-type]
    prompt = render_chat(
        loaded.tokenizer, [ChatTurn("user", "Write a long story about a dragon who cooks.")]
    )
    ours(loaded, prompt, 8), reference(loaded, prompt, 8)  # warm-up
    rates: dict[str, list[float]] = {"engine loop": [], "model.generate": []}
    for rep in range(reps):
        # Alternate the order so drift in machine load hits both alike.
        runs = [("engine loop", ours), ("model.generate", reference)]
        results = {}
        for name, fn in runs if rep % 2 == 0 else reversed(runs):
            ids, elapsed = fn(loaded, prompt, tokens)
            rates[name].append(len(ids) / elapsed)
            results[name] = ids
        assert results["engine loop"] == results["model.generate"], "outputs differ"
    print(
        f"{dtype}, {tokens} new tokens, prompt {len(prompt)} tokens, {reps} runs, "
        f"{torch.get_num_threads()} threads (tokens/s incl. prefill, median [min-max]):"
    )
    for name, values in rates.items():
        print(
            f"  {name:15s} {statistics.median(values):6.1f}  [{min(values):.1f}-{max(values):.1f}]"
        )


if __name__ == "__main__":
    main()
