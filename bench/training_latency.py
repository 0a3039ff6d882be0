"""Generation latency while an SAE trains on the served model, side by side in one run.

A real InferenceServer runs in this process. Greedy Generate over gRPC (a short chat
prompt, --max-tokens tokens) is timed in rounds that alternate: one while a long TopK
training run is going (started over gRPC, measured once it has made a step), then the
run is stopped and one round is timed idle, then the run is resumed, and so on, so
machine noise hits both phases alike. Reported: per round and as medians, time to first
token (TTFT; with the time the request waited for the worker lane, "queue", and its
prefill), client-side decode tokens/s, the ratios training/idle, and the run's progress
during the training rounds: steps made and how often it reported "paused for inference".
How long each stop took is printed too.

The policy measured: the trainer waits between optimizer steps and between harvest
slices while any request is admitted, so decode should run near idle speed; a request
that arrives mid-slice waits for that slice (queue shows it), one that arrives mid-step
shares the CPU with the rest of that step (prefill and decode show it).

Run: make bench-training-latency
  or .venv/bin/python bench/training_latency.py [--rounds 5] [--max-tokens 32] [--gap 1]
     [--layer 6] [--d-sae 4608] [--batch 4096] [--harvest-windows 8] [--documents 400]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from stack import decode_rate  # puts the repository root on sys.path, for `tests`
from transformers.utils import logging as hf_logging

from millm.v1 import inference_service_pb2 as ipb
from millm.v1 import inference_service_pb2_grpc as ipb_grpc
from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as pb
from millm.v1 import training_service_pb2_grpc as pb_grpc
from tests.fixtures.corpus import write_jsonl
from tests.fixtures.servers import running_server

PROMPT = "Write a short story about a lighthouse keeper."
PAUSED = "paused for inference"
STOPPED = tpb.TRAINING_STATE_STOPPED


@dataclass
class Round:
    phase: str
    ttft_s: float
    tok_s: float
    queue_s: float
    prefill_s: float
    tokens: int


async def generate(stub: ipb_grpc.InferenceServiceStub, max_tokens: int, phase: str) -> Round:
    start = ipb.GenerateStart(
        chat=ipb.ChatMessages(messages=[ipb.ChatMessage(role="user", content=PROMPT)]),
        sampling=ipb.SamplingParams(temperature=0, max_tokens=max_tokens),
    )
    t0 = time.perf_counter()
    times: list[float] = []
    finished = None
    async for response in stub.Generate(iter([ipb.GenerateRequest(start=start)])):
        if response.HasField("delta") and response.delta.token_ids:
            times.extend([time.perf_counter()] * len(response.delta.token_ids))
        if response.HasField("finished"):
            finished = response.finished
    assert finished is not None and times, "generation ended without tokens"
    tokens = finished.usage.completion_tokens
    queue_s, prefill_s = finished.queue_ns / 1e9, finished.prefill_ns / 1e9
    return Round(phase, times[0] - t0, decode_rate(times), queue_s, prefill_s, tokens)


async def get_run(stub: pb_grpc.TrainingServiceStub, run_id: str) -> tpb.TrainingRun:
    return (await stub.GetTrainingRun(pb.GetTrainingRunRequest(id=run_id))).run


async def wait_for(
    stub: pb_grpc.TrainingServiceStub,
    run_id: str,
    predicate: Callable[[tpb.TrainingRun], bool],
    timeout_s: float,
) -> tpb.TrainingRun:
    deadline = time.monotonic() + timeout_s
    while not predicate(current := await get_run(stub, run_id)):
        if current.state == tpb.TRAINING_STATE_FAILED or time.monotonic() > deadline:
            raise SystemExit(f"training run did not get there: {current}")
        await asyncio.sleep(0.1)
    return current


def show(sample: Round) -> Round:
    print(
        f"  {sample.phase:<8} TTFT {sample.ttft_s * 1000:7.1f} ms (queue"
        f" {sample.queue_s * 1000:6.1f}, prefill {sample.prefill_s * 1000:6.1f})"
        f"  decode {sample.tok_s:5.1f} tok/s  ({sample.tokens} tokens)",
        flush=True,
    )
    return sample


async def watch(stub: pb_grpc.TrainingServiceStub, run_id: str, stages: list[str]) -> None:
    async for update in stub.WatchTrainingRun(pb.WatchTrainingRunRequest(id=run_id)):
        stages.append(update.run.stage)


async def bench(args: argparse.Namespace, tmp: Path) -> None:
    root = tmp / "training-root"
    write_jsonl(root / "corpus.jsonl", count=args.documents)
    async with (
        running_server(args.data_dir, tmp / "data", training_data_root=root) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        inference = ipb_grpc.InferenceServiceStub(channel)
        training = pb_grpc.TrainingServiceStub(channel)
        await generate(inference, 8, "warm-up")
        config = tpb.TrainingConfig(
            corpus=tpb.CorpusSource(path="corpus.jsonl"),
            hook_name=f"blocks.{args.layer}.hook_resid_post",
            architecture=tpb.TRAINING_ARCHITECTURE_TOPK,
            d_sae=args.d_sae,
            k=32,
            batch_size_tokens=args.batch,
            total_tokens=args.batch * 1_000_000,  # longer than any measurement
            harvest_batch_windows=args.harvest_windows,
            checkpoint_every_steps=1 << 20,
        )
        print(
            f"  run: topk d_sae={args.d_sae} k=32 at {config.hook_name}, batch {args.batch},"
            f" {args.harvest_windows} windows of 128 tokens per harvest slice",
            flush=True,
        )
        started = await training.StartTraining(pb.StartTrainingRequest(name="bench", config=config))
        run_id, t0 = started.run.id, time.monotonic()
        await wait_for(training, run_id, lambda r: r.step >= 1, args.start_timeout)
        print(f"  run reached step 1 after {time.monotonic() - t0:.0f} s", flush=True)
        samples: list[Round] = []
        steps = pauses = 0
        for i in range(args.rounds):
            stages: list[str] = []
            watcher = asyncio.create_task(watch(training, run_id, stages))
            await asyncio.sleep(args.gap)  # so the request lands mid-step or mid-slice
            before = (await get_run(training, run_id)).step
            samples.append(show(await generate(inference, args.max_tokens, "training")))
            steps += (await get_run(training, run_id)).step - before
            watcher.cancel()
            pauses += sum(
                1 for a, b in zip(["", *stages], stages, strict=False) if b == PAUSED != a
            )
            t0 = time.monotonic()
            await training.StopTraining(pb.StopTrainingRequest(id=run_id))
            stopped = await wait_for(training, run_id, lambda r: r.state == STOPPED, 600)
            print(f"  (run stopped at step {stopped.step} in {time.monotonic() - t0:.1f} s)")
            await asyncio.sleep(args.gap)
            samples.append(show(await generate(inference, args.max_tokens, "idle")))
            if i + 1 < args.rounds:  # resume, and measure once it has made a step again
                await training.ResumeTraining(pb.ResumeTrainingRequest(id=run_id))
                moved = lambda r, at=stopped.step: r.step > at  # noqa: E731
                await wait_for(training, run_id, moved, args.start_timeout)

    print(f"\n{'phase':<9} {'TTFT ms':>8} {'queue ms':>9} {'decode tok/s':>13}   (medians)")
    medians = {}
    for phase in ("idle", "training"):
        group = [s for s in samples if s.phase == phase]
        ttft, queue, tok_s = (
            statistics.median(getattr(s, name) for s in group)
            for name in ("ttft_s", "queue_s", "tok_s")
        )
        medians[phase] = (ttft, tok_s)
        print(f"{phase:<9} {ttft * 1000:8.1f} {queue * 1000:9.1f} {tok_s:13.1f}")
    (idle_ttft, idle_tok_s), (busy_ttft, busy_tok_s) = medians["idle"], medians["training"]
    ratios = f"TTFT {busy_ttft / idle_ttft:.2f}x, decode tok/s {busy_tok_s / idle_tok_s:.2f}x"
    print(f"training/idle: {ratios}")
    print(
        f"training run during the {args.rounds} training rounds: {steps} steps made,"
        f" stage '{PAUSED}' reported {pauses} times"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--harvest-windows", type=int, default=8, help="windows per slice")
    parser.add_argument("--documents", type=int, default=400, help="synthetic corpus size")
    parser.add_argument("--start-timeout", type=float, default=600.0)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "millm")
    args = parser.parse_args()
    print("command:", " ".join(sys.orig_argv))
    logging.basicConfig(level=logging.WARNING)
    hf_logging.disable_progress_bar()  # "Loading weights" bars
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # a GOAWAY note at shutdown
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    main()
