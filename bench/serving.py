"""Serving overhead, measured side by side in one run.

For a short and a ~500-token prompt, time to first token (TTFT) and decode
tokens/s of the built-in model:
  (a) through the bridge with the official `openai` SDK, streaming;
  (b) through gRPC directly;
  (c) plain `transformers` `generate` in this process.
Rounds interleave a, b, c so machine noise hits all three alike; medians are
reported with the ratios the serving targets are stated in:
  (a) decode >= 0.95x (c), and (a) TTFT - (c) TTFT < 10 ms.

Run: make bench   (or .venv/bin/python bench/serving.py --rounds 5 --max-tokens 64)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import openai
import torch
from stack import Sample, decode_rate, start_stack, stop, stream_chat
from transformers.generation.streamers import BaseStreamer

from inference_service.config import InferenceSettings
from inference_service.engine.loader import load_model
from millm.v1 import inference_service_pb2 as pb
from millm.v1 import inference_service_pb2_grpc as pb_grpc
from tests.conftest import TEST_DATA_DIR

MODEL = "smollm2-135m-instruct"
SHORT = "Write a long story about a lighthouse keeper."
LONG = (
    "Here are some notes. "
    + " ".join(
        f"Note {i}: the ship left the harbour at dawn and the sea was calm." for i in range(38)
    )
    + " Now write a long story about a lighthouse keeper."
)


async def run_grpc(stub: pb_grpc.InferenceServiceStub, prompt: str, max_tokens: int) -> Sample:
    start = pb.GenerateStart(
        chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=prompt)]),
        sampling=pb.SamplingParams(temperature=0, max_tokens=max_tokens),
    )
    t0 = time.perf_counter()
    times: list[float] = []
    tokens = 0
    async for response in stub.Generate(iter([pb.GenerateRequest(start=start)])):
        if response.HasField("delta") and response.delta.token_ids:
            times.append(time.perf_counter())
        if response.HasField("finished"):
            tokens = response.finished.usage.completion_tokens
    return Sample(times[0] - t0, decode_rate(times), tokens)


class _TimingStreamer(BaseStreamer):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_plain(loaded, prompt: str, max_tokens: int) -> Sample:
    tokenizer, model = loaded.tokenizer, loaded.model
    t0 = time.perf_counter()
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    streamer = _TimingStreamer()
    with torch.inference_mode():
        out = model.generate(
            ids,
            max_new_tokens=max_tokens,
            do_sample=False,
            streamer=streamer,
            pad_token_id=tokenizer.eos_token_id,
        )
    return Sample(streamer.times[0] - t0, decode_rate(streamer.times), out.shape[1] - ids.shape[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="millm-bench-"))
    procs: list = []
    url, grpc_address = start_stack(TEST_DATA_DIR, logs, procs)
    try:
        loaded = load_model(InferenceSettings(data_dir=TEST_DATA_DIR))
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        # grpc.aio binds a channel to the event loop current at its creation.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        channel = grpc.aio.insecure_channel(grpc_address)
        stub = pb_grpc.InferenceServiceStub(channel)
        print(
            f"model {MODEL}, float32, torch threads {torch.get_num_threads()}, "
            f"{args.rounds} rounds, max_tokens {args.max_tokens}, greedy"
        )
        print(f"{'prompt':<7} {'path':<22} {'TTFT ms':>9} {'decode tok/s':>13} {'tokens':>7}")
        for name, prompt in (("short", SHORT), ("long", LONG)):
            runs = {
                "a bridge+openai SDK": lambda p=prompt: stream_chat(
                    client, MODEL, p, args.max_tokens
                ),
                "b gRPC direct": lambda p=prompt: loop.run_until_complete(
                    run_grpc(stub, p, args.max_tokens)
                ),
                "c transformers": lambda p=prompt: run_plain(loaded, p, args.max_tokens),
            }
            for fn in runs.values():  # warm-up, not recorded
                fn()
            samples: dict[str, list[Sample]] = {k: [] for k in runs}
            for _ in range(args.rounds):
                for key, fn in runs.items():
                    samples[key].append(fn())
            med = {
                k: (
                    statistics.median(s.ttft_s for s in v) * 1000,
                    statistics.median(s.decode_tok_s for s in v),
                    v[0].tokens,
                )
                for k, v in samples.items()
            }
            for key, (ttft, rate, tokens) in med.items():
                print(f"{name:<7} {key:<22} {ttft:>9.1f} {rate:>13.1f} {tokens:>7}")
            a, b, c = med["a bridge+openai SDK"], med["b gRPC direct"], med["c transformers"]
            print(
                f"{name:<7} ratios: decode a/c {a[1] / c[1]:.3f} (target >= 0.95), "
                f"b/c {b[1] / c[1]:.3f}; "
                f"TTFT a-c {a[0] - c[0]:+.1f} ms (target < 10), b-c {b[0] - c[0]:+.1f} ms"
            )
        loop.run_until_complete(channel.close())
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
