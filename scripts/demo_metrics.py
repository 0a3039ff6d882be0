"""What the demo measures in a reply: capitals, whether its words are words, coherence.

- upper-case share: upper-case letters over all letters;
- whole-word share: the share of the reply's words (runs of letters) that are cased
  as a word is (lower, UPPER or Capitalised, not "CookER") and, lower-cased, are in
  the model's own word list: every vocabulary token that decodes to a space and
  letters only (" breakfast" gives "breakfast"). Rarer words that the tokenizer
  splits are not in the list, so the unsteered reply sets the baseline;
- coherence: the unsteered model's mean log-probability per token of the reply with
  its case folded, so it measures the words, not the capitals.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from inference_service.engine.prompts import render_chat
from inference_service.engine.types import ChatTurn

_WORD = re.compile(r"[^\W\d_]+")


def upper_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def vocabulary_words(tokenizer: Any) -> frozenset[str]:
    """The lower-cased words the tokenizer holds as one word-initial token."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return frozenset(
        p[1:].lower() for p in pieces if p.startswith(" ") and p[1:].isalpha() and len(p) > 1
    )


def whole_word_share(text: str, words: frozenset[str]) -> float:
    found = _WORD.findall(text)
    return sum(_is_whole_word(w, words) for w in found) / len(found) if found else 0.0


def _is_whole_word(word: str, words: frozenset[str]) -> bool:
    cased = word.islower() or word.isupper() or word == word.capitalize()
    return cased and word.lower() in words


def coherence(model: Any, tokenizer: Any, question: str, reply: str) -> float:
    """Mean log-probability per token of the case-folded reply (blocking: run on the lane)."""
    prompt = render_chat(tokenizer, [ChatTurn(role="user", content=question)])
    answer = tokenizer(reply.lower(), add_special_tokens=False)["input_ids"]
    if not answer:
        return float("nan")
    ids = torch.tensor([prompt + answer])
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 : -1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(logp.gather(1, torch.tensor(answer)[:, None]).mean())
