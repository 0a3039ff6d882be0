"""Hook sites: where in the model an SAE reads (and steers) the hidden state, and
the one adapter that hooks a module's input or output, for attaching SAEs and for
training's harvest alike.

Names follow SAELens (`blocks.L.hook_resid_post` is the output of decoder layer
L, `blocks.L.hook_resid_pre` its input). Hugging Face module style is accepted
too: the decoder layer's module path (`model.layers.9`) means its output, and
the same path with `:input` means its input. Only the residual stream is
supported; other SAELens sites are refused with the list of what works.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from inference_service.errors import InvalidArgumentError, LayerOutOfRangeError, UnsupportedError

Point = Literal["resid_post", "resid_pre"]
End = Literal["input", "output"]
# An edit maps the hidden state at a site, [batch, positions, d_in], to its
# replacement, or to None to leave it alone.
HiddenEdit = Callable[[Tensor], Tensor | None]

_SAELENS_NAME = re.compile(r"blocks\.(\d+)\.hook_([a-z_.]+)")
_MODULE_NAME = re.compile(r"(?P<path>[A-Za-z_][\w.]*?)\.(?P<layer>\d+)(?::(?P<end>input|output))?")

# Where decoder layers live, by model family: Llama, Qwen, Mistral and Gemma
# (`model.layers`), GPT-2 (`transformer.h`), GPT-NeoX (`gpt_neox.layers`), OPT.
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


@dataclass(frozen=True, order=True)
class HookSite:
    layer: int
    point: Point

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.point}"

    @property
    def end(self) -> End:
        """Which end of decoder layer `layer` the site is."""
        return "input" if self.point == "resid_pre" else "output"


@dataclass(frozen=True)
class DecoderLayers:
    """The model's decoder layers and the module path they sit under."""

    path: str  # such as "model.layers"
    layers: nn.ModuleList

    def module_name(self, site: HookSite) -> str:
        return module_name(self.path, site)

    def __len__(self) -> int:
        return len(self.layers)


def find_decoder_layers(model: nn.Module) -> DecoderLayers:
    """The list of decoder layers of a causal LM, for the families in `_LAYER_PATHS`
    and, failing those, the one ModuleList as long as the config's layer count."""
    for path in _LAYER_PATHS:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return DecoderLayers(path, module)
    count = _config_value(model, "num_hidden_layers", "n_layer", "num_layers")
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and count and len(module) == count:
            return DecoderLayers(name, module)
    raise UnsupportedError(
        f"miLLM cannot find the decoder layers of {type(model).__name__}; supported families "
        "keep them at " + ", ".join(_LAYER_PATHS) + "."
    )


def module_name(layers_path: str, site: HookSite) -> str:
    """The site in Hugging Face module style: `model.layers.9` or `model.layers.9:input`."""
    suffix = ":input" if site.point == "resid_pre" else ""
    return f"{layers_path}.{site.layer}{suffix}"


def layer_out_of_range(layer: int, count: int, param: str) -> LayerOutOfRangeError | None:
    """The error for a site at a layer the model does not have; None when it has it."""
    if 0 <= layer < count:
        return None
    return LayerOutOfRangeError(
        f"Layer {layer} does not exist. Model has {count} layers (0-{count - 1}).", param=param
    )


def hook_hidden_state(module: nn.Module, end: End, edit: HiddenEdit) -> RemovableHandle:
    """Calls `edit` with the hidden state at the module's input or output on every
    forward pass; what it returns replaces that hidden state (None: left alone)."""
    if end == "output":

        def on_output(_module: Any, _args: Any, output: Any) -> Any:
            # Decoder layers return a tensor on current transformers, a tuple on older ones.
            hidden = output[0] if isinstance(output, tuple) else output
            changed = edit(hidden)
            if changed is None:
                return None
            return (changed, *output[1:]) if isinstance(output, tuple) else changed

        return module.register_forward_hook(on_output)

    def on_input(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            changed = edit(args[0])
            return None if changed is None else ((changed, *args[1:]), kwargs)
        changed = edit(kwargs["hidden_states"])
        return None if changed is None else (args, {**kwargs, "hidden_states": changed})

    return module.register_forward_pre_hook(on_input, with_kwargs=True)


def hidden_size(model: nn.Module) -> int:
    size = _config_value(model, "hidden_size", "n_embd", "d_model")
    if not size:
        raise UnsupportedError(f"The config of {type(model).__name__} names no hidden size.")
    return int(size)


def trained_site(hook_name: str | None) -> HookSite | None:
    """The site an SAE's own (SAELens) hook name names; None when it is not a
    residual-stream site miLLM can attach to."""
    match = _SAELENS_NAME.fullmatch(hook_name or "")
    if match is None or match.group(2) not in ("resid_post", "resid_pre"):
        return None
    return HookSite(int(match.group(1)), match.group(2))  # type: ignore[arg-type]


def parse_hook_site(text: str, layers_path: str) -> HookSite:
    """A site from SAELens style or from the decoder-layer module path of this model."""
    text = text.strip()
    if match := _SAELENS_NAME.fullmatch(text):
        point = match.group(2)
        if point not in ("resid_post", "resid_pre"):
            raise UnsupportedError(
                f"Hook site '{text}' is not supported yet: miLLM attaches SAEs to the residual "
                "stream only (blocks.L.hook_resid_post or blocks.L.hook_resid_pre).",
                param="hook_name",
            )
        return HookSite(int(match.group(1)), point)  # type: ignore[arg-type]
    if (match := _MODULE_NAME.fullmatch(text)) and match.group("path") == layers_path:
        end: Point = "resid_pre" if match.group("end") == "input" else "resid_post"
        return HookSite(int(match.group("layer")), end)
    raise InvalidArgumentError(
        f"'{text}' is not a hook site of this model. Use SAELens style "
        f"(blocks.9.hook_resid_post, blocks.9.hook_resid_pre) or the layer's module path "
        f"({layers_path}.9 for its output, {layers_path}.9:input for its input).",
        param="hook_name",
    )


def _config_value(model: nn.Module, *names: str) -> Any:
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    for name in names:
        value = getattr(config, name, None)
        if value:
            return value
    return None
