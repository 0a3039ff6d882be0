"""`make demo`: train an SAE on the built-in model, find its upper-case features, steer.

What it does, each step through miLLM's own service and API:
1. starts the inference service in this process (its own data directory,
   `~/.cache/millm-demo` unless MILLM_DEMO_DIR says otherwise);
2. has the model write its own corpus (replies to varied prompts, some repeated in
   upper case), built once in parts and cached (scripts/demo_corpus.py);
3. trains a TopK SAE at layer 9 over gRPC (TrainingService), with live metrics;
4. finds the upper-case features with one call: FeatureService.ContrastFeatures with
   held-out replies and their upper-cased copies, ranked by AUROC, each with a
   suggested steering strength;
5. generates the same prompts unsteered and with the group added at multiples of
   the suggested strengths, and prints a table: upper-case share of letters, share
   of whole words from the model's vocabulary, coherence (scripts/demo_metrics.py).

Feature indices differ from run to run; they are chosen from the data each time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import grpc
from demo_corpus import build_corpus, missing_parts
from demo_metrics import coherence, upper_share, vocabulary_words, whole_word_share

from inference_service.config import InferenceSettings
from inference_service.server import InferenceServer
from millm.v1 import feature_service_pb2 as fpb
from millm.v1 import feature_service_pb2_grpc as fpb_grpc
from millm.v1 import inference_service_pb2 as ipb
from millm.v1 import inference_service_pb2_grpc as ipb_grpc
from millm.v1 import sae_service_pb2 as spb
from millm.v1 import sae_service_pb2_grpc as spb_grpc
from millm.v1 import steering_pb2
from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as pb
from millm.v1 import training_service_pb2_grpc as pb_grpc

HOOK = os.environ.get("MILLM_DEMO_HOOK", "blocks.9.hook_resid_post")
# Corpus parts of 64 prompts each, about 14k tokens with the upper-cased copies: 20
# give the ~290k tokens an earlier clean run used. Written once, then reused.
# Two parts (~28k tokens) is the measured recipe (docs/training.md#the-demo); more
# parts give the SAE more data and the corpus more minutes to write.
PARTS = int(os.environ.get("MILLM_DEMO_PARTS", "2"))
EPOCHS = int(os.environ.get("MILLM_DEMO_EPOCHS", "2"))
# At least this many optimizer steps, however small the corpus: the SAE needs steps.
MIN_STEPS = 256
D_SAE, K = 4608, 32  # expansion 8 on the model's 576 dimensions
# Small batches: the SAE needs optimizer steps more than it needs big ones
# (4,096-token batches gave 6 steps on the old corpus and a held-out FVU of 0.65).
BATCH_TOKENS = 1024
GROUP = 10  # features steered together
CONTRAST_TEXTS = 64
# Each feature's strength is this multiple of its suggested strength.
MULTIPLES = (0.3, 0.4, 0.5, 0.6)
QUESTIONS = (
    "What do you like to eat for breakfast?",
    "Describe a walk in the park.",
    "Give me a tip for learning to cook.",
)
MAX_TOKENS = 40


def say(text: str) -> None:
    print(text, flush=True)


async def main() -> None:
    data_dir = Path(os.environ.get("MILLM_DEMO_DIR", Path.home() / ".cache" / "millm-demo"))
    corpus_dir = data_dir / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    shared = Path.home() / ".cache" / "millm" / "models" / "converted"
    if shared.is_dir() and not (data_dir / "models" / "converted").exists():
        shutil.copytree(shared, data_dir / "models" / "converted")  # skip a 50 s conversion
    settings = InferenceSettings(grpc_port=0, data_dir=data_dir, training_data_root=corpus_dir)
    server = InferenceServer(settings)
    await server.start()
    await server.wait_until_ready()
    engine = server.host.engine
    assert engine is not None
    started = time.monotonic()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            corpus = await write_corpus(engine, corpus_dir / "self-written")
            docs = [
                json.loads(line)["text"]
                for part in sorted(corpus.glob("*.jsonl"))
                for line in part.read_text().splitlines()
            ]
            tokenizer = engine.loaded_model.tokenizer
            tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
            sae_id = await train(channel, corpus.name, tokens)
            await spb_grpc.SaeServiceStub(channel).AttachSae(spb.AttachSaeRequest(id=sae_id))
            # Replies as the model wrote them; ContrastFeatures upper-cases its own copies.
            texts = [d for d in docs if d != d.upper()][-CONTRAST_TEXTS:]
            hits = await find_caps_features(channel, sae_id, texts)
            await compare(channel, engine, hits)
    finally:
        await server.stop(0)
    say(f"\nDemo done in {time.monotonic() - started:.0f} s (data: {data_dir}).")


async def write_corpus(engine, folder: Path) -> Path:
    todo = missing_parts(folder, PARTS)
    if not todo:
        say(f"[1/4] Corpus: reusing {folder.name}/ ({PARTS} parts)")
        return folder
    say(
        f"[1/4] The model writes its own corpus: {len(todo)} of {PARTS} parts to go "
        "(cached; an interrupted run resumes)"
    )
    tokenizer = engine.loaded_model.tokenizer
    await asyncio.to_thread(
        engine.run_background,
        lambda model: build_corpus(model, tokenizer, folder, PARTS, lambda s: say(f"      {s}")),
    )
    return folder


async def train(channel, corpus_name: str, corpus_tokens: int) -> str:
    stub = pb_grpc.TrainingServiceStub(channel)
    config = tpb.TrainingConfig(
        corpus=tpb.CorpusSource(path=corpus_name),
        hook_name=HOOK,
        architecture=tpb.TRAINING_ARCHITECTURE_TOPK,
        d_sae=D_SAE,
        k=K,
        batch_size_tokens=BATCH_TOKENS,
        context_size=128,
        learning_rate=1e-3,
        warmup_steps=5,
        cache_activations=True,
        harvest_batch_windows=16,
        checkpoint_every_steps=50,
        seed=0,
    )
    # EPOCHS passes over the training split (95% of the windows, position 0 dropped),
    # or more for a small corpus.
    split = int(corpus_tokens * 0.95 * 127 / 128)
    config.total_tokens = max(split * EPOCHS, MIN_STEPS * BATCH_TOKENS)
    say(f"[2/4] Training a TopK SAE ({D_SAE} features, k={K}) at {HOOK}")
    say(
        f"      {config.total_tokens} tokens: {config.total_tokens / split:.1f} passes "
        f"over a {corpus_tokens}-token corpus"
    )
    started = await stub.StartTraining(pb.StartTrainingRequest(config=config, name="caps-demo"))
    began = time.monotonic()
    last_stage = ""
    async for update in stub.WatchTrainingRun(pb.WatchTrainingRunRequest(id=started.run.id)):
        run = update.run
        if run.stage != last_stage and not run.stage.startswith("training"):
            say(f"      {run.stage}")
        last_stage = run.stage
        for m in update.metrics:
            if m.eval or m.step % 50 == 0:
                kind = "held-out" if m.eval else "step    "
                say(
                    f"      {kind} {m.step:4d}/{run.total_steps}  loss {m.loss:9.1f}  "
                    f"FVU {m.fvu:.3f}  L0 {m.l0:5.1f}  dead {m.dead_features:4d}  "
                    f"({time.monotonic() - began:.0f} s)"
                )
    if run.state != tpb.TRAINING_STATE_COMPLETED:
        raise SystemExit(f"training ended {tpb.TrainingState.Name(run.state)}: {run.error}")
    say(f"      done: held-out FVU {run.final_eval.fvu:.3f}, L0 {run.final_eval.l0:.1f}")
    return run.sae_id


async def find_caps_features(channel, sae_id: str, texts: list[str]) -> list[fpb.ContrastHit]:
    say(f"[3/4] ContrastFeatures: {len(texts)} replies against their upper-cased copies")
    response = await fpb_grpc.FeatureServiceStub(channel).ContrastFeatures(
        fpb.ContrastFeaturesRequest(
            sae_id=sae_id,
            positive_texts=texts,
            transform=fpb.TEXT_TRANSFORM_UPPERCASE,
            measure=fpb.CONTRAST_MEASURE_AUROC,
            limit=GROUP,
        )
    )
    say("      feature   AUROC  firing-rate gap  mean on CAPS  elsewhere  suggested strength")
    for hit in response.hits:
        say(
            f"      {hit.index:7d}  {hit.auroc:6.3f}  {hit.firing_rate_gap:15.0%}  "
            f"{hit.mean_positive:12.2f}  {hit.mean_negative:9.2f}  {hit.suggested_strength:18.2f}"
        )
    return list(response.hits)


async def generate(stub, question: str, features: list[steering_pb2.SteeringFeature]) -> str:
    start = ipb.GenerateStart(
        chat=ipb.ChatMessages(messages=[ipb.ChatMessage(role="user", content=question)]),
        sampling=ipb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
    )
    if features:
        start.steering.features.CopyFrom(steering_pb2.SteeringSet(features=features, enabled=True))
    text = []
    async for message in stub.Generate(iter([ipb.GenerateRequest(start=start)])):
        if message.HasField("delta"):
            text.append(message.delta.text)
    return "".join(text).strip()


def steering(hits: list[fpb.ContrastHit], multiple: float) -> list[steering_pb2.SteeringFeature]:
    return [
        steering_pb2.SteeringFeature(
            index=hit.index,
            mode=steering_pb2.STEERING_MODE_ADD,
            strength=multiple * hit.suggested_strength,
        )
        for hit in hits
        if multiple
    ]


async def compare(channel, engine, hits: list[fpb.ContrastHit]) -> None:
    say(f"[4/4] Steering: the {len(hits)} features added together, each at a multiple of")
    say("      its suggested strength; the same prompts, greedy decoding")
    stub = ipb_grpc.InferenceServiceStub(channel)
    tokenizer = engine.loaded_model.tokenizer
    words = await asyncio.to_thread(vocabulary_words, tokenizer)
    rows = []
    for multiple in (0.0, *MULTIPLES):
        steer = steering(hits, multiple)
        replies = await asyncio.gather(*(generate(stub, q, steer) for q in QUESTIONS))
        scores = []
        for question, reply in zip(QUESTIONS, replies, strict=True):
            scores.append(
                await asyncio.to_thread(
                    engine.run_background,
                    lambda model, q=question, r=reply: coherence(model, tokenizer, q, r),
                )
            )
            say(f"\n  x{multiple:<4.2g} | {question}\n        | {reply!r}")
        rows.append(
            (
                multiple,
                statistics.mean(upper_share(r) for r in replies),
                statistics.mean(whole_word_share(r, words) for r in replies),
                statistics.mean(scores),
                replies[0],
            )
        )
    say("\n  summary (mean over the prompts; coherence: log-prob/token of the case-folded reply)")
    say("  strength  upper-case  whole words  coherence  sample")
    for multiple, upper, whole, score, sample in rows:
        label = "default" if not multiple else f"x{multiple:g}"
        say(f"  {label:8s}  {upper:10.0%}  {whole:11.0%}  {score:9.2f}  {sample[:60]!r}")


if __name__ == "__main__":
    asyncio.run(main())
