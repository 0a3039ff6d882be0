"""One decode step of a Llama-family model without transformers' per-call plumbing.

On a CPU with a small model, decoding one token per row spends as much time in the
work around the kernels (argument handling, mask and output objects, cache
bookkeeping, one Python module call per projection) as in the weight kernels
themselves. `LlamaDecodeStep` runs the decoder's operations in the order the
model's own forward pass runs them, with transformers' own attention function, and
calls each decoder layer's forward pre-hooks and hooks as calling the layer would:
that is where steering, monitoring and training's harvest read and edit the
residual stream (sae/hook_sites.py).

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
from typing import Any

import torch
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
        self._embed = base.embed_tokens
        self._rotary = base.rotary_emb
        self._norm = base.norm
        self._head = model.lm_head
        self._layers: list[nn.Module] = list(base.layers[: model.config.num_hidden_layers])
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
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        padding: list[int] | Tensor | None = lengths
        if lengths is not None and not self.rows_alone:
            padding = _padding_mask(lengths, cache.layers[0].keys.shape[2] + 1, hidden.device)
        for index, layer in enumerate(self._layers):
            hidden = _pre_hooks(layer, hidden)
            hidden = _layer(
                layer, self._joined[index], hidden, cache.layers[index], cos, sin, padding, rows
            )
            hidden = _hooks(layer, hidden)
        normed = self._norm(hidden)
        with all_cores():  # the one kernel per step long enough for a second thread
            return _project(self._head, normed)


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


def _joined_outputs(joined: WeightOnlyLinear, x: Tensor, sizes: list[int]) -> list[Tensor]:
    """What the joined layers' `decode_rows` would each give, [rows, 1, size] apiece."""
    return list(joined.decode_rows(x).split(sizes, dim=-1))


def _layer(
    layer: Any,
    joined: _Joined,
    hidden: Tensor,
    kv: Any,
    cos: Tensor,
    sin: Tensor,
    padding: list[int] | Tensor | None,
    rows: int,
) -> Tensor:
    """LlamaDecoderLayer.forward for one position per row, without module calls
    where a plain function does the same operations."""
    attention = layer.self_attn
    residual = hidden
    x = _rms_norm(layer.input_layernorm, hidden)
    shape = (rows, 1, -1, attention.head_dim)
    if joined.qkv is not None:
        sizes = [attention.q_proj.out_features, attention.k_proj.out_features]
        query, key, value = _joined_outputs(joined.qkv, x, [*sizes, sizes[1]])
    else:
        query = _project(attention.q_proj, x)
        key = _project(attention.k_proj, x)
        value = _project(attention.v_proj, x)
    query = query.view(shape).transpose(1, 2)
    key = key.view(shape).transpose(1, 2)
    value = value.view(shape).transpose(1, 2)
    query = query * cos + _rotate_half(query) * sin
    key = key * cos + _rotate_half(key) * sin
    keys, values = kv.update(key, value)
    if padding is None or isinstance(padding, Tensor):
        out = _attend(attention, query, keys, values, padding)
    else:  # each row over its own columns, as it would alone
        width = keys.shape[2]
        out = torch.cat(
            [
                _attend(
                    attention,
                    query[r : r + 1],
                    keys[r : r + 1, :, width - n :],
                    values[r : r + 1, :, width - n :],
                )
                for r, n in enumerate(padding)
            ]
        )
    hidden = residual + _project(attention.o_proj, out.reshape(rows, 1, -1).contiguous())
    residual = hidden
    x = _rms_norm(layer.post_attention_layernorm, hidden)
    mlp = layer.mlp
    if joined.gate_up is not None:
        size = mlp.gate_proj.out_features
        gate, up = _joined_outputs(joined.gate_up, x, [size, size])
    else:
        gate, up = _project(mlp.gate_proj, x), _project(mlp.up_proj, x)
    return residual + _project(mlp.down_proj, mlp.act_fn(gate) * up)


def _attend(
    attention: Any, query: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None
) -> Tensor:
    out, _ = sdpa_attention_forward(
        attention, query, keys, values, mask, dropout=0.0, scaling=attention.scaling
    )
    return out


def _padding_mask(lengths: list[int], width: int, device: torch.device) -> Tensor:
    """The boolean [rows, 1, 1, width] mask transformers builds for a padded decode
    step: each row sees its last `lengths[r]` columns."""
    columns = torch.arange(width, device=device)
    real = torch.tensor(lengths, device=device)
    return (columns >= (width - real).unsqueeze(1))[:, None, None, :]


def _project(linear: Any, x: Tensor) -> Tensor:
    """`linear(x)`, by the row-by-row kernel where the layer has one."""
    decode_rows = getattr(linear, "decode_rows", None)
    return linear(x) if decode_rows is None else decode_rows(x)


def _rms_norm(norm: Any, hidden: Tensor) -> Tensor:
    """LlamaRMSNorm.forward's operations."""
    dtype = hidden.dtype
    x = hidden.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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
