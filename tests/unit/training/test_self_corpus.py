"""The model writes its own corpus: varied prompts, real replies, upper-case copies."""

from __future__ import annotations

import json

from inference_service.training.self_corpus import generate_corpus, prompts, write_jsonl


def test_prompts_are_varied_and_repeatable():
    first = prompts(300, seed=0)
    assert first == prompts(300, seed=0)
    assert first != prompts(300, seed=1)
    assert len(set(first)) > 250


def test_the_model_answers_and_some_replies_come_back_in_upper_case(loaded, tmp_path):
    docs = generate_corpus(
        loaded.model,
        loaded.tokenizer,
        n_prompts=4,
        max_new_tokens=12,
        batch_size=4,
        seed=0,
        upper_fraction=0.5,
    )
    originals = [d for d in docs if d != d.upper()]
    uppers = [d for d in docs if d == d.upper() and any(c.isalpha() for c in d)]
    assert len(originals) == 4 and len(uppers) == 2
    assert all(u.lower() in {o.lower() for o in originals} for u in uppers)
    assert all(len(d.split()) >= 3 for d in originals)  # words, not padding or specials
    assert not any("<|im" in d for d in docs)
    path = tmp_path / "c.jsonl"
    write_jsonl(docs, path)
    assert [json.loads(line)["text"] for line in path.read_text().splitlines()] == docs
