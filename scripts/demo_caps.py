"""`make demo`: train an SAE on the built-in model, find its upper-case features, steer.

What it does, each step through miLLM's own service and API:
1. starts the inference service in this process (its own data directory,
   `~/.cache/millm-demo` unless MILLM_DEMO_DIR says otherwise);
2. has the model write its own corpus (replies to varied prompts, some repeated in
   upper case), cached for later runs;
3. trains a TopK SAE at a middle layer over gRPC (TrainingService), with live metrics;
4. finds the features that best separate upper-case tokens from the rest, on
   held-out documents, and sizes a group of them against the residual norm;
5. generates the same prompts unsteered and steered (per-request steering through
   Generate), printing both with the share of upper-case letters and a coherence
   score: the unsteered model's mean log-probability of the steered text with its
   case folded, so it measures words, not capitals.

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
import torch

from inference_service.config import InferenceSettings
from inference_service.engine.prompts import render_chat
from inference_service.engine.types import ChatTurn
from inference_service.sae.formats import load_sae
from inference_service.server import InferenceServer
from inference_service.training.self_corpus import generate_corpus, write_jsonl
from inference_service.training.sites import capture, capture_site
from millm.v1 import inference_service_pb2 as ipb
from millm.v1 import inference_service_pb2_grpc as ipb_grpc
from millm.v1 import sae_service_pb2 as spb
from millm.v1 import sae_service_pb2_grpc as spb_grpc
from millm.v1 import steering_pb2
from millm.v1 import training_pb2 as tpb
from millm.v1 import training_service_pb2 as pb
from millm.v1 import training_service_pb2_grpc as pb_grpc

HOOK = os.environ.get("MILLM_DEMO_HOOK", "blocks.6.hook_resid_post")
PROMPTS = int(os.environ.get("MILLM_DEMO_PROMPTS", "32"))
EPOCHS = int(os.environ.get("MILLM_DEMO_EPOCHS", "4"))
D_SAE, K, GROUP = 2304, 32, 10
# Strength of the group, as a share of the typical residual norm at the hook.
SHARES = (0.3, 0.4, 0.5)
QUESTIONS = (
    "What do you like to eat for breakfast?",
    "Describe a walk in the park.",
    "Give me a tip for learning to cook.",
)
MAX_TOKENS = 40


def say(text: str) -> None:
    print(text, flush=True)


def caps_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def is_caps_token(piece: str) -> bool | None:
    """True for an upper-case word piece, False for a lower/mixed one, None without letters."""
    letters = [c for c in piece if c.isalpha()]
    if len(letters) < 2:
        return None
    return all(c.isupper() for c in letters)


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
            corpus = await write_corpus(engine, corpus_dir)
            docs = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
            tokenizer = engine.loaded_model.tokenizer
            tokens = sum(len(tokenizer(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
            sae_id = await train(channel, corpus.name, tokens)
            folder = server.saes.catalog.get(sae_id).folder
            features, norm = await find_caps_features(engine, folder, docs[-120:])
            saes = spb_grpc.SaeServiceStub(channel)
            await saes.AttachSae(spb.AttachSaeRequest(id=sae_id))
            await compare(channel, engine, folder, features, norm)
    finally:
        await server.stop(0)
    say(f"\nDemo done in {time.monotonic() - started:.0f} s (data: {data_dir}).")


async def write_corpus(engine, corpus_dir: Path) -> Path:
    path = corpus_dir / f"self-written-{PROMPTS}.jsonl"
    if path.exists():
        say(f"[1/4] Corpus: reusing {path.name}")
        return path
    say(f"[1/4] The model writes its own corpus ({PROMPTS} prompts, some repeated in upper case)")
    tokenizer = engine.loaded_model.tokenizer
    began = time.monotonic()

    def progress(done: int, total: int) -> None:
        say(f"      {done}/{total} prompts answered ({time.monotonic() - began:.0f} s)")

    docs = await asyncio.to_thread(
        engine.run_background,
        lambda model: generate_corpus(
            model,
            tokenizer,
            n_prompts=PROMPTS,
            max_new_tokens=160,
            batch_size=32,
            seed=0,
            upper_fraction=0.3,
            progress=progress,
        ),
    )
    write_jsonl(docs, path)
    return path


async def train(channel, corpus_name: str, corpus_tokens: int) -> str:
    stub = pb_grpc.TrainingServiceStub(channel)
    config = tpb.TrainingConfig(
        corpus=tpb.CorpusSource(path=corpus_name),
        hook_name=HOOK,
        architecture=tpb.TRAINING_ARCHITECTURE_TOPK,
        d_sae=D_SAE,
        k=K,
        batch_size_tokens=4096,
        context_size=128,
        learning_rate=1e-3,
        warmup_steps=5,
        cache_activations=True,
        harvest_batch_windows=16,
        checkpoint_every_steps=20,
        seed=0,
    )
    # EPOCHS passes over the training split (95% of the windows, position 0 dropped).
    config.total_tokens = int(corpus_tokens * 0.95 * 127 / 128) * EPOCHS
    say(f"[2/4] Training a TopK SAE ({D_SAE} features, k={K}) at {HOOK}")
    say(f"      {config.total_tokens} tokens: {EPOCHS} passes over a {corpus_tokens}-token corpus")
    started = await stub.StartTraining(pb.StartTrainingRequest(config=config, name="caps-demo"))
    began = time.monotonic()
    last_stage = ""
    async for update in stub.WatchTrainingRun(pb.WatchTrainingRunRequest(id=started.run.id)):
        run = update.run
        if run.stage != last_stage and not run.stage.startswith("training"):
            say(f"      {run.stage}")
        last_stage = run.stage
        for m in update.metrics:
            if m.eval or m.step % 5 == 0:
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


async def find_caps_features(engine, folder: Path, docs: list[str]) -> tuple[list[int], float]:
    say("[3/4] Finding the features that fire on upper-case text")
    sae = load_sae(folder)
    tokenizer = engine.loaded_model.tokenizer
    model = engine.loaded_model.model
    site = capture_site(model, HOOK, "hook_name")
    acts, labels, norms = [], [], []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"][:96]
        if len(ids) < 8:
            continue
        (hidden,) = await asyncio.to_thread(
            engine.run_background, lambda m, ids=ids: capture(m, [site], torch.tensor([ids]))
        )
        h = hidden[0, 1:]
        pieces = [tokenizer.decode([i]) for i in ids[1:]]
        with torch.no_grad():
            f = sae.encode(h)
        for row, piece, vector in zip(f, pieces, h, strict=True):
            label = is_caps_token(piece)
            if label is not None:
                acts.append(row)
                labels.append(label)
                norms.append(float(vector.norm()))
    f = torch.stack(acts)
    caps = torch.tensor(labels)
    fires = (f > 0).float()
    # Fires on upper-case pieces, rarely elsewhere: the gap in firing rates.
    score = fires[caps].mean(0) - fires[~caps].mean(0)
    chosen = score.topk(GROUP).indices.tolist()
    say(f"      {int(caps.sum())} upper-case and {int((~caps).sum())} other word pieces")
    say("      feature  fires on CAPS  fires elsewhere")
    for i in chosen:
        say(f"      {i:7d}  {fires[caps, i].mean():12.0%}  {fires[~caps, i].mean():15.0%}")
    return chosen, statistics.median(norms)


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
    return "".join(text)


def coherence(engine, question: str, reply: str) -> float:
    """Mean log-probability per token of the case-folded reply under the unsteered model."""
    tokenizer = engine.loaded_model.tokenizer
    prompt = render_chat(tokenizer, [ChatTurn(role="user", content=question)])
    answer = tokenizer(reply.lower(), add_special_tokens=False)["input_ids"]
    if not answer:
        return float("nan")
    ids = torch.tensor([prompt + answer])

    def score(model) -> float:
        with torch.inference_mode():
            logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 : -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return float(logp.gather(1, torch.tensor(answer)[:, None]).mean())

    return engine.run_background(score)


async def compare(channel, engine, folder: Path, features: list[int], norm: float) -> None:
    sae = load_sae(folder)
    direction = sae.weights.W_dec[features].sum(0)
    stub = ipb_grpc.InferenceServiceStub(channel)
    say(f"[4/4] Steering: add the {GROUP} features as a group (typical residual norm {norm:.1f})")
    rows = []
    for share in (0.0, *SHARES):
        # Each feature gets the same strength; together they reach share x norm.
        strength = share * norm / float(direction.norm())
        steer = (
            [
                steering_pb2.SteeringFeature(
                    index=i, mode=steering_pb2.STEERING_MODE_ADD, strength=strength
                )
                for i in features
            ]
            if share
            else []
        )
        label = "default" if not share else f"steered {share:.1f}x"
        for question in QUESTIONS:
            reply = await generate(stub, question, steer)
            score = await asyncio.to_thread(coherence, engine, question, reply)
            rows.append((label, question, reply, caps_share(reply), score))
            say(f"\n  {label:13s} | {question}\n  {'':13s} | {reply.strip()!r}")
            say(f"  {'':13s} | upper-case letters {caps_share(reply):.0%}, coherence {score:.2f}")
    say("\n  summary (mean over prompts)")
    say("  setting         upper-case letters   coherence (log-prob/token, case folded)")
    for label in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == label]
        share = statistics.mean(r[3] for r in mine)
        score = statistics.mean(r[4] for r in mine)
        say(f"  {label:15s} {share:17.0%}   {score:8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
