"""What the benchmarks share: starting the stack, one timed streaming chat, stopping."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import TEST_DATA_DIR, free_port  # noqa: E402
from tests.fixtures.stack import spawn, stop, wait_healthy  # noqa: E402 - re-exported

START_TIMEOUT_S = 300
# Prompts that ask for long answers, so a generation runs to max_tokens.
PROMPTS = (
    "Write a long story about a lighthouse keeper.",
    "Write a long story about a dragon who learns to cook.",
    "Write a long essay on the history of the printing press.",
    "Write a long story about two friends crossing a desert.",
    "Describe, in great detail, a day in the life of a medieval blacksmith.",
    "Write a long story about a robot that wants to become a gardener.",
    "Write a long letter from a sailor to his family, describing the voyage.",
    "Write a long story about a city that floats above the clouds.",
    "Explain at length how a steam engine works and why it changed the world.",
    "Write a long story about a detective solving a mystery in a snowy village.",
    "Write a long fairy tale about a fox, a crow and a stolen crown.",
    "Write a long story about the first people to live on Mars.",
    "Describe in detail a journey by train across a large country.",
    "Write a long story about a musician who loses her hearing.",
    "Write a long essay on why forests matter to the planet.",
    "Write a long story about a child who finds a map in the attic.",
)


@dataclass
class Sample:
    ttft_s: float
    decode_tok_s: float
    tokens: int


def decode_rate(token_times: list[float]) -> float:
    """Tokens after the first, over the time they took: excludes prefill."""
    if len(token_times) < 2:
        return float("nan")
    return (len(token_times) - 1) / (token_times[-1] - token_times[0])


def streaming_chat(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The SDK arguments of one greedy streaming chat that reports its usage."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def stream_chat(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> Sample:
    """One greedy streaming chat through the bridge with the official SDK."""
    t0 = time.perf_counter()
    times: list[float] = []
    stream = client.chat.completions.create(**streaming_chat(model, prompt, max_tokens))
    tokens = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            times.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    if not times:
        raise RuntimeError("the stream carried no content")
    return Sample(times[0] - t0, decode_rate(times), tokens)


def service_env(data_dir: Path, grpc_port: int, http_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "MILLM_DATA_DIR": str(data_dir),
        "MILLM_GRPC_PORT": str(grpc_port),
        "MILLM_HTTP_PORT": str(http_port),
        "MILLM_INFERENCE_ADDRESS": f"127.0.0.1:{grpc_port}",
        "MILLM_LOG_LEVEL": "WARNING",
    }


def start_stack(data_dir: Path, logs: Path, procs: list[subprocess.Popen]) -> tuple[str, str]:
    """Starts inference service and bridge (appended to `procs`) and waits for health.

    Returns the bridge URL and the gRPC address.
    """
    grpc_port, http_port = free_port(), free_port()
    env = service_env(data_dir, grpc_port, http_port)
    for module in ("inference_service", "openai_bridge"):
        procs.append(spawn(module, env, logs / f"{module}.log"))
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_healthy(url, procs, START_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"stack did not start ({exc}); logs in {logs}") from exc
    return url, f"127.0.0.1:{grpc_port}"


def own_data_dir(tmp: Path) -> Path:
    """A fresh data dir whose converted built-in model is the shared test cache's."""
    shared = TEST_DATA_DIR / "models" / "converted"
    shared.mkdir(parents=True, exist_ok=True)  # a first run converts into the shared cache
    data_dir = tmp / "data"
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "converted").symlink_to(shared, target_is_directory=True)
    return data_dir


@contextmanager
def isolated_stack(name: str) -> Iterator[tuple[str, Path]]:
    """A stack of the benchmark's own, on a temporary data dir: yields (bridge URL, the
    temporary folder). Prints the command line first; on a failure prints the tail of
    each process's log; always stops both processes, also on SIGTERM."""
    print("command:", " ".join(sys.orig_argv))
    # A plain SIGTERM (timeout, CI) would skip `finally` and leave the stack running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with tempfile.TemporaryDirectory(prefix=f"millm-bench-{name}-") as tmp_name:
        tmp = Path(tmp_name)
        logs = tmp / "logs"
        logs.mkdir()
        procs: list[subprocess.Popen] = []
        try:
            url, _ = start_stack(own_data_dir(tmp), logs, procs)
            yield url, tmp
        except BaseException:
            for log in sorted(logs.glob("*.log")):
                print(f"--- {log.name} (tail)", file=sys.stderr)
                print(log.read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(procs)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), so 2 samples work."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
