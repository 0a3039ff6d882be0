"""Load: many streaming clients at once, some hanging up mid-stream; nothing may get lost.

For each client count (--clients, default 64 and 128), every client sends --requests
greedy streaming chats through the bridge with the official `openai` SDK (AsyncOpenAI,
one event loop, retries off so a 429 is seen as one). A seeded --disconnect share of
the requests (default 20 %) closes its stream after a random number of content chunks.
Every request ends in exactly one bucket:
  - completed: the stream carried a finish_reason;
  - 429: refused because the queue (--max-queue) was full;
  - disconnected: we closed it on purpose;
  - errors: the server said why it failed (another HTTP status, or an in-band error);
  - lost: anything else (the stream ended without a finish_reason or an error, the
    connection broke, or it ran past --timeout). Target: 0.
p95 TTFT is over the requests that got a first token (completed and disconnected).
After each round, /health must show no sequence still decoding or waiting: a hung-up
client's generation has to leave the batch, not run to max_tokens.

Run: make bench-load
  (or .venv/bin/python bench/load.py --clients 64,128 --max-tokens 32 --max-queue 64)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import openai
from stack import isolated_stack, streaming_chat  # puts the repository root on sys.path

PROMPTS = (
    "Write a long story about a lighthouse keeper.",
    "Write a long essay on the history of the printing press.",
    "Describe, in great detail, a day in the life of a medieval blacksmith.",
    "Write a long story about a robot that wants to become a gardener.",
)


@dataclass
class Outcome:
    bucket: str  # completed, 429, disconnected, errors, lost
    ttft_s: float | None = None
    detail: str = ""


async def one_request(
    client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int, hang_up_after: int | None
) -> Outcome:
    t0 = time.perf_counter()
    ttft = None
    chunks = 0
    try:
        stream = await client.chat.completions.create(**streaming_chat(model, prompt, max_tokens))
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                if hang_up_after is not None and chunks >= hang_up_after:
                    await stream.close()
                    return Outcome("disconnected", ttft)
            if chunk.choices and chunk.choices[0].finish_reason:
                # The usage chunk follows; the request has completed either way.
                await stream.close()
                return Outcome("completed", ttft)
        return Outcome("lost", ttft, "the stream ended without a finish_reason")
    except openai.RateLimitError:
        return Outcome("429")
    except openai.APIStatusError as exc:
        return Outcome("errors", ttft, f"HTTP {exc.status_code}: {exc.message}")
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        return Outcome("lost", ttft, f"{type(exc).__name__}: {exc}")
    except openai.APIError as exc:  # an in-band error event after the 200
        return Outcome("errors", ttft, exc.message)


async def round_of(args: argparse.Namespace, url: str, model: str, clients: int) -> list[Outcome]:
    rng = random.Random(args.seed + clients)
    client = openai.AsyncOpenAI(
        base_url=f"{url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=args.timeout,
        http_client=httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            timeout=args.timeout,
        ),
    )

    async def one_client(index: int) -> list[Outcome]:
        out = []
        for _ in range(args.requests):
            hang_up = rng.randint(1, max(1, args.max_tokens // 2))
            out.append(
                await one_request(
                    client,
                    model,
                    PROMPTS[index % len(PROMPTS)],
                    args.max_tokens,
                    hang_up if rng.random() < args.disconnect else None,
                )
            )
        return out

    try:
        per_client = await asyncio.gather(*(one_client(i) for i in range(clients)))
    finally:
        await client.close()
    return [outcome for outcomes in per_client for outcome in outcomes]


def settled(url: str, timeout_s: float = 30.0) -> dict:
    """/health once nothing decodes or waits any more (or the last answer at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(f"{url}/health", timeout=10).json()
        batch = health.get("batch", {})
        idle = not health.get("queue_depth") and not batch.get("active_sequences")
        if idle or time.monotonic() > deadline:
            return health
        time.sleep(0.5)


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def report(clients: int, outcomes: list[Outcome], wall_s: float, health: dict) -> int:
    counts = Counter(o.bucket for o in outcomes)
    ttfts = [o.ttft_s for o in outcomes if o.ttft_s is not None]
    batch = health.get("batch", {})
    print(
        f"{clients:>7} {len(outcomes):>8} {counts['completed']:>9} {counts['429']:>5}"
        f" {counts['disconnected']:>12} {counts['errors']:>6} {counts['lost']:>5}"
        f" {p95(ttfts):>12.2f} {wall_s:>7.1f}"
        f"   after: queue {health.get('queue_depth')}, active {batch.get('active_sequences')}"
    )
    for detail, n in Counter(o.detail for o in outcomes if o.detail).most_common(5):
        print(f"          {n} x {detail}")
    leaked = bool(health.get("queue_depth") or batch.get("active_sequences"))
    return counts["lost"] + int(leaked)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="64,128", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=1, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--disconnect", type=float, default=0.2, help="share that hangs up")
    parser.add_argument("--max-queue", type=int, default=64, help="MILLM_MAX_QUEUE")
    parser.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    return args


def main() -> None:
    args = parse_args()
    # service_env copies os.environ, so these reach both processes.
    os.environ["MILLM_MAX_QUEUE"] = str(args.max_queue)
    failures = 0
    with isolated_stack("load") as (url, _):
        health = httpx.get(f"{url}/health", timeout=10).json()
        model = health["model"]
        print(
            f"model {model}, {os.cpu_count()} CPUs, max_queue {args.max_queue},"
            f" max_batch_size {health['batch']['max_batch_size']},"
            f" max_tokens {args.max_tokens}, {args.requests} request(s) per client,"
            f" {args.disconnect:.0%} hang up mid-stream, seed {args.seed}"
        )
        print("clients requests completed   429 disconnected errors  lost p95_TTFT_s   wall_s")
        for clients in args.clients:
            t0 = time.perf_counter()
            outcomes = asyncio.run(round_of(args, url, model, clients))
            wall = time.perf_counter() - t0
            failures += report(clients, outcomes, wall, settled(url))
    print("target: lost = 0 and nothing left decoding:", "met" if not failures else "MISSED")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
