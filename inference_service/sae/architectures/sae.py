"""An SAE ready to run: input normalisation around its architecture's encode and decode.

The math follows SAELens v6 (`sae_lens/saes/*_sae.py`) term for term:

    sae_in = norm_in(x) - b_dec            # b_dec only if apply_b_dec_to_input
    f      = activation(sae_in @ W_enc + b_enc)   # the part each architecture owns
    x_hat  = norm_out(f @ W_dec + b_dec)

`norm_in`/`norm_out` are the run-time normalisations ("constant_norm_rescale",
"layer_norm"). `norm_out` needs numbers taken from the same x in `norm_in`; SAELens
keeps them on the module between its encode and decode calls, which breaks as soon
as two inputs interleave. Here they are a value instead: `encode_with_norm(x)`
returns them as an `InputNorm` and `decode(f, norm)` takes it back. `decode(f)`
alone is only defined for SAEs whose normalisation is the identity at run time
("none", "expected_average_only_in"); `forward(x)` is encode and decode of one x.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from inference_service.sae.architectures.base import SaeWeights, dtype_name
from inference_service.sae.architectures.registry import expected_shapes, get_architecture
from inference_service.sae.spec import SaeSpec

# SAELens adds this to the standard deviation in layer_norm's input half only.
LAYER_NORM_EPS = 1e-5
# Normalisations that change x at run time and so need an InputNorm to undo.
RUN_TIME_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")


@dataclass(frozen=True)
class InputNorm:
    """What encode's run-time normalisation did to its input x, so decode can undo it."""

    coeff: Tensor | None = None  # [..., 1] constant_norm_rescale: x was multiplied by it
    mean: Tensor | None = None  # [..., 1] layer_norm: x's mean ...
    std: Tensor | None = None  # [..., 1] ... and standard deviation

    def undo(self, y: Tensor) -> Tensor:
        if self.coeff is not None:
            return y / self.coeff
        assert self.mean is not None and self.std is not None
        return y * self.std + self.mean

    def undo_change(self, dy: Tensor) -> Tensor:
        """How far `undo`'s output moves when its input moves by dy (undo is affine)."""
        if self.coeff is not None:
            return dy / self.coeff.to(dy.dtype)
        assert self.std is not None
        return dy * self.std.to(dy.dtype)


def weight_problems(spec: SaeSpec, weights: SaeWeights) -> list[str]:
    """What is wrong with `weights` for `spec`, in words; empty when they fit."""
    d_in = spec.d_in if spec.d_in is not None else weights.W_enc.shape[0]
    d_sae = spec.d_sae if spec.d_sae is not None else weights.W_enc.shape[-1]
    expected = expected_shapes(spec.architecture, d_in, d_sae)
    problems = []
    for name, tensor in weights.tensors().items():
        if name not in expected:
            problems.append(f"{name} is set but {spec.architecture} SAEs have no such tensor")
        elif tuple(tensor.shape) != expected[name]:
            problems.append(
                f"{name} has shape {list(tensor.shape)}, expected {list(expected[name])}"
            )
    problems += [f"{name} is missing" for name in expected if getattr(weights, name) is None]
    return problems + get_architecture(spec.architecture).spec_problems(spec, d_sae)


class Sae:
    """An SAE ready to run: spec, weights and optional per-feature log10 firing frequency."""

    def __init__(
        self, spec: SaeSpec, weights: SaeWeights, log_sparsity: Tensor | None = None
    ) -> None:
        problems = weight_problems(spec, weights)
        if log_sparsity is not None and tuple(log_sparsity.shape) != (weights.W_enc.shape[-1],):
            problems.append(f"log_sparsity has shape {list(log_sparsity.shape)}")
        if problems:
            raise ValueError("; ".join(problems))
        d_in, d_sae = weights.W_enc.shape
        self.spec = dataclasses.replace(
            spec, d_in=d_in, d_sae=d_sae, dtype=dtype_name(weights.W_enc.dtype)
        )
        self.weights = weights
        self.log_sparsity = log_sparsity
        self.architecture = get_architecture(spec.architecture)

    def __repr__(self) -> str:
        s = self.spec
        return f"Sae({s.architecture}, d_in={s.d_in}, d_sae={s.d_sae}, hook={s.hook_name})"

    @property
    def d_in(self) -> int:
        return self.weights.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.weights.W_enc.shape[1]

    @property
    def nbytes(self) -> int:
        extra = 0 if self.log_sparsity is None else self.log_sparsity.nbytes
        return self.weights.nbytes + extra

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> Sae:
        log_sparsity = None if self.log_sparsity is None else self.log_sparsity.to(device)
        return Sae(self.spec, self.weights.to(device, dtype), log_sparsity)

    def owned(self) -> Sae:
        """A copy whose tensors live in process memory. Loaded tensors can be views of a
        memory-mapped file: changing that file under a served model must not crash it,
        and the memory an attach reports must be memory it really holds."""
        weights = SaeWeights(**{name: t.clone() for name, t in self.weights.tensors().items()})
        log_sparsity = None if self.log_sparsity is None else self.log_sparsity.clone()
        return Sae(self.spec, weights, log_sparsity)

    def encode(self, x: Tensor) -> Tensor:
        """[..., d_in] -> feature activations [..., d_sae], in float32."""
        return self.encode_with_norm(x)[0]

    def encode_with_norm(self, x: Tensor) -> tuple[Tensor, InputNorm | None]:
        """Features of x (float32) and what `decode` needs to undo the input normalisation.

        The normalisation runs in float32 and only the architecture's encode in the
        weights' dtype (float16 or bfloat16 weights are never copied up to float32:
        that copy would cost the memory they save), so its InputNorm and the
        activations that steering's edits read are float32 whatever the weights."""
        dtype = self.weights.W_enc.dtype
        sae_in, norm = self._normalize(x.float())
        if self.spec.apply_b_dec_to_input:
            sae_in = sae_in - self.weights.b_dec.float()
        return self.architecture.encode(sae_in.to(dtype), self.weights, self.spec).float(), norm

    def decode(self, f: Tensor, norm: InputNorm | None = None) -> Tensor:
        """Features [..., d_sae] -> reconstruction [..., d_in].

        `norm` is the one `encode_with_norm` returned for the same input; it is
        required when the SAE normalises its input at run time.
        """
        if norm is None and self.spec.normalize_activations in RUN_TIME_NORMALIZATIONS:
            raise ValueError(
                f"this SAE uses normalize_activations={self.spec.normalize_activations!r}; "
                "pass the InputNorm from encode_with_norm(x) to decode"
            )
        x_hat = self.architecture.decode(f.to(self.weights.W_dec.dtype), self.weights, self.spec)
        return x_hat if norm is None else norm.undo(x_hat)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of x: [..., d_in] -> [..., d_in]."""
        return self.decode(*self.encode_with_norm(x))

    def _normalize(self, x: Tensor) -> tuple[Tensor, InputNorm | None]:
        kind = self.spec.normalize_activations
        if kind == "constant_norm_rescale":
            # Scale every input vector to norm sqrt(d_in).
            coeff = self.d_in**0.5 / x.norm(dim=-1, keepdim=True)  # [..., 1]
            return x * coeff, InputNorm(coeff=coeff)
        if kind == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)  # [..., 1]
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)  # [..., 1], unbiased like SAELens
            return centred / (std + LAYER_NORM_EPS), InputNorm(mean=mu, std=std)
        return x, None
