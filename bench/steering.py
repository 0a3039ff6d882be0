"""What steering and monitoring cost on the built-in model, side by side in one run.

For SAEs of 4,608 and 16,384 features attached at blocks.9.hook_resid_post, greedy
decode tokens/s and time to first token through the engine with:
  no SAE | SAE attached, idle | add 1 feature | add 16 | clamp 16 | monitor top-10
Configurations are interleaved within each repetition so machine noise spreads
evenly; each figure is the median over repetitions, and ratios are against "no SAE"
of the same run.

Not a test; run:
    .venv/bin/python bench/steering.py [new tokens] [repetitions]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from inference_service.config import InferenceSettings
from inference_service.engine.engine import Engine
from inference_service.engine.loader import load_model
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationRequest,
    SamplingOptions,
)
from inference_service.monitoring.types import Selection
from inference_service.sae.active import ActiveSae, ActiveSaeSlot
from inference_service.sae.architectures import Sae, SaeWeights
from inference_service.sae.attachments import SaeAttachments
from inference_service.sae.hook_sites import HookSite, find_decoder_layers
from inference_service.sae.spec import SaeSpec
from inference_service.steering.runtime import PassContext, SteeringRuntime
from inference_service.steering.state import SteeringState
from inference_service.steering.types import SteeringChoice, SteeringFeature, SteeringSet

DATA_DIR = Path(__file__).resolve().parents[1] / ".cache" / "millm"
SITE = HookSite(9, "resid_post")


def random_sae(d_sae: int) -> Sae:
    spec = SaeSpec("saelens", "standard", 576, d_sae, SITE.hook_name, SITE.layer, None)
    weights = SaeWeights(
        W_enc=torch.randn(576, d_sae) * 0.05,
        b_enc=torch.full((d_sae,), -0.1),
        W_dec=torch.randn(d_sae, 576) * 0.05,
        b_dec=torch.zeros(576),
    )
    return Sae(spec, weights)


async def run(
    engine: Engine, prompt: list[int], tokens: int, context: PassContext | None
) -> tuple[float, float]:
    """(tokens/s of decode, seconds to the first token)."""
    request = GenerationRequest(
        "bench", tuple(prompt), SamplingOptions(0.0, max_tokens=tokens), observer=context
    )
    started = time.perf_counter()
    first = 0.0
    handle = engine.submit_generation(request)
    async for event in handle.events():
        if not first:
            first = time.perf_counter() - started
        if isinstance(event, FinishedEvent):
            return event.completion_tokens / (event.decode_ns / 1e9), first
    raise AssertionError("no finish")


NO_SELECTION = Selection()


async def measure(
    engine: Engine, prompt: list[int], d_sae: int, tokens: int, reps: int
) -> dict[str, list[tuple[float, float]]]:
    layers = find_decoder_layers(engine.loaded_model.model)
    attachments = SaeAttachments()
    sae = random_sae(d_sae)
    slot = ActiveSaeSlot()
    runtime = SteeringRuntime(SteeringState(slot.get), lambda name: SteeringSet())

    async def detach() -> None:
        if slot.get() is not None:
            slot.swap(None)
            await attachments.detach(engine, SITE)

    def context(steering: SteeringSet | None, selection: Selection = NO_SELECTION) -> PassContext:
        choice = (
            SteeringChoice("features", steering=steering)
            if steering is not None
            else SteeringChoice("disabled")
        )
        return runtime.context("bench", "generate", choice, selection, engine.lane_token_strings)

    def add(n: int) -> SteeringSet:
        return SteeringSet(tuple(SteeringFeature(i, "add", 4.0) for i in range(n)))

    clamp = SteeringSet(tuple(SteeringFeature(i, "clamp", 3.0) for i in range(16)))
    configs: dict[str, Callable[[], PassContext] | None] = {
        "no SAE": None,
        "SAE attached, idle": lambda: context(None),
        "add 1 feature": lambda: context(add(1)),
        "add 16 features": lambda: context(add(16)),
        "clamp 16 features": lambda: context(clamp),
        "monitor top-10": lambda: context(None, Selection(top_k=10)),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
    for _ in range(reps):
        for name, make in configs.items():
            if make is None:
                await detach()
                results[name].append(await run(engine, prompt, tokens, None))
                continue
            if slot.get() is None:
                attached, _ = await attachments.attach(
                    engine, layers, "bench", SITE, lambda device: sae
                )
                slot.swap(ActiveSae("bench", "bench", "", "smollm2", attached.hook, sae))
            results[name].append(await run(engine, prompt, tokens, make()))
    await detach()
    return results


async def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    engine = Engine(load_model(InferenceSettings(data_dir=DATA_DIR)), InferenceSettings())
    prompt = await engine.render_chat_async(
        [ChatTurn("user", "Write a short story about a lighthouse.")]
    )
    await run(engine, prompt, 8, None)  # warm-up
    for d_sae in (4608, 16384):
        results = await measure(engine, prompt, d_sae, tokens, reps)
        base_tps = statistics.median(r[0] for r in results["no SAE"])
        base_ttft = statistics.median(r[1] for r in results["no SAE"])
        print(f"\nSAE with {d_sae} features at {SITE.hook_name}, {tokens} tokens, {reps} reps")
        header = f"{'decode tok/s':>12} {'ratio':>7} {'TTFT ms':>9} {'ratio':>7}"
        print(f"  {'configuration':<20} {header}")
        for name, rows in results.items():
            tps = statistics.median(r[0] for r in rows)
            ttft = statistics.median(r[1] for r in rows)
            print(
                f"  {name:<20} {tps:12.2f} {tps / base_tps:7.3f}"
                f" {ttft * 1000:9.1f} {ttft / base_ttft:7.3f}"
            )
    engine.shutdown()


if __name__ == "__main__":
    torch.manual_seed(0)
    asyncio.run(main())
