"""Has the served model write its own text corpus for training Sparse Autoencoders.

An SAE learns the features of the activations it is trained on, so the best
corpus is text the model itself finds natural, and this machine has no internet
to fetch one. The built-in model writes it instead: a few hundred varied prompts
(templates crossed with topics) answered in batches by sampling, about 70 new
tokens per second for the 135M model on two CPU cores. A fixed share of the
documents is repeated in upper case so the corpus holds a feature that is easy
to find and name in a demo.

    python -m inference_service.training.self_corpus --out corpus.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from itertools import product
from pathlib import Path
from typing import Any

import torch

__all__ = ["generate_corpus", "prompts", "write_jsonl"]

# Sampling rather than greedy decoding: greedy replies to similar prompts share
# whole sentences, and a corpus of near-duplicates teaches an SAE little.
TEMPERATURE = 0.8
TOP_P = 0.95
# The fastest of 16, 32 and 64 measured on two CPU cores (64 prompts, 128 new
# tokens): about 70 tokens/s at 64 against 51 at 32. A bigger batch makes each
# matrix product bigger, which is where a small model on CPU gains.
DEFAULT_BATCH_SIZE = 64

TOPIC_TEMPLATES = (
    "Write a short story about {}.",
    "Explain {} to a child.",
    "List three facts about {}.",
    "Write a letter to a friend about {}.",
    "Write a short poem about {}.",
    "What are the pros and cons of {}?",
    "Give me some advice about {}.",
    "Write a news report about {}.",
    "Describe {} in a few sentences.",
    "Why do people care about {}?",
    "Write a dialogue between two friends talking about {}.",
    "Summarise the history of {}.",
)

TOPICS = (
    # everyday life
    "breakfast",
    "a rainy Monday morning",
    "moving to a new city",
    "learning to ride a bicycle",
    "keeping a houseplant alive",
    "a birthday party",
    "saving money",
    "a lost cat",
    "getting enough sleep",
    "a first day at school",
    # science and nature
    "volcanoes",
    "the water cycle",
    "black holes",
    "honey bees",
    "photosynthesis",
    "the human heart",
    "electricity",
    "the ocean tides",
    "dinosaurs",
    "the Moon",
    # history
    "the Roman Empire",
    "the printing press",
    "ancient Egypt",
    "the first airplane flight",
    "the invention of the telephone",
    "the Silk Road",
    "castles in the Middle Ages",
    # cooking
    "baking bread",
    "making soup",
    "chocolate",
    "spices",
    "a family dinner",
    # sport
    "football",
    "running a marathon",
    "swimming",
    "the Olympic Games",
    "chess",
    # travel
    "a train journey",
    "camping in the mountains",
    "visiting Paris",
    "a road trip",
    "packing a suitcase",
    # work, technology and the arts
    "computers",
    "robots",
    "the internet",
    "a job interview",
    "playing the piano",
    "painting a picture",
    "libraries",
)

PLACE_TEMPLATES = (
    "Describe a day at {}.",
    "Write a diary entry about a visit to {}.",
    "What would you see and hear at {}?",
    "Write a short story set at {}.",
)

PLACES = (
    "the beach",
    "a busy market",
    "the zoo",
    "a farm",
    "a hospital",
    "an airport",
    "a small village",
    "a museum",
    "a football stadium",
    "a bakery",
    "the library",
    "a fire station",
)


def prompt_pool() -> list[str]:
    """Every prompt the templates make, in a fixed order."""
    about_topics = [t.format(x) for t, x in product(TOPIC_TEMPLATES, TOPICS)]
    about_places = [t.format(x) for t, x in product(PLACE_TEMPLATES, PLACES)]
    return about_topics + about_places


def prompts(n: int, seed: int) -> list[str]:
    """`n` prompts in a seeded order; past the pool's size it starts a new shuffle.

    Repeats are still worth asking for: sampled replies to the same prompt differ.
    """
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        pool = prompt_pool()
        rng.shuffle(pool)
        out.extend(pool)
    return out[:n]


def generate_corpus(
    model: Any,
    tokenizer: Any,
    *,
    n_prompts: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    upper_fraction: float,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The model's replies to `prompts(n_prompts, seed)`, plus upper-cased copies of some.

    Each chosen reply's upper-cased copy follows it directly, so upper case is
    spread through the corpus rather than gathered at its end. `progress(done,
    total)` counts prompts answered, after each batch.
    """
    asked = prompts(n_prompts, seed)
    pad_id = _pad_token_id(tokenizer)
    device = next(model.parameters()).device
    replies: list[str] = []
    # Sampling draws from torch's global generator: seed it for a repeatable
    # corpus, inside a fork so the caller's random state is left as it was.
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        for batch in _batches(asked, batch_size):
            replies.extend(_reply(model, tokenizer, batch, max_new_tokens, pad_id, device))
            if progress is not None:
                progress(len(replies), len(asked))
    return _with_upper_copies([r for r in replies if r], upper_fraction, seed)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pad_token_id(tokenizer: Any) -> int:
    # Padding sits left of the prompt under a zero attention mask, so any id works;
    # the end-of-sequence token is the usual choice for models trained without one.
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def _reply(
    model: Any,
    tokenizer: Any,
    batch: list[str],
    max_new_tokens: int,
    pad_id: int,
    device: torch.device,
) -> list[str]:
    """Generates one batch and decodes only what each row added after its prompt."""
    rendered = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in batch
    ]
    # The chat template already holds the special tokens the model expects.
    rows = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    input_ids, attention_mask = _left_pad(rows, pad_id)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=True,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
        )
    new_tokens = output[:, input_ids.shape[1] :]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [t.strip() for t in texts]


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads on the left so every row's next token comes at the same position.

    Done here rather than by the tokenizer so a shared tokenizer's padding side
    and pad token are never changed.
    """
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def _with_upper_copies(docs: list[str], fraction: float, seed: int) -> list[str]:
    chosen = set(random.Random(seed).sample(range(len(docs)), round(fraction * len(docs))))
    out: list[str] = []
    for i, doc in enumerate(docs):
        out.append(doc)
        if i in chosen:
            out.append(doc.upper())
    return out


def write_jsonl(docs: list[str], path: Path) -> None:
    """One `{"text": ...}` object per line, the shape SAE training reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference_service.training.self_corpus",
        description="Have the built-in model write a JSONL corpus for SAE training.",
    )
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    parser.add_argument("--prompts", type=int, default=300, help="prompts to answer")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--upper-fraction", type=float, default=0.25, help="share of replies also upper-cased"
    )
    parser.add_argument("--data-dir", type=Path, help="where the converted model is cached")
    args = parser.parse_args(argv)

    # Imported here so `--help` answers without importing transformers.
    from inference_service.config import InferenceSettings
    from inference_service.engine.loader import load_model

    settings = InferenceSettings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    loaded = load_model(settings)
    started = time.monotonic()

    def report(done: int, total: int) -> None:
        elapsed = time.monotonic() - started
        print(f"{done}/{total} prompts answered, {elapsed:.1f} s", file=sys.stderr, flush=True)

    docs = generate_corpus(
        loaded.model,
        loaded.tokenizer,
        n_prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        upper_fraction=args.upper_fraction,
        progress=report,
    )
    seconds = time.monotonic() - started
    write_jsonl(docs, args.out)
    tokens = sum(len(ids) for ids in loaded.tokenizer(docs, add_special_tokens=False)["input_ids"])
    print(f"{len(docs)} documents, {tokens} tokens, {seconds:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
