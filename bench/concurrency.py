"""Continuous batching through the bridge: concurrent streaming clients, side by side in one run.

For 1, 2, 4, 8 and 16 concurrent clients (--clients), each sending greedy streaming
chats through the bridge with the official `openai` SDK (AsyncOpenAI, one event loop, a
different long-story prompt per client). Two arrival patterns (--pattern):
  - closed-loop (default): clients start --stagger s apart and each sends --requests
    requests back to back, asking for 100%, 50%, 75%, 62.5% of --max-tokens in turn
    (shifted per client), so requests arrive while others decode: a serving steady state;
  - burst: every client sends one --max-tokens request at the same instant. Each prompt
    is prefilled alone and prefill is compute-bound on a CPU, so the last newcomer's
    TTFT grows with the number of clients there.
Measured:
  - aggregate decode tokens/s: the completion tokens of all clients of a round over
    the round's wall time (first request sent to last stream ended);
  - time to first token (TTFT, request sent to first content chunk), p50 and p95 over
    every request of that client count and mode.
Each client count runs in two modes: "plain" (no steering) and "steered", where every
client steers its own feature with its own strength through `extra_body` (`millm.
steering`), so the batch carries a different edit per row. A random SAE in SAELens
layout (--d-sae features at blocks.9.hook_resid_post) is imported through the
management API and attached for the whole run; a plain request steers nothing, and a
hook no row uses does nothing, so plain is the model without SAE work. Modes alternate
their order per round and rounds cycle through the client counts, so machine noise
hits both alike; each figure is the median (tok/s) or percentile (TTFT) over --repeats
rounds. During the first 8-client round of each mode (the largest count if 8 is not
run), once every client has its first token, GET /health's `batch` object (all of
/health if it has none) is printed as a cross-check that the requests decoded together.
The warm-up also checks that client 0's steering changes its greedy reply.

The stack runs from a temporary data directory (the converted built-in model is
linked from the test cache), so the imported SAE never lands in a shared database.
Replies are greedy and may end before --max-tokens; tokens/s counts what was generated.

Targets: at 8 clients, plain aggregate tokens/s >= 4x the single-client figure;
steering costs at most 5% of it; p95 TTFT < 2x the single-client p95.

Run: make bench-concurrency
  (or .venv/bin/python bench/concurrency.py --clients 1,2,4,8,16 --max-tokens 64 --repeats 2
   [--pattern burst])
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from stack import (  # puts the repository root on sys.path, for `tests`
    PROMPTS,
    isolated_stack,
    percentile,
    streaming_chat,
)

from tests.fixtures.saes import write_sae

HOOK = "blocks.9.hook_resid_post"
MODES = ("plain", "steered")
TARGET_LINE = 8  # the client count the targets are stated at
# Closed loop: each client's k-th request asks for this share of --max-tokens, shifted
# per client, so that clients finish at different steps and arrive while others decode.
LENGTH_SHARES = (1.0, 0.5, 0.75, 0.625)


@dataclass
class Request:
    ttft_s: float
    tokens: int
    text: str


@dataclass
class Round:
    clients: int
    mode: str
    wall_s: float
    requests: list[Request]

    @property
    def tok_s(self) -> float:
        return sum(r.tokens for r in self.requests) / self.wall_s


@dataclass
class Summary:
    tok_s: float
    p50_ttft_s: float
    p95_ttft_s: float
    requests: int
    tokens: list[int] = field(default_factory=list)


def steering_for(client: int, d_sae: int, mode: str) -> list[dict[str, Any]]:
    """Client c's own feature and strength: every row of the batch steers differently."""
    index = (client * 997 + 13) % d_sae  # spread over the dictionary, distinct per client
    # On the random SAE, add 2 leaves greedy text unchanged, 20 changes it and stays
    # fluent, 200 is gibberish; client 0 (the warm-up's check) gets the strongest.
    step = 20.0 - 4.0 * (client % 4)
    strength = {"add": step, "clamp": step, "multiply": 2.0 + client % 4}[mode]
    return [{"index": index, "mode": mode, "strength": strength}]


# -- stack setup ----------------------------------------------------------------------------


def check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.is_error:
        raise SystemExit(f"{what} failed: {response.status_code} {response.text}")
    return response.json()


def attach_random_sae(url: str, folder: Path, d_sae: int) -> dict[str, Any]:
    """Writes a random SAELens SAE, imports it through the bridge and attaches it."""
    write_sae(folder, d_sae=d_sae, hook_name=HOOK)
    with httpx.Client(base_url=f"{url}/api/v1", timeout=300) as api:
        sae = check(
            api.post("/saes/import", json={"path": str(folder), "name": "bench-concurrency"}),
            "SAE import",
        )
        attached = check(api.post(f"/saes/{sae['id']}/attach", json={"hook_name": HOOK}), "attach")
    return attached["attachment"]


# -- one round --------------------------------------------------------------------------------


async def stream_one(
    client: openai.AsyncOpenAI,
    model: str,
    prompt: str,
    max_tokens: int,
    steering: list[dict[str, Any]] | None,
    first_tokens: asyncio.Queue[None],
) -> tuple[float, float, Request]:
    """One streaming chat: (start, end, measures); puts on `first_tokens` at its first token."""
    extra = {"millm": {"steering": steering}} if steering is not None else None
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        **streaming_chat(model, prompt, max_tokens), extra_body=extra
    )
    first = 0.0
    tokens = 0
    parts: list[str] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            if not first:
                first = time.perf_counter()
                first_tokens.put_nowait(None)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    if not first:
        raise RuntimeError("the stream carried no content")
    return t0, end, Request(first - t0, tokens, "".join(parts))


async def probe_health(url: str, first_tokens: asyncio.Queue[None], clients: int) -> Any:
    """/health once every client has its first token, i.e. while all of them decode."""
    for _ in range(clients):
        await first_tokens.get()
    async with httpx.AsyncClient(timeout=10) as http:
        body = (await http.get(f"{url}/health")).json()
    return body.get("batch", body) if isinstance(body, dict) else body


async def run_round(
    client: openai.AsyncOpenAI,
    args: argparse.Namespace,
    model: str,
    clients: int,
    mode: str,
    health_url: str | None,
) -> tuple[Round, Any]:
    first_tokens: asyncio.Queue[None] = asyncio.Queue()
    probe = (
        asyncio.create_task(probe_health(health_url, first_tokens, clients)) if health_url else None
    )

    async def client_loop(c: int) -> list[tuple[float, float, Request]]:
        steering = steering_for(c, args.d_sae, args.steer_mode) if mode == "steered" else None
        prompt = PROMPTS[c % len(PROMPTS)]
        if args.pattern == "burst":
            return [
                await stream_one(client, model, prompt, args.max_tokens, steering, first_tokens)
            ]
        await asyncio.sleep(c * args.stagger)  # clients arrive one after another
        done = []
        for k in range(args.requests):  # back to back, with lengths that desynchronise them
            tokens = max(1, int(args.max_tokens * LENGTH_SHARES[(c + k) % len(LENGTH_SHARES)]))
            done.append(await stream_one(client, model, prompt, tokens, steering, first_tokens))
        return done

    results = [r for per in await asyncio.gather(*map(client_loop, range(clients))) for r in per]
    # Every stream put its first token, so the probe has fired (maybe after short replies
    # ended: then active_sequences shows fewer than `clients`).
    health = await probe if probe is not None else None
    wall = max(end for _, end, _ in results) - min(start for start, _, _ in results)
    return Round(clients, mode, wall, [r for _, _, r in results]), health


# -- the run ----------------------------------------------------------------------------------


def summarise(rounds: list[Round]) -> Summary:
    ttfts = [r.ttft_s for rnd in rounds for r in rnd.requests]
    return Summary(
        tok_s=statistics.median(rnd.tok_s for rnd in rounds),
        p50_ttft_s=percentile(ttfts, 0.50),
        p95_ttft_s=percentile(ttfts, 0.95),
        requests=len(ttfts),
        tokens=[r.tokens for rnd in rounds for r in rnd.requests],
    )


async def measure(args: argparse.Namespace, url: str, model: str) -> dict[tuple[int, str], Summary]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    unread: asyncio.Queue[None] = asyncio.Queue()
    warm = {}
    for mode in MODES:  # warm-up, not recorded: both paths, a short reply each
        steering = steering_for(0, args.d_sae, args.steer_mode) if mode == "steered" else None
        warm[mode] = (await stream_one(client, model, PROMPTS[0], 16, steering, unread))[2]
    # Steering that silently did nothing would make the steered figures meaningless.
    differs = warm["plain"].text != warm["steered"].text
    print(f"warm-up: client 0's steered reply differs from the plain one: {differs}")
    probe_at = TARGET_LINE if TARGET_LINE in args.clients else max(args.clients)
    rounds: dict[tuple[int, str], list[Round]] = {}
    for rep in range(args.repeats):
        for i, n in enumerate(args.clients):
            modes = MODES if (rep + i) % 2 == 0 else MODES[::-1]  # so neither always goes first
            for mode in modes:
                probe = url if n == probe_at and rep == 0 else None
                rnd, health = await run_round(client, args, model, n, mode, probe)
                rounds.setdefault((n, mode), []).append(rnd)
                tokens = sum(r.tokens for r in rnd.requests)
                print(
                    f"  round {rep + 1}: {n:>2} clients {mode:<7} {rnd.tok_s:7.1f} tok/s"
                    f" ({tokens} tokens in {rnd.wall_s:.2f} s)",
                    flush=True,
                )
                if probe:
                    print(f"    /health batch during this round: {health}", flush=True)
    await client.close()
    return {key: summarise(value) for key, value in rounds.items()}


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def print_table(args: argparse.Namespace, results: dict[tuple[int, str], Summary]) -> None:
    print(
        f"\n{'clients':>7} | {'mode':<7} | {'agg tok/s':>9} | {'x 1 client':>10} |"
        f" {'p50 TTFT ms':>11} | {'p95 TTFT ms':>11} | {'p95 / 1-client p95':>18} | tokens/req"
    )
    for n in args.clients:
        for mode in MODES:
            s = results[(n, mode)]
            one = results.get((1, mode))
            speedup = ratio(s.tok_s, one.tok_s) if one else math.nan
            ttft_x = ratio(s.p95_ttft_s, one.p95_ttft_s) if one else math.nan
            tokens = f"{min(s.tokens)}-{max(s.tokens)}"
            print(
                f"{n:>7} | {mode:<7} | {s.tok_s:>9.1f} | {speedup:>10.2f} |"
                f" {s.p50_ttft_s * 1000:>11.1f} | {s.p95_ttft_s * 1000:>11.1f} |"
                f" {ttft_x:>18.2f} | {tokens}"
            )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_targets(results: dict[tuple[int, str], Summary]) -> None:
    n = TARGET_LINE
    if (1, "plain") not in results or (n, "plain") not in results:
        print(f"\ntargets: need client counts 1 and {n} in --clients; not measured")
        return
    print()
    speedup = ratio(results[(n, "plain")].tok_s, results[(1, "plain")].tok_s)
    print(f"target 1: {n}-client plain aggregate / 1-client = {speedup:.2f}x (>= 4): ", end="")
    print(verdict(speedup >= 4))
    cost = 1 - ratio(results[(n, "steered")].tok_s, results[(n, "plain")].tok_s)
    print(f"target 2: steering cost at {n} clients = {cost:+.1%} (<= 5%): {verdict(cost <= 0.05)}")
    for mode in MODES:
        x = ratio(results[(n, mode)].p95_ttft_s, results[(1, mode)].p95_ttft_s)
        print(f"target 3: {mode:<7} p95 TTFT at {n} clients / 1-client = {x:.2f}x (< 2): ", end="")
        print(verdict(x < 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients",
        type=lambda text: [int(c) for c in text.split(",") if c.strip()],
        default=[1, 2, 4, 8, 16],
        help="comma-separated concurrent client counts",
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--pattern",
        choices=("closed-loop", "burst"),
        default="closed-loop",
        help="closed-loop: clients start --stagger s apart and each sends --requests requests"
        " back to back; burst: every client sends one request at the same instant",
    )
    parser.add_argument("--requests", type=int, default=3, help="requests per client (closed loop)")
    parser.add_argument("--stagger", type=float, default=0.25, help="seconds between client starts")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per client count and mode")
    parser.add_argument("--d-sae", type=int, default=4608, help="features of the random SAE")
    parser.add_argument(
        "--steer-mode", choices=("add", "clamp", "multiply"), default="add", help="steering mode"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="MILLM_MAX_BATCH_SIZE; 0: the largest client count, at least 16",
    )
    args = parser.parse_args()
    if not args.clients or min(args.clients) < 1 or args.repeats < 1:
        parser.error("--clients needs positive counts and --repeats at least 1")
    return args


def main() -> None:
    args = parse_args()
    batch = args.max_batch_size or max(16, *args.clients)
    # service_env copies os.environ, so this reaches the inference service.
    os.environ["MILLM_MAX_BATCH_SIZE"] = str(batch)
    with isolated_stack("concurrency") as (url, tmp):
        model = httpx.get(f"{url}/health", timeout=10).json()["model"]
        attachment = attach_random_sae(url, tmp / "random-sae", args.d_sae)
        print(
            f"model {model}, max_batch_size {batch}, {os.cpu_count()} CPUs,"
            f" max_tokens {args.max_tokens}, greedy, {args.repeats} repeats, {args.pattern}"
            + (
                f" ({args.requests} requests per client, starts {args.stagger} s apart)"
                if args.pattern == "closed-loop"
                else ""
            )
            + ";"
            f" SAE d_sae={args.d_sae} at {attachment['hook_name']},"
            f" steered: one '{args.steer_mode}' feature per client, each its own"
        )
        results = asyncio.run(measure(args, url, model))
    print_table(args, results)
    print_targets(results)


if __name__ == "__main__":
    main()
