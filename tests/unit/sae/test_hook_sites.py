"""Hook-site names and where decoder layers live, on tiny models of each family."""

from __future__ import annotations

import pytest
import torch

from inference_service.errors import InvalidArgumentError, UnsupportedError
from inference_service.sae.attachments import SiteHook
from inference_service.sae.hook_sites import (
    HookSite,
    find_decoder_layers,
    hidden_size,
    hook_hidden_state,
    module_name,
    parse_hook_site,
)
from tests.fixtures.tiny_models import tiny_gpt2, tiny_llama, tiny_neox


@pytest.mark.parametrize(
    ("text", "site"),
    [
        ("blocks.9.hook_resid_post", HookSite(9, "resid_post")),
        ("blocks.0.hook_resid_pre", HookSite(0, "resid_pre")),
        ("model.layers.9", HookSite(9, "resid_post")),
        ("model.layers.9:output", HookSite(9, "resid_post")),
        ("model.layers.12:input", HookSite(12, "resid_pre")),
        ("  blocks.3.hook_resid_post ", HookSite(3, "resid_post")),
    ],
)
def test_parse_both_styles(text: str, site: HookSite) -> None:
    assert parse_hook_site(text, "model.layers") == site


def test_names_round_trip() -> None:
    site = HookSite(4, "resid_pre")
    assert site.hook_name == "blocks.4.hook_resid_pre"
    assert module_name("transformer.h", site) == "transformer.h.4:input"
    assert parse_hook_site(module_name("transformer.h", site), "transformer.h") == site


def test_other_sites_are_refused_with_what_works() -> None:
    with pytest.raises(UnsupportedError, match="residual stream only"):
        parse_hook_site("blocks.3.hook_mlp_out", "model.layers")
    with pytest.raises(InvalidArgumentError, match=r"model\.layers\.9:input"):
        parse_hook_site("transformer.h.3", "model.layers")  # another family's path
    with pytest.raises(InvalidArgumentError, match="not a hook site"):
        parse_hook_site("layer nine", "model.layers")


@pytest.mark.parametrize(
    ("build", "path", "count", "width"),
    [
        (tiny_llama, "model.layers", 3, 32),
        (tiny_gpt2, "transformer.h", 3, 32),
        (tiny_neox, "gpt_neox.layers", 3, 32),
    ],
)
def test_decoder_layers_of_each_family(build, path: str, count: int, width: int) -> None:
    model = build()
    layers = find_decoder_layers(model)
    assert (layers.path, len(layers)) == (path, count)
    assert hidden_size(model) == width


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_neox])
@pytest.mark.parametrize("point", ["resid_post", "resid_pre"])
def test_site_hook_sees_and_replaces_the_residual_stream(build, point: str) -> None:
    """The hook reads the hidden state at the right place, and what it returns is what
    the rest of the model sees; with no edit the logits are bit-identical."""
    torch.manual_seed(0)
    model = build()
    layers = find_decoder_layers(model)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        expected = model(ids).logits
        reference = model(ids, output_hidden_states=True).hidden_states
    # Layer 1 of 3: not the last, whose hidden_states entry has the final norm applied.
    site = HookSite(1, point)  # type: ignore[arg-type]
    hook = SiteHook(site)
    handle = hook_hidden_state(layers.layers[1], site.end, hook)
    try:
        with torch.inference_mode():
            assert torch.equal(model(ids).logits, expected)  # no edit: untouched
            seen = []
            hook.edit = lambda h: seen.append(h.clone())
            assert torch.equal(model(ids).logits, expected)  # an edit returning None
            # hidden_states[i] is the input of layer i (the output of layer i-1).
            assert torch.equal(seen[0], reference[1 if point == "resid_pre" else 2])
            hook.edit = lambda h: h + 1.0
            assert not torch.allclose(model(ids).logits, expected)
    finally:
        handle.remove()
