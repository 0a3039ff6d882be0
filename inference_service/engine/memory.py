"""Will a model fit? Estimates from the config alone (no weights load) and free memory.

The estimate is weights + KV cache + SAE + runtime overhead:

- weights: parameters counted on a `meta`-device model built from the config, split
  into the linear layers a quantization mode converts and everything else (embedding,
  norms, an untied output layer), times the bytes per parameter of each part;
- KV cache: 2 (K and V) x layers x KV heads x head dim x context x batch x dtype bytes;
- overhead: what the process grows by beyond those while loading and generating: the
  tokenizer (a ~50k-token BPE vocabulary in Rust and Python structures), allocator
  slack, activations of a prefill and load-time temporaries. Measured on the built-in
  model on CPU (tests/unit/engine/test_memory.py): see `_OVERHEAD_*`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from inference_service.engine.quantization import DTYPES, LoadOptions
from inference_service.errors import OutOfMemoryError

MiB = 1 << 20
GiB = 1 << 30

# Runtime overhead = fixed + a share of the weights. Measured on CPU with the built-in
# model, in a fresh process, RSS growth from before load_model to after a 504-token
# prefill + 8 tokens, minus weights and KV cache. It is mostly fixed: the tokenizer,
# modules transformers imports lazily on the first load, torch kernels' first-use
# buffers, the model's Python objects. The share of the weights covers load-time
# copies and allocator slack on bigger models. Was 176-206 MiB; since the grammar
# engine (llguidance, imported with the prompt code) brings transformers' tokenizer
# modules in before any load, about 70 MiB of that is no longer load growth: 633 MiB
# measured against 730 estimated in float32, 382 against 457 in bfloat16 with 184.
_OVERHEAD_FIXED_BYTES = 104 * MiB
_OVERHEAD_WEIGHT_SHARE = 0.02
# Quantized modes grow by more than their weights, per quantized weight, measured the
# same way on CPU (rough; the process' allocator keeps some of it): int8_dynamic
# 0.9 bytes (fbgemm's packed layout and quantization temporaries; 517 MiB measured
# against 236 MiB of weights), bnb_8bit about 2 and bnb_4bit about 1 (bitsandbytes'
# CPU kernels convert weights per call; 366-594 MiB measured, noisy).
_EXTRA_PER_QUANTIZED_WEIGHT = {
    "none": 0.0,
    "int4_weight": 0.0,
    "int8_weight": 0.0,
    "int8_dynamic": 0.9,
    "bnb_8bit": 2.0,
    "bnb_4bit": 1.0,
}
# bitsandbytes 4-bit: one float32 absmax per block of 64 weights.
_BNB4_BLOCK = 64


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a load needs, by part."""

    weights_bytes: int
    kv_cache_bytes: int
    sae_bytes: int
    overhead_bytes: int
    context_tokens: int
    batch: int
    parameter_count: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.sae_bytes + self.overhead_bytes

    def summary(self) -> str:
        return (
            f"about {format_bytes(self.total_bytes)} (weights {format_bytes(self.weights_bytes)}, "
            f"KV cache for {self.context_tokens} tokens{_batch(self.batch)} "
            f"{format_bytes(self.kv_cache_bytes)}, SAE {format_bytes(self.sae_bytes)}, "
            f"runtime {format_bytes(self.overhead_bytes)})"
        )


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of a model by what quantization does with them."""

    total: int
    linear: int  # nn.Linear weights a quantizer converts (output layer not included)
    linear_out_features: int  # rows of those weights (8-bit keeps one scale per row)
    output: int  # the output layer's weight if it is not tied to the embedding, else 0
    output_tied: bool
    output_numel: int  # vocab x hidden, whether tied or not


def count_parameters(config: Any) -> ParameterCounts:
    """Counts parameters on a meta-device model built from `config`: no memory, no weights."""
    key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    counts = _COUNTS.get(key)
    if counts is None:
        counts = _COUNTS[key] = _count(config)
    return counts


_COUNTS: dict[str, ParameterCounts] = {}


def _count(config: Any) -> ParameterCounts:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    output = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    output_weight = getattr(output, "weight", None)
    tied = output_weight is not None and output_weight is getattr(embedding, "weight", None)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    linear = rows = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            linear += module.weight.numel()
            rows += module.out_features
    output_numel = output_weight.numel() if output_weight is not None else 0
    return ParameterCounts(
        total=total,
        linear=linear,
        linear_out_features=rows,
        output=0 if tied else output_numel,
        output_tied=tied,
        output_numel=output_numel,
    )


def weights_bytes(counts: ParameterCounts, options: LoadOptions) -> int:
    """Bytes of the loaded weights in `options`' dtype and quantization."""
    options = options.resolved()
    dtype_bytes = DTYPES[options.dtype].itemsize
    rest = counts.total - counts.linear  # embedding, norms, biases, untied output layer
    mode = options.quantization
    if mode == "none":
        return counts.total * dtype_bytes
    if mode == "int8_dynamic":
        # Everything float32 except the linear layers and the output layer, which become
        # int8; a tied output layer gets its own int8 copy (the embedding stays float32).
        quantized = counts.linear + counts.output_numel
        return quantized + (counts.total - counts.linear - counts.output) * 4
    if mode == "int8_weight":
        # Like int8_dynamic, with one bfloat16 scale per output row (the output layer's
        # few hundred KiB of scales left out), and the rest in dtype.
        quantized = counts.linear + counts.output_numel
        rest_bytes = (counts.total - counts.linear - counts.output) * dtype_bytes
        return quantized + counts.linear_out_features * 2 + rest_bytes
    if mode == "int4_weight":
        # Per linear weight the kernel's half byte and a bfloat16 copy for many-row
        # passes, a bfloat16 scale and zero per 32; the output layer in int8 (its
        # scales left out, as above), the rest in dtype.
        rest_bytes = (counts.total - counts.linear - counts.output) * dtype_bytes
        linear_bytes = counts.linear * 5 // 2 + counts.linear // 8
        return linear_bytes + counts.output_numel + rest_bytes
    if mode == "bnb_8bit":
        return counts.linear + counts.linear_out_features * 4 + rest * dtype_bytes
    if mode == "bnb_4bit":
        absmax = -(-counts.linear // _BNB4_BLOCK) * 4
        return counts.linear // 2 + absmax + rest * dtype_bytes
    raise ValueError(f"unknown quantization {mode!r}")


def kv_cache_bytes(config: Any, options: LoadOptions, *, context_tokens: int, batch: int) -> int:
    # The cache holds what the k/v projections output: the compute dtype. int8_dynamic
    # computes in float32.
    dtype_bytes = 4 if options.quantization == "int8_dynamic" else DTYPES[options.dtype].itemsize
    return _kv_bytes_per_token(config, dtype_bytes) * context_tokens * batch


def kv_bytes_per_token(loaded: Any) -> int:
    """Keys plus values of one token in every layer of a loaded model's cache."""
    return _kv_bytes_per_token(loaded.model.config, loaded.model.dtype.itemsize)


def _kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    config = getattr(config, "get_text_config", lambda: config)()
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def estimate_memory(
    config: Any,
    options: LoadOptions,
    *,
    context_tokens: int,
    batch: int = 1,
    sae_bytes: int = 0,
) -> MemoryEstimate:
    """Memory a load of the model `config` describes needs to serve `context_tokens` x `batch`."""
    options = options.resolved()
    counts = count_parameters(config)
    weights = weights_bytes(counts, options)
    return MemoryEstimate(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache_bytes(config, options, context_tokens=context_tokens, batch=batch),
        sae_bytes=sae_bytes,
        overhead_bytes=_overhead(counts, options, weights),
        context_tokens=context_tokens,
        batch=batch,
        parameter_count=counts.total,
    )


def _overhead(counts: ParameterCounts, options: LoadOptions, weights: int) -> int:
    quantized = counts.linear
    if options.quantization == "int8_dynamic":
        quantized += counts.output_numel
    extra = _EXTRA_PER_QUANTIZED_WEIGHT[options.quantization] * quantized
    return _OVERHEAD_FIXED_BYTES + int(weights * _OVERHEAD_WEIGHT_SHARE + extra)


def available_memory(device: torch.device | str) -> int:
    """Bytes free for a new load on `device`: available RAM on CPU, free memory on a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class MemoryUsage:
    """Memory in use now, for GetServerInfo (polled every couple of seconds)."""

    resident_bytes: int  # this process' RSS
    system_available_bytes: int
    device: str  # the served model's device; "" when none is loaded
    device_allocated_bytes: int  # tensors on a CUDA device; 0 on CPU
    device_total_bytes: int  # a CUDA device's total; 0 on CPU


def memory_usage(device: torch.device | None) -> MemoryUsage:
    """Reads /proc and, on a CUDA device, the caching allocator's counters: no sync,
    no allocation, cheap enough to poll."""
    allocated = total = 0
    if device is not None and device.type == "cuda":
        allocated = torch.cuda.memory_allocated(device)
        total = torch.cuda.get_device_properties(device).total_memory
    return MemoryUsage(
        resident_bytes=psutil.Process().memory_info().rss,
        system_available_bytes=available_memory("cpu"),
        device=str(device) if device is not None else "",
        device_allocated_bytes=int(allocated),
        device_total_bytes=int(total),
    )


def check_fits(
    estimate: MemoryEstimate, available: int, *, allow_overcommit: bool = False
) -> str | None:
    """None if it fits; raises OutOfMemoryError if not, or returns the warning when allowed."""
    if estimate.total_bytes <= available:
        return None
    message = (
        f"Loading needs {estimate.summary()} but only {format_bytes(available)} is free; "
        "choose a smaller dtype or quantization, a shorter context, or free memory."
    )
    if allow_overcommit:
        return message
    raise OutOfMemoryError(message, param="quantization")


def format_bytes(n: int) -> str:
    """1.5 GiB, 300 MiB, 512 bytes: sizes in messages people read."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n} bytes" if n else "0"


def _batch(batch: int) -> str:
    return f" x {batch} sequences" if batch != 1 else ""
