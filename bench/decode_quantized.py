"""Greedy decode speed of the engine loop per dtype / quantization mode, same prompt.

Not a test (pytest does not collect it); run:
    PYTHONPATH=.:gen/python .venv/bin/python bench/decode_quantized.py [new tokens] [repetitions]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from inference_service.config import InferenceSettings
from inference_service.engine.generation import run_generation
from inference_service.engine.loader import LoadOptions, load_model, unload
from inference_service.engine.prompts import render_chat
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationEvent,
    GenerationRequest,
    SamplingOptions,
)

DATA_DIR = Path(__file__).resolve().parents[1] / ".cache" / "millm"
MODES = [
    ("float32", "none"),
    ("bfloat16", "none"),
    ("float32", "int8_dynamic"),
    ("float32", "bnb_8bit"),
    ("float32", "bnb_4bit"),
]


def decode(loaded, prompt: list[int], tokens: int) -> tuple[str, float]:
    """Completion text and decode tokens/s (prefill excluded)."""
    events: list[GenerationEvent] = []
    request = GenerationRequest("bench", tuple(prompt), SamplingOptions(0.0, max_tokens=tokens))
    run_generation(loaded, request, events.append, lambda: False)
    finished = events[-1]
    assert isinstance(finished, FinishedEvent)
    text = "".join(e.text for e in events[:-1])  # type: ignore[union-attr]
    # The first token comes from the prefill; the decode time covers the rest.
    return text, (finished.completion_tokens - 1) / (finished.decode_ns / 1e9)


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    settings = InferenceSettings(data_dir=DATA_DIR, device="cpu")
    print(f"{tokens} new tokens, {reps} runs, {torch.get_num_threads()} threads, decode tok/s")
    for dtype, quantization in MODES:
        started = time.monotonic()
        loaded = load_model(settings, LoadOptions(dtype=dtype, quantization=quantization))  # type: ignore[arg-type]
        load_s = time.monotonic() - started
        prompt = render_chat(
            loaded.tokenizer, [ChatTurn("user", "Write a long story about a dragon who cooks.")]
        )
        decode(loaded, prompt, 4)  # warm-up
        rates, text = [], ""
        for _ in range(reps):
            text, rate = decode(loaded, prompt, tokens)
            rates.append(rate)
        print(
            f"  {dtype:9s} {quantization:13s} median {statistics.median(rates):6.1f} "
            f"[{min(rates):.1f}-{max(rates):.1f}]  load {load_s:4.1f} s  "
            f"weights {int(loaded.description.extra['weights_bytes']) / 2**20:.0f} MiB  "
            f"{text[:40]!r}",
            flush=True,
        )
        unload(loaded)


if __name__ == "__main__":
    main()
