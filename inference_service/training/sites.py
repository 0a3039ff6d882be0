"""Where training reads activations: residual-stream sites plus the MLP's input
and output (for transcoders), and a forward pass that stops once it has them.

SAELens names map onto Hugging Face modules:

    blocks.L.hook_resid_pre   input of decoder layer L
    blocks.L.hook_resid_post  output of decoder layer L
    blocks.L.hook_mlp_in      input of layer L's MLP (after its norm)
    blocks.L.hook_mlp_out     output of layer L's MLP

Module paths (`model.layers.9`, `model.layers.9:input`) work as for attaching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from inference_service.errors import InvalidArgumentError, UnsupportedError
from inference_service.sae.hook_sites import (
    End,
    find_decoder_layers,
    hook_hidden_state,
    layer_out_of_range,
    parse_hook_site,
)

_MLP_NAME = re.compile(r"blocks\.(\d+)\.hook_mlp_(in|out)")


@dataclass(frozen=True)
class CaptureSite:
    hook_name: str  # SAELens style, as saved with the SAE
    module: str  # the module whose input or output is read
    end: End
    layer: int


def capture_site(model: nn.Module, text: str, param: str) -> CaptureSite:
    layers = find_decoder_layers(model)
    text = text.strip()
    if match := _MLP_NAME.fullmatch(text):
        layer = int(match.group(1))
        _check_layer(layer, len(layers), param)
        if not hasattr(layers.layers[layer], "mlp"):
            raise UnsupportedError(
                f"Layer {layer} of this model has no 'mlp' module, so {text} cannot be read.",
                param=param,
            )
        end: End = "input" if match.group(2) == "in" else "output"
        return CaptureSite(text, f"{layers.path}.{layer}.mlp", end, layer)
    try:
        site = parse_hook_site(text, layers.path)
    except (InvalidArgumentError, UnsupportedError) as exc:
        raise InvalidArgumentError(
            f"{exc.message} For training, blocks.L.hook_mlp_in and blocks.L.hook_mlp_out work too.",
            param=param,
        ) from None
    _check_layer(site.layer, len(layers), param)
    return CaptureSite(site.hook_name, f"{layers.path}.{site.layer}", site.end, site.layer)


def _check_layer(layer: int, count: int, param: str) -> None:
    if error := layer_out_of_range(layer, count, param):
        raise error


class _Captured(Exception):
    """Ends a forward pass early: every site has been read."""


@torch.inference_mode()
def capture(
    model: nn.Module,
    sites: list[CaptureSite],
    input_ids: Tensor,
    out_device: torch.device | str = "cpu",
) -> list[Tensor]:
    """Runs `model` on `input_ids` [B, T] until every site is read; one [B, T, d] tensor
    per site, float32 on `out_device` (training on a GPU keeps them on the model's
    device). Layers after the deepest site never run."""
    found: dict[int, Tensor] = {}
    handles = []

    def keep(index: int, hidden: Tensor) -> None:
        found[index] = hidden.detach().float().to(out_device)
        if len(found) == len(sites):
            raise _Captured

    for index, site in enumerate(sites):
        module = model.get_submodule(site.module)
        handles.append(hook_hidden_state(module, site.end, partial(keep, index)))
    try:
        model(input_ids=input_ids.to(next(model.parameters()).device), use_cache=False)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(found) != len(sites):
        raise UnsupportedError("The model's forward pass never reached the hook site(s).")
    return [found[i] for i in range(len(sites))]
