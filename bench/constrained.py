"""Constrained decoding through the bridge: its cost in decode speed, and tool-call validity.

Part 1, the cost of the grammar mask (llguidance, inference_service/engine/grammar.py).
Greedy streaming chats through the bridge with the official `openai` SDK (AsyncOpenAI,
one event loop), each asking for a fictional person, in two modes:
  - "free": no `response_format`;
  - "json": `response_format` json_schema `person` (strict), a schema with a string
    (maxLength), an integer, an enum, an array of strings (maxItems, item maxLength),
    all required, no additional properties.
Every round sends, per client count (--clients, default 1 and 8) and mode, max(--prompts,
clients) requests, each a different person prompt (while the 16 last), which the
clients take in turn (so 1 client sends --prompts back to back, 8 clients one each at
the same instant), up to --max-tokens tokens each. Modes alternate their order per
round and per client count, so machine noise hits both alike; figures are medians over
every request (or round) of --repeats rounds. Measured:
  - decode tokens/s per request: (completion_tokens - 1) / (last content chunk - first
    content chunk), so prefill is excluded; median over requests;
  - aggregate tokens/s: a round's completion tokens over its wall time (first request
    sent to last stream ended); median over rounds;
  - steady decode tokens/s per request: the same over the content chunks (one per
    token) after every request overlapping it had its first token. Each prompt is
    prefilled alone and stalls the batch meanwhile; "json" replies are shorter (about
    40 tokens against 64), so at 8 clients those stalls weigh more on their plain rate
    and the plain ratio understates "json". The steady figure leaves the stalls out;
    at 1 client it equals the plain one. Median over requests;
  - time to first token (TTFT, request sent to first content chunk), p50.
The aggregate figure also counts the prefills, so with shorter "json" replies its
ratio is lower for the same reason; it is printed for the record.
Every "json" reply is parsed with json.loads and validated against the schema
(`jsonschema`); replies cut by max_tokens (finish_reason "length") that do not parse are
counted apart, since a cut legitimately leaves the JSON unfinished.

Part 2, tool-call round trips: get_weather(city, unit), get_time(timezone) and
search_web(query), each with string maxLength limits (and an enum for unit), offered to
non-streaming chats (max_tokens --tool-max-tokens):
  (a) tool_choice "required", temperature 0.7 with a fixed seed per prompt, over ~10
      prompts, twice: parallel_tool_calls unset (OpenAI's default, true: the grammar
      allows more calls after the first) and false (exactly one call). A reply counts
      as valid when finish_reason is "tool_calls" and every call names an offered tool
      whose arguments parse and validate against its parameters schema; replies cut by
      max_tokens ("length") are counted apart as well;
  (b) tool_choice "auto", greedy, over ~10 prompts that plainly ask for one tool: how
      often the model chose to call a tool at all (the built-in 135M model is weak at
      this; the figure is for the record), and how often such a call was valid.

The stack runs from a temporary data directory (the converted built-in model is linked
from the test cache at .cache/millm), on free ports, as bench/concurrency.py runs it.

Targets: "json" decode tokens/s at most 10 % below "free" (ratio json/free >= 0.90) at
every client count; every finished "json" reply valid; (a) 100 % valid tool calls, with
parallel_tool_calls unset and false.

Run: make bench-constrained
  (or .venv/bin/python bench/constrained.py --clients 1,8 --repeats 3 --max-tokens 64
   --prompts 4 [--tool-max-tokens 80])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import openai
from concurrency import percentile  # puts the repository root on sys.path
from stack import isolated_stack, streaming_chat

MODES = ("free", "json")
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "occupation": {
            "type": "string",
            "enum": ["engineer", "teacher", "doctor", "artist", "farmer", "sailor", "other"],
        },
        "hobbies": {
            "type": "array",
            "items": {"type": "string", "maxLength": 24},
            "maxItems": 3,
        },
    },
    "required": ["name", "age", "occupation", "hobbies"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": True},
}
PERSON_PROMPTS = (
    "Describe a fictional lighthouse keeper: name, age, occupation and hobbies.",
    "Invent a character for a detective novel and give their name, age, job and hobbies.",
    "Tell me about a made-up teacher from a small village: name, age, work, hobbies.",
    "Create a profile of an imaginary doctor: name, age, occupation and three hobbies.",
    "Describe a sailor from the 1800s: name, age, occupation and pastimes.",
    "Make up a young artist living in Paris: name, age, occupation, hobbies.",
    "Describe an elderly farmer: his name, age, what he does and his hobbies.",
    "Invent a software engineer for a short story: name, age, job and hobbies.",
    "Give me a fictional person for a board game: name, age, occupation, hobbies.",
    "Describe a retired astronaut: name, age, occupation and favourite hobbies.",
    "Create a character for a fantasy world: name, age, profession and hobbies.",
    "Describe your ideal neighbour: name, age, occupation and hobbies.",
    "Invent a chef who runs a tiny restaurant: name, age, occupation and hobbies.",
    "Describe a mountain guide: name, age, occupation and what they do for fun.",
    "Make up a librarian: name, age, job and three hobbies.",
    "Describe a teenage inventor: name, age, occupation and hobbies.",
)


def _string(max_length: int, description: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, "description": description}


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


TOOLS = [
    _tool(
        "get_weather",
        "Current weather in a city.",
        {
            "city": _string(40, "The city, e.g. Paris"),
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
    ),
    _tool(
        "get_time",
        "Current local time in a time zone.",
        {"timezone": _string(40, "IANA time zone, e.g. Europe/Paris")},
    ),
    _tool("search_web", "Search the web.", {"query": _string(80, "The search query")}),
]
TOOL_SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
REQUIRED_PROMPTS = (
    "What's the weather like in Tokyo?",
    "What time is it in New York right now?",
    "Find recent news about the Mars rovers.",
    "Is it cold in Oslo today? Use fahrenheit.",
    "I need the current time in Sydney.",
    "Look up the best pizza recipe.",
    "Should I take an umbrella in London?",
    "Who won the last football world cup?",
    "Hello! How are you?",
    "What is 17 times 23?",
)
AUTO_PROMPTS = (
    "What's the weather in Paris in celsius?",
    "What is the weather in Berlin right now, in fahrenheit?",
    "Tell me the current weather in Madrid in celsius.",
    "What time is it in the Asia/Tokyo time zone?",
    "Get the current time for the timezone America/Chicago.",
    "What is the local time in Europe/London?",
    "Search the web for the history of the Eiffel Tower.",
    "Search the web for cheap flights to Rome.",
    "Please search the web for the latest Python release.",
    "Use the weather tool: how hot is it in Cairo in celsius?",
)


# -- part 1: the cost of the mask ---------------------------------------------------------------


@dataclass
class Reply:
    mode: str
    prompt: str
    ttft_s: float
    decode_tok_s: float
    tokens: int
    text: str
    finish: str | None
    sent: float
    ended: float
    chunk_times: list[float]  # of the content chunks (one per token, as the bridge streams)
    steady_tok_s: float = math.nan  # set by the round: see settle()


@dataclass
class Round:
    clients: int
    mode: str
    wall_s: float
    replies: list[Reply]
    errors: list[str]

    @property
    def tok_s(self) -> float:
        return sum(r.tokens for r in self.replies) / self.wall_s


def api_error(exc: Exception) -> str:
    """The server's error as it sent it (status and JSON body), for the record."""
    if isinstance(exc, openai.APIStatusError):
        return f"{exc.status_code} {exc.response.text}"
    return f"{type(exc).__name__}: {exc}"


async def stream_person(
    client: openai.AsyncOpenAI, model: str, prompt: str, mode: str, max_tokens: int
) -> tuple[float, float, Reply]:
    """One greedy streaming chat: (start, end, measures)."""
    extra = {"response_format": RESPONSE_FORMAT} if mode == "json" else {}
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        **streaming_chat(model, prompt, max_tokens), **extra
    )
    times: list[float] = []
    tokens = 0
    finish = None
    parts: list[str] = []
    async for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                times.append(time.perf_counter())
                parts.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    if not times:
        raise RuntimeError(f"the stream carried no content (finish_reason {finish})")
    first, last = times[0], times[-1]
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else math.nan
    text = "".join(parts)
    return t0, end, Reply(mode, prompt, first - t0, rate, tokens, text, finish, t0, end, times)


STEADY_MIN_CHUNKS = 8


def settle(replies: list[Reply]) -> None:
    """Each reply's decode rate once every request overlapping it has had its first
    token: each prompt is prefilled alone, stalling the batch, and with replies of
    different lengths (json ones end sooner) those stalls weigh differently on the
    plain per-request rate. Counts content chunks (one per token); NaN with fewer than
    STEADY_MIN_CHUNKS left."""
    for r in replies:
        settled = max(o.chunk_times[0] for o in replies if o.sent < r.ended and o.ended > r.sent)
        after = [t for t in r.chunk_times if t >= settled]
        if len(after) >= STEADY_MIN_CHUNKS and after[-1] > after[0]:
            r.steady_tok_s = (len(after) - 1) / (after[-1] - after[0])


async def run_round(
    client: openai.AsyncOpenAI,
    model: str,
    prompts: list[str],
    clients: int,
    mode: str,
    max_tokens: int,
) -> Round:
    errors: list[str] = []

    async def client_loop(c: int) -> list[tuple[float, float, Reply]]:
        done = []
        for prompt in prompts[c::clients]:  # the clients take the prompts in turn
            try:
                done.append(await stream_person(client, model, prompt, mode, max_tokens))
            except Exception as exc:  # recorded and reported, not fatal
                errors.append(api_error(exc))
        return done

    results = [r for per in await asyncio.gather(*map(client_loop, range(clients))) for r in per]
    if not results:
        raise SystemExit(f"every request of a {clients}-client {mode} round failed: {errors}")
    wall = max(end for _, end, _ in results) - min(start for start, _, _ in results)
    replies = [r for _, _, r in results]
    settle(replies)
    return Round(clients, mode, wall, replies, errors)


@dataclass
class Validity:
    valid: int = 0
    cut: int = 0  # finish "length" and not valid JSON of the schema
    invalid: int = 0
    total: int = 0


def check_person(reply: Reply, validity: Validity, shown: list[str]) -> None:
    """Counts `reply`; the first few that are not valid go to `shown`, for the record."""
    validity.total += 1
    try:
        jsonschema.validate(json.loads(reply.text), PERSON_SCHEMA)
    except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
        if reply.finish == "length":
            validity.cut += 1
            kind = "cut"
        else:
            validity.invalid += 1
            kind = "INVALID"
        if len(shown) < 6:
            why = str(exc).splitlines()[0]
            shown.append(f"{kind} [{reply.finish}] {reply.text!r} ({type(exc).__name__}: {why})")
        return
    validity.valid += 1


async def measure_cost(
    args: argparse.Namespace, client: openai.AsyncOpenAI, model: str
) -> tuple[dict[tuple[int, str], list[Round]], Validity, list[str]]:
    count = max(args.prompts, *args.clients)
    prompts = [PERSON_PROMPTS[i % len(PERSON_PROMPTS)] for i in range(count)]
    for mode in MODES:  # warm-up, not recorded: both paths, one reply each, shown
        _, _, reply = await stream_person(client, model, prompts[0], mode, args.max_tokens)
        print(
            f"warm-up {mode:<4} ({reply.tokens} tokens in {len(reply.chunk_times)} content"
            f" chunks, {reply.finish}): {reply.text!r}"
        )
    rounds: dict[tuple[int, str], list[Round]] = {}
    validity, shown = Validity(), []
    for rep in range(args.repeats):
        for i, n in enumerate(args.clients):
            modes = MODES if (rep + i) % 2 == 0 else MODES[::-1]  # neither always goes first
            for mode in modes:
                sent = prompts[: max(args.prompts, n)]
                rnd = await run_round(client, model, sent, n, mode, args.max_tokens)
                rounds.setdefault((n, mode), []).append(rnd)
                if mode == "json":
                    for reply in rnd.replies:
                        check_person(reply, validity, shown)
                print(
                    f"  round {rep + 1}: {n:>2} clients {mode:<4}"
                    f" decode {median([r.decode_tok_s for r in rnd.replies]):5.1f} tok/s/request"
                    f" (steady {median([r.steady_tok_s for r in rnd.replies]):5.1f}),"
                    f" aggregate {rnd.tok_s:6.1f} tok/s"
                    f" ({sum(r.tokens for r in rnd.replies)} tokens in {rnd.wall_s:.2f} s)"
                    + (f", {len(rnd.errors)} errors" if rnd.errors else ""),
                    flush=True,
                )
                for error in rnd.errors[:3]:
                    print(f"    error: {error}", flush=True)
    return rounds, validity, shown


@dataclass
class Summary:
    decode_tok_s: float
    steady_tok_s: float
    agg_tok_s: float
    p50_ttft_s: float
    requests: int
    errors: int
    tokens: list[int]


def median(values: list[float]) -> float:
    """The median of the values that are not NaN; NaN if none is."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def summarise(rounds: list[Round]) -> Summary:
    replies = [r for rnd in rounds for r in rnd.replies]
    return Summary(
        decode_tok_s=median([r.decode_tok_s for r in replies]),
        steady_tok_s=median([r.steady_tok_s for r in replies]),
        agg_tok_s=statistics.median(rnd.tok_s for rnd in rounds),
        p50_ttft_s=percentile([r.ttft_s for r in replies], 0.5),
        requests=len(replies),
        errors=sum(len(rnd.errors) for rnd in rounds),
        tokens=[r.tokens for r in replies],
    )


def print_cost(
    args: argparse.Namespace,
    rounds: dict[tuple[int, str], list[Round]],
    validity: Validity,
    shown: list[str],
) -> list[bool]:
    results = {key: summarise(value) for key, value in rounds.items()}
    print(
        f"\n{'clients':>7} | {'mode':<4} | {'decode tok/s/req':>16} | {'steady':>6} |"
        f" {'agg tok/s':>9} |"
        f" {'p50 TTFT ms':>11} | requests | tokens/req"
    )
    for n in args.clients:
        for mode in MODES:
            s = results[(n, mode)]
            errors = f" ({s.errors} errors)" if s.errors else ""
            print(
                f"{n:>7} | {mode:<4} | {s.decode_tok_s:>16.1f} | {s.steady_tok_s:>6.1f} |"
                f" {s.agg_tok_s:>9.1f} |"
                f" {s.p50_ttft_s * 1000:>11.1f} | {s.requests:>8}{errors} |"
                f" {min(s.tokens)}-{max(s.tokens)}"
            )
    print()
    met = []
    for n in args.clients:
        free, constrained = results[(n, "free")], results[(n, "json")]
        decode = constrained.decode_tok_s / free.decode_tok_s
        agg = constrained.agg_tok_s / free.agg_tok_s
        steady = constrained.steady_tok_s / free.steady_tok_s
        ok = decode >= 0.90
        met.append(ok)
        print(
            f"target: {n:>2} clients json/free decode tok/s = {decode:.3f}"
            f" ({1 - decode:+.1%} slower; <= 10 % slower): {verdict(ok)}"
            f"   [steady json/free = {steady:.3f}, aggregate json/free = {agg:.3f}]"
        )
    finished = validity.total - validity.cut
    ok = validity.invalid == 0 and finished > 0
    met.append(ok)
    print(
        f"target: json replies valid (json.loads + schema): {validity.valid}/{validity.total};"
        f" cut by max_tokens ('length', unfinished JSON): {validity.cut};"
        f" finished but invalid: {validity.invalid}: {verdict(ok)}"
    )
    for line in shown:
        print(f"    {line}")
    return met


# -- part 2: tool calls -------------------------------------------------------------------------


@dataclass
class ToolReply:
    prompt: str
    finish: str | None
    calls: list[tuple[str, str]]  # (name, arguments)
    content: str | None
    problems: list[str]
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None and bool(self.calls) and not self.problems


def call_problems(calls: list[tuple[str, str]]) -> list[str]:
    problems = []
    for name, arguments in calls:
        if name not in TOOL_SCHEMAS:
            problems.append(f"{name!r} is not an offered tool")
            continue
        try:
            jsonschema.validate(json.loads(arguments), TOOL_SCHEMAS[name])
        except (json.JSONDecodeError, jsonschema.ValidationError) as exc:
            problems.append(f"{name} arguments {arguments!r}: {type(exc).__name__}: {exc}")
    return problems


async def tool_chat(
    client: openai.AsyncOpenAI,
    model: str,
    prompt: str,
    choice: str,
    sampling: dict[str, Any],
    max_tokens: int,
) -> ToolReply:
    """One non-streaming chat offering TOOLS; `sampling` also carries extra arguments."""
    try:
        response = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            tools=TOOLS,
            tool_choice=choice,
            max_tokens=max_tokens,
            **sampling,
        )
    except Exception as exc:  # recorded and reported, not fatal
        return ToolReply(prompt, None, [], None, [], error=api_error(exc))
    choice0 = response.choices[0]
    calls = [(c.function.name, c.function.arguments) for c in choice0.message.tool_calls or []]
    problems = call_problems(calls)
    if calls and choice0.finish_reason != "tool_calls":
        problems.append(f"finish_reason {choice0.finish_reason!r}, not 'tool_calls'")
    return ToolReply(prompt, choice0.finish_reason, calls, choice0.message.content, problems)


async def measure_tools(
    args: argparse.Namespace, client: openai.AsyncOpenAI, model: str
) -> list[bool]:
    limit = asyncio.Semaphore(max(args.clients))

    async def one(prompt: str, choice: str, sampling: dict[str, Any]) -> ToolReply:
        async with limit:
            return await tool_chat(client, model, prompt, choice, sampling, args.tool_max_tokens)

    def seeded(i: int, **extra: Any) -> dict[str, Any]:
        return {"temperature": 0.7, "seed": 1000 + i, **extra}

    t0 = time.perf_counter()
    sets = {
        "required, T=0.7, parallel_tool_calls unset": await asyncio.gather(
            *(one(p, "required", seeded(i)) for i, p in enumerate(REQUIRED_PROMPTS))
        ),
        "required, T=0.7, parallel_tool_calls false": await asyncio.gather(
            *(
                one(p, "required", seeded(i, parallel_tool_calls=False))
                for i, p in enumerate(REQUIRED_PROMPTS)
            )
        ),
        "auto, greedy": await asyncio.gather(
            *(one(p, "auto", {"temperature": 0}) for p in AUTO_PROMPTS)
        ),
    }
    print(f"\ntool calls ({time.perf_counter() - t0:.1f} s):")
    for label, replies in sets.items():
        print(f"  tool_choice {label}:")
        for r in replies:
            if r.error:
                what = f"ERROR {r.error}"
            elif r.calls:
                what = "; ".join(f"{name}({arguments})" for name, arguments in r.calls)
            else:
                what = f"text {(r.content or '')[:70]!r}"
            mark = "ok " if r.valid else "-- "
            print(f"    {mark}[{r.finish}] {r.prompt[:42]:<42} -> {what}")
            for problem in r.problems:
                print(f"        problem: {problem}")
    print()
    met = []
    for label, replies in sets.items():
        if not label.startswith("required"):
            continue
        valid = sum(r.valid for r in replies)
        cut = sum(r.finish == "length" for r in replies)
        errors = sum(bool(r.error) for r in replies)
        met.append(valid == len(replies))
        print(
            f"target: tool_choice {label}: {valid}/{len(replies)} replies with finish_reason"
            f" 'tool_calls' and only valid calls of offered tools; {cut} cut by max_tokens"
            f" ('length'){f', {errors} errors' if errors else ''} (100 %):"
            f" {verdict(met[-1])}"
        )
    auto = sets["auto, greedy"]
    chose = [r for r in auto if r.calls]
    errors = sum(bool(r.error) for r in auto)
    print(
        f"record: tool_choice auto, greedy: the model called a tool in {len(chose)}/{len(auto)}"
        f" replies; {sum(r.valid for r in chose)}/{len(chose)} of those valid"
        + (f"; {errors} errors" if errors else "")
    )
    return met


# -- the run ------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


async def measure(args: argparse.Namespace, url: str, model: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    try:
        rounds, validity, shown = await measure_cost(args, client, model)
        met = print_cost(args, rounds, validity, shown)
        met += await measure_tools(args, client, model)
    finally:
        await client.close()
    print(f"\n{sum(met)}/{len(met)} targets met")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients",
        type=lambda text: [int(c) for c in text.split(",") if c.strip()],
        default=[1, 8],
        help="comma-separated concurrent client counts",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds per client count and mode")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of part 1")
    parser.add_argument(
        "--prompts",
        type=int,
        default=4,
        help="requests per round, client count and mode (at least one per client)",
    )
    parser.add_argument("--tool-max-tokens", type=int, default=80, help="max_tokens of part 2")
    args = parser.parse_args()
    if not args.clients or min(args.clients) < 1 or args.repeats < 1 or args.prompts < 1:
        parser.error("--clients needs positive counts; --repeats and --prompts at least 1")
    return args


def main() -> None:
    args = parse_args()
    batch = max(16, *args.clients)
    # service_env copies os.environ, so this reaches the inference service.
    os.environ["MILLM_MAX_BATCH_SIZE"] = str(batch)
    with isolated_stack("constrained") as (url, _):
        model = httpx.get(f"{url}/health", timeout=10).json()["model"]
        print(
            f"model {model}, max_batch_size {batch}, {os.cpu_count()} CPUs;"
            f" part 1: clients {','.join(map(str, args.clients))}, max({args.prompts}, clients)"
            f" requests per round, client count and mode, {args.repeats} repeats,"
            f" max_tokens {args.max_tokens}, greedy, streaming;"
            f" part 2: {len(TOOLS)} tools, max_tokens {args.tool_max_tokens},"
            f" at most {max(args.clients)} at once"
        )
        print(f"person schema: {json.dumps(PERSON_SCHEMA)}")
        asyncio.run(measure(args, url, model))


if __name__ == "__main__":
    main()
