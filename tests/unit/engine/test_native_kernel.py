"""miLLM's own 4-bit CPU kernel (engine/native.py): it multiplies its 4-bit weights by
8-bit activations exactly as described, gives a row the same numbers alone or in a
batch, joins layers without copies, and gives way to PyTorch's kernel wherever it
cannot be built."""

from __future__ import annotations

import logging

import pytest
import torch

from inference_service.config import InferenceSettings
from inference_service.engine import native, quantization
from inference_service.engine.loader import cpu_kernel


@pytest.fixture(scope="module")
def kernel(data_dir):
    built = native.load_q4q8(data_dir / "kernels")
    if built is None:
        pytest.skip("this machine cannot run the kernel (no AVX512-VNNI or no C compiler)")
    return built


def layer_and_reference(kernel, out_features: int, in_features: int, bias: bool = True):
    torch.manual_seed(out_features + in_features)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    layer = quantization.Int4NativeLinear(linear, kernel)
    # The layer's own 4-bit weights: steps of float16 scales over float16 minimums.
    q, scale, low = quantization.four_bit_groups(linear.weight, 32, stored=torch.float16)
    scale, low = scale.double(), low.double()
    groups = q.view(out_features, -1, 32).double()
    weight = (groups * scale[..., None] + low[..., None]).view(out_features, in_features)

    def reference(x: torch.Tensor) -> torch.Tensor:
        """x rounded to 8 bits per group of 32 as the kernel rounds it, times the
        weights, in float64."""
        grouped = x.float().view(x.shape[0], -1, 32)
        amax = grouped.abs().amax(-1, keepdim=True)
        inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
        steps = torch.round(grouped * inverse)  # to nearest, ties to even, as the CPU does
        x8 = (steps.double() * (amax / 127.0).double()).view_as(x)
        out = x8 @ weight.T
        return out if linear.bias is None else out + linear.bias.double()

    return layer, reference


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 20])
def test_the_kernel_multiplies_its_weights_by_8_bit_activations(kernel, rows: int) -> None:
    layer, reference = layer_and_reference(kernel, 48, 96)
    x = torch.randn(rows, 96) * 3
    got = layer.decode_rows(x)
    assert got.shape == (rows, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference(x), atol=1e-4, rtol=1e-5)


def test_a_row_gets_the_same_numbers_alone_or_in_a_batch(kernel) -> None:
    layer, _ = layer_and_reference(kernel, 64, 128, bias=False)
    batch = torch.randn(11, 128)  # more rows than the kernel takes together (8)
    together = layer.decode_rows(batch)
    for row in range(11):
        assert torch.equal(layer.decode_rows(batch[row : row + 1])[0], together[row])


def test_joined_layers_compute_their_parts_side_by_side_without_a_copy(kernel) -> None:
    parts = [layer_and_reference(kernel, n, 64, bias=False)[0] for n in (32, 16, 16)]
    x = torch.randn(3, 64)
    alone = [part.decode_rows(x) for part in parts]
    joined = quantization.joined_kernel(parts)
    assert isinstance(joined, quantization.Int4NativeLinear) and joined.out_features == 64
    assert torch.equal(joined.decode_rows(x), torch.cat(alone, dim=-1))
    # The parts now read their rows of the joined weights, with the same answers.
    assert parts[1].w.untyped_storage().data_ptr() == joined.w.untyped_storage().data_ptr()
    assert torch.equal(parts[1].decode_rows(x), alone[1])


def test_many_rows_take_the_bfloat16_copy_of_the_same_weights(kernel) -> None:
    layer, reference = layer_and_reference(kernel, 48, 96)
    x = torch.randn(40, 96)  # past GEMV_MAX_ROWS: a prefill's product
    torch.testing.assert_close(layer(x).double(), reference(x), atol=0.05, rtol=0.02)


def test_torch_kernels_by_setting(tmp_path) -> None:
    settings = InferenceSettings(data_dir=tmp_path, cpu_kernels="torch")
    assert cpu_kernel(settings) is None
    assert not (tmp_path / "kernels").exists()  # nothing was built


def test_no_compiler_means_pytorchs_kernel_and_says_how_to_get_it(
    monkeypatch, tmp_path, caplog
) -> None:
    monkeypatch.setattr(native, "cpu_flags", lambda: native.CPU_FLAGS)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.load_q4q8.__wrapped__(tmp_path) is None
    assert "install gcc" in caplog.text


def test_a_failed_build_means_pytorchs_kernel_and_says_why(monkeypatch, tmp_path, caplog) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C;\n")
    monkeypatch.setattr(native, "cpu_flags", lambda: native.CPU_FLAGS)
    monkeypatch.setattr(native, "SOURCE", broken)
    if native.shutil.which("cc") is None and native.shutil.which("gcc") is None:
        pytest.skip("no C compiler to fail with")
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.load_q4q8.__wrapped__(tmp_path / "kernels") is None
    assert "building broken.c failed" in caplog.text
    assert not list((tmp_path / "kernels").glob("*.so*"))  # no half-written library left


def test_a_cpu_without_the_instructions_keeps_pytorchs_kernel(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert native.load_q4q8.__wrapped__(tmp_path) is None
    assert not tmp_path.joinpath("kernels").exists()
