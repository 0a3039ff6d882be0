"""Reading, detecting and writing every SAE layout, and interop with SAELens itself."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

# Imported once per module: sae_lens takes about ten seconds to import.
import sae_lens
import torch
from safetensors.torch import load_file, save_file

from inference_service.errors import CorruptedFileError, UnsupportedError
from inference_service.sae.architectures import Sae, SaeWeights
from inference_service.sae.formats import (
    SAE_WEIGHT_FILES,
    detect_format,
    find_sae_folders,
    load_sae,
    read_spec,
    save_sae,
    spec_from_config,
    spec_from_path,
)
from inference_service.sae.spec import SaeSpec

D_IN, D_SAE = 16, 64


def random_sae(
    architecture: str = "standard",
    *,
    k: int | None = None,
    seed: int = 0,
    normalize: str = "none",
    apply_b_dec: bool = True,
    sparsity: bool = True,
) -> Sae:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.3

    weights = SaeWeights(
        W_enc=rand(D_IN, D_SAE),
        b_enc=rand(D_SAE),
        W_dec=rand(D_SAE, D_IN),
        b_dec=rand(D_IN),
        threshold=rand(D_SAE).abs() if architecture == "jumprelu" else None,
        b_mag=rand(D_SAE) if architecture == "gated" else None,
        r_mag=rand(D_SAE) if architecture == "gated" else None,
    )
    spec = SaeSpec(
        format="saelens",
        architecture=architecture,
        d_in=D_IN,
        d_sae=D_SAE,
        hook_name="blocks.2.hook_resid_post",
        layer=2,
        model_name="tiny-model",
        k=k,
        apply_b_dec_to_input=apply_b_dec,
        normalize_activations=normalize,
        metadata={"neuronpedia_id": "tiny/2-res", "context_size": 128},
    )
    return Sae(spec, weights, -rand(D_SAE).abs() - 1 if sparsity else None)


def assert_same_tensors(a: Sae, b: Sae) -> None:
    assert a.weights.tensors().keys() == b.weights.tensors().keys()
    for name, tensor in a.weights.tensors().items():
        assert torch.equal(tensor, b.weights.tensors()[name]), name


def assert_same_math(a: Sae, b: Sae) -> None:
    x = torch.randn(4, D_IN, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(a.encode(x), b.encode(x), atol=1e-6)
    assert torch.allclose(a.forward(x), b.forward(x), atol=1e-6)


SPEC_FIELDS = (
    "architecture",
    "d_in",
    "d_sae",
    "hook_name",
    "layer",
    "model_name",
    "dtype",
    "k",
    "apply_b_dec_to_input",
    "normalize_activations",
    "rescale_acts_by_decoder_norm",
)


def same_spec_fields(a: SaeSpec, b: SaeSpec) -> None:
    for name in SPEC_FIELDS:
        assert getattr(a, name) == getattr(b, name), name


CASES = [
    ("standard", {}),
    ("jumprelu", {}),
    ("topk", {"k": 5}),
    ("gated", {}),
]


# -- SAELens v6 -------------------------------------------------------------------------


@pytest.mark.parametrize(("architecture", "extra"), CASES)
def test_saelens_round_trip(tmp_path: Path, architecture: str, extra: dict) -> None:
    sae = random_sae(architecture, normalize="layer_norm", **extra)
    written = save_sae(sae, tmp_path / "sae", "saelens")
    assert [p.name for p in written] == [
        "cfg.json",
        "sae_weights.safetensors",
        "sparsity.safetensors",
    ]
    assert detect_format(tmp_path / "sae") == "saelens"
    loaded = load_sae(tmp_path / "sae")
    assert_same_tensors(sae, loaded)
    assert loaded.log_sparsity is not None and sae.log_sparsity is not None
    assert torch.equal(loaded.log_sparsity, sae.log_sparsity)
    same_spec_fields(sae.spec, loaded.spec)
    assert loaded.spec.format == "saelens"
    assert loaded.spec.metadata["neuronpedia_id"] == "tiny/2-res"
    same_spec_fields(read_spec(tmp_path / "sae"), loaded.spec)


@pytest.mark.parametrize(
    ("sae_cls", "cfg_cls", "extra"),
    [
        (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
        (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 6, "rescale_acts_by_decoder_norm": True}),
        (sae_lens.GatedSAE, sae_lens.GatedSAEConfig, {}),
    ],
)
def test_reads_what_saelens_saves(tmp_path: Path, sae_cls, cfg_cls, extra) -> None:
    cfg = cfg_cls(
        d_in=D_IN,
        d_sae=D_SAE,
        normalize_activations="constant_norm_rescale",
        metadata=sae_lens.saes.sae.SAEMetadata(
            model_name="gpt2-small", hook_name="blocks.7.hook_resid_pre", neuronpedia_id="x/7"
        ),
        **extra,
    )
    reference = sae_cls(cfg)
    generator = torch.Generator().manual_seed(4)
    state = {
        k: torch.randn(tuple(v.shape), generator=generator)
        for k, v in reference.state_dict().items()
    }
    reference.load_state_dict(state)
    reference.save_model(tmp_path / "sae")

    loaded = load_sae(tmp_path / "sae")
    spec = loaded.spec
    assert (spec.format, spec.architecture) == ("saelens", cfg.architecture())
    assert (spec.d_in, spec.d_sae, spec.layer) == (D_IN, D_SAE, 7)
    assert (spec.hook_name, spec.model_name) == ("blocks.7.hook_resid_pre", "gpt2-small")
    assert spec.normalize_activations == "constant_norm_rescale"
    assert spec.k == extra.get("k")
    assert spec.rescale_acts_by_decoder_norm == extra.get("rescale_acts_by_decoder_norm", False)
    assert spec.metadata["neuronpedia_id"] == "x/7"
    saved_keys = loaded.architecture.saelens_keys()
    for name, key in saved_keys.items():
        assert torch.equal(getattr(loaded.weights, name), state[key]), key
    x = torch.randn(3, D_IN, generator=generator) * 4
    with torch.no_grad():
        assert torch.allclose(loaded.forward(x), reference(x), atol=1e-5)


@pytest.mark.parametrize(("architecture", "extra"), [*CASES, ("topk", {"k": 5})])
def test_saelens_loads_what_we_save(tmp_path: Path, architecture: str, extra: dict) -> None:
    sae = random_sae(architecture, normalize="constant_norm_rescale", apply_b_dec=False, **extra)
    save_sae(sae, tmp_path / "sae", "saelens")
    reference = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    assert reference.cfg.architecture() == architecture
    assert reference.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert reference.cfg.apply_b_dec_to_input is False
    x = torch.randn(5, D_IN, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        assert (reference.encode(x) - sae.encode(x)).abs().max() < 1e-5
        assert (reference(x) - sae.forward(x)).abs().max() < 1e-5


# -- SAELens before 6.0 -------------------------------------------------------------------


def write_legacy(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


LEGACY_CFG = {
    "d_in": D_IN,
    "d_sae": D_SAE,
    "dtype": "torch.float32",
    "device": "cpu",
    "model_name": "gpt2-small",
    "hook_point": "blocks.4.hook_resid_pre",
    "hook_point_layer": 4,
    "activation_fn_str": "topk",
    "activation_fn_kwargs": {"k": 7},
    "normalize_activations": True,
    "context_size": 128,
    "sae_lens_training_version": "3.5.0",
    "lr": 0.0004,  # a training setting, not kept
}


def test_legacy_flat_config_is_upgraded(tmp_path: Path) -> None:
    sae = random_sae("topk", k=7)
    tensors = {k: v for k, v in sae.weights.tensors().items()}
    folder = write_legacy(tmp_path / "blocks.4.hook_resid_pre", LEGACY_CFG, tensors)
    assert detect_format(folder) == "saelens_legacy"
    loaded = load_sae(folder)
    spec = loaded.spec
    assert (spec.format, spec.architecture, spec.k) == ("saelens_legacy", "topk", 7)
    assert (spec.hook_name, spec.layer, spec.model_name) == (
        "blocks.4.hook_resid_pre",
        4,
        "gpt2-small",
    )
    assert spec.dtype == "float32"
    assert spec.apply_b_dec_to_input is True
    assert spec.normalize_activations == "expected_average_only_in"
    assert spec.metadata["context_size"] == 128
    assert "lr" not in spec.metadata
    assert_same_tensors(sae, loaded)
    # A saved copy is v6 and SAELens reads it without its pre-6.0 rewrite.
    save_sae(loaded, tmp_path / "v6", "saelens")
    cfg = json.loads((tmp_path / "v6" / "cfg.json").read_text())
    assert cfg["metadata"]["sae_lens_version"].startswith("6")
    assert cfg["k"] == 7 and cfg["metadata"]["hook_name"] == "blocks.4.hook_resid_pre"
    assert detect_format(tmp_path / "v6") == "saelens"
    assert sae_lens.SAE.load_from_disk(tmp_path / "v6").cfg.k == 7


def test_legacy_scaling_factor_of_ones_is_dropped(tmp_path: Path) -> None:
    sae = random_sae()
    tensors = {**sae.weights.tensors(), "scaling_factor": torch.ones(D_SAE)}
    cfg = {**LEGACY_CFG, "activation_fn_str": "relu", "finetuning_scaling_factor": False}
    loaded = load_sae(write_legacy(tmp_path / "sae", cfg, tensors))
    assert_same_tensors(sae, loaded)


def test_legacy_scaling_factor_is_folded_into_the_decoder(tmp_path: Path) -> None:
    sae = random_sae()
    scaling = torch.linspace(0.5, 2.0, D_SAE)
    tensors = {**sae.weights.tensors(), "scaling_factor": scaling}
    cfg = {**LEGACY_CFG, "activation_fn_str": "relu", "finetuning_scaling_factor": True}
    loaded = load_sae(write_legacy(tmp_path / "sae", cfg, tensors))
    f = sae.encode(torch.randn(3, D_IN))
    # SAELens < 6 decoded (f * scaling_factor) @ W_dec + b_dec.
    expected = (f * scaling) @ sae.weights.W_dec + sae.weights.b_dec
    assert torch.allclose(loaded.decode(f), expected, atol=1e-6)

    cfg["finetuning_scaling_factor"] = False
    with pytest.raises(CorruptedFileError, match="scaling_factor"):
        load_sae(write_legacy(tmp_path / "contradiction", cfg, tensors))


def test_unknown_architecture_or_activation_is_unsupported(tmp_path: Path) -> None:
    cfg = {**random_sae_cfg(), "architecture": "jumprelu_transcoder"}
    with pytest.raises(UnsupportedError, match="standard, jumprelu, topk, gated"):
        spec_from_config(cfg, "saelens")
    with pytest.raises(UnsupportedError, match="tanh-relu"):
        spec_from_config({**LEGACY_CFG, "activation_fn_str": "tanh-relu"}, "saelens")


def random_sae_cfg() -> dict:
    return {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "metadata": {"sae_lens_version": "6.5.0", "hook_name": "blocks.1.hook_mlp_out"},
    }


def test_spec_from_a_v6_config_alone() -> None:
    spec = spec_from_config(random_sae_cfg(), "saelens", folder_name="blocks.1.hook_mlp_out")
    assert (spec.format, spec.architecture, spec.d_in, spec.d_sae) == (
        "saelens",
        "standard",
        D_IN,
        D_SAE,
    )
    assert (spec.hook_name, spec.layer, spec.apply_b_dec_to_input) == (
        "blocks.1.hook_mlp_out",
        1,
        True,
    )
    # Path-only specs cannot know a SAELens architecture.
    assert spec_from_path("blocks.1.hook_mlp_out", "saelens") is None


# -- Gemma Scope --------------------------------------------------------------------------


def gemma_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(D_IN, D_SAE)).astype(np.float32),
        "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(np.float32),
        "b_enc": rng.normal(size=D_SAE).astype(np.float32),
        "b_dec": rng.normal(size=D_IN).astype(np.float32),
        "threshold": np.abs(rng.normal(size=D_SAE)).astype(np.float32),
    }


def test_gemma_scope_npz(tmp_path: Path) -> None:
    folder = tmp_path / "layer_12" / "width_16k" / "average_l0_82"
    folder.mkdir(parents=True)
    arrays = gemma_arrays()
    np.savez(folder / "params.npz", **arrays)
    assert detect_format(folder) == "gemma_scope"

    spec = read_spec(folder)
    assert (spec.architecture, spec.d_in, spec.d_sae) == ("jumprelu", D_IN, D_SAE)
    assert (spec.hook_name, spec.layer) == ("blocks.12.hook_resid_post", 12)
    assert spec.apply_b_dec_to_input is False
    assert spec.metadata["average_l0"] == 82 and spec.metadata["width_label"] == 16384

    sae = load_sae(folder)
    for name, array in arrays.items():
        assert torch.equal(getattr(sae.weights, name), torch.from_numpy(array)), name
    x = torch.randn(4, D_IN)
    w = sae.weights
    pre = x @ w.W_enc + w.b_enc  # no b_dec subtraction in Gemma Scope
    expected = torch.relu(pre) * (pre > w.threshold)
    assert torch.allclose(sae.encode(x), expected, atol=1e-6)


def test_gemma_scope_repo_name_in_the_path_gives_site_and_model(tmp_path: Path) -> None:
    folder = tmp_path / "google--gemma-scope-2b-pt-mlp" / "abc123" / "layer_3" / "width_16k" / "x"
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "params.npz", **gemma_arrays())
    spec = read_spec(folder)
    assert (spec.hook_name, spec.layer, spec.model_name) == (
        "blocks.3.hook_mlp_out",
        3,
        "google/gemma-2-2b",
    )
    assert "hook_from_path" not in spec.metadata


def test_gemma_scope_2_safetensors_with_config(tmp_path: Path) -> None:
    folder = tmp_path / "resid_post" / "layer_7_width_16k_l0_small"
    folder.mkdir(parents=True)
    arrays = gemma_arrays(1)
    tensors = {name.replace("W_", "w_"): torch.from_numpy(a) for name, a in arrays.items()}
    save_file(tensors, str(folder / "params.safetensors"))
    config = {
        "architecture": "jump_relu",
        "model_name": "gemma-v3-270m-pt",
        "hf_hook_point_in": "model.layers.7.output",
    }
    (folder / "config.json").write_text(json.dumps(config))
    sae = load_sae(folder)
    assert (sae.spec.format, sae.spec.hook_name, sae.spec.layer) == (
        "gemma_scope",
        "blocks.7.hook_resid_post",
        7,
    )
    assert sae.spec.metadata["hf_hook_name"] == "model.layers.7.output"
    assert torch.equal(sae.weights.W_dec, torch.from_numpy(arrays["W_dec"]))
    with pytest.raises(UnsupportedError, match="transcoders"):
        spec_from_config({**config, "hf_hook_point_out": "x"}, "gemma_scope", folder_name="a")


def test_gemma_scope_paths_alone() -> None:
    spec = spec_from_path("layer_12/width_16k/average_l0_82", "gemma_scope")
    assert spec is not None
    assert (spec.architecture, spec.d_in, spec.d_sae) == ("jumprelu", None, 16384)
    assert (spec.hook_name, spec.layer) == ("blocks.12.hook_resid_post", 12)
    assert spec.metadata["hook_from_path"] is True
    widths = {
        "layer_0/width_131k/average_l0_10": 131072,
        "layer_0/width_1m/average_l0_10": 1 << 20,
        "layer_0/width_65k/average_l0_10": 65536,
    }
    for path, width in widths.items():
        assert spec_from_path(path, "gemma_scope").d_sae == width  # type: ignore[union-attr]
    mlp = spec_from_path("mlp_out/layer_5_width_16k_l0_big", "gemma_scope")
    assert mlp is not None and mlp.hook_name == "blocks.5.hook_mlp_out"
    assert spec_from_path("transcoder/layer_5_width_16k_l0_big", "gemma_scope") is None


# -- sparsify -----------------------------------------------------------------------------


def write_sparsify(folder: Path, dtype: torch.dtype = torch.float32, k: int = 4) -> dict:
    generator = torch.Generator().manual_seed(3)
    tensors = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=generator).to(dtype),
        "encoder.bias": torch.randn(D_SAE, generator=generator).to(dtype),
        "W_dec": torch.randn(D_SAE, D_IN, generator=generator).to(dtype),
        "b_dec": torch.randn(D_IN, generator=generator).to(dtype),
    }
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {
        "activation": "topk",
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def test_sparsify_folder(tmp_path: Path) -> None:
    folder = tmp_path / "layers.3"
    tensors = write_sparsify(folder)
    assert detect_format(folder) == "sparsify"
    sae = load_sae(folder)
    spec = sae.spec
    assert (spec.architecture, spec.k, spec.d_in, spec.d_sae) == ("topk", 4, D_IN, D_SAE)
    assert (spec.hook_name, spec.layer) == ("blocks.3.hook_resid_post", 3)
    assert torch.equal(sae.weights.W_enc, tensors["encoder.weight"].T)
    assert torch.equal(sae.weights.W_dec, tensors["W_dec"])
    # sparsify's own encode: top k of relu(encoder(x - b_dec)), decoded with W_dec + b_dec.
    x = torch.randn(6, D_IN)
    pre = torch.relu((x - tensors["b_dec"]) @ tensors["encoder.weight"].T + tensors["encoder.bias"])
    values, indices = pre.topk(4, dim=-1)
    expected = torch.zeros_like(pre).scatter_(-1, indices, values)
    assert torch.allclose(sae.encode(x), expected, atol=1e-6)
    assert torch.allclose(
        sae.decode(expected), expected @ tensors["W_dec"] + tensors["b_dec"], atol=1e-6
    )


def test_sparsify_keeps_its_stored_dtype(tmp_path: Path) -> None:
    write_sparsify(tmp_path / "layers.0", dtype=torch.bfloat16)
    assert read_spec(tmp_path / "layers.0").dtype == "bfloat16"
    assert load_sae(tmp_path / "layers.0").weights.W_enc.dtype == torch.bfloat16
    assert load_sae(tmp_path / "layers.0", dtype=torch.float32).spec.dtype == "float32"


def test_sparsify_configs_and_paths() -> None:
    cfg = {"d_in": 8, "expansion_factor": 4, "num_latents": 0, "k": 3}
    spec = spec_from_config(cfg, "sparsify", folder_name="layers.5.mlp")
    assert (spec.d_sae, spec.k, spec.hook_name, spec.layer) == (32, 3, "blocks.5.hook_mlp_out", 5)
    assert spec_from_path("layers.10", "sparsify").hook_name == "blocks.10.hook_resid_post"  # type: ignore[union-attr]
    with pytest.raises(UnsupportedError, match="groupmax"):
        spec_from_config({**cfg, "activation": "groupmax"}, "sparsify", folder_name="layers.5")
    with pytest.raises(UnsupportedError, match="transcoders"):
        spec_from_config({**cfg, "transcode": True}, "sparsify", folder_name="layers.5")


# -- miStudio -----------------------------------------------------------------------------


@pytest.mark.parametrize(("architecture", "extra"), CASES[:3])
def test_mistudio_round_trip(tmp_path: Path, architecture: str, extra: dict) -> None:
    sae = random_sae(architecture, apply_b_dec=False, sparsity=False, **extra)
    written = save_sae(sae, tmp_path / "ckpt", "mistudio")
    assert sorted(p.name for p in written) == ["checkpoint.safetensors", "config.json"]
    assert detect_format(tmp_path / "ckpt") == "mistudio"
    loaded = load_sae(tmp_path / "ckpt")
    assert_same_tensors(sae, loaded)
    same_spec_fields(sae.spec, loaded.spec)
    assert loaded.spec.format == "mistudio"
    stored = load_file(str(tmp_path / "ckpt" / "checkpoint.safetensors"))
    assert torch.equal(stored["model.encoder.weight"], sae.weights.W_enc.T)
    assert torch.equal(stored["model.decoder.weight"], sae.weights.W_dec.T)
    assert torch.equal(stored["model.decoder_bias"], sae.weights.b_dec)


def test_bare_mistudio_checkpoint_in_a_layer_folder(tmp_path: Path) -> None:
    sae = random_sae(apply_b_dec=False, sparsity=False)
    folder = tmp_path / "layer_4"
    save_sae(sae, folder, "mistudio")
    (folder / "config.json").unlink()
    (folder / "checkpoint.safetensors").rename(folder / "step_1000.safetensors")
    assert find_sae_folders(["layer_4/step_1000.safetensors"]) == []  # paths cannot tell
    assert detect_format(folder) == "mistudio"  # the tensor names can
    loaded = load_sae(folder)
    assert (loaded.spec.architecture, loaded.spec.layer) == ("standard", 4)
    assert loaded.spec.hook_name == "blocks.4.hook_resid_post"
    assert loaded.spec.apply_b_dec_to_input is False
    assert_same_tensors(sae, loaded)


def test_mistudio_jumprelu_module_layout(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(5)
    w_enc = torch.randn(D_SAE, D_IN, generator=generator)  # miStudio: [d_sae, d_in]
    w_dec = torch.randn(D_IN, D_SAE, generator=generator)  # [d_in, d_sae]
    log_threshold = torch.randn(D_SAE, generator=generator)
    tensors = {
        "model.W_enc": w_enc,
        "model.b_enc": torch.randn(D_SAE, generator=generator),
        "model.W_dec": w_dec,
        "model.b_dec": torch.randn(D_IN, generator=generator),
        "model.activation.log_threshold": log_threshold,
    }
    (tmp_path / "m").mkdir()
    save_file(tensors, str(tmp_path / "m" / "checkpoint.safetensors"))
    sae = load_sae(tmp_path / "m")
    assert sae.spec.architecture == "jumprelu"
    assert torch.equal(sae.weights.W_enc, w_enc.T)
    assert torch.equal(sae.weights.W_dec, w_dec.T)
    assert torch.allclose(sae.weights.threshold, log_threshold.exp())  # type: ignore[arg-type]


def test_mistudio_decoder_linear_bias_is_added(tmp_path: Path) -> None:
    sae = random_sae(apply_b_dec=False, sparsity=False)
    save_sae(sae, tmp_path / "m", "mistudio")
    path = tmp_path / "m" / "checkpoint.safetensors"
    tensors = load_file(str(path))
    tensors["model.decoder.bias"] = torch.ones(D_IN)
    save_file(tensors, str(path))
    assert torch.equal(load_sae(tmp_path / "m").weights.b_dec, sae.weights.b_dec + 1)


def test_gated_cannot_be_written_as_mistudio(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="gated"):
        save_sae(random_sae("gated"), tmp_path / "m", "mistudio")
    with pytest.raises(UnsupportedError, match="saelens, mistudio"):
        save_sae(random_sae(), tmp_path / "m", "npz")  # type: ignore[arg-type]


# -- every format through both writers ----------------------------------------------------


def _sources(tmp_path: Path) -> dict[str, Path]:
    saelens_folder = tmp_path / "src-saelens"
    save_sae(random_sae("topk", k=5), saelens_folder, "saelens")
    legacy = write_legacy(
        tmp_path / "src-legacy",
        {k: v for k, v in LEGACY_CFG.items() if k != "normalize_activations"},
        random_sae("topk", k=7).weights.tensors(),
    )
    gemma = tmp_path / "src-gemma" / "layer_1" / "width_16k" / "average_l0_5"
    gemma.mkdir(parents=True)
    np.savez(gemma / "params.npz", **gemma_arrays())
    sparsify_folder = tmp_path / "src-sparsify" / "layers.2"
    write_sparsify(sparsify_folder)
    mistudio_folder = tmp_path / "src-mistudio"
    save_sae(random_sae("jumprelu", apply_b_dec=False), mistudio_folder, "mistudio")
    return {
        "saelens": saelens_folder,
        "saelens_legacy": legacy,
        "gemma_scope": gemma,
        "sparsify": sparsify_folder,
        "mistudio": mistudio_folder,
    }


@pytest.mark.parametrize("layout", ["saelens", "mistudio"])
def test_every_format_survives_both_writers(tmp_path: Path, layout: str) -> None:
    for fmt, folder in _sources(tmp_path).items():
        assert detect_format(folder) == fmt
        original = load_sae(folder)
        copy = tmp_path / f"{fmt}-as-{layout}"
        save_sae(original, copy, layout)  # type: ignore[arg-type]
        reloaded = load_sae(copy)
        assert_same_tensors(original, reloaded)
        assert_same_math(original, reloaded)
        for name in ("hook_name", "layer", "k", "apply_b_dec_to_input", "architecture"):
            assert getattr(reloaded.spec, name) == getattr(original.spec, name), (fmt, name)


# -- finding SAEs -------------------------------------------------------------------------


def test_find_sae_folders_in_realistic_repos() -> None:
    saelens_repo = [
        ".gitattributes",
        "README.md",
        *(
            f"blocks.{i}.hook_resid_pre/{name}"
            for i in (0, 10, 2)
            for name in SAE_WEIGHT_FILES["saelens"]
        ),
        "blocks.11.hook_resid_pre/cfg.json",  # weights missing: not an SAE
    ]
    assert find_sae_folders(saelens_repo) == [
        ("blocks.0.hook_resid_pre", "saelens"),
        ("blocks.2.hook_resid_pre", "saelens"),
        ("blocks.10.hook_resid_pre", "saelens"),
    ]
    gemma_repo = [
        "README.md",
        "layer_0/width_16k/average_l0_105/params.npz",
        "layer_0/width_16k/average_l0_13/params.npz",
        "layer_12/width_1m/average_l0_82/params.npz",
        "resid_post/layer_7_width_16k_l0_small/params.safetensors",
        "resid_post/layer_7_width_16k_l0_small/config.json",
    ]
    assert find_sae_folders(gemma_repo) == [
        ("layer_0/width_16k/average_l0_13", "gemma_scope"),
        ("layer_0/width_16k/average_l0_105", "gemma_scope"),
        ("layer_12/width_1m/average_l0_82", "gemma_scope"),
        ("resid_post/layer_7_width_16k_l0_small", "gemma_scope"),
    ]
    sparsify_repo = ["config.json", "layers.0/cfg.json", "layers.0/sae.safetensors"]
    sparsify_repo += ["layers.10/cfg.json", "layers.10/sae.safetensors"]
    assert find_sae_folders(sparsify_repo) == [("layers.0", "sparsify"), ("layers.10", "sparsify")]
    root = ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    assert find_sae_folders(root) == [("", "saelens")]
    assert find_sae_folders(["run/layer_3/checkpoint.safetensors"]) == [("run/layer_3", "mistudio")]
    assert find_sae_folders(["README.md", "model.safetensors", "config.json"]) == []


def test_a_folder_without_an_sae_is_unsupported(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hello")
    with pytest.raises(UnsupportedError) as caught:
        detect_format(tmp_path)
    message = caught.value.message
    # What is missing, not what is there: the folder may be any on the server.
    assert "README.md" not in message and str(tmp_path) not in message
    for looked_for in ("sae_weights.safetensors", "params.npz", "sae.safetensors", "checkpoint"):
        assert looked_for in message


# -- corrupted files ----------------------------------------------------------------------


def test_truncated_safetensors_is_corrupted(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    save_sae(random_sae(), folder, "saelens")
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-200])
    for read in (load_sae, read_spec):
        with pytest.raises(
            CorruptedFileError, match=re.escape("sae/sae_weights.safetensors")
        ) as caught:
            read(folder)
        assert "re-download or re-import" in caught.value.message


def test_wrong_decoder_shape_is_corrupted(tmp_path: Path) -> None:
    sae = random_sae()
    folder = tmp_path / "sae"
    save_sae(sae, folder, "saelens")
    tensors = {**sae.weights.tensors(), "W_dec": sae.weights.W_dec[:, :-1].contiguous()}
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    for read in (load_sae, read_spec):
        with pytest.raises(
            CorruptedFileError, match=re.escape("sae_weights.safetensors: tensor W_dec has shape")
        ):
            read(folder)


def test_bad_json_is_corrupted(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    save_sae(random_sae(), folder, "saelens")
    (folder / "cfg.json").write_text('{"d_in": 16,')
    with pytest.raises(CorruptedFileError, match=re.escape("sae/cfg.json: is not valid JSON")):
        load_sae(folder)


def test_missing_dimension_in_config_is_corrupted(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    save_sae(random_sae(), folder, "saelens")
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["d_sae"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CorruptedFileError, match=re.escape("sae/cfg.json: d_sae must be a positive integer")
    ):
        read_spec(folder)


def test_truncated_npz_and_wrong_gemma_shapes_are_corrupted(tmp_path: Path) -> None:
    folder = tmp_path / "layer_1"
    folder.mkdir()
    np.savez(folder / "params.npz", **gemma_arrays())
    npz = folder / "params.npz"
    npz.write_bytes(npz.read_bytes()[:300])
    with pytest.raises(CorruptedFileError, match=re.escape("layer_1/params.npz")):
        load_sae(folder)
    arrays = {**gemma_arrays(), "threshold": np.zeros(3, dtype=np.float32)}
    np.savez(npz, **arrays)
    with pytest.raises(CorruptedFileError, match="tensor threshold has shape"):
        read_spec(folder)


def test_spec_is_a_plain_value() -> None:
    spec = random_sae().spec
    assert dataclasses.replace(spec, layer=5).layer == 5
    with pytest.raises(ValueError, match="dtype"):
        dataclasses.replace(spec, dtype="float64")
