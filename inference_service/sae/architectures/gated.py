"""Gated SAEs (Rajamanoharan et al. 2024): a gate path decides which features fire,
a magnitude path (the encoder rescaled per feature) how strongly. Inference only."""

from __future__ import annotations

import torch
from torch import Tensor

from inference_service.sae.architectures.base import Architecture, SaeWeights
from inference_service.sae.spec import SaeSpec


class Gated(Architecture):
    name = "gated"
    extra_tensors = ("b_mag", "r_mag")
    saelens_names = {"b_enc": "b_gate"}
    trainable = False

    def encode(self, sae_in: Tensor, w: SaeWeights, spec: SaeSpec) -> Tensor:
        assert w.b_mag is not None and w.r_mag is not None
        active = (sae_in @ w.W_enc + w.b_enc > 0).to(sae_in.dtype)  # [..., d_sae]
        magnitude = torch.relu(sae_in @ (w.W_enc * w.r_mag.exp()) + w.b_mag)  # [..., d_sae]
        return active * magnitude


ARCHITECTURE = Gated()
