"""Single-stream CPU decode: speed and quality of each dtype / quantization / thread count.

One interleaved run (every round visits every configuration, order rotated per round):
greedy decode tok/s through the engine's own loop (`run_generation`: forward, sampling,
detokenizing), medians and ratios against the old default (float32, no quantization,
torch's default threads). Then the quality of each fast path against float32: greedy
agreement over fixed prompts (tokens identical before the first difference, and the
per-token agreement rate with float32's tokens forced) and perplexity on a fixed text,
each both from one pass over the whole text and token by token through the decode
step ("decoding"), since the 4-bit kernels only run on a decode step's few rows.

A configuration is `dtype/quantization`, or `dtype/quantization:torch` for PyTorch's
4-bit kernel instead of miLLM's own (MILLM_CPU_KERNELS, engine/native.py).

Not a test (pytest does not collect it); run:
    PYTHONPATH=.:gen/python .venv/bin/python bench/cpu_decode.py [--rounds 5] [--tokens 64]
        [--threads 1,2] [--profile] [--configs float32/none,float32/auto:torch,float32/auto]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from inference_service.config import InferenceSettings
from inference_service.engine.decode_step import LlamaDecodeStep
from inference_service.engine.generation import run_generation
from inference_service.engine.loader import LoadedModel, LoadOptions, load_model
from inference_service.engine.prompts import render_chat
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationEvent,
    GenerationRequest,
    SamplingOptions,
)

DATA_DIR = Path(__file__).resolve().parents[1] / ".cache" / "millm"
BASELINE = "float32/none"
CONFIGS = [
    BASELINE,
    "bfloat16/none",
    "float32/int8_dynamic",
    "float32/int8_weight",
    "bfloat16/int8_weight",
    "float32/int4_weight",
    "bfloat16/int4_weight",
]
PROMPTS = [
    "Write a long story about a dragon who cooks.",
    "Explain how a refrigerator works.",
    "What is the capital of France, and why is it famous?",
    "List five tips for learning a new language.",
    "Describe the water cycle to a child.",
    "Write a haiku about autumn leaves.",
    "Why is the sky blue?",
    "Give me a recipe for pancakes.",
]
# A fixed text for perplexity (public-domain: the opening of Pride and Prejudice, and
# the first paragraph of the Wikipedia-style description of photosynthesis).
TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of "
    "such a man may be on his first entering a neighbourhood, this truth is so well fixed "
    "in the minds of the surrounding families, that he is considered the rightful property "
    "of some one or other of their daughters. Photosynthesis is a process used by plants "
    "and other organisms to convert light energy into chemical energy that, through "
    "cellular respiration, can later be released to fuel the organism's activities. Some "
    "of this chemical energy is stored in carbohydrate molecules, such as sugars and "
    "starches, which are synthesized from carbon dioxide and water."
)


def generate(loaded: LoadedModel, prompt: list[int], tokens: int) -> tuple[list[int], float]:
    """Greedy completion token ids and decode tokens/s (prefill excluded)."""
    events: list[GenerationEvent] = []
    request = GenerationRequest("bench", tuple(prompt), SamplingOptions(0.0, max_tokens=tokens))
    run_generation(loaded, request, events.append, lambda: False)
    finished = events[-1]
    assert isinstance(finished, FinishedEvent)
    ids = [i for e in events[:-1] for i in e.token_ids]  # type: ignore[union-attr]
    return ids, (finished.completion_tokens - 1) / (finished.decode_ns / 1e9)


def speed(models: dict[str, LoadedModel], args: argparse.Namespace) -> None:
    first = next(iter(models.values()))
    prompt = render_chat(first.tokenizer, [ChatTurn("user", PROMPTS[0])])
    threads = [int(t) for t in args.threads.split(",")]
    default_threads = args.default_threads
    keys = [(c, t) for t in threads for c in models]
    for config, t in keys:  # warm-up
        torch.set_num_threads(t)
        generate(models[config], prompt, 4)
    rates: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in range(args.rounds):
        for config, t in keys[r % len(keys) :] + keys[: r % len(keys)]:
            torch.set_num_threads(t)
            rates[(config, t)].append(generate(models[config], prompt, args.tokens)[1])
    torch.set_num_threads(default_threads)
    base = (BASELINE, default_threads)
    base_rate = statistics.median(rates[base]) if base in rates else None
    print(
        f"\ndecode tok/s, {args.tokens} greedy tokens, medians of {args.rounds} interleaved "
        f"rounds; ratio vs {BASELINE} at torch's default {default_threads} threads"
    )
    for config, t in keys:
        med = statistics.median(rates[(config, t)])
        ratio = f"{med / base_rate:5.2f}x" if base_rate else "  -  "
        low, high = min(rates[(config, t)]), max(rates[(config, t)])
        print(f"  {config:22s} threads {t}  {med:6.1f}  [{low:5.1f}-{high:5.1f}]  {ratio}")


def profile(models: dict[str, LoadedModel], args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    first = next(iter(models.values()))
    prompt = render_chat(first.tokenizer, [ChatTurn("user", PROMPTS[0])])
    for t in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(t)
        for config, loaded in models.items():
            generate(loaded, prompt, 4)
            started = time.perf_counter()
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                generate(loaded, prompt, 33)
            wall_ms = (time.perf_counter() - started) * 1e3 / 33
            table = prof.key_averages()
            linear_ops = (
                "aten::addmm",
                "aten::mm",
                "aten::_weight_int8pack_mm",
                "aten::_weight_int4pack_mm_for_cpu",
                "quantized::linear_dynamic",
            )
            linear = sum(e.self_cpu_time_total for e in table if e.key in linear_ops)
            attention = sum(
                e.self_cpu_time_total
                for e in table
                if "scaled_dot_product" in e.key or "flash_attention" in e.key
            )
            total = sum(e.self_cpu_time_total for e in table)
            ops = sum(e.count for e in table if e.key.startswith("aten::"))
            print(
                f"\n{config} threads {t}: {wall_ms:.1f} ms/token (profiled), torch ops "
                f"{total / 1e3 / 33:.1f} ms/token of which linear {linear / 1e3 / 33:.1f}, "
                f"attention {attention / 1e3 / 33:.1f}; {ops // 33} aten calls/token"
            )
            print(table.table(sort_by="self_cpu_time_total", row_limit=8))


@torch.inference_mode()
def forced_argmax(loaded: LoadedModel, ids: list[int]) -> list[int]:
    logits = loaded.model(input_ids=torch.tensor([ids])).logits[0]
    return logits.argmax(-1).tolist()


@torch.inference_mode()
def perplexity(loaded: LoadedModel) -> float:
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    logits = loaded.model(input_ids=ids).logits[0, :-1].float()
    return math.exp(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:])))


@torch.inference_mode()
def decoded_logits(loaded: LoadedModel, ids: list[int], start: int) -> torch.Tensor:
    """[len(ids) - start, V]: the logits after each of ids[start - 1:-1], the first from a
    prefill of ids[:start] and every later one from a decode step fed the next token, as
    serving computes them (the 4-bit kernels run only on the decode path's few rows)."""
    cache = DynamicCache(config=loaded.model.config)
    out = loaded.model(input_ids=torch.tensor([ids[:start]]), past_key_values=cache)
    logits = [out.logits[0, -1].float()]
    step = LlamaDecodeStep.for_model(loaded.model)
    for position in range(start, len(ids) - 1):
        token = torch.tensor([[ids[position]]])
        if step is not None:
            logits.append(step(token, cache, None, torch.tensor([[position]]))[0, -1].float())
        else:
            out = loaded.model(input_ids=token, past_key_values=cache)
            logits.append(out.logits[0, -1].float())
    return torch.stack(logits)


def decode_perplexity(loaded: LoadedModel) -> float:
    """Perplexity of the fixed text with every token after the first 8 predicted by a
    decode step."""
    ids = loaded.tokenizer(TEXT).input_ids
    logits = decoded_logits(loaded, ids, 8)
    return math.exp(float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[8:]))))


def quality(models: dict[str, LoadedModel], args: argparse.Namespace) -> None:
    reference = models.get(BASELINE)
    if reference is None:
        return
    print(f"\nquality vs {BASELINE}: {len(PROMPTS)} prompts x {args.tokens} greedy tokens")
    prompts = [render_chat(reference.tokenizer, [ChatTurn("user", p)]) for p in PROMPTS]
    expected = [generate(reference, p, args.tokens)[0] for p in prompts]
    for config, loaded in models.items():
        same_prefix, agree, decode_agree, total = [], 0, 0, 0
        for prompt, want in zip(prompts, expected, strict=True):
            got = generate(loaded, prompt, args.tokens)[0]
            prefix = next(
                (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)),
            )
            same_prefix.append(prefix)
            # float32's tokens forced: does this model pick the same next token? Once in
            # one pass over the whole text, once token by token as decoding does.
            predicted = forced_argmax(loaded, prompt + want)[len(prompt) - 1 : -1]
            agree += sum(p == w for p, w in zip(predicted, want, strict=True))
            stepped = decoded_logits(loaded, prompt + want, len(prompt)).argmax(-1).tolist()
            decode_agree += sum(p == w for p, w in zip(stepped, want, strict=True))
            total += len(want)
        print(
            f"  {config:22s} identical prefix median {statistics.median(same_prefix):4.0f} "
            f"(min {min(same_prefix)}), {sum(p == args.tokens for p in same_prefix)}/"
            f"{len(prompts)} fully identical; per-token agreement {agree / total:6.1%} "
            f"(decoding {decode_agree / total:6.1%}); perplexity {perplexity(loaded):.3f} "
            f"(decoding {decode_perplexity(loaded):.3f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    args = parser.parse_args()
    args.default_threads = torch.get_num_threads()
    settings = InferenceSettings(data_dir=DATA_DIR, device="cpu")
    models: dict[str, Any] = {}
    for config in args.configs.split(","):
        # "dtype/quantization", or "dtype/quantization:torch" for PyTorch's 4-bit kernel.
        dtype, _, rest = config.partition("/")
        quantization, _, kernels = rest.partition(":")
        models[config] = load_model(
            settings.model_copy(update={"cpu_kernels": kernels or "auto"}),
            LoadOptions(dtype=dtype, quantization=quantization, device="cpu"),  # type: ignore[arg-type]
        )
    print(f"torch {torch.__version__}, {args.default_threads} default threads")
    if args.profile:
        profile(models, args)
    if not args.no_speed:
        speed(models, args)
    if not args.no_quality:
        quality(models, args)


if __name__ == "__main__":
    main()
