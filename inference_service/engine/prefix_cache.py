"""Prefix caching: the keys and values of a prompt's start, reused by later prompts.

Most chat prompts begin alike (the template's system prompt is about 30 of a short
request's 39 tokens), and a prefix's keys and values depend only on its tokens,
the model and whatever edits the hidden states while it is read. So after every
prefill the prompt's keys and values are kept here, and the next prompt that
begins with the same tokens, under the same edits, copies them and prefills only
the rest. What is kept is bounded in bytes (`MILLM_PREFIX_CACHE_MB`, separate from
the batch's KV budget) and the least recently used prompts go first.

An entry's key is what changes hidden states in the prefill (the engine owns one
cache per loaded model, so the weights are fixed):

- no edit at the hook (no SAE attached, or steering that is the identity): the
  plain model, one key for all such requests;
- an edit (`engine.row_edits.RowEdit`): the identity of its hook, its add vector
  and its transform's owner (the compiled steering set). A steering change builds
  a new compiled set, so a prefix steered one way never serves another steering
  or an unsteered request. The key holds these by weak reference: a detached SAE
  is not kept alive by the cache, and its entries simply stop matching.

A request whose prefill captures activations (it asked for them, or monitoring
records or streams every request) never reuses a prefix: its capture must see
every prompt token. Its prompt is still stored for the requests that follow.

Reuse copies the kept tensors into the request's own cache, so nothing a request
does to its cache can reach an entry. The reused part was computed in a shorter
pass than a full prefill would run, so the logits agree to float rounding, not
bit for bit (as in vLLM and llama.cpp).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from transformers import DynamicCache

from inference_service.engine.batch_cache import supports_batching

# Shorter shared starts are prefilled again: copying them saves about nothing.
MIN_REUSED_TOKENS = 8


def budget_bytes(prefix_cache_mb: int, quantization: str) -> int:
    """The cache's size for a model loaded with `quantization` (0: off).

    Only plain weights keep a reused prefix's numbers: a prompt read whole and one read
    as a kept prefix plus its rest differ in float32's last bits (attention over
    another query count: logits 3e-5 apart). Every quantization magnifies that:
    int8_dynamic and bnb_8bit quantize activations by what the whole pass holds (with
    int8_dynamic, greedy 8-token replies differed in 14 of 18 requests,
    bench/prefix_cache.py), and the weight-only and bnb modes round each layer's input
    to 16 bits (logits 0.25 apart on the built-in model in int4_weight), enough to
    change a greedy answer between two identical requests."""
    return prefix_cache_mb * 2**20 if quantization == "none" else 0


_PLAIN = "plain"  # the key of a prefill with no edit at the hook
_EDIT = "edit"
# The RowEdit fields prefix_key reads; a field added later keeps its edits uncached.
_KEYED_FIELDS = frozenset({"hook", "add", "transform", "observe"})


@dataclass(frozen=True)
class PrefixKey:
    """What an entry's keys and values depend on besides its tokens."""

    value: Hashable
    # Weak references to the objects `value` names by id: alive, their ids are theirs.
    refs: tuple[weakref.ref[Any], ...] = ()

    @property
    def alive(self) -> bool:
        return all(ref() is not None for ref in self.refs)


PLAIN = PrefixKey(_PLAIN)


def prefix_key(edit: Any) -> tuple[PrefixKey | None, bool]:
    """The key of a prefill that runs with `edit` (a RowEdit or None) at the hook (None:
    neither reused nor kept), and whether that prefill may reuse a prefix (False when
    it captures activations)."""
    if edit is None:
        return PLAIN, True
    if any(
        getattr(edit, f.name) is not None
        for f in dataclasses.fields(edit)
        if f.name not in _KEYED_FIELDS
    ):
        return None, False  # an edit this key does not know how to name
    reusable = edit.observe is None
    transform = edit.transform
    if edit.add is None and transform is None:
        return PLAIN, reusable  # only observes: the hidden states are the plain ones
    # A bound method is a new object on every plan; what it does is its owner's.
    owner = getattr(transform, "__self__", transform)
    parts = [p for p in (edit.hook, edit.add, owner) if p is not None]
    value = (_EDIT, *(id(p) for p in parts), transform is None, edit.add is None)
    return PrefixKey(value, tuple(weakref.ref(p) for p in parts)), reusable


@dataclass(eq=False)
class _Entry:
    key: PrefixKey
    tokens: tuple[int, ...]
    layers: list[tuple[Tensor, Tensor]]  # per layer: keys, values [1, H, T, D]
    nbytes: int


@dataclass(frozen=True)
class PrefixCacheStats:
    entries: int
    bytes: int
    budget_bytes: int
    hits: int  # prefills that reused a prefix
    reused_tokens: int  # prompt tokens not prefilled again, in total


class PrefixCache:
    """Prompts' keys and values, least recently used first out. The lane thread alone
    calls `restore` and `store`; `stats` may be read from any thread."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest first
        self._bytes = 0
        self._hits = 0
        self._reused_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            len(self._entries), self._bytes, self.budget_bytes, self._hits, self._reused_tokens
        )

    def restore(self, key: PrefixKey, prompt: Sequence[int], cache: DynamicCache) -> int:
        """Copies the longest kept prefix of `prompt` under `key` into the empty `cache`;
        returns its length (0: nothing reused). The last prompt token is always left to
        prefill: its logits choose the first completion token."""
        if not self._entries:
            return 0
        tokens = tuple(prompt)
        best: _Entry | None = None
        best_length = 0
        for entry in list(self._entries.values()):
            if entry.key.value != key.value:
                continue
            if not entry.key.alive:
                self._drop(entry)  # what it was steered with is gone
                continue
            length = _common_prefix(entry.tokens, tokens)
            if length > best_length:
                best, best_length = entry, length
        length = min(best_length, len(tokens) - 1)
        if best is None or length < MIN_REUSED_TOKENS:
            return 0
        self._entries.move_to_end(id(best))
        for index, (keys, values) in enumerate(best.layers):
            # update() on an empty layer copies: the entry never shares storage.
            cache.update(keys[:, :, :length], values[:, :, :length], index)
        self._hits += 1
        self._reused_tokens += length
        return length

    def store(self, key: PrefixKey, prompt: Sequence[int], cache: DynamicCache) -> None:
        """Keeps the keys and values of `prompt`, which `cache` holds exactly (a
        prefill just ran), unless an entry already covers it."""
        tokens = tuple(prompt)
        if not self.enabled or len(tokens) < MIN_REUSED_TOKENS or not supports_batching(cache):
            return  # only plain full-attention layers can be cut at a position
        layers = _layers(cache)
        if layers[0].keys.shape[-2] != len(tokens):
            return
        nbytes = kv_nbytes(cache)
        if nbytes > self.budget_bytes:
            return
        for entry in list(self._entries.values()):
            if not entry.key.alive:
                self._drop(entry)
                continue
            if entry.key.value != key.value:
                continue
            shared = _common_prefix(entry.tokens, tokens)
            if shared == len(tokens):
                self._entries.move_to_end(id(entry))  # already kept, as long or longer
                return
            if shared == len(entry.tokens):
                self._drop(entry)  # the new one starts with it and covers it
        while self._entries and self._bytes + nbytes > self.budget_bytes:
            self._drop(next(iter(self._entries.values())))
        copies = [(layer.keys.clone(), layer.values.clone()) for layer in layers]
        entry = _Entry(key, tokens, copies, nbytes)
        self._entries[id(entry)] = entry
        self._bytes += nbytes

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, entry: _Entry) -> None:
        if self._entries.pop(id(entry), None) is not None:
            self._bytes -= entry.nbytes


NO_PREFIX_CACHE = PrefixCache(0)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the longest common start of two token tuples: a binary search over
    slice comparisons, each run in C."""
    if not a or not b or a[0] != b[0]:
        return 0
    low, high = 1, min(len(a), len(b))  # a[:low] == b[:low] holds
    if a[:high] == b[:high]:
        return high
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def kv_nbytes(cache: DynamicCache) -> int:
    """Bytes of keys and values `cache` holds."""
    return sum(
        layer.keys.numel() * layer.keys.element_size()
        + layer.values.numel() * layer.values.element_size()
        for layer in _layers(cache)
    )


def _layers(cache: DynamicCache) -> list[Any]:
    """The per-layer holders; `supports_batching` checked they are plain DynamicLayers."""
    return cache.layers
