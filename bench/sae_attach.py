"""What attaching an SAE costs: memory, attach latency while generating, decode speed.

Loads the built-in model in this process, attaches a random SAE (SmolLM2's width,
16,384 features by default) at blocks.9.hook_resid_post and measures, side by side
in one run:
  - resident memory before attach, after attach and after detach (the SAE is read
    from disk by the attach, as the service does);
  - how long an attach takes on an idle lane and while a generation is decoding
    (hooks change between two forward passes, not after the generation);
  - greedy decode tokens/s with the SAE attached and nothing steered, against none,
    interleaved, plus whether the tokens are identical.

Not a test; run:
    .venv/bin/python bench/sae_attach.py [d_sae] [new tokens] [repetitions]
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
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
from inference_service.sae.architectures import Sae, SaeWeights
from inference_service.sae.attachments import SaeAttachments, release_memory
from inference_service.sae.formats import load_sae, save_sae
from inference_service.sae.hook_sites import HookSite, find_decoder_layers
from inference_service.sae.spec import SaeSpec

DATA_DIR = Path(__file__).resolve().parents[1] / ".cache" / "millm"
SITE = HookSite(9, "resid_post")


def random_sae(d_in: int, d_sae: int) -> Sae:
    spec = SaeSpec("saelens", "standard", d_in, d_sae, SITE.hook_name, SITE.layer, None)
    weights = SaeWeights(
        W_enc=torch.randn(d_in, d_sae) * 0.05,
        b_enc=torch.zeros(d_sae),
        W_dec=torch.randn(d_sae, d_in) * 0.05,
        b_dec=torch.zeros(d_in),
    )
    return Sae(spec, weights)


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def generate(engine: Engine, prompt: list[int], tokens: int) -> tuple[list[int], float]:
    request = GenerationRequest("bench", tuple(prompt), SamplingOptions(0.0, max_tokens=tokens))
    handle = engine.submit_generation(request)
    ids: list[int] = []
    started = time.perf_counter()
    async for event in handle.events():
        if not isinstance(event, FinishedEvent):
            ids.extend(event.token_ids)
    return ids, time.perf_counter() - started


async def main() -> None:
    d_sae = int(sys.argv[1]) if len(sys.argv) > 1 else 16384
    tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    engine = Engine(load_model(InferenceSettings(data_dir=DATA_DIR)), InferenceSettings())
    layers = find_decoder_layers(engine.loaded_model.model)
    prompt = await engine.render_chat_async(
        [ChatTurn("user", "Write a short story about a lighthouse.")]
    )
    # Attach reads the SAE from disk, as the service does, so its memory is new memory.
    folder = Path(tempfile.mkdtemp(prefix="millm-bench-sae-"))
    save_sae(random_sae(576, d_sae), folder, "saelens")
    sae_mib = load_sae(folder).nbytes / 2**20
    gc.collect()
    attachments = SaeAttachments()

    async def attach() -> float:
        started = time.perf_counter()
        await attachments.attach(
            engine, layers, "bench", SITE, lambda device: load_sae(folder, device=device).owned()
        )
        return time.perf_counter() - started

    await generate(engine, prompt, 8)  # warm-up
    rss = {"before attach": rss_mib()}
    idle_s = await attach()
    rss["after attach"] = rss_mib()
    await attachments.detach(engine, SITE)
    release_memory(engine.loaded_model.device)
    rss["after detach"] = rss_mib()

    running = asyncio.create_task(generate(engine, prompt, tokens))
    await asyncio.sleep(1.0)  # well into decoding
    busy_s = await attach()
    decoding_left = not running.done()
    await running
    await attachments.detach(engine, SITE)

    plain: list[float] = []
    hooked: list[float] = []
    identical = True
    for _ in range(reps):
        ids_plain, s_plain = await generate(engine, prompt, tokens)
        await attach()
        ids_hooked, s_hooked = await generate(engine, prompt, tokens)
        await attachments.detach(engine, SITE)
        plain.append(len(ids_plain) / s_plain)
        hooked.append(len(ids_hooked) / s_hooked)
        identical &= ids_plain == ids_hooked

    print(f"SAE d_in=576 d_sae={d_sae}: {sae_mib:.1f} MiB of float32 weights")
    for label, value in rss.items():
        print(f"  RSS {label:<14} {value:8.1f} MiB")
    print(f"  attach on an idle lane        {idle_s * 1000:8.1f} ms")
    print(
        f"  attach while decoding         {busy_s * 1000:8.1f} ms"
        f" (generation still running afterwards: {decoding_left})"
    )
    p, h = statistics.median(plain), statistics.median(hooked)
    print(f"  decode tok/s without SAE      {p:8.2f}  (median of {reps}, {tokens} tokens)")
    print(f"  decode tok/s SAE attached     {h:8.2f}  ratio {h / p:.3f}")
    print(f"  greedy tokens identical       {identical}")
    engine.shutdown()
    shutil.rmtree(folder)


if __name__ == "__main__":
    torch.manual_seed(0)
    asyncio.run(main())
