"""What the Prometheus metrics cost the decode loop, side by side in one run.

Two engines over the same loaded model, one with no meter and one with the
service's `EngineMetrics`, run the same greedy generation in alternating rounds
(so machine noise hits both alike); medians of decode tokens/s are reported with
their ratio. Then the per-token cost of the meter alone, without a model.

Not a test (pytest does not collect it); run:
    .venv/bin/python bench/metrics_overhead.py [new tokens] [rounds]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from inference_service.config import InferenceSettings
from inference_service.engine.engine import Engine
from inference_service.engine.loader import load_model
from inference_service.engine.meter import NO_METER
from inference_service.engine.prompts import render_chat
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationRequest,
    SamplingOptions,
    TokenEvent,
)
from inference_service.metrics import EngineMetrics

# Where the tests keep the converted built-in model.
DATA_DIR = Path(__file__).resolve().parents[1] / ".cache" / "millm"


async def decode_rate(engine: Engine, prompt: tuple[int, ...], tokens: int) -> float:
    """Completion tokens per second after the first token (decode only)."""
    request = GenerationRequest("bench", prompt, SamplingOptions(0.0, max_tokens=tokens))
    first = 0.0
    count = 0
    async for event in engine.submit_generation(request).events():
        if isinstance(event, TokenEvent):
            count += 1
            if count == 1:
                first = time.perf_counter()
        elif isinstance(event, FinishedEvent):
            assert event.completion_tokens == count, event
    return (count - 1) / (time.perf_counter() - first)


def meter_cost_us(events: int = 200_000) -> float:
    """Microseconds the meter adds per generated token (a histogram observation and
    a counter increment), measured on this thread alone."""
    meter = EngineMetrics(CollectorRegistry())
    track = meter.generation(10)
    token = TokenEvent(text="x", token_ids=(1,))
    started = time.perf_counter()
    for _ in range(events):
        track.event(token)
    return (time.perf_counter() - started) / events * 1e6


async def main(tokens: int, rounds: int) -> None:
    settings = InferenceSettings(data_dir=DATA_DIR, device="cpu", dtype="float32")
    loaded = load_model(settings)
    prompt = tuple(
        render_chat(loaded.tokenizer, [ChatTurn("user", "Write a long story about a lighthouse.")])
    )
    plain = Engine(loaded, settings, NO_METER)
    metered = Engine(loaded, settings, EngineMetrics(CollectorRegistry()))
    rates: dict[str, list[float]] = {"no metrics": [], "metrics": []}
    await decode_rate(plain, prompt, 8)  # warm-up
    await decode_rate(metered, prompt, 8)
    for _ in range(rounds):
        rates["no metrics"].append(await decode_rate(plain, prompt, tokens))
        rates["metrics"].append(await decode_rate(metered, prompt, tokens))
    plain.shutdown()
    metered.shutdown()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        each = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:>10}: median {medians[name]:6.1f} tok/s  ({each})")
    print(f"     ratio: {medians['metrics'] / medians['no metrics']:.3f} (metrics / none)")
    # Each round's pair ran back to back, so its ratio sees the least drift.
    pairs = zip(rates["metrics"], rates["no metrics"], strict=True)
    paired = statistics.median(m / n for m, n in pairs)
    print(f"    paired: {paired:.3f} (median of the rounds' ratios)")
    print(f"meter alone: {meter_cost_us():.2f} us per token")


if __name__ == "__main__":
    new_tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    asyncio.run(main(new_tokens, rounds))
