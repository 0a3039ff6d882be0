"""Quantized loading of the real built-in model, proven through the engine's decode loop."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from inference_service.config import InferenceSettings
from inference_service.engine import native, quantization
from inference_service.engine.generation import run_generation
from inference_service.engine.loader import LoadedModel, LoadOptions, load_model, unload
from inference_service.engine.prompts import render_chat
from inference_service.engine.types import (
    ChatTurn,
    FinishedEvent,
    GenerationEvent,
    GenerationRequest,
    SamplingOptions,
)
from inference_service.errors import InvalidArgumentError, UnsupportedError

needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed"
)


def answer(loaded: LoadedModel, question: str, max_tokens: int) -> str:
    prompt = render_chat(loaded.tokenizer, [ChatTurn("user", question)])
    events: list[GenerationEvent] = []
    request = GenerationRequest(
        "q", tuple(prompt), SamplingOptions(temperature=0.0, max_tokens=max_tokens)
    )
    run_generation(loaded, request, events.append, lambda: False)
    assert isinstance(events[-1], FinishedEvent)
    return "".join(e.text for e in events[:-1])  # type: ignore[union-attr]


@pytest.fixture
def load(data_dir: Path):
    """Loads with options; unloads after the test so the modes do not pile up in memory."""
    models: list[LoadedModel] = []

    def _load(**options: str) -> LoadedModel:
        settings = InferenceSettings(data_dir=data_dir, device="cpu")
        loaded = load_model(settings, LoadOptions.from_settings(settings, **options))
        models.append(loaded)
        return loaded

    yield _load
    for loaded in models:
        unload(loaded)


def test_int8_dynamic_answers_and_reports_itself(load) -> None:
    loaded = load(quantization="int8_dynamic")
    assert "Paris" in answer(loaded, "What is the capital of France?", 12)
    d = loaded.description
    assert (d.dtype, d.extra["quantization"]) == ("float32", "int8_dynamic")
    assert d.parameter_count == 134_515_008  # logical parameters, as in float32
    # Every linear layer is int8, the output layer included (its tie to the float32
    # embedding is broken on purpose: see quantization.py).
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert isinstance(loaded.model.lm_head, dynamic)
    assert isinstance(loaded.model.model.layers[0].mlp.up_proj, dynamic)
    assert loaded.model.model.embed_tokens.weight.dtype == torch.float32
    assert loaded.model.config.tie_word_embeddings is False
    # int8 linear weights + float32 embedding: under half the float32 model's 513 MiB.
    assert 200 << 20 < int(d.extra["weights_bytes"]) < 260 << 20


def test_int8_weight_answers_like_float32(load, loaded: LoadedModel) -> None:
    fast = load(quantization="int8_weight")
    assert "Paris" in answer(fast, "What is the capital of France?", 12)
    d = fast.description
    assert (d.dtype, d.extra["quantization"]) == ("float32", "int8_weight")
    assert d.parameter_count == 134_515_008
    assert isinstance(fast.model.lm_head, quantization.Int8WeightLinear)
    assert isinstance(fast.model.model.layers[0].mlp.up_proj, quantization.Int8WeightLinear)
    assert fast.model.model.embed_tokens.weight.dtype == torch.float32
    assert fast.model.config.tie_word_embeddings is False
    assert 200 << 20 < int(d.extra["weights_bytes"]) < 260 << 20
    assert agreement_with(loaded, fast) >= 0.9


def agreement_with(reference: LoadedModel, fast: LoadedModel) -> float:
    """With the reference's greedy tokens forced, how often `fast` picks the same next
    token (bench/cpu_decode.py measures more prompts)."""
    prompt = render_chat(reference.tokenizer, [ChatTurn("user", "Explain how a fridge works.")])
    events: list[GenerationEvent] = []
    request = GenerationRequest("r", tuple(prompt), SamplingOptions(0.0, max_tokens=24))
    run_generation(reference, request, events.append, lambda: False)
    want = [i for e in events[:-1] for i in e.token_ids]  # type: ignore[union-attr]
    with torch.inference_mode():
        logits = fast.model(input_ids=torch.tensor([prompt + want])).logits[0]
    picked = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
    return sum(p == w for p, w in zip(picked, want, strict=True)) / len(want)


def test_auto_on_a_cpu_keeps_the_built_in_models_4bit_layers_4bit(load, loaded) -> None:
    # The built-in model is a Q4_1 GGUF: its decoder layers hold 4-bit values, its
    # output layer (the tied embedding) does not.
    fast = load()  # quantization: the default, auto
    d = fast.description
    assert (d.dtype, d.extra["quantization"]) == ("float32", "int4_weight")
    layers = fast.model.model.layers
    # (whichever kernel this machine runs: test_native_kernel.py)
    assert isinstance(layers[0].mlp.up_proj, quantization.FourBitLinear)
    assert isinstance(layers[-1].self_attn.k_proj, quantization.FourBitLinear)
    assert isinstance(fast.model.lm_head, quantization.Int8WeightLinear)
    # 4-bit groups reproduce the loaded weights: bfloat16 scales are all that differ.
    original = loaded.model.model.layers[0].mlp.up_proj.weight
    assert layers[0].mlp.up_proj.relative_error(original) < 0.005
    # About 2.6 bytes per 4-bit weight (see FourBitLinear), the int8 output layer and the
    # float32 embedding: under float32's 513 MiB.
    assert 380 << 20 < int(d.extra["weights_bytes"]) < 430 << 20
    assert "Paris" in answer(fast, "What is the capital of France?", 12)
    assert agreement_with(loaded, fast) >= 0.9


def four_bit_weight(out_features: int, in_features: int) -> torch.Tensor:
    """A weight that holds 4-bit values: each group of 32 is min + q * step."""
    q = torch.randint(0, 16, (out_features, in_features // 32, 32)).float()
    q[..., 0], q[..., 1] = 0, 15  # a 4-bit file's groups span their codes (as Q4_1's do)
    step = torch.rand(out_features, in_features // 32, 1) * 0.02 + 0.001
    low = torch.randn(out_features, in_features // 32, 1) * 0.05
    return (low + q * step).view(out_features, in_features)


class _Tiny(torch.nn.Module):
    """The parts of a causal LM quantize_weight_only reads."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"tie_word_embeddings": False})()
        self.four = torch.nn.Linear(64, 48)
        self.four.weight.data = four_bit_weight(48, 64)
        self.plain = torch.nn.Linear(64, 48)
        self.odd = torch.nn.Linear(40, 8)  # 40 inputs: no whole groups of 32
        self.head = torch.nn.Linear(64, 100, bias=False)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.head


@pytest.mark.parametrize(
    ("mode", "kinds"),
    [
        ("auto", ("int4", "int8", "int8", "int8")),
        ("int4_weight", ("int4", "int4", "int8", "int8")),  # the head stays int8
        ("int8_weight", ("int8", "int8", "int8", "int8")),
    ],
)
@pytest.mark.parametrize("kernel", ["torch", "native"])
def test_weight_only_modes_choose_bits_per_layer(
    mode: str, kinds: tuple[str, ...], kernel: str, data_dir
) -> None:
    torch.manual_seed(0)
    model = _Tiny()
    q4q8 = None
    if kernel == "native":
        q4q8 = native.load_q4q8(data_dir / "kernels")
        if q4q8 is None:
            pytest.skip("this machine cannot run miLLM's kernel (no AVX512-VNNI or compiler)")
    made = quantization.quantize_weight_only(model, mode, q4q8)
    four_bit = quantization.Int4WeightLinear if q4q8 is None else quantization.Int4NativeLinear
    classes = {"int4": four_bit, "int8": quantization.Int8WeightLinear}
    layers = (model.four, model.plain, model.odd, model.head)
    assert [type(layer) for layer in layers] == [classes[k] for k in kinds]
    assert made == {"int4": kinds.count("int4"), "int8": kinds.count("int8")}


@pytest.mark.parametrize(
    ("kind", "rows"),
    [
        # The 4-bit kernel (up to 5 rows) and the bfloat16 product; the int8 kernel (up
        # to 16) and the dequantized product.
        (quantization.Int4WeightLinear, 1),
        (quantization.Int4WeightLinear, 5),
        (quantization.Int4WeightLinear, 40),
        (quantization.Int8WeightLinear, 1),
        (quantization.Int8WeightLinear, 3),
        (quantization.Int8WeightLinear, 40),
    ],
)
def test_weight_only_linear_computes_its_weights(kind, rows: int) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = kind(linear)
    x = torch.randn(2, rows, 64)
    got = layer(x)
    assert got.shape == (2, rows, 48) and got.dtype == torch.float32
    expected = torch.nn.functional.linear(x, layer.weight.float(), linear.bias)
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)


def test_int4_weights_are_the_float_weights_to_half_a_group_step() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = quantization.Int4WeightLinear(linear)
    groups = linear.weight.detach().view(48, 2, 32)
    step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15
    error = (layer.weight.float() - linear.weight).abs().view(48, 2, 32)
    assert bool((error <= step * 0.51 + 2e-3).all())
    # Weights that hold 4-bit values come back almost exactly.
    exact = torch.nn.Linear(64, 48)
    exact.weight.data = four_bit_weight(48, 64)
    assert quantization.Int4WeightLinear(exact).relative_error(exact.weight) < 0.005


def test_int8_weights_are_the_float_weights_to_half_a_row_step() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = quantization.Int8WeightLinear(linear)
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    assert bool(((layer.weight.float() - linear.weight).abs() <= step * 0.51 + 1e-2).all())


def test_auto_picks_the_fast_mode_for_the_device() -> None:
    assert LoadOptions(device="cpu").resolved() == LoadOptions("float32", "int8_weight", "cpu")
    assert LoadOptions(device="cuda").resolved().quantization == "none"
    explicit = LoadOptions("bfloat16", "none", "cpu")
    assert explicit.resolved() is explicit
    assert InferenceSettings().quantization == "auto"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_int8_weight_is_refused_on_cuda() -> None:
    with pytest.raises(InvalidArgumentError, match="CPU only") as caught:
        quantization.validate(LoadOptions("float32", "int8_weight", "cuda"))
    assert caught.value.param == "quantization"


@needs_bnb
@pytest.mark.parametrize(
    ("mode", "layer", "max_bytes"),
    [("bnb_8bit", "Linear8bitLt", 230 << 20), ("bnb_4bit", "Linear4bit", 180 << 20)],
)
def test_bitsandbytes_answers_on_cpu(load, mode: str, layer: str, max_bytes: int) -> None:
    loaded = load(quantization=mode)
    assert "Paris" in answer(loaded, "What is the capital of France?", 8)
    assert type(loaded.model.model.layers[0].self_attn.q_proj).__name__ == layer
    d = loaded.description
    assert (d.extra["quantization"], d.device) == (mode, "cpu")
    assert d.parameter_count == 134_515_008
    assert int(d.extra["weights_bytes"]) < max_bytes


def test_options_come_from_settings_with_overrides() -> None:
    settings = InferenceSettings(dtype="bfloat16", device="cpu")
    assert LoadOptions.from_settings(settings) == LoadOptions("bfloat16", "auto", "cpu")
    assert LoadOptions.from_settings(settings, dtype=None, quantization="bnb_4bit") == (
        LoadOptions("bfloat16", "bnb_4bit", "cpu")
    )
    with pytest.raises(TypeError):
        LoadOptions.from_settings(settings, colour="red")


@pytest.mark.parametrize(
    ("options", "param", "words"),
    [
        (LoadOptions(dtype="float64"), "dtype", "dtype must be one of"),  # type: ignore[arg-type]
        (LoadOptions(quantization="gptq"), "quantization", "quantization must be"),  # type: ignore[arg-type]
        (LoadOptions(device="tpu"), "device", "device must be"),  # type: ignore[arg-type]
        (LoadOptions("bfloat16", "int8_dynamic", "cpu"), "dtype", "float32 model"),
    ],
)
def test_invalid_options_are_refused_clearly(options, param: str, words: str) -> None:
    with pytest.raises(InvalidArgumentError, match=words) as caught:
        quantization.validate(options)
    assert caught.value.param == param


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_cuda_only_requests_fail_without_cuda() -> None:
    with pytest.raises(InvalidArgumentError, match="no CUDA device") as caught:
        quantization.validate(LoadOptions(device="cuda"))
    assert caught.value.param == "device"


def test_float16_on_cpu_is_allowed_with_a_warning() -> None:
    (warning,) = quantization.validate(LoadOptions("float16", "none", "cpu"))
    assert "float16 on the CPU is slow" in warning
    assert quantization.validate(LoadOptions("bfloat16", "none", "cpu")) == []


def test_bitsandbytes_missing_says_how_to_install(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        quantization.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    with pytest.raises(UnsupportedError, match="pip install bitsandbytes") as caught:
        quantization.validate(LoadOptions(quantization="bnb_8bit", device="cpu"))
    assert caught.value.param == "quantization"
