"""Quantization modes of the built-in model, measured side by side in one run.

Through the bridge with the official `openai` SDK, streaming, greedy, same chat
prompt. For each mode (float32, bfloat16, int8_dynamic, bnb_8bit, bnb_4bit) the
served model is switched with `POST /api/v1/models/builtin/load` (its `load_s`
is the warm load from the cached safetensors copy), one warm-up request runs,
then `--rounds` requests give the median time to first token (TTFT) and decode
tokens/s (tokens after the first over their time). Switching costs seconds, so
all rounds of one mode run together; float32 runs again at the end so drift of
the machine shows next to the first pass.

Then the start of a fresh inference service until gRPC health is SERVING, with
an empty data dir (the GGUF to safetensors conversion runs) and with the warm
shared data dir `.cache/millm`, once each.

Run: .venv/bin/python bench/quantization.py [--rounds 3] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stack import START_TIMEOUT_S, service_env, spawn, start_stack, stop, stream_chat

from tests.conftest import TEST_DATA_DIR, free_port

PROMPT = "Write a long story about a lighthouse keeper."
# (label, dtype, quantization); the last float32 pass shows drift.
MODES = [
    ("float32", "float32", "none"),
    ("bfloat16", "bfloat16", "none"),
    ("int8_dynamic", "float32", "int8_dynamic"),
    ("bnb_8bit", "float32", "bnb_8bit"),
    ("bnb_4bit", "float32", "bnb_4bit"),
    ("float32 (2nd pass)", "float32", "none"),
]


@dataclass
class Row:
    label: str
    load_s: float | None = None
    ttft_ms: float | None = None
    decode_tok_s: float | None = None
    tokens: int | None = None
    spread: str = ""
    error: str = ""


def time_service_start(data_dir: Path, log: Path) -> float:
    """Seconds from spawning an inference service until gRPC health says SERVING."""
    grpc_port = free_port()
    env = service_env(data_dir, grpc_port, free_port())
    t0 = time.perf_counter()
    proc = spawn("inference_service", env, log)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() - t0 < START_TIMEOUT_S:
                if proc.poll() is not None:
                    raise SystemExit(f"inference service exited early; log in {log}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - t0
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise SystemExit(f"inference service did not become SERVING; log in {log}")
    finally:
        stop([proc])


def measure_mode(
    http: httpx.Client,
    client: openai.OpenAI,
    label: str,
    dtype: str,
    quantization: str,
    args: argparse.Namespace,
) -> Row:
    row = Row(label)
    response = http.post(
        "/api/v1/models/builtin/load", json={"dtype": dtype, "quantization": quantization}
    )
    if response.status_code != 200:
        row.error = f"load {response.status_code}: {response.text[:120]}"
        return row
    row.load_s = response.json()["load_s"]
    model = client.models.list().data[0].id
    stream_chat(client, model, PROMPT, args.max_tokens)  # warm-up, not recorded
    samples = [stream_chat(client, model, PROMPT, args.max_tokens) for _ in range(args.rounds)]
    rates = [s.decode_tok_s for s in samples]
    row.ttft_ms = statistics.median(s.ttft_s for s in samples) * 1000
    row.decode_tok_s = statistics.median(rates)
    row.tokens = samples[0].tokens
    row.spread = f"{min(rates):.1f}-{max(rates):.1f}"
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    print("command:", shlex.join(sys.orig_argv), f"(cwd {os.getcwd()})")
    print(
        f"model builtin (SmolLM2-135M-Instruct), torch threads {torch.get_num_threads()}, "
        f"{args.rounds} rounds (median), max_tokens {args.max_tokens}, greedy, "
        "bridge + openai SDK streaming",
        flush=True,
    )
    started = time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="millm-bench-quant-"))
    procs: list[subprocess.Popen] = []
    rows: list[Row] = []
    try:
        url, _ = start_stack(TEST_DATA_DIR, logs, procs)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        with httpx.Client(base_url=url, timeout=300) as http:
            for label, dtype, quantization in MODES:
                try:
                    row = measure_mode(http, client, label, dtype, quantization, args)
                except (openai.OpenAIError, httpx.HTTPError, RuntimeError) as error:
                    row = Row(label, error=f"{type(error).__name__}: {error}"[:120])
                rows.append(row)
                print(
                    f"  measured {label}: load {_fmt(row.load_s, '.2f')} s, "
                    f"decode {_fmt(row.decode_tok_s, '.1f')} tok/s {row.error}",
                    flush=True,
                )
        stop(procs)
        procs.clear()

        # Cold first, then warm; nothing else runs meanwhile.
        empty = Path(tempfile.mkdtemp(prefix="millm-bench-empty-"))
        try:
            cold_s = time_service_start(empty, logs / "cold.log")
        finally:
            shutil.rmtree(empty, ignore_errors=True)
        print(f"  measured cold start: {cold_s:.1f} s", flush=True)
        warm_s = time_service_start(TEST_DATA_DIR, logs / "warm.log")
        print(f"  measured warm start: {warm_s:.1f} s", flush=True)
    finally:
        stop(procs)

    base = rows[0].decode_tok_s if rows and rows[0].decode_tok_s else None
    print()
    print(
        f"{'mode':<19} {'load s':>7} {'TTFT ms':>8} {'decode tok/s':>13} "
        f"{'vs float32':>11} {'range':>10} {'tokens':>7}"
    )
    for row in rows:
        ratio = row.decode_tok_s / base if base and row.decode_tok_s else None
        print(
            f"{row.label:<19} {_fmt(row.load_s, '.2f'):>7} {_fmt(row.ttft_ms, '.1f'):>8} "
            f"{_fmt(row.decode_tok_s, '.1f'):>13} {_fmt(ratio, '.2f') + 'x':>11} "
            f"{row.spread:>10} {_fmt(row.tokens, 'd'):>7}"
            + (f"  ERROR {row.error}" if row.error else "")
        )
    print(
        "load s: warm load via POST /api/v1/models/builtin/load (cached safetensors copy); "
        "vs float32: decode over the first float32 pass"
    )
    print()
    print(f"service start, empty data dir (GGUF conversion): {cold_s:6.1f} s")
    print(f"service start, warm data dir .cache/millm:       {warm_s:6.1f} s")
    print(f"cold - warm (conversion):                        {cold_s - warm_s:6.1f} s")
    print(f"\ntotal wall {time.perf_counter() - started:.0f} s; logs in {logs}")


if __name__ == "__main__":
    main()
