"""How a model is loaded: dtype, quantization and device, validated before any weight loads.

Modes:

- ``none``: plain weights in ``dtype``.
- ``auto`` (the default): ``none`` on CUDA; on a CPU, weight-only layers that lose
  nothing against the loaded weights: 4-bit where a layer's weights already hold
  4-bit values, int8 elsewhere (`quantize_weight_only`; engine/defaults.py).
  Measured in ``bench/cpu_decode.py`` (README, "Speed").
- ``int4_weight``: 4-bit linear layers (`Int4WeightLinear`, groups of 32 as llama.cpp's
  Q4_1), the output layer int8. CPU only; the fastest CPU decode.
- ``int8_weight``: every ``nn.Linear`` (the output layer included) holds int8 weights with
  one scale per output row and computes in bfloat16 through PyTorch's weight-only
  kernel (`Int8WeightLinear`). CPU only. Works
  with any ``dtype`` (float32 activations are cast to bfloat16 around each layer).
- ``int8_dynamic``: the float32 model with every ``nn.Linear`` replaced by
  ``torch.ao.quantization.quantize_dynamic``'s int8 version (weights int8, activations
  quantized per call). CPU only; it decodes fastest, but measured a large quality loss
  (perplexity 18.8 -> 59 on the built-in model, bench/cpu_decode.py), so it is never
  chosen by auto. Decode on a CPU is bound by
  memory bandwidth and int8 weights are a quarter of the float32 bytes.
  The output layer is quantized too. When its weight is tied to the input embedding
  (as in SmolLM2) that breaks the tie: the embedding stays float32 for lookups and the
  output layer gets its own int8 copy (vocab x hidden bytes more than the tied int8
  size, but the biggest single matrix read per token shrinks 4x).
- ``bnb_8bit`` / ``bnb_4bit``: bitsandbytes ``Linear8bitLt`` / ``Linear4bit`` (NF4 data
  type off by default: FP4) through ``BitsAndBytesConfig``. bitsandbytes 0.50 runs them on
  the CPU too (slowly); it keeps the output layer, the embedding and the norms in
  ``dtype``. Needs the optional package ``bitsandbytes``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, cast, get_args

import torch

from inference_service.engine.defaults import AUTO, resolve_dtype, resolve_quantization
from inference_service.engine.native import Q4Q8, pack
from inference_service.errors import InvalidArgumentError, UnsupportedError

Dtype = Literal["float32", "float16", "bfloat16"]
# What a setting may say: a dtype, or "auto" (engine/defaults.py resolves it).
DtypeSetting = Literal["auto", "float32", "float16", "bfloat16"]
Quantization = Literal[
    "auto", "none", "int4_weight", "int8_weight", "int8_dynamic", "bnb_8bit", "bnb_4bit"
]
Device = Literal["auto", "cpu", "cuda"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
BNB_MODES = frozenset({"bnb_8bit", "bnb_4bit"})
# Weight-only modes with PyTorch's CPU kernels.
CPU_WEIGHT_MODES = frozenset({"int4_weight", "int8_weight"})
BNB_INSTALL = "pip install bitsandbytes==0.50.2"


@dataclass(frozen=True)
class LoadOptions:
    """What to load the weights as. `device` "auto" means CUDA when available; `dtype`
    "auto" becomes the device's default (engine/defaults.py) when the options are made,
    so `dtype` always names a concrete dtype afterwards."""

    dtype: DtypeSetting = "float32"
    quantization: Quantization = "auto"
    device: Device = "auto"

    def __post_init__(self) -> None:
        if self.dtype == AUTO and self.device in get_args(Device):
            resolved = resolve_dtype(AUTO, self.resolved_device(), self.quantization)
            object.__setattr__(self, "dtype", resolved)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> LoadOptions:
        """Options from the settings; `overrides` that are None keep the setting."""
        values: dict[str, Any] = {
            "dtype": getattr(settings, "dtype", AUTO),
            # Not a settings field yet: MILLM_QUANTIZATION once it is.
            "quantization": getattr(settings, "quantization", "auto"),
            "device": getattr(settings, "device", "auto"),
        }
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in names:
                raise TypeError(f"unknown load option {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved(self) -> LoadOptions:
        """These options with ``auto`` quantization replaced by what the device runs
        fastest (engine/defaults.py). Explicit modes stay."""
        mode = resolve_quantization(self.quantization, self.resolved_device())
        if mode == self.quantization:
            return self
        return dataclasses.replace(self, quantization=cast(Quantization, mode))


def validate(options: LoadOptions) -> list[str]:
    """Raises on options that cannot work; returns warnings for ones that work badly."""
    _check_choice("device", options.device, Device)  # first: "auto" dtype needs it
    _check_choice("dtype", options.dtype, Dtype)
    _check_choice("quantization", options.quantization, Quantization)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(
            "device is cuda but no CUDA device is available; use device auto or cpu.",
            param="device",
        )
    device = options.resolved_device()
    warnings_: list[str] = []
    if options.quantization in CPU_WEIGHT_MODES and device.type != "cpu":
        raise InvalidArgumentError(
            f"quantization {options.quantization} runs on the CPU only; use device cpu, or none / "
            "bnb_8bit / bnb_4bit on CUDA.",
            param="quantization",
        )
    if options.quantization == "int8_dynamic":
        if device.type != "cpu":
            raise InvalidArgumentError(
                "quantization int8_dynamic runs on the CPU only; use device cpu, "
                "or bnb_8bit / bnb_4bit on CUDA.",
                param="quantization",
            )
        if options.dtype != "float32":
            raise InvalidArgumentError(
                f"quantization int8_dynamic quantizes a float32 model; dtype {options.dtype} "
                "cannot be combined with it (use dtype float32).",
                param="dtype",
            )
    if options.quantization in BNB_MODES:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UnsupportedError(
                f"quantization {options.quantization} needs the bitsandbytes package, which "
                f"is not installed: {BNB_INSTALL}",
                param="quantization",
            )
        if device.type == "cpu":
            warnings_.append(
                f"quantization {options.quantization} on the CPU is slow (a few tokens/s); "
                "int8_weight is the fast CPU path."
            )
    if options.dtype == "float16" and device.type == "cpu":
        warnings_.append(
            "dtype float16 on the CPU is slow (no native float16 matmul on most CPUs); "
            "bfloat16 halves memory as well and runs faster."
        )
    return warnings_


def _check_choice(param: str, value: object, choices: Any) -> None:
    allowed = get_args(choices)
    if value not in allowed:
        raise InvalidArgumentError(
            f"{param} must be one of {', '.join(allowed)}; got {value!r}.", param=param
        )


def bnb_config(options: LoadOptions) -> Any:
    """The `quantization_config` for `from_pretrained` in a bitsandbytes mode."""
    from transformers import BitsAndBytesConfig

    if options.quantization == "bnb_8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=options.torch_dtype)


def silence_bnb_cast_warning() -> None:
    """Hides bitsandbytes' warning, repeated on every forward pass, that 8-bit matmuls cast
    float32 inputs to float16. Process-wide: the decode loop runs far from the loader."""
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")


def quantize_int8_dynamic(model: Any) -> Any:
    """Replaces every nn.Linear (the output layer included) with a dynamic int8 one."""
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a
        # dependency here; the eager API still works in torch 2.13.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from torch.ao.quantization import quantize_dynamic

        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        quantized = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    # A tied output layer keeps pointing at the embedding in the config; say it is not.
    if getattr(quantized.config, "tie_word_embeddings", False):
        quantized.config.tie_word_embeddings = False
    return quantized


def model_bytes(model: Any) -> int:
    """Bytes the model's weights take, int8 packed weights and bnb buffers included."""

    def size(tensor: Any) -> int:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return 0
        return tensor.numel() * tensor.element_size()

    # parameters() and buffers() skip repeats, so a tied weight counts once.
    total = sum(size(t) for t in model.parameters()) + sum(size(t) for t in model.buffers())
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            # Packed int8 weights are no parameters; unpacking gives fresh tensors
            # (and the int8 weight's per-tensor scale is a Python float).
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                weight, bias = module._weight_bias()
            total += size(weight) + size(bias)
        quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
        if quant_state is not None:
            total += size(getattr(quant_state, "absmax", None))
    return total


class WeightOnlyLinear(torch.nn.Module):
    """What the weight-only layers share: bfloat16 computation around a weight kernel
    for a few rows (`kernel`) and a matrix product for many (`many_rows`).

    The kernels compute each row on its own, so a row's result does not depend on
    the rows beside it; `decode_rows` always takes them, which the decode step uses
    (decode_step.py) so that a sequence decodes to the same numbers alone or in any
    batch. `forward` picks the faster of the two by the row count."""

    GEMV_MAX_ROWS = 16
    # What the kernels take: layers of other dtypes are cast around them.
    INPUT_DTYPE = torch.bfloat16
    in_features: int
    out_features: int
    bias: torch.Tensor | None

    def _take_shape_and_bias(self, linear: torch.nn.Linear) -> None:
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        # The dtype the rest of the model computes in: what callers get back.
        self.compute_dtype = linear.weight.dtype

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:  # [rows, in] bfloat16
        raise NotImplementedError

    def many_rows(self, flat: torch.Tensor) -> torch.Tensor:  # [rows, in] bfloat16
        raise NotImplementedError

    @classmethod
    def join(cls, parts: Sequence[WeightOnlyLinear]) -> WeightOnlyLinear:
        """One layer whose output is the parts' outputs side by side, for the kernel
        only (`decode_rows`); the parts' weights become views of its weights."""
        raise NotImplementedError

    @classmethod
    def _bare(cls, parts: Sequence[WeightOnlyLinear]) -> WeightOnlyLinear:
        joined = cls.__new__(cls)
        torch.nn.Module.__init__(joined)
        joined.in_features = parts[0].in_features
        joined.out_features = sum(p.out_features for p in parts)
        joined.bias = None
        return joined

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, row_invariant=False)

    def decode_rows(self, x: torch.Tensor, *, native: bool = False) -> torch.Tensor:
        """The row-by-row kernel whatever the row count. `native`: leave the output in
        the kernel's bfloat16 when `x` is float32: a caller that adds it to a float32
        tensor saves a cast, and the sum is the same, as every bfloat16 value is a
        float32 one."""
        return self._run(x, row_invariant=True, native=native)

    def _run(self, x: torch.Tensor, *, row_invariant: bool, native: bool = False) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != self.INPUT_DTYPE:
            flat = flat.to(self.INPUT_DTYPE)
        if row_invariant or flat.shape[0] <= self.GEMV_MAX_ROWS:
            out = self.kernel(flat)
        else:
            out = self.many_rows(flat)
        # float32 + bfloat16 sums in float32; other dtypes would promote, so they convert.
        if out.dtype != x.dtype and not (native and x.dtype == torch.float32):
            out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


class Int8WeightLinear(WeightOnlyLinear):
    """A linear layer with int8 weights (one scale per output row) and bfloat16
    activations: `torch.ops.aten._weight_int8pack_mm`, the weight-only int8 kernel
    PyTorch ships for CPUs. Decode on a CPU reads every weight once per token, so
    weights a quarter of float32's bytes (and no per-call activation quantization,
    unlike int8_dynamic) make it the fast CPU path. Inputs of another dtype are cast
    to bfloat16 and the output cast back, so a float32 model can use it too.

    That kernel reads the weights once per input row, so it wins only for a few rows
    (decoding); more rows than `GEMV_MAX_ROWS` (a prefill, a big batch) dequantize the
    weight to bfloat16 for one matrix product, which measured 3-13x faster at 32-512
    rows. Both compute the same int8 weights in bfloat16."""

    qweight: torch.Tensor  # [out, in] int8
    scales: torch.Tensor  # [out] bfloat16

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self._take_shape_and_bias(linear)
        weight = linear.weight.detach().float()  # [out, in]
        scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # [out]
        self.register_buffer(
            "qweight", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8)
        )
        self.register_buffer("scales", scales.to(torch.bfloat16))

    @property
    def weight(self) -> torch.Tensor:  # [out, in] dequantized, for readers such as the lens
        return (self.qweight.to(torch.bfloat16) * self.scales[:, None]).to(self.compute_dtype)

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)

    @classmethod
    def join(cls, parts: Sequence[WeightOnlyLinear]) -> WeightOnlyLinear:
        joined = cls._bare(parts)
        joined.register_buffer("qweight", torch.cat(_each(parts, "qweight")))
        joined.register_buffer("scales", torch.cat(_each(parts, "scales")))
        _rows_as_views(parts, joined, "qweight", dim=0)
        _rows_as_views(parts, joined, "scales", dim=0)
        return joined

    def many_rows(self, flat: torch.Tensor) -> torch.Tensor:
        weight = self.qweight.to(torch.bfloat16) * self.scales[:, None]
        return torch.nn.functional.linear(flat, weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class FourBitLinear(WeightOnlyLinear):
    """What the 4-bit layers share: groups of `GROUP` weights along the input, each
    with a scale and a minimum (the layout of llama.cpp's Q4_1), a kernel for a few
    rows and `dense`, the same weights unpacked to bfloat16 once at load, for passes
    of more rows than `GEMV_MAX_ROWS` (prefills, big batches). That copy costs 2
    bytes per weight beside the kernel's half byte, so a layer takes about 2.6 bytes
    per weight (float32 takes 4); it is what keeps time to first token down.

    The kernels unpack their weights again for every few rows, so above 12 rows the
    bfloat16 product is faster: with PyTorch's kernel a whole prefill of the built-in
    model on one thread took 42 against 62 ms at 8 rows and 65 against 64 ms at 16,
    but 168 against 82 ms at 48. miLLM's kernel would win up to 64 rows (68 against
    81 ms at 48), but 8-bit activations over a whole prompt moved the first token's
    logits by about 0.6, enough to flip a near tie ("The" 25.6 against "L" 25.5 after
    "What is the capital of France?"), so prompts take the bfloat16 copy from 13
    rows on with either kernel."""

    GROUP = 32
    GEMV_MAX_ROWS = 12
    dense: torch.Tensor  # [out, in] bfloat16: the same weights for many-row passes

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self._take_shape_and_bias(linear)

    @staticmethod
    def fits(linear: torch.nn.Linear) -> bool:
        # The kernels' packing needs whole groups and output rows in sixteens.
        return linear.in_features % FourBitLinear.GROUP == 0 and linear.out_features % 16 == 0

    @property
    def weight(self) -> torch.Tensor:  # [out, in] dequantized, for readers such as the lens
        return self.dense.to(self.compute_dtype)

    def relative_error(self, original: torch.Tensor) -> float:
        """How far the 4-bit weights are from `original`, relative to its norm."""
        original = original.detach().float()
        return float((self.dense.float() - original).norm() / original.norm())

    def many_rows(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(flat.to(torch.bfloat16), self.dense)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 weights"


class Int4WeightLinear(FourBitLinear):
    """A 4-bit layer (bfloat16 scales and minimums) with bfloat16 activations, through
    `aten._weight_int4pack_mm_for_cpu`, PyTorch's weight-only int4 CPU kernel. Decode
    reads every weight once per token; half of int8's bytes measured 1.9x faster over
    the built-in model's 211 layers (bench/cpu_decode.py)."""

    packed: torch.Tensor  # the kernel's layout
    scales_and_zeros: torch.Tensor  # [in / GROUP, out, 2] bfloat16, for the kernel

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__(linear)
        out_features, in_features = linear.weight.shape
        groups = in_features // self.GROUP
        q, scale, low = four_bit_groups(linear.weight, self.GROUP)
        self.register_buffer(
            "packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        )
        # The kernel computes (q - 8) * scale + zero, so its zero is the group's minimum
        # plus eight steps.
        scales_and_zeros = torch.stack([scale.t(), (low + 8 * scale).t()], dim=-1)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(torch.bfloat16).contiguous())
        step, zero = self.scales_and_zeros.float().transpose(0, 1).unbind(-1)  # [out, groups]
        dense = (q.view(out_features, groups, self.GROUP).float() - 8) * step[..., None]
        self.register_buffer("dense", (dense + zero[..., None]).view_as(q).to(torch.bfloat16))

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed, self.GROUP, self.scales_and_zeros
        )

    @classmethod
    def join(cls, parts: Sequence[WeightOnlyLinear]) -> WeightOnlyLinear:
        # The kernel's packing keeps each output row's bytes to itself, so the packed
        # weights join by rows; scales join along their output dimension (a copy: a
        # slice of it would not be contiguous, and the kernel wants it so).
        joined = cls._bare(parts)
        joined.register_buffer("packed", torch.cat(_each(parts, "packed")))
        zeros = torch.cat(_each(parts, "scales_and_zeros"), dim=1).contiguous()
        joined.register_buffer("scales_and_zeros", zeros)
        _rows_as_views(parts, joined, "packed", dim=0)
        return joined


class Int4NativeLinear(FourBitLinear):
    """A 4-bit layer computed by miLLM's own kernel (engine/native.py): float16 scales
    and minimums, activations rounded to 8 bits per group of 32 inside the kernel (as
    llama.cpp does for Q4_1), and integer dot products. float32 in and out, so a
    float32 model casts nothing around it. Each output row is computed alone, in the
    same order whatever the row count: it keeps `decode_rows`' promise."""

    INPUT_DTYPE = torch.float32
    _kernel: Q4Q8
    w: torch.Tensor  # [out / 16, in / 32, 4, 16, 4] uint8, see kernels/q4q8.c
    wd: torch.Tensor  # [out / 16, in / 32, 16] float16 scales
    wm: torch.Tensor  # [out / 16, in / 32, 16] float16 minimums

    def __init__(self, linear: torch.nn.Linear, kernel: Q4Q8) -> None:
        super().__init__(linear)
        self._kernel = kernel
        q, scale, low = four_bit_groups(linear.weight, self.GROUP, stored=torch.float16)
        w, wd, wm = pack(q, scale, low)
        self.register_buffer("w", w)
        self.register_buffer("wd", wd)
        self.register_buffer("wm", wm)
        groups = q.view(self.out_features, -1, self.GROUP).float()
        dense = groups * scale.float()[..., None] + low.float()[..., None]
        self.register_buffer("dense", dense.view_as(q).to(torch.bfloat16))

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return self._kernel.linear(flat, self.w, self.wd, self.wm, self.out_features)

    @classmethod
    def join(cls, parts: Sequence[WeightOnlyLinear]) -> WeightOnlyLinear:
        # Tiles of 16 output rows come first in every buffer: joining is concatenating.
        joined = cast(Int4NativeLinear, cls._bare(parts))
        joined._kernel = cast(Int4NativeLinear, parts[0])._kernel
        for name in ("w", "wd", "wm"):
            joined.register_buffer(name, torch.cat(_each(parts, name)))
            _rows_as_views(parts, joined, name, dim=0)
        return joined

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8 activations"


def four_bit_groups(
    weight: torch.Tensor, group: int, stored: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`weight` [out, in] as 4-bit steps q [out, in] (uint8, 0..15) over each group of
    `group` inputs' minimum `low` and step `scale` [out, in / group]: float32, or
    rounded to `stored` first, the steps then taken against the rounded values."""
    out_features, in_features = weight.shape
    groups = weight.detach().float().view(out_features, in_features // group, group)
    low = groups.amin(dim=-1)
    scale = ((groups.amax(dim=-1) - low) / 15).clamp(min=1e-12)
    if stored is not None:
        scale, low = scale.to(stored), low.to(stored)
    # (A step rounded to zero in float16 leaves the group its minimum whatever q is.)
    step = scale.float().clamp(min=1e-12)[..., None]
    q = torch.round((groups - low.float()[..., None]) / step).clamp(0, 15)
    return q.to(torch.uint8).view(out_features, in_features), scale, low


def _each(parts: Sequence[Any], name: str) -> list[torch.Tensor]:
    return [cast(torch.Tensor, getattr(part, name)) for part in parts]


def _rows_as_views(parts: Sequence[Any], joined: torch.nn.Module, name: str, dim: int) -> None:
    """Points each part's buffer `name` at its rows of the joined one (no second copy)."""
    whole = getattr(joined, name)
    start = 0
    for part in parts:
        size = getattr(part, name).shape[dim]
        setattr(part, name, whole.narrow(dim, start, size))
        start += size


def joined_kernel(parts: Sequence[Any]) -> WeightOnlyLinear | None:
    """The parts as one kernel call (`WeightOnlyLinear.join`) when they are weight-only
    layers of one kind, without biases, reading the same input; else None."""
    kinds = {type(p) for p in parts}
    if len(kinds) != 1 or not issubclass(next(iter(kinds)), WeightOnlyLinear):
        return None
    if any(p.bias is not None or p.in_features != parts[0].in_features for p in parts):
        return None
    return type(parts[0]).join(parts)


# A layer's weights "already hold 4-bit values" when 4-bit groups reproduce them to
# this relative error (bfloat16 scales and zeros alone cost about 0.3 %; a float
# weight quantized to 4 bits loses about 9 %).
FOUR_BIT_FAITHFUL = 0.01


def quantize_weight_only(model: Any, mode: str, kernel: Q4Q8 | None = None) -> dict[str, int]:
    """Replaces every nn.Linear (the output layer included) with a weight-only layer;
    returns how many became 4-bit and 8-bit. A tied output layer gets its own copy; the
    embedding keeps its dtype.

    - ``int8_weight``: every layer int8.
    - ``int4_weight``: every layer 4-bit except the output layer, whose error weighs
      most on the answers (perplexity 18.8 -> 20.5 with it in 4 bits on the built-in
      model, bench/cpu_decode.py), and layers whose input size is no multiple of 32.
    - ``auto``: 4-bit for each layer whose weights already hold 4-bit values (one loaded
      from a 4-bit GGUF: `FOUR_BIT_FAITHFUL`), int8 for the others, so nothing is lost
      against the loaded weights.

    4-bit layers run on `kernel` (engine/native.py) when given, else on PyTorch's.
    """

    def four_bit(linear: torch.nn.Linear) -> FourBitLinear:
        return Int4WeightLinear(linear) if kernel is None else Int4NativeLinear(linear, kernel)

    output = model.get_output_embeddings()
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.weight.device.type == "cpu"
    ]
    made = {"int4": 0, "int8": 0}
    for name, module in targets:
        layer: torch.nn.Module | None = None
        if mode != "int8_weight" and FourBitLinear.fits(module):
            if mode == "int4_weight" and module is not output:
                layer = four_bit(module)
            elif mode == AUTO:
                candidate = four_bit(module)
                if candidate.relative_error(module.weight) <= FOUR_BIT_FAITHFUL:
                    layer = candidate
        made["int8" if layer is None else "int4"] += 1
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer if layer is not None else Int8WeightLinear(module))
    if getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False
    return made
