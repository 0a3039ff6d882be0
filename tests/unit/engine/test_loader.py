"""Model sources, the cached GGUF conversion and the description callers see."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inference_service.config import InferenceSettings
from inference_service.engine import loader
from inference_service.errors import ModelNotFoundError


def test_builtin_description(loaded) -> None:
    d = loaded.description
    assert (d.id, d.source, d.architecture) == (
        "smollm2-135m-instruct",
        "builtin",
        "LlamaForCausalLM",
    )
    assert (d.num_layers, d.hidden_size, d.vocab_size) == (30, 576, 49152)
    assert d.max_context_tokens == 8192
    assert d.parameter_count > 100_000_000
    assert (d.dtype, d.device) == ("float32", "cpu")
    assert loaded.tokenizer.convert_ids_to_tokens(sorted(loaded.eos_token_ids)) == ["<|im_end|>"]
    assert not loaded.model.training


def test_description_holds_no_server_path(loaded, data_dir: Path) -> None:
    assert str(data_dir) not in repr(loaded.description)
    assert "/" not in repr(loaded.description)


def test_conversion_is_cached_and_complete(data_dir: Path) -> None:
    gguf = loader.builtin_gguf()
    started = time.monotonic()
    folder = loader._converted_copy(gguf, data_dir)
    assert time.monotonic() - started < 2.0  # reused, not converted again
    assert folder.parent == data_dir / "models" / "converted"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert "quantization_config" not in (folder / "config.json").read_text()
    assert not folder.name.startswith(".")  # temp folders of conversions start with a dot


def test_local_folder_source_and_derived_id(data_dir: Path) -> None:
    folder = loader._converted_copy(loader.builtin_gguf(), data_dir)
    loaded = loader.load_model(InferenceSettings(model=str(folder), data_dir=data_dir))
    assert loaded.description.source == "local"
    assert loaded.description.id == folder.name.lower()


@pytest.mark.parametrize(
    ("model", "model_id", "expected"),
    [
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "", ("hub", "smollm2-360m-instruct")),
        ("HuggingFaceTB/SmolLM2-360M-Instruct", "mine", ("hub", "mine")),
    ],
)
def test_hub_ids(model: str, model_id: str, expected: tuple[str, str], tmp_path: Path) -> None:
    source, _, derived = loader.resolve_source(
        InferenceSettings(model=model, model_id=model_id, data_dir=tmp_path)
    )
    assert (source, derived) == expected


@pytest.mark.parametrize("model", ["/nonexistent/model.gguf", "/nonexistent/folder", "./nope"])
def test_missing_local_sources_are_reported(model: str, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError):
        loader.resolve_source(InferenceSettings(model=model, data_dir=tmp_path))
