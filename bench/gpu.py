"""The GPU path against plain `transformers` on the same GPU, side by side in one run.

Measured (greedy, every request forced to its full length: EOS is banned through
`logit_bias` for the engine and `min_new_tokens` for `generate`):
  - decode tokens/s at 1 (single stream), 8, 32 and 64 concurrent clients (--clients):
    the engine's continuous batching (Engine.submit_generation, all clients at once)
    against `model.generate` on the same prompts as one left-padded batch;
  - steering cost: the engine at --cost-clients clients, every row steering its own
    feature of a random SAE (--d-sae features, blocks.L.hook_resid_post at mid depth),
    against the same clients unsteered;
  - monitoring cost: the same, every row asking for its top-10 features per token;
  - SAE training tokens/s: miLLM's Trainer (TopK, --train-d-sae features, k 32,
    4,096-token batches, on the device) on activations harvested from the model,
    against a minimal plain-PyTorch TopK SAE loop (Adam) on the same rows.
Rounds interleave the contenders and alternate their order; every figure is the
median over --rounds rounds, with the ratio ours / reference.

Prints a table and writes JSON to bench/results/gpu-<UTC time>.json.

On a machine without CUDA it exits (status 2) with a message; --allow-cpu runs the
same code on the CPU, for checking the script itself (its numbers say nothing
about a GPU).

Run: make bench-gpu
  (or .venv/bin/python bench/gpu.py [--clients 1,8,32,64] [--tokens 128] [--rounds 5])
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
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
from inference_service.monitoring.types import Selection  # noqa: E402
from inference_service.sae.attachments import SaeAttachments  # noqa: E402
from inference_service.sae.hook_sites import HookSite, find_decoder_layers, hidden_size  # noqa: E402
from inference_service.steering.runtime import SteeringRuntime  # noqa: E402
from inference_service.steering.state import SteeringState  # noqa: E402
from inference_service.steering.types import SteeringChoice, SteeringFeature, SteeringSet  # noqa: E402
from tests.fixtures.saes import active_sae, random_sae  # noqa: E402

DATA_DIR = REPO / ".cache" / "millm"
RESULTS = REPO / "bench" / "results"
PROMPTS = (
    "Write a long story about a lighthouse keeper.",
    "Write a long essay on the history of the printing press.",
    "Describe, in great detail, a day in the life of a medieval blacksmith.",
    "Explain at length how a steam engine works.",
)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--cost-clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--train-d-sae", type=int, default=8192)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--allow-cpu", action="store_true")
    return parser.parse_args()


def prompts(loaded: LoadedModel, n: int) -> list[list[int]]:
    return [
        render_chat(loaded.tokenizer, [ChatTurn("user", PROMPTS[i % len(PROMPTS)] + f" ({i})")])
        for i in range(n)
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- decode --------------------------------------------------------------------------


async def engine_round(
    engine: Engine,
    loaded: LoadedModel,
    batch: list[list[int]],
    tokens: int,
    observer_for: Callable[[int], Any] | None = None,
) -> float:
    bias = tuple((eos, -100.0) for eos in sorted(loaded.eos_token_ids))
    sampling = SamplingOptions(0.0, max_tokens=tokens, logit_bias=bias)

    async def one(i: int, prompt: list[int]) -> int:
        observer = observer_for(i) if observer_for else None
        handle = engine.submit_generation(
            GenerationRequest(f"b{i}", tuple(prompt), sampling, observer=observer)
        )
        count = 0
        async for event in handle.events():
            if isinstance(event, TokenEvent):
                count += len(event.token_ids)
            else:
                assert isinstance(event, FinishedEvent)
        return count

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(i, p) for i, p in enumerate(batch)))
    return sum(counts) / (time.perf_counter() - started)


def hf_round(loaded: LoadedModel, batch: list[list[int]], tokens: int) -> float:
    tokenizer, model = loaded.tokenizer, loaded.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=loaded.device)
    mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in batch], device=loaded.device
    )
    sync(loaded.device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=pad,
        )
    sync(loaded.device)
    return (out.shape[1] - width) * len(batch) / (time.perf_counter() - started)


# ---- SAE training ------------------------------------------------------------------------


def harvest_rows(loaded: LoadedModel, layer: int, rows: int) -> torch.Tensor:
    """[rows, d] float32 residual activations on the model's device."""
    from inference_service.training.sites import capture, capture_site

    site = capture_site(loaded.model, f"blocks.{layer}.hook_resid_post", "hook")
    text = " ".join(PROMPTS) * 64
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids[0]
    window = 128
    usable = (len(ids) // window) * window
    windows = ids[:usable].view(-1, window)
    out: list[torch.Tensor] = []
    total = 0
    while total < rows:
        (acts,) = capture(loaded.model, [site], windows, loaded.device)
        flat = acts.reshape(-1, acts.shape[-1])
        out.append(flat)
        total += flat.shape[0]
    return torch.cat(out)[:rows]


def ours_training(loaded: LoadedModel, rows: torch.Tensor, d_sae: int, steps: int) -> float:
    from inference_service.training.activations import BatchStream, Cursor
    from inference_service.training.config import ModelFacts, resolve, with_defaults
    from inference_service.training.trainer import Trainer

    d = rows.shape[1]
    config = resolve(
        with_defaults(
            dict(
                hook_name="blocks.1.hook_resid_post",
                corpus_id="bench",
                architecture="topk",
                d_sae=d_sae,
                k=32,
                batch_size_tokens=4096,
                checkpoint_every_steps=1_000_000,
            )
        ),
        ModelFacts(d, d, 4096),
    )

    class Rows:
        def rows(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = rows.view(-1, 128, d)[windows.to(rows.device)].reshape(-1, d)
            return x, x

    windows = rows.shape[0] // 128
    stream = BatchStream(
        Rows(),
        windows,
        batch_size=4096,
        chunk_windows=windows,
        seed=0,
        start=Cursor(),
        device=loaded.device,
    )
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            config,
            d_in=d,
            d_out=d,
            stream=stream,
            eval_rows=(rows[:4096], rows[:4096]),
            steps=steps,
            checkpoint_dir=Path(folder),
            device=loaded.device,
        )
        trainer._train_step()  # warm-up (kernels, allocator)
        sync(loaded.device)
        started = time.perf_counter()
        for _ in range(steps):
            trainer._train_step()
        sync(loaded.device)
        return steps * 4096 / (time.perf_counter() - started)


def plain_training(rows: torch.Tensor, d_sae: int, steps: int) -> float:
    """A minimal TopK SAE in plain PyTorch: the floor any trainer is measured against."""
    d = rows.shape[1]
    generator = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, d, generator=generator).to(rows.device)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    params = [
        torch.nn.Parameter(w_dec.T.clone()),
        torch.nn.Parameter(torch.zeros(d_sae, device=rows.device)),
        torch.nn.Parameter(w_dec),
        torch.nn.Parameter(torch.zeros(d, device=rows.device)),
    ]
    w_enc, b_enc, w_dec_p, b_dec = params
    optimizer = torch.optim.Adam(params, lr=3e-4)

    def step(i: int) -> None:
        start = (i * 4096) % (rows.shape[0] - 4096 + 1)
        x = rows[start : start + 4096]
        pre = (x - b_dec) @ w_enc + b_enc
        values, indices = pre.topk(32, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
        loss = ((f @ w_dec_p + b_dec - x) ** 2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(0)
    sync(rows.device)
    started = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    sync(rows.device)
    return steps * 4096 / (time.perf_counter() - started)


# ---- the run ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    clients = [int(c) for c in args.clients.split(",")]
    settings = InferenceSettings(
        data_dir=DATA_DIR,
        model=args.model,
        dtype=args.dtype,
        device=device.type,  # type: ignore[arg-type]
        max_batch_size=max([*clients, args.cost_clients]),
        max_queue=max([*clients, args.cost_clients]) + 4,
    )
    loaded = load_model(settings)
    engine = Engine(loaded, settings)
    layers = find_decoder_layers(loaded.model)
    layer = len(layers) // 2
    site = HookSite(layer, "resid_post")
    sae = random_sae(
        d_in=hidden_size(loaded.model), d_sae=args.d_sae, hook_name=site.hook_name, model_name=None
    )
    attachments = SaeAttachments()
    attachment, _ = await attachments.attach(
        engine, layers, "bench", site, lambda where: sae.to(where)
    )
    active = active_sae(sae, hook=attachment.hook)
    runtime = SteeringRuntime(SteeringState(lambda: active), lambda name: SteeringSet(()))

    def steered(i: int) -> Any:
        feature = SteeringFeature((i * 997 + 13) % args.d_sae, "add", 8.0 + i % 4)
        choice = SteeringChoice("features", steering=SteeringSet((feature,)))
        return runtime.context(
            f"s{i}", "generate", choice, Selection(), lambda ids: [""] * len(ids)
        )

    def monitored(i: int) -> Any:
        choice = SteeringChoice("disabled")
        return runtime.context(
            f"m{i}", "generate", choice, Selection(top_k=10), lambda ids: [""] * len(ids)
        )

    results: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    # Warm-up: one short round each, so no figure carries first-call costs.
    await engine_round(engine, loaded, prompts(loaded, 2), 4)
    hf_round(loaded, prompts(loaded, 2), 4)

    for r in range(args.rounds):
        for n in clients:
            batch = prompts(loaded, n)
            order = ["ours", "hf"] if r % 2 == 0 else ["hf", "ours"]
            for who in order:
                if who == "ours":
                    add(f"decode/{n}/ours", await engine_round(engine, loaded, batch, args.tokens))
                else:
                    add(f"decode/{n}/hf", hf_round(loaded, batch, args.tokens))
        batch = prompts(loaded, args.cost_clients)
        modes: list[tuple[str, Callable[[int], Any] | None]] = [
            ("plain", None),
            ("steered", steered),
            ("monitored", monitored),
        ]
        for mode, observer in modes if r % 2 == 0 else list(reversed(modes)):
            value = await engine_round(engine, loaded, batch, args.tokens, observer)
            add(f"cost/{mode}", value)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    await attachments.detach(engine, site)
    rows = await engine.call_on_lane(lambda: harvest_rows(loaded, layer, 4096 * 16))
    for r in range(max(1, args.rounds // 2)):
        order = ["ours", "plain"] if r % 2 == 0 else ["plain", "ours"]
        for who in order:
            if who == "ours":
                add("train/ours", ours_training(loaded, rows, args.train_d_sae, args.train_steps))
            else:
                add("train/plain", plain_training(rows, args.train_d_sae, args.train_steps))
    engine.shutdown()
    medians = {name: median(values) for name, values in results.items()}
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": loaded.description.id,
        "dtype": str(loaded.description.dtype),
        "tokens": args.tokens,
        "rounds": args.rounds,
        "clients": clients,
        "medians": medians,
        "samples": results,
    }


def table(report: dict[str, Any]) -> str:
    m = report["medians"]
    lines = [
        f"device {report['device']}, model {report['model']} ({report['dtype']}), "
        f"{report['tokens']} tokens, medians of {report['rounds']} rounds",
        f"{'what':<32}{'miLLM':>12}{'reference':>12}{'ratio':>8}",
    ]
    for n in report["clients"]:
        ours, ref = m[f"decode/{n}/ours"], m[f"decode/{n}/hf"]
        label = f"decode tok/s, {n} client(s)"
        lines.append(f"{label:<32}{ours:>12.1f}{ref:>12.1f}{ours / ref:>8.2f}")
    plain = m["cost/plain"]
    for mode in ("steered", "monitored"):
        value = m[f"cost/{mode}"]
        label = f"{mode} tok/s (vs plain)"
        lines.append(
            f"{label:<32}{value:>12.1f}{plain:>12.1f}{value / plain:>8.2f}"
            f"   cost {100 * (1 - value / plain):.1f} %"
        )
    ours, ref = m["train/ours"], m["train/plain"]
    label = "SAE training tokens/s"
    lines.append(f"{label:<32}{ours:>12.0f}{ref:>12.0f}{ours / ref:>8.2f}")
    lines.append("reference: transformers generate (decode); plain PyTorch TopK loop (training)")
    return "\n".join(lines)


def main() -> None:
    args = parse()
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.allow_cpu:
        device = torch.device("cpu")
        print("no CUDA device: running on the CPU (--allow-cpu); these are no GPU numbers")
    else:
        print("bench-gpu needs a CUDA device and none is available here (torch sees no GPU).")
        print("Run it on a GPU machine: make bench-gpu  (or --allow-cpu to check the script)")
        raise SystemExit(2)
    report = asyncio.run(run(args, device))
    report["when_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(table(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"gpu-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
