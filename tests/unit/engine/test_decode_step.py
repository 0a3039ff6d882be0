"""The decode step without transformers' per-call work computes the model's own logits,
bit for bit, decodes each row of a batch as it would alone, and calls the decoder
layers' hooks as the model would."""

from __future__ import annotations

import copy

import pytest
import torch

from inference_service.config import InferenceSettings
from inference_service.engine.batch_cache import BatchCache
from inference_service.engine.decode_step import LlamaDecodeStep
from inference_service.engine.loader import LoadedModel, LoadOptions, load_model, unload
from inference_service.engine.quantization import Int4NativeLinear
from inference_service.sae.hook_sites import hook_hidden_state
from tests.fixtures.tiny_models import tiny_llama

# How far 4-bit logits may move when the attention sums in another order (of logits
# about 10 to 25 in size).
FOUR_BIT_LOGITS = 1.0
PROMPTS = ["The capital of France is", "Once upon a time, in a land far away, there", "Hi"]


def batch_cache(loaded: LoadedModel, prompts: list[str]) -> BatchCache:
    """Each prompt prefilled alone and joined as a row, as the decode batch does."""
    cache = BatchCache()
    with torch.inference_mode():
        for text in prompts:
            ids = torch.tensor([loaded.tokenizer.encode(text)])
            cache.add(loaded.model(input_ids=ids, use_cache=True).past_key_values)
    return cache


def fast_step(loaded: LoadedModel, cache: BatchCache) -> torch.Tensor:
    """One LlamaDecodeStep over a copy of the cache, as the decode batch runs it."""
    step = LlamaDecodeStep.for_model(loaded.model)
    assert step is not None and step.usable()
    ids = torch.tensor([[13]] * cache.rows)
    lengths = [n + 1 for n in cache.lengths] if cache.padded else None
    with torch.inference_mode():
        return step(ids, copy.deepcopy(cache.cache), lengths, cache.positions())


def both_ways(loaded: LoadedModel, cache: BatchCache) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's logits from the model's forward pass and from LlamaDecodeStep, each
    on its own copy of the cache; for one row the copies must also end equal."""
    step = LlamaDecodeStep.for_model(loaded.model)
    assert step is not None and step.usable()
    ids = torch.tensor([[13]] * cache.rows)
    inputs = cache.step_inputs()
    theirs, ours = copy.deepcopy(cache.cache), copy.deepcopy(cache.cache)
    lengths = [n + 1 for n in cache.lengths] if cache.padded else None
    with torch.inference_mode():
        expected = loaded.model(
            input_ids=ids, past_key_values=theirs, use_cache=True, logits_to_keep=1, **inputs
        ).logits
        got = step(ids, ours, lengths, inputs["position_ids"])
    for a, b in zip(theirs.layers, ours.layers, strict=True):
        if cache.rows == 1:
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        assert a.keys.shape == b.keys.shape == (cache.rows, *a.keys.shape[1:])
    return expected, got


@pytest.mark.parametrize("prompt", PROMPTS)
def test_alone_the_logits_equal_the_models_forward_pass(loaded: LoadedModel, prompt: str) -> None:
    expected, got = both_ways(loaded, batch_cache(loaded, [prompt]))
    assert got.shape == expected.shape == (1, 1, loaded.model.config.vocab_size)
    assert torch.equal(got, expected)


@pytest.fixture(scope="module")
def four_bit(data_dir) -> LoadedModel:
    """The CPU default: 4-bit layers, whose bfloat16 inputs magnify any difference."""
    settings = InferenceSettings(data_dir=data_dir, device="cpu")
    loaded = load_model(settings, LoadOptions.from_settings(settings, quantization="auto"))
    yield loaded
    unload(loaded)


@pytest.mark.parametrize("model", ["loaded", "four_bit"])
def test_in_a_padded_batch_each_row_decodes_as_alone(request, model: str) -> None:
    loaded = request.getfixturevalue(model)
    cache = batch_cache(loaded, PROMPTS)
    assert cache.padded  # the prompts have different lengths
    batched = fast_step(loaded, cache)
    for row, prompt in enumerate(PROMPTS):
        alone = fast_step(loaded, batch_cache(loaded, [prompt]))
        if model == "four_bit":  # row-by-row kernels: the very same numbers
            assert torch.equal(batched[row], alone[0])
        else:  # float32 matrix products sum in another order for more rows
            torch.testing.assert_close(batched[row], alone[0], atol=1e-3, rtol=0)
    # ...and the batch computes what the model's own masked pass does, to rounding (4-bit
    # layers round their inputs to 8 or 16 bits, which spreads a last-bit difference).
    expected, got = both_ways(loaded, cache)
    torch.testing.assert_close(
        got, expected, atol=FOUR_BIT_LOGITS if model == "four_bit" else 1e-4, rtol=0
    )


def test_the_decoder_layers_hooks_edit_as_in_the_forward_pass(loaded: LoadedModel) -> None:
    cache = batch_cache(loaded, PROMPTS[:1])
    plain, _ = both_ways(loaded, cache)
    layers = loaded.model.model.layers
    push = torch.randn(loaded.model.config.hidden_size) * 4
    seen: list[tuple[int, ...]] = []

    def add(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(hidden.shape))
        return hidden + push

    handles = [
        hook_hidden_state(layers[3], "output", add),
        hook_hidden_state(layers[6], "input", add),
        hook_hidden_state(layers[9], "output", lambda hidden: None),  # reads only
    ]
    try:
        expected, got = both_ways(loaded, cache)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(got, expected)
    assert not torch.allclose(got, plain)  # the edits changed the answer
    rows = (1, 1, loaded.model.config.hidden_size)
    assert seen == [rows, rows, rows, rows]  # two hooks, once in each pass


def test_a_hook_it_would_not_call_sends_the_step_to_the_model(loaded: LoadedModel) -> None:
    step = LlamaDecodeStep.for_model(loaded.model)
    assert step is not None and step.usable()
    handle = loaded.model.model.layers[2].mlp.register_forward_hook(lambda *args: None)
    try:
        assert not step.usable()
    finally:
        handle.remove()
    assert step.usable()


def test_other_families_and_training_take_the_models_forward(loaded: LoadedModel) -> None:
    model = loaded.model
    config = model.config
    for name, value in (("model_type", "gpt2"), ("_attn_implementation", "eager")):
        saved = getattr(config, name)
        object.__setattr__(config, name, value)
        try:
            assert LlamaDecodeStep.for_model(model) is None
        finally:
            object.__setattr__(config, name, saved)
    assert LlamaDecodeStep.for_model(model) is not None


def test_weight_only_projections_that_share_an_input_join_without_a_copy(four_bit) -> None:
    step = LlamaDecodeStep.for_model(four_bit.model)
    assert step is not None and step is LlamaDecodeStep.for_model(four_bit.model)
    attention, mlp = four_bit.model.model.layers[0].self_attn, four_bit.model.model.layers[0].mlp
    joined = step._joined[0]
    assert joined.qkv is not None and joined.gate_up is not None
    assert joined.qkv.out_features == sum(
        p.out_features for p in (attention.q_proj, attention.k_proj, attention.v_proj)
    )
    # The layers' own 4-bit weights are rows of the joined ones (whichever kernel's).
    name = "w" if isinstance(joined.qkv, Int4NativeLinear) else "packed"

    def storage(layer) -> int:
        return getattr(layer, name).untyped_storage().data_ptr()

    assert storage(attention.k_proj) == storage(joined.qkv)
    assert storage(mlp.up_proj) == storage(joined.gate_up)
    # ...and still answer as before: 8 rows take the layer's own bfloat16 copy, made
    # at load, which the kernel over its (view) weights must match; and the view holds
    # the key rows of the joined weights, not others.
    x = torch.randn(8, 1, attention.q_proj.in_features, generator=torch.Generator().manual_seed(0))
    by_view = attention.k_proj.decode_rows(x)
    # Both round to bfloat16 at the end, where one last bit is up to 1/128 of a value.
    torch.testing.assert_close(attention.k_proj(x), by_view, atol=0.1, rtol=0.02)
    q_size, k_size = attention.q_proj.out_features, attention.k_proj.out_features
    assert torch.equal(joined.qkv.decode_rows(x)[..., q_size : q_size + k_size], by_view)


def test_the_step_neither_keeps_its_model_alive_nor_misses_a_hook_on_it() -> None:
    import gc
    import weakref

    model = tiny_llama()
    step = LlamaDecodeStep.for_model(model)
    assert step is not None and step.usable()
    handle = model.register_forward_hook(lambda *args: None)
    assert not step.usable()
    handle.remove()
    gone = weakref.ref(model)
    del model, step
    gc.collect()
    assert gone() is None


def test_one_masked_call_for_a_padded_batch_equals_the_models_forward(loaded) -> None:
    # What a GPU model does (rows_alone is False there): transformers' own masked pass.
    step = LlamaDecodeStep.for_model(loaded.model)
    assert step is not None and step.rows_alone  # a CPU model attends row by row
    step.rows_alone = False
    try:
        expected, got = both_ways(loaded, batch_cache(loaded, PROMPTS))
    finally:
        step.rows_alone = True
    assert torch.equal(got, expected)


@pytest.mark.parametrize("model", ["loaded", "four_bit"])
def test_steps_grow_the_cache_in_place_and_match_the_models_forward(request, model) -> None:
    loaded = request.getfixturevalue(model)
    step = LlamaDecodeStep.for_model(loaded.model)
    assert step is not None and step.usable()
    theirs, ours = batch_cache(loaded, PROMPTS), batch_cache(loaded, PROMPTS)
    starts = []
    with torch.inference_mode():
        for token in range(12):
            if token == 6:  # a row leaves: the batch cuts every layer to the others
                theirs.keep([0, 2])
                ours.keep([0, 2])
            ids = torch.tensor([[100 + token]] * ours.rows)
            inputs = theirs.step_inputs()
            expected = loaded.model(
                input_ids=ids,
                past_key_values=theirs.cache,
                use_cache=True,
                logits_to_keep=1,
                **inputs,
            ).logits
            lengths = [n + 1 for n in ours.lengths]
            got = step(ids, ours.cache, lengths, ours.positions())
            theirs.advance()
            ours.advance()
            tolerance = FOUR_BIT_LOGITS if model == "four_bit" else 1e-4
            torch.testing.assert_close(got, expected, atol=tolerance, rtol=0)
            starts.append(ours.cache.layers[0].keys.data_ptr())
    # The layers grew in the room behind them: one buffer before the row left, one after.
    assert len(set(starts)) == 2
    for a, b in zip(theirs.cache.layers, ours.cache.layers, strict=True):
        assert a.keys.shape == b.keys.shape
        if model == "loaded":  # (4-bit layers' bfloat16 inputs spread the rounding)
            torch.testing.assert_close(b.keys, a.keys, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(b.values, a.values, atol=1e-4, rtol=1e-5)
