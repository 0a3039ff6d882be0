"""What every SAE architecture has: its tensors, and the interface each one fills in.

One module per architecture (standard.py, jumprelu.py, topk.py, batchtopk.py,
gated.py) subclasses `Architecture` once; registry.py looks them up by the name
SAELens gives them. Inference, training, steering and saving ask the
architecture object instead of comparing its name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from inference_service.errors import UnsupportedError
from inference_service.sae.architectures.sparse_codes import SparseCodes
from inference_service.sae.spec import SaeSpec

if TYPE_CHECKING:  # only for annotations: training imports sae, not the other way round
    from inference_service.training.trainable import TrainableSae

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    for name, candidate in TORCH_DTYPES.items():
        if candidate == dtype:
            return name
    raise UnsupportedError(
        f"SAE dtype {dtype} is not supported; supported: {', '.join(TORCH_DTYPES)}"
    )


@dataclass
class SaeWeights:
    """The tensors of one SAE, oriented as SAELens stores them."""

    W_enc: Tensor  # [d_in, d_sae]
    b_enc: Tensor  # [d_sae]; for gated SAEs the gate-path bias (SAELens' b_gate)
    W_dec: Tensor  # [d_sae, d_in]
    b_dec: Tensor  # [d_in]
    threshold: Tensor | None = None  # [d_sae], jumprelu
    b_mag: Tensor | None = None  # [d_sae], gated
    r_mag: Tensor | None = None  # [d_sae], gated: log of the magnitude-path rescale

    def tensors(self) -> dict[str, Tensor]:
        """The tensors that are set, by field name."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> SaeWeights:
        moved = {name: t.to(device=device, dtype=dtype) for name, t in self.tensors().items()}
        return SaeWeights(**moved)

    def features(self, index: Tensor) -> SaeWeights:
        """The weights of the features in `index` [n] alone, as an SAE of width n."""
        per_feature = {
            name: t[:, index] if name == "W_enc" else t if name == "b_dec" else t[index]
            for name, t in self.tensors().items()
        }
        return SaeWeights(**per_feature)


class Architecture:
    """One SAE architecture. The class attributes are its capabilities; the methods
    its math, for inference (encode, decode), steering, training and saving."""

    name: str
    # ---- inference
    loadable = True  # has an inference form of its own (BatchTopK is saved as JumpReLU)
    extra_tensors: tuple[str, ...] = ()  # SaeWeights fields beyond W_enc/b_enc/W_dec/b_dec
    saelens_names: Mapping[str, str] = MappingProxyType({})  # where SAELens' names differ
    keeps_top_k = False  # uses k (and TopK's rescale_acts_by_decoder_norm)
    # f_i depends on column i of W_enc alone, so steering's clamp and multiply can
    # compute the steered features without the full encode.
    columnwise = False
    # ---- training
    trainable = True
    sparse_training = False  # trains on the kept entries only (sparse_codes.py)
    default_decoder_norm = "unit"
    # SAELens' names for a transcoder and a skip transcoder; None: it has no such format.
    transcoder_names: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"<architecture {self.name}>"

    @property
    def saved_as(self) -> str:
        """The architecture a trained SAE is saved (and so loaded) as."""
        return self.name

    def saelens_keys(self) -> dict[str, str]:
        """SaeWeights field -> tensor name in SAELens' sae_weights.safetensors."""
        names = ("W_enc", "b_enc", "W_dec", "b_dec", *self.extra_tensors)
        return {name: self.saelens_names.get(name, name) for name in names}

    # ---- inference ---------------------------------------------------------------------

    def encode(self, sae_in: Tensor, w: SaeWeights, spec: SaeSpec) -> Tensor:
        """sae_in [..., d_in] (normalised, b_dec applied) -> features [..., d_sae]."""
        raise NotImplementedError(f"{self.name} SAEs have no inference form")

    def decode(self, f: Tensor, w: SaeWeights, spec: SaeSpec) -> Tensor:
        """features [..., d_sae] -> [..., d_in], before the output normalisation."""
        return f @ w.W_dec + w.b_dec

    def steering_rows(self, selected: SaeWeights, spec: SaeSpec) -> Tensor:
        """[n, d_in]: how far this architecture's decode moves per unit of each selected
        feature's activation, the direction steering's clamp and multiply move h along.

        Decode is affine in the features, so this is the decode of each one-hot latent
        without b_dec: the decoder row itself, or (TopK with rescale_acts_by_decoder_norm)
        the row over its norm. Setting f_i to f_i' then moves h by (f_i' - f_i) * row,
        exactly what decoding the edited latent changes.
        """
        n = selected.W_dec.shape[0]
        one_hot = torch.eye(n, dtype=selected.W_dec.dtype, device=selected.W_dec.device)
        unbiased = dataclasses.replace(selected, b_dec=torch.zeros_like(selected.b_dec))
        return self.decode(one_hot, unbiased, spec)

    def spec_problems(self, spec: SaeSpec, d_sae: int) -> list[str]:
        """What is wrong with the spec's architecture settings, in words."""
        return []

    # ---- training ----------------------------------------------------------------------

    def init_training(self, sae: TrainableSae) -> None:
        """Adds the parameters this architecture trains beyond the encoder and decoder."""

    def activate(self, pre: Tensor, sae: TrainableSae) -> Tensor:
        """Pre-activations [B, d_sae] -> features: the dense training forward pass,
        and the inference-time features of every trainable architecture."""
        raise NotImplementedError(f"{self.name} SAEs cannot be trained")

    def sparsity_loss(self, pre: Tensor, f: Tensor, sae: TrainableSae, scale: float) -> Tensor:
        """The sparsity penalty of a dense training step, `scale` its warm-up factor."""
        return pre.new_zeros(())

    def select(self, pre: Tensor, k: int) -> SparseCodes:
        """The entries a sparse training step keeps (sparse_training architectures)."""
        raise NotImplementedError(f"{self.name} SAEs train densely")

    def observe_kept(self, values: Tensor, sae: TrainableSae) -> None:
        """Sees the kept activations of each sparse training step."""

    def saved_threshold(self, sae: TrainableSae) -> Tensor | None:
        """The JumpReLU threshold [d_sae] the saved SAE uses, if it is saved as one."""
        return None
