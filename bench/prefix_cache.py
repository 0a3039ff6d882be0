"""Time to first token with the prefix cache on and off, side by side in one run.

Two engines serve the same loaded model, one with the prefix cache (the default
`MILLM_PREFIX_CACHE_MB`) and one with it off (0). Two cases:
  - short: a chat with only a user message, so the template's default system prompt
    (about 30 of its ~39 tokens) is the shared prefix;
  - long: a ~500-token system prompt shared by every request, then a short question.
Each round asks a different question (so only the prefix is shared, never the
whole prompt), runs every case on both engines and alternates which engine goes
first, so machine noise hits both alike. TTFT is request submitted to first token
out of the engine (queue + prefill + first sampling; no HTTP), the median over
--rounds. Each request generates --tokens greedy tokens, and the two engines'
tokens are compared: reuse must not change what the model says.

With int8_dynamic or bnb_8bit the engine turns the cache off (their numbers depend
on the whole pass), so both columns are then the same path.

Run: .venv/bin/python bench/prefix_cache.py [--rounds 9] [--tokens 8]
      [--threads N] [--quantization none|int8_dynamic]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inference_service.config import InferenceSettings  # noqa: E402
from inference_service.engine.engine import Engine  # noqa: E402
from inference_service.engine.loader import LoadedModel, load_model  # noqa: E402
from inference_service.engine.prompts import render_chat  # noqa: E402
from inference_service.engine.types import (  # noqa: E402
    ChatTurn,
    FinishedEvent,
    GenerationRequest,
    SamplingOptions,
    TokenEvent,
)

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "How many legs does a spider have?",
    "What does a thermometer measure?",
    "Which planet is closest to the sun?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is the largest ocean on Earth?",
    "What gas do plants take in from the air?",
    "How many days are in a leap year?",
    "What is the chemical symbol for gold?",
)
RULES = (
    "Answer in plain English and keep every answer short, factual and polite.",
    "If a question is ambiguous, say which reading you answer before answering it.",
    "Never invent citations, statistics, quotations or the names of people.",
    "When a question asks for a number, give the number first and the unit after it.",
    "Prefer metric units, and give imperial units in brackets when they help.",
    "Do not give medical, legal or financial advice; suggest asking a professional.",
    "When you do not know an answer, say so plainly instead of guessing.",
    "Use lists only when the question asks for several items.",
    "Keep a friendly tone, but do not add greetings or sign-offs to answers.",
    "Spell out abbreviations the first time they appear in an answer.",
)


def long_system_prompt(loaded: LoadedModel, target_tokens: int) -> str:
    """Numbered house rules, repeated and varied until the system turn alone is
    about `target_tokens` tokens."""
    lines: list[str] = ["You are the help desk assistant of a public library."]
    index = 0
    while True:
        rule = RULES[index % len(RULES)]
        lines.append(f"Rule {index + 1} (section {index // len(RULES) + 1}): {rule}")
        text = "\n".join(lines)
        if len(loaded.tokenizer(text)["input_ids"]) >= target_tokens:
            return text
        index += 1


async def timed(
    engine: Engine, prompt: tuple[int, ...], tokens: int
) -> tuple[float, list[int], int, float]:
    """(TTFT seconds, greedy tokens, cached prompt tokens, prefill seconds) of one request."""
    request = GenerationRequest("bench", prompt, SamplingOptions(0.0, max_tokens=tokens))
    started = time.perf_counter()
    first = 0.0
    ids: list[int] = []
    cached = 0
    prefill = 0.0
    async for event in engine.submit_generation(request).events():
        if isinstance(event, TokenEvent):
            first = first or time.perf_counter() - started
            ids.extend(event.token_ids)
        elif isinstance(event, FinishedEvent):
            cached, prefill = event.cached_tokens, event.prefill_ns / 1e9
    return first, ids, cached, prefill


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--long-tokens", type=int, default=500)
    args = parser.parse_args()

    settings = InferenceSettings(
        data_dir=REPO / ".cache" / "millm",
        quantization=args.quantization,
        torch_threads=args.threads,
    )
    loaded = load_model(settings)
    engines = {
        "on": Engine(loaded, settings),
        "off": Engine(loaded, settings.model_copy(update={"prefix_cache_mb": 0})),
    }
    system = long_system_prompt(loaded, args.long_tokens)

    def prompt(case: str, question: str) -> tuple[int, ...]:
        turns = [ChatTurn("user", question)]
        if case == "long":
            turns.insert(0, ChatTurn("system", system))
        return tuple(render_chat(loaded.tokenizer, turns))

    cases = ("short", "long")
    ttft: dict[tuple[str, str], list[float]] = {(c, e): [] for c in cases for e in engines}
    prefill: dict[tuple[str, str], list[float]] = {(c, e): [] for c in cases for e in engines}
    cached: dict[str, list[int]] = {c: [] for c in cases}
    lengths: dict[str, list[int]] = {c: [] for c in cases}
    agree = total = 0
    try:
        for case in cases:  # warm-up: fills the "on" engine's cache with the prefix
            for engine in engines.values():
                await timed(engine, prompt(case, "Hello!"), args.tokens)
        for r in range(args.rounds):
            question = QUESTIONS[r % len(QUESTIONS)]
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for case in cases:
                ids = prompt(case, question)
                lengths[case].append(len(ids))
                outputs = {}
                for name in order:
                    seconds, outputs[name], hit, pass_s = await timed(
                        engines[name], ids, args.tokens
                    )
                    ttft[case, name].append(seconds)
                    prefill[case, name].append(pass_s)
                    if name == "on":
                        cached[case].append(hit)
                total += 1
                agree += outputs["on"] == outputs["off"]
    finally:
        for engine in engines.values():
            engine.shutdown()

    print(
        f"TTFT, prefix cache on vs off, {args.rounds} interleaved rounds, "
        f"quantization={args.quantization}, threads={args.threads or 'torch default'}"
    )
    print("medians in ms; TTFT: submitted to first token; prefill: the prompt's forward pass")
    head = f"{'case':<6} {'prompt':>7} {'cached':>7}"
    for what in ("TTFT", "prefill"):
        head += f" {what + ' on':>11} {what + ' off':>12} {'on/off':>7}"
    print(head)
    for case in cases:
        line = (
            f"{case:<6} {statistics.median(lengths[case]):>7.0f} "
            f"{statistics.median(cached[case]):>7.0f}"
        )
        for series in (ttft, prefill):
            on = statistics.median(series[case, "on"]) * 1000
            off = statistics.median(series[case, "off"]) * 1000
            line += f" {on:>11.1f} {off:>12.1f} {on / off:>7.2f}"
        print(line)
    print(f"greedy tokens identical with the cache on and off: {agree}/{total} requests")


if __name__ == "__main__":
    asyncio.run(main())
