"""One decode step of a Llama-family model without transformers' per-call plumbing.

On a CPU with a small model, decoding one token per row spends as much time in the
work around the kernels (argument handling, mask and output objects, cache
bookkeeping, one Python module call per projection) as in the weight kernels
themselves. `LlamaDecodeStep` runs the decoder's arithmetic in the order the
model's own forward pass runs it, and calls each decoder layer's forward pre-hooks
and hooks as calling the layer would: that is where steering, monitoring and
training's harvest read and edit the residual stream (sae/hook_sites.py).

Every operation counts twice over here: besides its Python and dispatch cost, the
weight kernels between two operations stream megabytes through the CPU caches and
push PyTorch's own code and data out, so each call pays cache misses too (measured:
an RMS norm took 20 us in a loop, 110 us after a pass over a large tensor). So the
step computes the same numbers in fewer operations: PyTorch's fused RMS norm, one
rotation for the query and key heads together (`_Rope`), attention with the key and
value heads shared rather than repeated, and the 4-bit kernels' bfloat16 outputs
added to the float32 residual stream without a cast in between.

A row decodes to the same numbers alone or in any batch
(tests/unit/engine/test_decode_step.py): alone, the logits equal the model's own
forward pass bit for bit; in a batch whose rows have padding, on a CPU each row
attends over its own columns alone (the masked batched kernel sums in another
grouping; a GPU takes that one masked call, as transformers does),
and weight-only layers take their row-by-row kernel whatever the row count
(`WeightOnlyLinear.decode_rows`). The weight-only modes round each layer's input to
bfloat16, which turns last-bit differences into different greedy answers, so
without this a reply would depend on the traffic beside it.

With weight-only layers, the query, key and value projections run as one kernel
call, and so do the MLP's gate and up projections (`quantization.joined_kernel`;
the layers' weights become views of the joined ones): the kernels compute each
output column alone, so the numbers are the same, and a step makes 90 fewer calls
on the built-in model (about 10 % of a step on one CPU thread).

A hook anywhere else in the model, a model outside the family, or an attention
implementation other than SDPA takes the model's own forward pass (`for_model`
answers None, or `usable` False).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from inference_service.engine.quantization import WeightOnlyLinear, joined_kernel
from inference_service.engine.threads import all_cores

# Families whose decoder layer this module reproduces: checked against their forward.
_FAMILIES = frozenset({"llama"})
_STEPS: weakref.WeakKeyDictionary[Any, LlamaDecodeStep] = weakref.WeakKeyDictionary()


class LlamaDecodeStep:
    """Computes [rows, 1, V] logits for one new token per row of a batch cache."""

    def __init__(self, model: Any) -> None:
        base = model.model
        config = model.config
        self._embed = base.embed_tokens
        self._rotary = base.rotary_emb
        self._norm = base.norm
        self._head = model.lm_head
        self._layers: list[nn.Module] = list(base.layers[: config.num_hidden_layers])
        attention: Any = self._layers[0].self_attn
        self._shape = _Shape(
            config.num_attention_heads, config.num_key_value_heads, attention.head_dim
        )
        # SiLU as a function call, not a module call (the family's usual activation).
        self._act = F.silu if config.hidden_act == "silu" else None
        # Built once: joining re-points the layers' weights at the joined copies.
        self._joined = [_Joined.of(layer) for layer in self._layers]
        # Padded rows attend one by one on a CPU (a handful of rows; what makes a row
        # the same alone or in a batch); on a GPU one masked call for the batch, as
        # transformers does, since a call per row and layer would cost launches.
        self.rows_alone = self._embed.weight.device.type == "cpu"
        # The model itself by weak reference: the step lives in `_STEPS` as long as the
        # model does, and must not be what keeps it alive.
        self._model = weakref.ref(model)
        # Every other module but the decoder layers themselves: a hook on any of them
        # (their submodules included) is one this step would not call.
        own = {id(layer) for layer in self._layers}
        self._others = [m for m in model.modules() if id(m) not in own and m is not model]

    @classmethod
    def for_model(cls, model: Any) -> LlamaDecodeStep | None:
        """The model's step (one per model: building it joins weights), or None."""
        config = getattr(model, "config", None)
        if (
            getattr(config, "model_type", None) not in _FAMILIES
            or getattr(config, "_attn_implementation", None) != "sdpa"
            or model.training
        ):
            return None
        step = _STEPS.get(model)
        if step is None:
            if not _rotates_whole_heads(model):
                return None
            step = _STEPS[model] = cls(model)
        return step

    def usable(self) -> bool:
        """False while a hook this step would not call is on the model."""
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return False
        model = self._model()
        if model is None or model._forward_hooks or model._forward_pre_hooks:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self._others)

    def __call__(
        self, input_ids: Tensor, cache: Any, lengths: list[int] | None, position_ids: Tensor
    ) -> Tensor:
        """`input_ids` [rows, 1]; `cache` the batch's DynamicCache, which gains the new
        keys and values; `lengths` each row's real columns after this step (its right
        end of the cache), or None when no row has padding; `position_ids` [rows, 1]."""
        rows = input_ids.shape[0]
        hidden = self._embed(input_ids)
        cos, sin = self._rotary(hidden, position_ids)
        rope = _Rope(cos, sin, rows)
        padding: list[int] | Tensor | None = lengths
        if lengths is not None and not self.rows_alone:
            padding = _padding_mask(lengths, cache.layers[0].keys.shape[2] + 1, hidden.device)
        for index, layer in enumerate(self._layers):
            hidden = _pre_hooks(layer, hidden)
            hidden = self._layer(
                layer, self._joined[index], hidden, cache.layers[index], rope, padding
            )
            hidden = _hooks(layer, hidden)
        normed = _rms_norm(self._norm, hidden)
        with all_cores():  # the one kernel per step long enough for a second thread
            return _project(self._head, normed)

    def _layer(
        self,
        layer: Any,
        joined: _Joined,
        hidden: Tensor,
        kv: Any,
        rope: _Rope,
        padding: list[int] | Tensor | None,
    ) -> Tensor:
        """LlamaDecoderLayer.forward for one position per row, in as few operations as
        give the same numbers (each one costs more than its arithmetic here: the
        weight kernels between them push PyTorch's own code out of the CPU caches)."""
        attention = layer.self_attn
        x = _rms_norm(layer.input_layernorm, hidden)
        query, key, value = self._qkv(attention, joined, x, rope)
        keys, values = _append(kv, key, value)
        if padding is None:
            out = _attend(query, keys, values, attention.scaling)
        elif isinstance(padding, Tensor):  # one masked call, as transformers makes it
            out, _ = sdpa_attention_forward(
                attention, query, keys, values, padding, dropout=0.0, scaling=attention.scaling
            )
        else:  # each row over its own columns, as it would alone
            width = keys.shape[2]
            out = torch.cat(
                [
                    _attend(
                        query[r : r + 1],
                        keys[r : r + 1, :, width - n :],
                        values[r : r + 1, :, width - n :],
                        attention.scaling,
                    )
                    for r, n in enumerate(padding)
                ]
            )
        # One position per row: [rows, heads, 1, dim] and [rows, 1, heads * dim] are the
        # same memory, so the reshape is a view.
        rows = hidden.shape[0]
        hidden = hidden + _project(attention.o_proj, out.reshape(rows, 1, -1), native=True)
        x = _rms_norm(layer.post_attention_layernorm, hidden)
        mlp = layer.mlp
        if joined.gate_up is not None:
            gate, up = _project(joined.gate_up, x).chunk(2, dim=-1)
        else:
            gate, up = _project(mlp.gate_proj, x), _project(mlp.up_proj, x)
        act = self._act(gate) if self._act is not None else mlp.act_fn(gate)
        return hidden + _project(mlp.down_proj, act * up, native=True)

    def _qkv(
        self, attention: Any, joined: _Joined, x: Tensor, rope: _Rope
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Query [rows, heads, 1, dim], key and value [rows, kv_heads, 1, dim], rotated."""
        shape, rows = self._shape, x.shape[0]
        heads, kv_heads, dim = shape.heads, shape.kv_heads, shape.dim
        if joined.qkv is not None:
            qkv = _project(joined.qkv, x).view(rows, heads + 2 * kv_heads, 1, dim)
            # Query and key heads side by side: one rotation for both.
            rotated = rope(qkv[:, : heads + kv_heads])
            query, key = rotated[:, :heads], rotated[:, heads:]
            value = qkv[:, heads + kv_heads :]
        else:
            query = rope(_project(attention.q_proj, x).view(rows, heads, 1, dim))
            key = rope(_project(attention.k_proj, x).view(rows, kv_heads, 1, dim))
            value = _project(attention.v_proj, x).view(rows, kv_heads, 1, dim)
        return query, key, value


@dataclass(frozen=True)
class _Shape:
    heads: int
    kv_heads: int
    dim: int


class _Rope:
    """Rotary embedding of one position per row, as transformers' `apply_rotary_pos_emb`
    computes it (`x * cos + rotate_half(x) * sin`) in three operations: with the sign
    of `rotate_half` moved onto `sin`, rotating half is swapping the halves (a flip
    over a dimension of two), and a product's sign is exact either way."""

    def __init__(self, cos: Tensor, sin: Tensor, rows: int) -> None:  # [rows, 1, dim]
        half = cos.shape[-1] // 2
        self.cos = cos.view(rows, 1, 2, half)
        self.sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).view(rows, 1, 2, half)

    def __call__(self, x: Tensor) -> Tensor:  # [rows, heads, 1, dim]
        rows, heads, _, dim = x.shape
        halves = x.reshape(rows, heads, 2, dim // 2)
        return (halves * self.cos + halves.flip(2) * self.sin).view(rows, heads, 1, dim)


class _Joined:
    """A decoder layer's projections that share an input, as single kernel calls."""

    def __init__(self, qkv: WeightOnlyLinear | None, gate_up: WeightOnlyLinear | None) -> None:
        self.qkv = qkv
        self.gate_up = gate_up

    @classmethod
    def of(cls, layer: Any) -> _Joined:
        attention, mlp = layer.self_attn, layer.mlp
        return cls(
            joined_kernel([attention.q_proj, attention.k_proj, attention.v_proj]),
            joined_kernel([mlp.gate_proj, mlp.up_proj]),
        )


# Columns of room a layer's keys and values keep past their end (see `_append`).
ROOM = 64
# Per cache layer: the buffers its keys and values are the front of.
_ROOMS: weakref.WeakKeyDictionary[Any, tuple[Tensor, Tensor]] = weakref.WeakKeyDictionary()


def _append(kv: Any, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
    """What `DynamicLayer.update` does for one column: the layer's keys and values
    gain `key` and `value` at their end. Concatenating allocates and copies the whole
    layer every step (at 8 rows of 200 tokens, 74 MB a step on the built-in model,
    near the weights' own 88 MB); instead the layer's tensors are the front of a
    buffer with room for `ROOM` more columns, which each step writes one column of.
    Anything else that replaces the layer's tensors (the batch adding or dropping a
    row, the model's own forward pass) leaves the buffer behind, and the next step
    starts a new one."""
    keys, values = kv.keys, kv.values
    rows, heads, end, dim = keys.shape
    room = _ROOMS.get(kv)
    if (
        room is None
        or room[0].data_ptr() != keys.data_ptr()
        or room[0].shape[:2] != (rows, heads)
        or room[0].shape[2] <= end
        or keys.stride() != room[0].stride()
    ):
        shape = (rows, heads, end + ROOM, dim)
        room = (keys.new_empty(shape), values.new_empty(shape))
        room[0][:, :, :end] = keys
        room[1][:, :, :end] = values
        _ROOMS[kv] = room
    room[0][:, :, end] = key[:, :, 0]
    room[1][:, :, end] = value[:, :, 0]
    kv.keys, kv.values = room[0][:, :, : end + 1], room[1][:, :, : end + 1]
    return kv.keys, kv.values


def _rotates_whole_heads(model: Any) -> bool:
    """Whether the rotary embedding spans each head's whole dimension (what `_Rope`
    computes; a partial rotary factor rotates only part of it)."""
    head_dim = model.model.layers[0].self_attn.head_dim
    probe = torch.zeros(1, 1, 1, device=model.model.embed_tokens.weight.device)
    position = torch.zeros(1, 1, dtype=torch.long, device=probe.device)
    cos, _ = model.model.rotary_emb(probe, position)
    return cos.shape[-1] == head_dim and head_dim % 2 == 0


def _attend(query: Tensor, keys: Tensor, values: Tensor, scaling: float) -> Tensor:
    """Attention without a mask; the same numbers as transformers' SDPA path, which
    repeats the key and value heads where this lets the kernel share them."""
    return F.scaled_dot_product_attention(query, keys, values, scale=scaling, enable_gqa=True)


def _padding_mask(lengths: list[int], width: int, device: torch.device) -> Tensor:
    """The boolean [rows, 1, 1, width] mask transformers builds for a padded decode
    step: each row sees its last `lengths[r]` columns."""
    columns = torch.arange(width, device=device)
    real = torch.tensor(lengths, device=device)
    return (columns >= (width - real).unsqueeze(1))[:, None, None, :]


def _project(linear: Any, x: Tensor, *, native: bool = False) -> Tensor:
    """`linear(x)`, by the row-by-row kernel where the layer has one (`native`: in the
    kernel's own dtype, for a caller that adds it to the residual stream)."""
    decode_rows = getattr(linear, "decode_rows", None)
    return linear(x) if decode_rows is None else decode_rows(x, native=native)


def _rms_norm(norm: Any, hidden: Tensor) -> Tensor:
    """LlamaRMSNorm.forward: normalised in float32, scaled in the model's dtype
    (PyTorch's fused normalisation gives the same float32 numbers as its steps)."""
    normed = F.rms_norm(hidden.float(), (hidden.shape[-1],), eps=norm.variance_epsilon)
    return norm.weight * normed.to(hidden.dtype)


def _pre_hooks(module: nn.Module, hidden: Tensor) -> Tensor:
    """The module's forward pre-hooks, as `module(hidden)` would call them."""
    if not module._forward_pre_hooks:
        return hidden
    args: tuple[Any, ...] = (hidden,)
    kwargs: dict[str, Any] = {}
    for hook_id, hook in module._forward_pre_hooks.items():
        if hook_id in module._forward_pre_hooks_with_kwargs:
            result = hook(module, args, kwargs)
            if result is not None:
                args, kwargs = result
        else:
            result = hook(module, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
    return args[0] if args else kwargs["hidden_states"]


def _hooks(module: nn.Module, hidden: Tensor) -> Tensor:
    """The module's forward hooks, as `module(hidden)` would call them."""
    if not module._forward_hooks:
        return hidden
    args = (hidden,)
    output: Any = hidden
    for hook_id, hook in module._forward_hooks.items():
        if hook_id in module._forward_hooks_with_kwargs:
            result = hook(module, args, {}, output)
        else:
            result = hook(module, args, output)
        if result is not None:
            output = result
    return output[0] if isinstance(output, tuple) else output
