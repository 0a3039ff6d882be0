"""A steering set made ready for one attached SAE: the edit applied at its hook site.

The math is docs/steering.md's, with `h` the hidden state at the site and `f_i`
the SAE's activation of feature i:

    add       h += s * W_dec[i]          (W_dec[i] / ||W_dec[i]|| when normalised)
    clamp     h += (c - f_i) * d_i       (sets feature i to c)
    multiply  h += (m - 1) * f_i * d_i

where d_i is how far the SAE's own decode moves per unit of f_i (the
architecture's `steering_rows`; W_dec[i] except for TopK with
rescale_acts_by_decoder_norm), undone by the input normalisation as decode is
(divided by the rescale coefficient, or times the standard deviation), so that
clamp and multiply move h exactly as decoding the edited latent would.

`h` itself is never replaced by the SAE's reconstruction, so only the steered
features move. All add rows fold into one precomputed vector (one addition per
position); clamp and multiply need f_i, which for columnwise architectures (ReLU,
JumpReLU) comes from column i of W_enc alone. The others, and run-time-normalised
SAEs, need the full encode to know f_i, and get it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inference_service.sae.architectures import InputNorm, Sae
from inference_service.steering.types import SteeringSet


class CompiledSteering:
    def __init__(self, steering: SteeringSet, sae: Sae) -> None:
        self.steering = steering
        self.sae = sae
        w = sae.weights
        live = [f for f in steering.features if not f.is_identity()] if steering.enabled else []

        adds = [f for f in live if f.mode == "add"]
        self._add: Tensor | None = None  # [d_in]
        if adds:
            rows = w.W_dec[[f.index for f in adds]].float()  # [n, d_in]
            norms = rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            scale = torch.tensor([f.strength for f in adds], device=rows.device)  # [n]
            normalise = torch.tensor([f.normalize for f in adds], device=rows.device)
            rows = torch.where(normalise.unsqueeze(-1), rows / norms, rows)
            self._add = (scale.unsqueeze(-1) * rows).sum(dim=0)

        encoded = [f for f in live if f.mode in ("clamp", "multiply")]
        self._encoded = bool(encoded)
        if encoded:
            index = torch.tensor([f.index for f in encoded], device=w.W_dec.device)
            self._index = index
            # The selected features as an SAE of their own, in float32.
            self._selected = w.features(index).to(w.W_dec.device, torch.float32)
            self._rows = sae.architecture.steering_rows(self._selected, sae.spec)  # [n, d_in]
            self._is_clamp = torch.tensor(
                [f.mode == "clamp" for f in encoded], device=w.W_dec.device
            )
            self._amount = torch.tensor(
                [f.strength for f in encoded], dtype=torch.float32, device=w.W_dec.device
            )
            self._columnwise = sae.architecture.columnwise and sae.spec.normalize_activations in (
                "none",
                "expected_average_only_in",
            )

    @property
    def is_identity(self) -> bool:
        return self._add is None and not self._encoded

    @property
    def add_vector(self) -> Tensor | None:
        """The sum of the add rows, [d_in] float32 (None without add features)."""
        return self._add

    @property
    def encodes(self) -> bool:
        """Whether some feature's edit reads its activation (clamp, multiply)."""
        return self._encoded

    def apply(self, h: Tensor) -> Tensor:
        """h [batch, positions, d_in] -> the steered hidden state, same shape and dtype."""
        out = self.apply_encoded(h) if self._encoded else h
        if self._add is not None:
            out = out + self._add.to(h.dtype)
        return out

    def apply_encoded(self, h: Tensor) -> Tensor:
        """The clamp and multiply edits alone (the adds come after them)."""
        f, norm = self._selected_activations(h)  # [B, T, n]
        # clamp: c - f; multiply: (m - 1) * f
        coeff = torch.where(self._is_clamp, self._amount - f, (self._amount - 1.0) * f)
        change = coeff @ self._rows  # [B, T, d_in], in the SAE's normalised space
        if norm is not None:
            change = norm.undo_change(change)
        return h + change.to(h.dtype)

    def _selected_activations(self, h: Tensor) -> tuple[Tensor, InputNorm | None]:
        if not self._columnwise:
            f, norm = self.sae.encode_with_norm(h.float())
            return f[..., self._index].float(), norm
        x = h.float()
        if self.sae.spec.apply_b_dec_to_input:
            x = x - self._selected.b_dec
        return self.sae.architecture.encode(x, self._selected, self.sae.spec), None
